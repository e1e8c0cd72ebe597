//! The tokio/QUIC edges of a QEMU relay: the source gateway's loopback
//! listener and its channel readers around [`SourceRelay`], and the
//! destination gateway's connections into its QEMU around [`DestRelay`].
//! One QUIC stream of kind [`StreamKind::Qemu`] per migration carries
//! every channel.
//!
//! Failure: any error ends the relay at once. The source side resets the
//! QUIC stream and closes its connections from the source QEMU, whose
//! migration then fails and whose guest keeps running; the destination
//! side closes its connections into the destination QEMU mid-stream, so
//! that QEMU's incoming migration fails and its guest never starts.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use quinn::{RecvStream, SendStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use wanmig_codec::{Decoder, DecoderConfig, Inventory};
use wanmig_wire::FrameDecoder;

use super::dest::{Action, DestRelay};
use super::drive::{self, Setup};
use super::frames::{DoneStats, Frame, FrameError, MAX_BODY, QEMU_RELAY};
use super::source::SourceRelay;
use super::{Destination, Inner, QemuError, QemuReport};
use crate::peering::{IncomingStream, StreamKind};

/// Bytes read from a source QEMU channel at a time.
const READ_CHUNK: usize = 256 << 10;
/// Reset code of a QEMU relay stream that ended in an error.
const RESET_FAILED: u32 = 1;

async fn read_frame(
    recv: &mut RecvStream,
    dec: &mut FrameDecoder,
    buf: &mut [u8],
) -> Result<Option<Frame>, QemuError> {
    loop {
        if let Some(raw) = dec.next().map_err(|e| {
            QemuError::Frame(FrameError::Decode(wanmig_wire::DecodeError::invalid(
                "frame",
                e.to_string(),
            )))
        })? {
            return Ok(Some(Frame::read(raw.tag, &raw.body)?));
        }
        match recv.read(buf).await? {
            Some(n) => dec.feed(&buf[..n]),
            None if dec.buffered() == 0 => return Ok(None),
            None => return Err(QemuError::PeerClosed),
        }
    }
}

/// What a source channel's reader reports.
enum ChannelMsg {
    Connected(TcpStream),
    Data(u8, Bytes),
    Eof(u8),
    Failed(u8, std::io::Error),
}

/// Runs the source side of migration `name` to `to`: accepts the source
/// QEMU's connections on `listener` until its main channel ends.
pub(super) async fn run_source(
    inner: &Inner,
    name: &str,
    to: &str,
    scope: &str,
    setup: &Setup,
    listener: TcpListener,
    progress: &super::ProgressCell,
) -> Result<QemuReport, QemuError> {
    let started = Instant::now();
    let (mut send, mut recv) = inner.peering.open_stream(to, StreamKind::Qemu).await?;
    let setup = serde_json::to_string(setup).unwrap_or_else(|_| "{}".into());
    let result = source_inner(
        inner,
        (name, scope, &setup),
        listener,
        progress,
        &mut send,
        &mut recv,
    )
    .await;
    match result {
        Ok((core, done)) => {
            let _ = send.finish();
            let s = core.stats().clone();
            Ok(QemuReport {
                name: name.to_string(),
                to: to.to_string(),
                elapsed: started.elapsed(),
                wire_bytes: s.frame_bytes,
                destination: done,
                encoder: core.encoder_stats(),
                source: s,
            })
        }
        Err(e) => {
            let _ = send.reset(RESET_FAILED.into());
            let _ = recv.stop(RESET_FAILED.into());
            Err(e)
        }
    }
}

