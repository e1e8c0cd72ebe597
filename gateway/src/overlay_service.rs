//! The overlay service: the I/O around one gateway's L2 switch
//! ([`wanmig_overlay::Switch`]). One task owns the switch and feeds it
//! peer datagrams, control messages (one reliable stream per peer and
//! direction, kind [`StreamKind::Overlay`]), frames from local ports (TAP
//! devices and in-process channels), peer up/down transitions and a 1 s
//! timer; it carries out the returned actions. [`OverlayHandle`] attaches
//! and detaches ports at runtime and reads the switch's state.
//!
//! Peer transitions are found by sampling the peering (every 100 ms, and
//! before any control message is applied, so a peer's FullSync on a new
//! connection is never flushed by a late "down" of the old one).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::Connection;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use wanmig_overlay::control::{read_msg, write_msg};
use wanmig_overlay::mactable::Location;
use wanmig_overlay::port::{channel_pair, TapPort};
pub use wanmig_overlay::port::{ChannelPort, TapOptions};
use wanmig_overlay::{
    Action, Actions, ControlMsg, OverlayConfig, OverlayMetrics, PortId, SiteId, Switch,
    SwitchError, Vni,
};

use crate::config::TapPortConfig;
use crate::peering::{IncomingStream, LinkState, PeerDatagram, Peering, StreamKind};

/// Frames buffered per in-process port and direction.
pub const CHANNEL_PORT_FRAMES: usize = 1024;
/// Datagrams buffered between the peering and the switch task.
const DATAGRAM_QUEUE: usize = 8192;
/// Frames buffered from all local ports towards the switch task.
const FRAME_QUEUE: usize = 4096;
/// How often peer connections are sampled for up/down transitions.
const PEER_POLL: Duration = Duration::from_millis(100);
/// How often the switch's timers run.
const TIMER_TICK: Duration = Duration::from_secs(1);
/// Receive buffer of a TAP reader (an MTU-65535 frame with VLAN tags fits).
const TAP_BUFFER: usize = 65_600;

/// Errors of the overlay service and its handle.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("overlay: {0}")]
    Switch(#[from] SwitchError),
    #[error("overlay: no segment named {0:?} (configure it under [[overlay.segment]])")]
    UnknownSegment(String),
    #[error("overlay: no port {0} is attached")]
    UnknownPort(PortId),
    #[error("overlay: {0}")]
    Port(#[from] wanmig_overlay::port::PortError),
    #[error("overlay: cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("overlay: stream kind {0:?} is taken by another subsystem")]
    StreamKind(StreamKind),
    #[error("overlay service has stopped (the gateway is shutting down)")]
    Stopped,
}

/// One MAC table entry as the control API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacEntry {
    pub mac: String,
    /// `"local"` or `"remote"`.
    pub kind: String,
    /// The local port (`port3`) or the remote site name.
    pub at: String,
    pub seq: u32,
    pub is_static: bool,
    pub frozen: bool,
}

/// One segment's state (`GET /v1/overlay`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentState {
    pub name: String,
    pub vni: u32,
    pub ports: Vec<u32>,
    pub macs: Vec<MacEntry>,
}

/// The overlay as seen at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayState {
    pub site: String,
    /// Peers the switch treats as up, with their max datagram size.
    pub peers: Vec<(String, usize)>,
    pub segments: Vec<SegmentState>,
}

/// The host end of a frame port: what the attached host reads and writes.
enum PortSink {
    Bytes(mpsc::Sender<Bytes>),
    Vec(mpsc::Sender<Vec<u8>>),
    Tap(std::sync::Arc<TapPort>),
}

struct LocalPort {
    segment: String,
    sink: PortSink,
    reader: JoinHandle<()>,
}

enum Command {
    AttachChannel {
        segment: String,
        reply: oneshot::Sender<Result<(PortId, ChannelPort), OverlayError>>,
    },
    AttachVec {
        segment: String,
        to_host: mpsc::Sender<Vec<u8>>,
        from_host: mpsc::Receiver<Vec<u8>>,
        reply: oneshot::Sender<Result<PortId, OverlayError>>,
    },
    AttachTap {
        segment: String,
        opts: TapOptions,
        reply: oneshot::Sender<Result<(PortId, String), OverlayError>>,
    },
    Detach {
        port: PortId,
        reply: oneshot::Sender<Result<(), OverlayError>>,
    },
    State {
        reply: oneshot::Sender<OverlayState>,
    },
}

