//! A test proxy on loopback in the gateways' place: it accepts the source
//! QEMU's channels, connects to the destination QEMU in the same order
//! (the main channel first), and relays each channel through a [`Parser`]
//! and an [`Emitter`] — the destination sees only re-emitted bytes. The
//! reverse direction (the return path) is copied as is. Each channel's
//! report says what the parser found and hashes what came in and went out.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wanmig_qemu_stream::{
    BlockList, BlockName, ChannelKind, Emitter, Event, MultifdHello, Parser, Phase, Stats,
    Unsupported,
};

/// What one relayed channel carried.
#[derive(Debug)]
pub struct ChannelReport {
    pub kind: Option<ChannelKind>,
    pub stats: Stats,
    pub phase: Phase,
    pub unsupported: Option<Unsupported>,
    pub truncated: bool,
    pub block_list: Option<BlockList>,
    pub hello: Option<MultifdHello>,
    /// The distinct pages (block, offset) sent with data, and as zero pages.
    pub data_pages: HashSet<(BlockName, u64)>,
    pub zero_pages: HashSet<(BlockName, u64)>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub hash_in: blake3::Hash,
    pub hash_out: blake3::Hash,
    /// Where the channel's input was saved, when asked.
    pub capture: Option<PathBuf>,
    /// An emitter or socket error that ended the relay early.
    pub error: Option<String>,
}

pub struct Proxy {
    pub port: u16,
    accept: JoinHandle<Vec<JoinHandle<ChannelReport>>>,
}

impl Proxy {
    /// Listens on a loopback port for `channels` connections, each relayed
    /// to `dest`; with `capture`, each channel's input is also written to
    /// `capture/channel-<n>.bin`.
    pub fn start(dest: SocketAddr, channels: usize, capture: Option<PathBuf>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let accept = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut relays = Vec::new();
            while relays.len() < channels && Instant::now() < deadline {
                let src = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Err(e) => panic!("proxy accept: {e}"),
                };
                src.set_nonblocking(false).unwrap();
                // Connected before the next channel is accepted: the
                // destination sees the source's connection order.
                let dst = TcpStream::connect(dest).expect("proxy connecting to the destination");
                let file = capture
                    .as_ref()
                    .map(|d| d.join(format!("channel-{}.bin", relays.len())));
                relays.push(std::thread::spawn(move || relay(src, dst, file)));
            }
            relays
        });
        Proxy { port, accept }
    }

    /// The reports of the channels, once each has ended.
    pub fn finish(self) -> Vec<ChannelReport> {
        let relays = self
            .accept
            .join()
            .expect("the proxy's accept thread panicked");
        relays
            .into_iter()
            .map(|r| r.join().expect("a relay thread panicked"))
            .collect()
    }
}

fn relay(mut src: TcpStream, mut dst: TcpStream, capture: Option<PathBuf>) -> ChannelReport {
    for s in [&src, &dst] {
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(120))).unwrap();
    }
    // The return path: destination → source, unchanged.
    let (mut back_from, mut back_to) = (dst.try_clone().unwrap(), src.try_clone().unwrap());
    let back = std::thread::spawn(move || {
        let _ = std::io::copy(&mut back_from, &mut back_to);
        let _ = back_to.shutdown(Shutdown::Write);
    });

    let mut parser = Parser::new();
    let mut emitter = Emitter::new();
    let mut file = capture
        .as_ref()
        .map(|p| std::fs::File::create(p).expect("creating a capture file"));
    let (mut hin, mut hout) = (blake3::Hasher::new(), blake3::Hasher::new());
    let (mut bytes_in, mut bytes_out) = (0u64, 0u64);
    let mut block_list = None;
    let mut hello = None;
    let (mut data_pages, mut zero_pages) = (HashSet::new(), HashSet::new());
    let mut error = None;
    let mut buf = vec![0u8; 256 << 10];
    let mut out = Vec::with_capacity(1 << 20);
    loop {
        let n = match src.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                error = Some(format!("reading the source: {e}"));
                0
            }
        };
        if n == 0 {
            parser.finish();
        } else {
            hin.update(&buf[..n]);
            bytes_in += n as u64;
            if let Some(f) = &mut file {
                f.write_all(&buf[..n]).expect("writing a capture file");
            }
            parser.push(&buf[..n]);
        }
        out.clear();
        while let Some(ev) = parser.poll() {
            match &ev {
                Event::BlockList(l) => block_list = Some(l.clone()),
                Event::MultifdHello(h) => hello = Some(*h),
                Event::Page(p) => {
                    data_pages.insert((p.block.clone(), p.offset));
                }
                Event::Zero(z) => {
                    zero_pages.insert((z.block.clone(), z.offset));
                }
                _ => {}
            }
            if let Err(e) = emitter.emit(&ev, &mut out) {
                error = Some(format!("emitting: {e}"));
            }
        }
        hout.update(&out);
        bytes_out += out.len() as u64;
        if let Err(e) = dst.write_all(&out) {
            error = Some(format!("writing the destination: {e}"));
            break;
        }
        if n == 0 {
            break;
        }
    }
    let _ = dst.shutdown(Shutdown::Write);
    let _ = back.join();
    ChannelReport {
        kind: parser.kind(),
        stats: parser.stats().clone(),
        phase: parser.phase().clone(),
        unsupported: parser.unsupported().cloned(),
        truncated: parser.truncated(),
        block_list,
        hello,
        data_pages,
        zero_pages,
        bytes_in,
        bytes_out,
        hash_in: hin.finalize(),
        hash_out: hout.finalize(),
        capture,
        error,
    }
}