async fn source_inner(
    inner: &Inner,
    (name, scope, setup): (&str, &str, &str),
    listener: TcpListener,
    progress: &super::ProgressCell,
    send: &mut SendStream,
    recv: &mut RecvStream,
) -> Result<(SourceRelay, DoneStats), QemuError> {
    let mut out = Vec::new();
    Frame::Open {
        version: QEMU_RELAY.current,
        name: name.to_string(),
        scope: scope.to_string(),
        setup: setup.to_string(),
    }
    .write(&mut out);
    send.write_all(&out).await?;
    out.clear();
    let mut dec = FrameDecoder::new(MAX_BODY);
    let mut buf = vec![0u8; 64 << 10];
    let answer = tokio::time::timeout(inner.open_timeout, read_frame(recv, &mut dec, &mut buf))
        .await
        .map_err(|_| QemuError::OpenTimeout(inner.open_timeout))??;
    let inventory = match answer {
        Some(Frame::Accept { inventory }) => Inventory::from_bytes(&inventory)?,
        Some(Frame::Refuse(why)) => return Err(QemuError::Refused(why)),
        Some(_) => return Err(QemuError::Protocol("an answer other than accept or refuse")),
        None => return Err(QemuError::PeerClosed),
    };
    let mut core = SourceRelay::new(inner.encoder.clone(), inventory)?;

    let (tx, mut rx) = mpsc::channel::<ChannelMsg>(16);
    let accept_tx = tx.clone();
    let acceptor = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            if accept_tx.send(ChannelMsg::Connected(s)).await.is_err() {
                break;
            }
        }
    });
    let _acceptor = AbortOnDrop(acceptor);
    let mut main_writer: Option<OwnedWriteHalf> = None;
    let mut readers = Vec::new();
    let done = loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(ChannelMsg::Connected(s)) => {
                    let ch = core.open_channel(&mut out)?;
                    let (mut r, w) = s.into_split();
                    if ch == 0 {
                        main_writer = Some(w);
                    }
                    let tx = tx.clone();
                    readers.push(AbortOnDrop(tokio::spawn(async move {
                        let mut buf = vec![0u8; READ_CHUNK];
                        loop {
                            let msg = match r.read(&mut buf).await {
                                Ok(0) => ChannelMsg::Eof(ch),
                                Ok(n) => ChannelMsg::Data(ch, Bytes::copy_from_slice(&buf[..n])),
                                Err(e) => ChannelMsg::Failed(ch, e),
                            };
                            let last = !matches!(msg, ChannelMsg::Data(..));
                            if tx.send(msg).await.is_err() || last {
                                break;
                            }
                        }
                    })));
                }
                Some(ChannelMsg::Data(ch, data)) => core.push(ch, &data, &mut out)?,
                Some(ChannelMsg::Eof(ch)) => core.end(ch, &mut out)?,
                Some(ChannelMsg::Failed(ch, e)) => return Err(QemuError::SourceChannel { ch, source: e }),
                None => return Err(QemuError::Protocol("the channel readers stopped")),
            },
            frame = read_frame(recv, &mut dec, &mut buf) => match frame? {
                Some(Frame::Nacks(list)) => core.on_nacks(&list, &mut out)?,
                Some(Frame::ReturnPath(bytes)) => {
                    if let Some(w) = main_writer.as_mut() {
                        w.write_all(&bytes).await.map_err(|e| QemuError::SourceChannel { ch: 0, source: e })?;
                    }
                }
                Some(Frame::Done(d)) => break d,
                Some(Frame::Abort(why)) => return Err(QemuError::PeerAborted(why)),
                Some(_) => return Err(QemuError::Protocol("a frame only the source sends")),
                None => return Err(QemuError::PeerClosed),
            },
        }
        if !out.is_empty() {
            send.write_all(&out).await?;
            out.clear();
        }
        progress.update(|p| {
            p.qemu_bytes = core.stats().qemu_bytes;
            p.wire_bytes = core.stats().frame_bytes;
            p.pages = core.stats().pages;
            p.zero_pages = core.stats().zero_pages;
        });
    };
    Ok((core, done))
}