/// Controls a running overlay service; cheap to clone.
#[derive(Clone)]
pub struct OverlayHandle {
    cmds: mpsc::Sender<Command>,
    metrics: OverlayMetrics,
    segments: Vec<(String, Vni)>,
}

impl OverlayHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, OverlayError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(make(tx))
            .await
            .map_err(|_| OverlayError::Stopped)?;
        rx.await.map_err(|_| OverlayError::Stopped)
    }

    /// Attaches an in-process port to `segment`; the returned
    /// [`ChannelPort`] is the host's end (a smoltcp host, a test).
    pub async fn attach_port(&self, segment: &str) -> Result<(PortId, ChannelPort), OverlayError> {
        let segment = segment.to_string();
        self.ask(|reply| Command::AttachChannel { segment, reply })
            .await?
    }

    /// Attaches a port made of a raw channel pair carrying `Vec<u8>` frames:
    /// frames for the host go to `to_host`, the host's frames come from
    /// `from_host`. A VM's virtio-net channel port plugs in directly:
    /// `attach_frame_channels(seg, port.into_parts())`.
    pub async fn attach_frame_channels(
        &self,
        segment: &str,
        (to_host, from_host): (mpsc::Sender<Vec<u8>>, mpsc::Receiver<Vec<u8>>),
    ) -> Result<PortId, OverlayError> {
        let segment = segment.to_string();
        self.ask(|reply| Command::AttachVec {
            segment,
            to_host,
            from_host,
            reply,
        })
        .await?
    }

    /// Creates a TAP device and attaches it to `segment`; returns the port
    /// and the interface name. The device disappears when detached.
    pub async fn attach_tap(
        &self,
        segment: &str,
        opts: TapOptions,
    ) -> Result<(PortId, String), OverlayError> {
        let segment = segment.to_string();
        self.ask(|reply| Command::AttachTap {
            segment,
            opts,
            reply,
        })
        .await?
    }

    /// Detaches `port` (its MACs are withdrawn from peers).
    pub async fn detach(&self, port: PortId) -> Result<(), OverlayError> {
        self.ask(|reply| Command::Detach { port, reply }).await?
    }

    /// The switch's peers, segments, ports and MAC tables.
    pub async fn state(&self) -> Result<OverlayState, OverlayError> {
        self.ask(|reply| Command::State { reply }).await
    }

    /// The overlay's counters (also on `/metrics` as `wanmig_overlay_*`).
    pub fn metrics(&self) -> &OverlayMetrics {
        &self.metrics
    }

    /// The VNI of segment `name`.
    pub fn segment_vni(&self, name: &str) -> Option<Vni> {
        self.segments
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }
}

/// A peer the switch currently treats as up.
struct PeerLink {
    conn: Connection,
    /// Our control messages to the peer, written by a per-connection task.
    control_tx: mpsc::UnboundedSender<ControlMsg>,
    writer: JoinHandle<()>,
    max_datagram: usize,
}

struct Service {
    switch: Switch,
    peering: Peering,
    peers: HashMap<String, PeerLink>,
    ports: HashMap<PortId, LocalPort>,
    next_port: u32,
    frames_tx: mpsc::Sender<(PortId, Bytes)>,
    /// Configured segments (name, VNI), sorted by VNI.
    segment_list: Vec<(String, Vni)>,
    tasks: Vec<JoinHandle<()>>,
}

/// Starts the overlay service of a gateway. Registers the metrics on
/// `registry`, the control stream kind on the peering, and creates the
/// configured TAP ports.
pub async fn start(
    peering: Peering,
    config: &OverlayConfig,
    taps: &[TapPortConfig],
    registry: &prometheus::Registry,
) -> Result<(OverlayHandle, JoinHandle<()>), OverlayError> {
    let metrics = OverlayMetrics::register(registry)?;
    let site = SiteId::new(peering.site());
    let switch = Switch::new(site, config, metrics.clone())?;
    let mut segments: Vec<(String, Vni)> = config
        .segments
        .iter()
        .filter_map(|s| Some((s.name.clone(), Vni::new(s.vni).ok()?)))
        .collect();
    segments.sort_by_key(|(_, v)| *v);
    let streams = peering
        .subscribe_streams(StreamKind::Overlay, 16)
        .map_err(|_| OverlayError::StreamKind(StreamKind::Overlay))?;
    let datagrams = peering.subscribe_datagrams(DATAGRAM_QUEUE);
    let (frames_tx, frames_rx) = mpsc::channel(FRAME_QUEUE);
    let (cmds_tx, cmds_rx) = mpsc::channel(64);
    let (control_tx, control_rx) = mpsc::channel(1024);
    let mut svc = Service {
        switch,
        peering,
        peers: HashMap::new(),
        ports: HashMap::new(),
        next_port: 1,
        frames_tx,
        segment_list: segments.clone(),
        tasks: Vec::new(),
    };
    for t in taps {
        let opts = TapOptions {
            name: Some(t.name.clone()),
            mtu: t.mtu,
            mac: None,
            bridge: t.bridge.clone(),
        };
        svc.attach_tap(&t.segment, &opts)?;
    }
    let accept = tokio::spawn(accept_control_streams(streams, control_tx));
    svc.tasks.push(accept);
    let task = tokio::spawn(svc.run(datagrams, frames_rx, cmds_rx, control_rx));
    Ok((
        OverlayHandle {
            cmds: cmds_tx,
            metrics,
            segments,
        },
        task,
    ))
}