/// Aborts a task when dropped (the relay's helpers end with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves incoming QEMU relay streams.
pub(super) async fn serve_incoming(
    inner: std::sync::Arc<Inner>,
    mut streams: mpsc::Receiver<IncomingStream>,
) {
    while let Some(s) = streams.recv().await {
        let inner = inner.clone();
        tokio::spawn(async move {
            let peer = s.peer.clone();
            if let Err(e) = run_dest(&inner, s).await {
                tracing::warn!(%peer, "incoming QEMU migration failed: {e}");
            }
        });
    }
}

enum WriterMsg {
    Bytes(Bytes),
    Close,
}

async fn run_dest(inner: &Inner, s: IncomingStream) -> Result<(), QemuError> {
    let IncomingStream {
        peer,
        mut send,
        mut recv,
        ..
    } = s;
    let mut dec = FrameDecoder::new(MAX_BODY);
    let mut buf = vec![0u8; 256 << 10];
    let open = tokio::time::timeout(
        inner.open_timeout,
        read_frame(&mut recv, &mut dec, &mut buf),
    )
    .await
    .map_err(|_| QemuError::OpenTimeout(inner.open_timeout))??;
    let Some(Frame::Open {
        version,
        name,
        scope,
        setup,
    }) = open
    else {
        return Err(QemuError::Protocol("a first frame other than open"));
    };
    let site = inner.peering.site().to_string();
    let refusal = match QEMU_RELAY.check(version) {
        Err(e) => Some(e.to_string()),
        Ok(_) => None,
    };
    let target = inner.take_destination(&name);
    let store = inner.stores.open_for(&peer, &scope);
    let mut refusal = refusal.or_else(|| match (&target, &store) {
        (None, _) => Some(format!(
            "no destination QEMU is registered as '{name}' at {site}: run `wanmig qemu accept {name} --qmp PATH` there first"
        )),
        (_, Err(e)) => Some(format!("dedup scope '{scope}': {e}")),
        _ => None,
    });
    let target = match (target, &refusal) {
        (Some(Destination::Qmp(path)), None) => {
            let setup: Setup = serde_json::from_str(&setup).unwrap_or_default();
            let who = format!("destination QEMU '{name}'");
            let r = tokio::task::spawn_blocking(move || {
                let mut q = drive::connect(&path, &who)?;
                drive::prepare_destination(&mut q, &setup)
            })
            .await;
            match r {
                Ok(Ok(addr)) => Some(addr),
                Ok(Err(e)) => {
                    refusal = Some(format!("setting up the destination QEMU: {e}"));
                    None
                }
                Err(e) => {
                    refusal = Some(format!("setting up the destination QEMU: {e}"));
                    None
                }
            }
        }
        (Some(Destination::Incoming(addr)), _) => Some(addr),
        _ => None,
    };
    let (Some(target), Ok(store), None) = (target, store, refusal.clone()) else {
        let why = refusal.unwrap_or_default();
        let mut out = Vec::new();
        Frame::Refuse(why.clone()).write(&mut out);
        let _ = send_all(&mut send, &out).await;
        let _ = send.finish();
        return Err(QemuError::Refused(why));
    };
    let mut out = Vec::new();
    Frame::Accept {
        inventory: store.inventory_bytes().into(),
    }
    .write(&mut out);
    send.write_all(&out).await?;
    out.clear();
    let decoder = Decoder::new(DecoderConfig::default(), store.clone())?;
    let mut core = DestRelay::new(decoder);
    let result = dest_inner(&mut core, target, &mut send, &mut recv, &mut dec, &mut buf).await;
    store.sync();
    match result {
        Ok(()) => {
            let _ = send.finish();
            tracing::info!(%name, %peer, "QEMU migration relayed: {:?}", core.stats());
            Ok(())
        }
        Err(e) => {
            let mut out = Vec::new();
            Frame::Abort(e.to_string()).write(&mut out);
            let _ = send_all(&mut send, &out).await;
            let _ = send.reset(RESET_FAILED.into());
            let _ = recv.stop(RESET_FAILED.into());
            Err(e)
        }
    }
}