/// Reads every incoming overlay control stream and forwards its messages.
async fn accept_control_streams(
    mut streams: mpsc::Receiver<IncomingStream>,
    out: mpsc::Sender<(String, ControlMsg)>,
) {
    while let Some(s) = streams.recv().await {
        let out = out.clone();
        tokio::spawn(async move {
            let IncomingStream { peer, mut recv, .. } = s;
            loop {
                match read_msg(&mut recv).await {
                    Ok(Some(msg)) => {
                        if out.send((peer.clone(), msg)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        tracing::debug!(peer, error = %e, "overlay control stream ended");
                        return;
                    }
                }
            }
        });
    }
}

/// Writes our control messages to `site` on a stream of our own.
async fn write_control(
    peering: Peering,
    site: String,
    mut rx: mpsc::UnboundedReceiver<ControlMsg>,
) {
    let mut send = match peering.open_stream(&site, StreamKind::Overlay).await {
        Ok((send, _recv)) => send,
        Err(e) => {
            tracing::info!(peer = site, error = %e, "cannot open the overlay control stream");
            return;
        }
    };
    while let Some(msg) = rx.recv().await {
        if let Err(e) = write_msg(&mut send, &msg).await {
            tracing::info!(peer = site, error = %e, "overlay control stream failed");
            return;
        }
    }
    let _ = send.finish();
}

impl Service {
    async fn run(
        mut self,
        mut datagrams: mpsc::Receiver<PeerDatagram>,
        mut frames: mpsc::Receiver<(PortId, Bytes)>,
        mut cmds: mpsc::Receiver<Command>,
        mut control: mpsc::Receiver<(String, ControlMsg)>,
    ) {
        let mut peer_poll = tokio::time::interval(PEER_POLL);
        peer_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut timers = tokio::time::interval(TIMER_TICK);
        timers.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some((port, frame)) = frames.recv() => {
                    let a = self.switch.on_local_frame(Instant::now(), port, frame);
                    self.execute(a);
                    // Drain what is already queued without re-polling the rest.
                    while let Ok((port, frame)) = frames.try_recv() {
                        let a = self.switch.on_local_frame(Instant::now(), port, frame);
                        self.execute(a);
                    }
                }
                Some(d) = datagrams.recv() => {
                    self.on_datagram(d);
                    while let Ok(d) = datagrams.try_recv() {
                        self.on_datagram(d);
                    }
                }
                Some((peer, msg)) = control.recv() => {
                    self.sync_peers();
                    let a = self.switch.on_control(Instant::now(), &SiteId::new(&peer), msg);
                    self.execute(a);
                }
                cmd = cmds.recv() => match cmd {
                    Some(c) => self.command(c),
                    None => break,
                },
                _ = peer_poll.tick() => self.sync_peers(),
                _ = timers.tick() => {
                    let a = self.switch.poll_timers(Instant::now());
                    self.execute(a);
                }
            }
        }
        self.stop();
    }

    fn stop(&mut self) {
        for (_, p) in self.ports.drain() {
            p.reader.abort();
        }
        for (_, p) in self.peers.drain() {
            p.writer.abort();
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }

    fn on_datagram(&mut self, d: PeerDatagram) {
        let a = self
            .switch
            .on_datagram(Instant::now(), &SiteId::new(&d.peer), d.data);
        self.execute(a);
    }

    /// Brings the switch's view of the peers in line with the peering:
    /// a new or replaced connection is a (re)connect (FullSync), a gone one
    /// a peer-down; a changed datagram size is passed on.
    fn sync_peers(&mut self) {
        let now = Instant::now();
        for snap in self.peering.peer_states() {
            let live = match snap.state {
                LinkState::Up => self.peering.connection(&snap.site),
                _ => None,
            };
            let known = self.peers.get(&snap.site).map(|p| p.conn.stable_id());
            match (live, known) {
                (Some(conn), Some(id)) if conn.stable_id() == id => {
                    let Some(size) = conn.max_datagram_size() else {
                        continue;
                    };
                    let link = self.peers.get_mut(&snap.site).expect("known peer");
                    if size != link.max_datagram {
                        link.max_datagram = size;
                        self.switch
                            .set_max_datagram_size(&SiteId::new(&snap.site), size);
                    }
                }
                (Some(conn), known) => {
                    if known.is_some() {
                        self.peer_down(now, &snap.site);
                    }
                    let Some(size) = conn.max_datagram_size() else {
                        tracing::warn!(
                            peer = snap.site,
                            "peer does not accept QUIC datagrams; the overlay cannot reach it"
                        );
                        continue;
                    };
                    let (control_tx, rx) = mpsc::unbounded_channel();
                    let writer =
                        tokio::spawn(write_control(self.peering.clone(), snap.site.clone(), rx));
                    self.peers.insert(
                        snap.site.clone(),
                        PeerLink {
                            conn,
                            control_tx,
                            writer,
                            max_datagram: size,
                        },
                    );
                    let a = self.switch.on_peer_up(now, SiteId::new(&snap.site), size);
                    self.execute(a);
                }
                (None, Some(_)) => self.peer_down(now, &snap.site),
                (None, None) => {}
            }
        }
    }

    fn peer_down(&mut self, now: Instant, site: &str) {
        if let Some(p) = self.peers.remove(site) {
            // Let the writer finish what it has queued on a dying connection
            // in the background; dropping the sender ends it.
            drop(p.control_tx);
            let a = self.switch.on_peer_down(now, &SiteId::new(site));
            self.execute(a);
        }
    }

    fn execute(&mut self, actions: Actions) {
        for a in actions {
            match a {
                Action::Deliver { port, frame } => self.deliver(port, frame),
                Action::SendDatagram { site, datagram } => {
                    if let Some(p) = self.peers.get(site.as_str()) {
                        // Unreliable by design: a full send buffer or a
                        // dying connection loses the frame, as a switch would.
                        if let Err(e) = p.conn.send_datagram(datagram) {
                            tracing::trace!(peer = %site, error = %e, "overlay datagram not sent");
                        }
                    }
                }
                Action::SendControl { site, msg } => {
                    if let Some(p) = self.peers.get(site.as_str()) {
                        let _ = p.control_tx.send(msg);
                    }
                }
                Action::Event(e) => tracing::info!(event = ?e, "overlay event"),
            }
        }
    }

    fn deliver(&mut self, port: PortId, frame: Bytes) {
        let Some(p) = self.ports.get(&port) else {
            return;
        };
        // Never wait on one slow host: a full port drops, as a NIC ring would.
        let ok = match &p.sink {
            PortSink::Bytes(tx) => tx.try_send(frame).is_ok(),
            PortSink::Vec(tx) => tx.try_send(frame.to_vec()).is_ok(),
            PortSink::Tap(tap) => tap.try_send(&frame).is_ok(),
        };
        if !ok {
            tracing::trace!(%port, "local port full; frame dropped");
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::AttachChannel { segment, reply } => {
                let r = self.attach_channel(&segment);
                let _ = reply.send(r);
            }
            Command::AttachVec {
                segment,
                to_host,
                from_host,
                reply,
            } => {
                let r = self.attach_vec(&segment, to_host, from_host);
                let _ = reply.send(r);
            }
            Command::AttachTap {
                segment,
                opts,
                reply,
            } => {
                let r = self.attach_tap(&segment, &opts);
                let _ = reply.send(r);
            }
            Command::Detach { port, reply } => {
                let r = match self.ports.remove(&port) {
                    Some(p) => {
                        p.reader.abort();
                        let a = self.switch.remove_port(port);
                        self.execute(a);
                        Ok(())
                    }
                    None => Err(OverlayError::UnknownPort(port)),
                };
                let _ = reply.send(r);
            }
            Command::State { reply } => {
                let _ = reply.send(self.state());
            }
        }
    }

    fn new_port(&mut self, segment: &str) -> Result<PortId, OverlayError> {
        let vni = self
            .switch
            .segment_vni(segment)
            .ok_or_else(|| OverlayError::UnknownSegment(segment.to_string()))?;
        let id = PortId(self.next_port);
        self.switch.add_port(id, vni)?;
        self.next_port += 1;
        Ok(id)
    }

    fn attach_channel(&mut self, segment: &str) -> Result<(PortId, ChannelPort), OverlayError> {
        let id = self.new_port(segment)?;
        let (sw, host) = channel_pair(CHANNEL_PORT_FRAMES);
        let ChannelPort { tx, mut rx } = sw;
        let frames = self.frames_tx.clone();
        let reader = tokio::spawn(async move {
            while let Some(f) = rx.recv().await {
                if frames.send((id, f)).await.is_err() {
                    return;
                }
            }
        });
        self.insert_port(id, segment, PortSink::Bytes(tx), reader);
        Ok((id, host))
    }

    fn attach_vec(
        &mut self,
        segment: &str,
        to_host: mpsc::Sender<Vec<u8>>,
        mut from_host: mpsc::Receiver<Vec<u8>>,
    ) -> Result<PortId, OverlayError> {
        let id = self.new_port(segment)?;
        let frames = self.frames_tx.clone();
        let reader = tokio::spawn(async move {
            while let Some(f) = from_host.recv().await {
                if frames.send((id, Bytes::from(f))).await.is_err() {
                    return;
                }
            }
        });
        self.insert_port(id, segment, PortSink::Vec(to_host), reader);
        Ok(id)
    }

    fn attach_tap(
        &mut self,
        segment: &str,
        opts: &TapOptions,
    ) -> Result<(PortId, String), OverlayError> {
        if self.switch.segment_vni(segment).is_none() {
            return Err(OverlayError::UnknownSegment(segment.to_string()));
        }
        let tap = std::sync::Arc::new(TapPort::create(opts)?);
        let name = tap.name().to_string();
        let id = self.new_port(segment)?;
        let frames = self.frames_tx.clone();
        let t = tap.clone();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; TAP_BUFFER];
            loop {
                match t.recv(&mut buf).await {
                    Ok(n) => {
                        let f = Bytes::copy_from_slice(&buf[..n]);
                        if frames.send((id, f)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%id, error = %e, "TAP read failed; port stops receiving");
                        return;
                    }
                }
            }
        });
        self.insert_port(id, segment, PortSink::Tap(tap), reader);
        Ok((id, name))
    }

    fn insert_port(&mut self, id: PortId, segment: &str, sink: PortSink, reader: JoinHandle<()>) {
        tracing::info!(port = %id, segment, "overlay port attached");
        self.ports.insert(
            id,
            LocalPort {
                segment: segment.to_string(),
                sink,
                reader,
            },
        );
    }

    fn state(&self) -> OverlayState {
        let mut segments = Vec::new();
        for (name, vni) in self.segment_list.iter().cloned() {
            let mut ports: Vec<u32> = self
                .ports
                .iter()
                .filter(|(_, p)| p.segment == name)
                .map(|(id, _)| id.0)
                .collect();
            ports.sort_unstable();
            let macs = self
                .switch
                .mac_table(vni)
                .into_iter()
                .map(|m| {
                    let (kind, at) = match m.location {
                        Location::Local(p) => ("local", p.to_string()),
                        Location::Remote(s) => ("remote", s.to_string()),
                    };
                    MacEntry {
                        mac: m.mac.to_string(),
                        kind: kind.into(),
                        at,
                        seq: m.seq,
                        is_static: m.is_static,
                        frozen: m.frozen,
                    }
                })
                .collect();
            segments.push(SegmentState {
                name,
                vni: vni.get(),
                ports,
                macs,
            });
        }
        let mut peers: Vec<(String, usize)> = self
            .peers
            .iter()
            .map(|(s, p)| (s.clone(), p.max_datagram))
            .collect();
        peers.sort();
        OverlayState {
            site: self.switch.local_site().to_string(),
            peers,
            segments,
        }
    }
}