async fn send_all(send: &mut SendStream, b: &[u8]) -> Result<(), QemuError> {
    send.write_all(b).await?;
    Ok(())
}

async fn dest_inner<S: wanmig_codec::ContentStore>(
    core: &mut DestRelay<S>,
    target: SocketAddr,
    send: &mut SendStream,
    recv: &mut RecvStream,
    dec: &mut FrameDecoder,
    buf: &mut [u8],
) -> Result<(), QemuError> {
    let mut writers: Vec<mpsc::UnboundedSender<WriterMsg>> = Vec::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(u8, Result<(), std::io::Error>)>();
    let (rp_tx, mut rp_rx) = mpsc::channel::<Bytes>(16);
    let mut tasks = Vec::new();
    let mut closed = 0usize;
    let mut actions = Vec::new();
    let mut out = Vec::new();
    let mut peer_done = false;
    loop {
        tokio::select! {
            frame = read_frame(recv, dec, buf), if !peer_done => match frame? {
                Some(Frame::Abort(why)) => return Err(QemuError::PeerAborted(why)),
                Some(f) => core.on_frame(f, &mut actions)?,
                None => {
                    peer_done = true;
                    if !core.finished() {
                        return Err(QemuError::PeerClosed);
                    }
                }
            },
            Some(bytes) = rp_rx.recv() => Frame::ReturnPath(bytes).write(&mut out),
            Some((ch, r)) = done_rx.recv() => {
                r.map_err(|e| QemuError::DestinationChannel { ch, source: e })?;
                closed += 1;
            }
        }
        for a in actions.drain(..) {
            match a {
                Action::Open(ch) => {
                    let s = TcpStream::connect(target)
                        .await
                        .map_err(|e| QemuError::Connect { target, source: e })?;
                    let _ = s.set_nodelay(true);
                    let (mut r, mut w) = s.into_split();
                    if ch == 0 {
                        let rp_tx = rp_tx.clone();
                        tasks.push(AbortOnDrop(tokio::spawn(async move {
                            let mut b = vec![0u8; 4096];
                            while let Ok(n) = r.read(&mut b).await {
                                if n == 0
                                    || rp_tx.send(Bytes::copy_from_slice(&b[..n])).await.is_err()
                                {
                                    break;
                                }
                            }
                        })));
                    }
                    let (tx, mut rx) = mpsc::unbounded_channel();
                    writers.push(tx);
                    let done_tx = done_tx.clone();
                    tasks.push(AbortOnDrop(tokio::spawn(async move {
                        let r = async {
                            while let Some(m) = rx.recv().await {
                                match m {
                                    WriterMsg::Bytes(b) => w.write_all(&b).await?,
                                    WriterMsg::Close => {
                                        w.shutdown().await?;
                                        break;
                                    }
                                }
                            }
                            Ok(())
                        }
                        .await;
                        let _ = done_tx.send((ch, r));
                    })));
                }
                Action::Write(ch, b) => {
                    if let Some(w) = writers.get(ch as usize) {
                        let _ = w.send(WriterMsg::Bytes(b));
                    }
                }
                Action::Close(ch) => {
                    if let Some(w) = writers.get(ch as usize) {
                        let _ = w.send(WriterMsg::Close);
                    }
                }
                Action::Nacks(list) => Frame::Nacks(list).write(&mut out),
            }
        }
        if core.finished() && closed == writers.len() {
            let s = core.stats();
            Frame::Done(DoneStats {
                bytes: s.qemu_bytes,
                pages: s.pages,
            })
            .write(&mut out);
        }
        if !out.is_empty() {
            send.write_all(&out).await?;
            out.clear();
        }
        if core.finished() && closed == writers.len() {
            return Ok(());
        }
    }
}
