//! QUIC peering between site gateways: one endpoint per gateway, a full mesh
//! of mutually authenticated connections, reconnects, and the demultiplexing
//! of incoming streams (by a one-byte stream-kind header) and datagrams to
//! the subsystems that registered for them.
//!
//! Duplicate connections cannot arise: of two sites, only the one with the
//! lexicographically smaller name dials ([`Role::Dial`]); the other only
//! accepts ([`Role::Accept`]) and refuses connections from peers that should
//! have waited for it. When a dialer reconnects before the acceptor noticed
//! the old connection died, the new connection replaces the old one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::{Connection, ConnectionError, Endpoint, RecvStream, SendStream, VarInt};
use rustls::RootCertStore;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::config::{site_dns_name, GatewayConfig, PeerConfig};
use crate::tls::{self, Identity};
use crate::transport_tuning;

wanmig_wire::wire_enum! {
    /// The stream-kind header: the first byte of every bidirectional
    /// stream names the gateway subsystem that handles it. It belongs to
    /// the peering (it names the probe and the overlay as well as
    /// migration and storage), so it lives here, not in the migration
    /// core. A kind this gateway does not know (a newer peer's) decodes as
    /// `Unknown`: unless something registered that raw value, the stream
    /// is reset with [`close_code::UNKNOWN_STREAM_KIND`] and the refusal
    /// logged.
    pub enum StreamKind(u8) {
        /// A goodput probe (see [`crate::probe`]).
        Probe = 1,
        /// Overlay control messages (MAC adverts, withdrawals, full syncs),
        /// one stream per peer and direction (see
        /// [`crate::overlay_service`]).
        Overlay = 2,
        /// A relayed live migration, one stream per migration (see
        /// [`crate::migration`]).
        Migration = 3,
        /// A follow-on storage migration lane (on-demand or background),
        /// two streams per copy (see [`crate::storage_relay`]).
        Storage = 4,
        /// A relayed QEMU migration, one stream per migration carrying
        /// all its channels (see [`crate::qemu`]).
        Qemu = 5,
    }
}

/// Application close / reset codes on peering connections and streams.
pub mod close_code {
    /// The gateway is shutting down.
    pub const SHUTDOWN: u32 = 0;
    /// The peer's certificate names no configured site.
    pub const UNKNOWN_SITE: u32 = 1;
    /// The peer dialled although it should have waited to be dialled.
    pub const WRONG_DIRECTION: u32 = 2;
    /// A newer connection from the same peer replaced this one.
    pub const REPLACED: u32 = 3;
    /// No subsystem handles the requested stream kind.
    pub const UNKNOWN_STREAM_KIND: u32 = 4;
}

#[derive(Debug, thiserror::Error)]
pub enum PeeringError {
    #[error("'{0}' is not a configured peer (check the peers list in the config)")]
    UnknownPeer(String),
    #[error("peer '{0}' is not connected (see `wanmig status`)")]
    NotConnected(String),
    #[error("opening a stream to '{peer}': {source}")]
    Open {
        peer: String,
        source: ConnectionError,
    },
    #[error("writing to a stream to '{peer}': {source}")]
    Write {
        peer: String,
        source: quinn::WriteError,
    },
    #[error("sending a datagram to '{peer}': {source}")]
    Datagram {
        peer: String,
        source: quinn::SendDatagramError,
    },
    #[error("stream kind {0:?} already has a handler")]
    KindTaken(StreamKind),
}

/// Which side of a peer pair opens the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Dial,
    Accept,
}

impl Role {
    /// The tie-break: the lexicographically smaller site name dials.
    pub fn between(local: &str, peer: &str) -> Role {
        if local < peer {
            Role::Dial
        } else {
            Role::Accept
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    Down,
    Connecting,
    Up,
}

/// Link figures sampled from quinn's `Connection::stats()`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkStats {
    pub rtt_ms: f64,
    pub cwnd_bytes: u64,
    pub mtu: u16,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    pub lost_packets: u64,
    pub lost_bytes: u64,
    pub congestion_events: u64,
}

impl LinkStats {
    pub fn from_connection(c: &Connection) -> Self {
        let s = c.stats();
        LinkStats {
            rtt_ms: s.path.rtt.as_secs_f64() * 1e3,
            cwnd_bytes: s.path.cwnd,
            mtu: s.path.current_mtu,
            bytes_sent: s.udp_tx.bytes,
            bytes_received: s.udp_rx.bytes,
            packets_sent: s.udp_tx.datagrams,
            packets_received: s.udp_rx.datagrams,
            datagrams_sent: s.frame_tx.datagram,
            datagrams_received: s.frame_rx.datagram,
            lost_packets: s.path.lost_packets,
            lost_bytes: s.path.lost_bytes,
            congestion_events: s.path.congestion_events,
        }
    }
}

/// One peer as seen at one moment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerSnapshot {
    pub site: String,
    pub address: SocketAddr,
    pub role: Role,
    pub state: LinkState,
    /// Seconds in the current state.
    pub state_secs: f64,
    /// Counts connections; changes whenever a new connection comes up.
    pub connection_id: u64,
    /// How often the peer came up again after having been up.
    pub reconnects: u64,
    pub last_error: Option<String>,
    pub remote: Option<SocketAddr>,
    pub link: Option<LinkStats>,
}

/// Handshakes this gateway refused (or that refused us).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Refusals {
    pub total: u64,
    pub by_reason: std::collections::BTreeMap<String, u64>,
    pub last: Option<String>,
}

/// A stream a peer opened, with its kind byte already consumed.
#[derive(Debug)]
pub struct IncomingStream {
    pub peer: String,
    pub kind: StreamKind,
    pub send: SendStream,
    pub recv: RecvStream,
}

/// A QUIC datagram from a peer.
#[derive(Debug, Clone)]
pub struct PeerDatagram {
    pub peer: String,
    pub data: Bytes,
}

struct PeerEntry {
    cfg: PeerConfig,
    role: Role,
    state: LinkState,
    since: Instant,
    conn: Option<Connection>,
    connection_id: u64,
    ups: u64,
    last_error: Option<String>,
}

struct Shared {
    site: String,
    endpoint: Endpoint,
    peers: Mutex<HashMap<String, PeerEntry>>,
    stream_handlers: Mutex<HashMap<StreamKind, mpsc::Sender<IncomingStream>>>,
    datagram_sink: Mutex<Option<mpsc::Sender<PeerDatagram>>>,
    refusals: Mutex<Refusals>,
    changes: watch::Sender<u64>,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind;
    // keep serving it rather than cascading the panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn bump(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn refuse(&self, reason: &str, detail: String) {
        tracing::warn!(site = %self.site, reason, "refused peering: {detail}");
        let mut r = lock(&self.refusals);
        r.total += 1;
        *r.by_reason.entry(reason.to_string()).or_default() += 1;
        r.last = Some(detail);
        drop(r);
        self.bump();
    }

    fn set_state(&self, peer: &str, state: LinkState, error: Option<String>) {
        let mut peers = lock(&self.peers);
        if let Some(e) = peers.get_mut(peer) {
            if e.state != state {
                e.state = state;
                e.since = Instant::now();
            }
            if error.is_some() {
                e.last_error = error;
            }
        }
        drop(peers);
        self.bump();
    }

    /// Makes `conn` the live connection of `peer`; returns its id.
    fn install(&self, peer: &str, conn: Connection) -> u64 {
        let mut peers = lock(&self.peers);
        let Some(e) = peers.get_mut(peer) else {
            return 0;
        };
        if let Some(old) = e.conn.replace(conn.clone()) {
            old.close(
                VarInt::from_u32(close_code::REPLACED),
                b"replaced by a newer connection",
            );
        }
        e.connection_id += 1;
        e.ups += 1;
        e.state = LinkState::Up;
        e.since = Instant::now();
        e.last_error = None;
        let id = e.connection_id;
        drop(peers);
        tracing::info!(site = %self.site, peer, remote = %conn.remote_address(), "peer up");
        self.bump();
        id
    }

    /// Marks `peer` down if connection `id` is still its live connection.
    fn connection_lost(&self, peer: &str, id: u64, why: &ConnectionError) {
        let mut peers = lock(&self.peers);
        let Some(e) = peers.get_mut(peer) else { return };
        if e.connection_id != id || e.conn.is_none() {
            return;
        }
        e.conn = None;
        e.state = LinkState::Down;
        e.since = Instant::now();
        e.last_error = Some(format!("connection lost: {why}"));
        drop(peers);
        tracing::warn!(site = %self.site, peer, "peer down: {why}");
        self.bump();
    }

    fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    fn spawn(self: &Arc<Self>, f: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = lock(&self.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(tokio::spawn(f));
    }
}

/// The peering of one gateway. Cheap to clone; all clones share the mesh.
#[derive(Clone)]
pub struct Peering {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Peering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peering")
            .field("site", &self.shared.site)
            .finish()
    }
}

impl Peering {
    /// Starts the endpoint on `socket` (already bound) and the full mesh
    /// towards the configured peers. Must run inside a tokio runtime.
    pub fn start(
        config: &GatewayConfig,
        identity: &Identity,
        roots: &RootCertStore,
        socket: std::net::UdpSocket,
    ) -> Result<Self, crate::GatewayError> {
        let server_crypto = tls::server_crypto(identity, roots)?;
        let client_crypto = tls::client_crypto(identity, roots)?;
        let mut server = quinn::ServerConfig::with_crypto(server_crypto);
        server.transport_config(Arc::new(transport_tuning::for_server(
            config.peers.iter().map(|p| &p.hints),
            &config.transport,
        )));
        let runtime = quinn::default_runtime().ok_or(crate::GatewayError::NoRuntime)?;
        let local = socket.local_addr().ok();
        // quinn caps UDP payloads at 1472 bytes by default, so MTU discovery
        // could never exceed a 1500-byte path and every full 1514-byte
        // overlay frame would be split in two even on jumbo or loopback
        // paths. Allow what the largest peer hint allows; discovery still
        // backs off on smaller paths.
        let mut endpoint_config = quinn::EndpointConfig::default();
        let plan = transport_tuning::WindowPlan::for_links(config.peers.iter().map(|p| &p.hints));
        if let Err(e) = endpoint_config.max_udp_payload_size(plan.mtu_upper_bound.max(1200)) {
            tracing::warn!("keeping quinn's default UDP payload limit: {e}");
        }
        let endpoint =
            Endpoint::new(endpoint_config, Some(server), socket, runtime).map_err(|source| {
                crate::GatewayError::Bind {
                    addr: local.unwrap_or(config.listen),
                    source,
                }
            })?;
        let now = Instant::now();
        let peers = config
            .peers
            .iter()
            .map(|p| {
                let role = Role::between(&config.site, &p.site);
                let entry = PeerEntry {
                    cfg: p.clone(),
                    role,
                    state: LinkState::Down,
                    since: now,
                    conn: None,
                    connection_id: 0,
                    ups: 0,
                    last_error: None,
                };
                (p.site.clone(), entry)
            })
            .collect();
        let shared = Arc::new(Shared {
            site: config.site.clone(),
            endpoint,
            peers: Mutex::new(peers),
            stream_handlers: Mutex::new(HashMap::new()),
            datagram_sink: Mutex::new(None),
            refusals: Mutex::new(Refusals::default()),
            changes: watch::channel(0).0,
            shutdown: watch::channel(false).0,
            tasks: Mutex::new(Vec::new()),
        });
        shared.spawn(accept_loop(shared.clone()));
        for p in &config.peers {
            if Role::between(&config.site, &p.site) == Role::Dial {
                let mut client = quinn::ClientConfig::new(client_crypto.clone());
                client.transport_config(Arc::new(transport_tuning::for_peer(
                    &p.hints,
                    &config.transport,
                )));
                let backoff = Backoff::new(
                    config.transport.reconnect_initial,
                    config.transport.reconnect_max,
                );
                shared.spawn(dial_loop(shared.clone(), p.clone(), client, backoff));
            }
        }
        tracing::info!(site = %config.site, listen = %shared.endpoint.local_addr().map(|a| a.to_string()).unwrap_or_default(), peers = config.peers.len(), "peering started");
        Ok(Peering { shared })
    }

    pub fn site(&self) -> &str {
        &self.shared.site
    }

    /// The UDP address the QUIC endpoint is bound to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.shared.endpoint.local_addr().ok()
    }

    /// Every configured peer, sorted by site name.
    pub fn peer_states(&self) -> Vec<PeerSnapshot> {
        let peers = lock(&self.shared.peers);
        let now = Instant::now();
        let mut out: Vec<PeerSnapshot> = peers
            .values()
            .map(|e| PeerSnapshot {
                site: e.cfg.site.clone(),
                address: e.cfg.address,
                role: e.role,
                state: e.state,
                state_secs: now.saturating_duration_since(e.since).as_secs_f64(),
                connection_id: e.connection_id,
                reconnects: e.ups.saturating_sub(1),
                last_error: e.last_error.clone(),
                remote: e.conn.as_ref().map(|c| c.remote_address()),
                link: e.conn.as_ref().map(LinkStats::from_connection),
            })
            .collect();
        out.sort_by(|a, b| a.site.cmp(&b.site));
        out
    }

    pub fn peer_state(&self, site: &str) -> Option<LinkState> {
        lock(&self.shared.peers).get(site).map(|e| e.state)
    }

    /// The live QUIC connection to `site`, if it is up.
    pub fn connection(&self, site: &str) -> Option<Connection> {
        lock(&self.shared.peers)
            .get(site)
            .and_then(|e| e.conn.clone())
    }

    pub fn refusals(&self) -> Refusals {
        lock(&self.shared.refusals).clone()
    }

    /// Waits until `pred` holds for the peer snapshots, or `timeout` passes.
    /// Returns whether it held.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&[PeerSnapshot]) -> bool,
    ) -> bool {
        let mut rx = self.shared.changes.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if pred(&self.peer_states()) {
                return true;
            }
            // Re-check at least every 100 ms: state_secs and stats move
            // without change notifications.
            let wake = (tokio::time::Instant::now() + Duration::from_millis(100)).min(deadline);
            let _ = tokio::time::timeout_at(wake, rx.changed()).await;
            if tokio::time::Instant::now() >= deadline {
                return pred(&self.peer_states());
            }
        }
    }

    /// Waits until every configured peer is up.
    pub async fn wait_all_up(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, |ps| ps.iter().all(|p| p.state == LinkState::Up))
            .await
    }

    /// Opens a bidirectional stream of `kind` to `site`.
    pub async fn open_stream(
        &self,
        site: &str,
        kind: StreamKind,
    ) -> Result<(SendStream, RecvStream), PeeringError> {
        let conn = self.live_connection(site)?;
        let (mut send, recv) = conn.open_bi().await.map_err(|source| PeeringError::Open {
            peer: site.to_string(),
            source,
        })?;
        send.write_all(&[u8::from(kind)])
            .await
            .map_err(|source| PeeringError::Write {
                peer: site.to_string(),
                source,
            })?;
        Ok((send, recv))
    }

    /// The live connection to `site`, or why there is none.
    pub fn live_connection(&self, site: &str) -> Result<Connection, PeeringError> {
        let peers = lock(&self.shared.peers);
        let e = peers
            .get(site)
            .ok_or_else(|| PeeringError::UnknownPeer(site.to_string()))?;
        e.conn
            .clone()
            .ok_or_else(|| PeeringError::NotConnected(site.to_string()))
    }

    /// Registers the handler of stream `kind`: incoming streams of that kind
    /// arrive on the returned channel.
    pub fn subscribe_streams(
        &self,
        kind: StreamKind,
        capacity: usize,
    ) -> Result<mpsc::Receiver<IncomingStream>, PeeringError> {
        let mut h = lock(&self.shared.stream_handlers);
        if h.get(&kind).is_some_and(|tx| !tx.is_closed()) {
            return Err(PeeringError::KindTaken(kind));
        }
        let (tx, rx) = mpsc::channel(capacity.max(1));
        h.insert(kind, tx);
        Ok(rx)
    }

    /// Registers the datagram handler (replacing any earlier one).
    pub fn subscribe_datagrams(&self, capacity: usize) -> mpsc::Receiver<PeerDatagram> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        *lock(&self.shared.datagram_sink) = Some(tx);
        rx
    }

    /// Sends one QUIC datagram to `site` (unreliable).
    pub fn send_datagram(&self, site: &str, data: Bytes) -> Result<(), PeeringError> {
        let conn = self.live_connection(site)?;
        conn.send_datagram(data)
            .map_err(|source| PeeringError::Datagram {
                peer: site.to_string(),
                source,
            })
    }

    /// Closes every connection and stops all peering tasks.
    pub async fn shutdown(&self) {
        let _ = self.shared.shutdown.send(true);
        self.shared.endpoint.close(
            VarInt::from_u32(close_code::SHUTDOWN),
            b"gateway shutting down",
        );
        let _ =
            tokio::time::timeout(Duration::from_secs(2), self.shared.endpoint.wait_idle()).await;
        let tasks = std::mem::take(&mut *lock(&self.shared.tasks));
        for t in tasks {
            t.abort();
        }
        let mut peers = lock(&self.shared.peers);
        for e in peers.values_mut() {
            e.conn = None;
            e.state = LinkState::Down;
        }
    }
}

/// Whether a failed handshake was a certificate/name refusal (TLS alert).
fn is_tls_refusal(e: &ConnectionError) -> bool {
    let crypto = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    match e {
        ConnectionError::TransportError(t) => crypto(t.code),
        ConnectionError::ConnectionClosed(c) => crypto(c.error_code),
        ConnectionError::ApplicationClosed(c) => {
            let code = c.error_code.into_inner();
            code == u64::from(close_code::UNKNOWN_SITE)
                || code == u64::from(close_code::WRONG_DIRECTION)
        }
        _ => false,
    }
}

async fn accept_loop(shared: Arc<Shared>) {
    while let Some(incoming) = shared.endpoint.accept().await {
        let s = shared.clone();
        shared.spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => admit(s, conn).await,
                Err(e) => {
                    if s.is_shutting_down() {
                        return;
                    }
                    let reason = if is_tls_refusal(&e) {
                        "tls"
                    } else {
                        "handshake"
                    };
                    s.refuse(reason, format!("handshake with {remote} failed: {e}"));
                }
            }
        });
    }
}

/// Checks who an accepted connection is and installs it.
async fn admit(shared: Arc<Shared>, conn: Connection) {
    let remote = conn.remote_address();
    let names = match tls::peer_site_names(&conn) {
        Ok(n) => n,
        Err(e) => {
            conn.close(
                VarInt::from_u32(close_code::UNKNOWN_SITE),
                b"unreadable certificate",
            );
            shared.refuse("identity", format!("{remote}: {e}"));
            return;
        }
    };
    let found = {
        let peers = lock(&shared.peers);
        names
            .iter()
            .find_map(|n| peers.get(n).map(|e| (n.clone(), e.role)))
    };
    match found {
        None => {
            conn.close(
                VarInt::from_u32(close_code::UNKNOWN_SITE),
                b"not a configured peer",
            );
            shared.refuse(
                "unknown-site",
                format!("{remote} presented a certificate for {names:?}, none of which is a configured peer"),
            );
        }
        Some((peer, Role::Dial)) => {
            conn.close(
                VarInt::from_u32(close_code::WRONG_DIRECTION),
                b"the smaller site name dials",
            );
            shared.refuse(
                "wrong-direction",
                format!(
                    "{peer} ({remote}) dialled, but '{}' < '{peer}' so this gateway dials it",
                    shared.site
                ),
            );
        }
        Some((peer, Role::Accept)) => {
            let id = shared.install(&peer, conn.clone());
            serve_connection(shared, peer, conn, id).await;
        }
    }
}

async fn dial_loop(
    shared: Arc<Shared>,
    peer: PeerConfig,
    client: quinn::ClientConfig,
    mut backoff: Backoff,
) {
    let server_name = site_dns_name(&peer.site);
    let mut shutdown = shared.shutdown.subscribe();
    let mut rng = rand::rngs::StdRng::from_os_rng();
    loop {
        if shared.is_shutting_down() {
            return;
        }
        shared.set_state(&peer.site, LinkState::Connecting, None);
        let attempt = match shared
            .endpoint
            .connect_with(client.clone(), peer.address, &server_name)
        {
            Ok(connecting) => connecting.await,
            Err(e) => {
                shared.set_state(
                    &peer.site,
                    LinkState::Down,
                    Some(format!("cannot dial {}: {e}", peer.address)),
                );
                tracing::warn!(site = %shared.site, peer = %peer.site, "cannot dial {}: {e}", peer.address);
                Err(ConnectionError::LocallyClosed)
            }
        };
        match attempt {
            Ok(conn) => {
                backoff.reset();
                let id = shared.install(&peer.site, conn.clone());
                serve_connection(shared.clone(), peer.site.clone(), conn, id).await;
            }
            Err(ConnectionError::LocallyClosed) => {}
            Err(e) => {
                if shared.is_shutting_down() {
                    return;
                }
                let msg = format!("connecting to {} ({}): {e}", peer.site, peer.address);
                if is_tls_refusal(&e) {
                    shared.refuse("tls", msg.clone());
                } else {
                    tracing::info!(site = %shared.site, "{msg}");
                }
                shared.set_state(&peer.site, LinkState::Down, Some(msg));
            }
        }
        let delay = backoff.next_delay(&mut rng);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
    }
}

use rand::SeedableRng;

/// Dispatches a live connection's incoming streams and datagrams until it
/// closes, then marks the peer down.
async fn serve_connection(shared: Arc<Shared>, peer: String, conn: Connection, id: u64) {
    let datagrams = {
        let (s, c, p) = (shared.clone(), conn.clone(), peer.clone());
        tokio::spawn(async move {
            while let Ok(data) = c.read_datagram().await {
                let sink = lock(&s.datagram_sink).clone();
                if let Some(tx) = sink {
                    // Datagrams are unreliable: drop rather than stall the link.
                    let _ = tx.try_send(PeerDatagram {
                        peer: p.clone(),
                        data,
                    });
                }
            }
        })
    };
    let why = loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let (s, p) = (shared.clone(), peer.clone());
                tokio::spawn(dispatch_stream(s, p, send, recv));
            }
            Err(e) => break e,
        }
    };
    datagrams.abort();
    shared.connection_lost(&peer, id, &why);
}

async fn dispatch_stream(
    shared: Arc<Shared>,
    peer: String,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let mut kind = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(30), recv.read_exact(&mut kind)).await {
        Ok(Ok(())) => {}
        _ => {
            tracing::debug!(peer, "stream closed before its kind byte");
            return;
        }
    }
    let kind = StreamKind::from(kind[0]);
    let tx = lock(&shared.stream_handlers).get(&kind).cloned();
    let stream = IncomingStream {
        peer,
        kind,
        send,
        recv,
    };
    match tx {
        Some(tx) => {
            if let Err(mpsc::error::SendError(mut s)) = tx.send(stream).await {
                let _ = s
                    .send
                    .reset(VarInt::from_u32(close_code::UNKNOWN_STREAM_KIND));
                let _ = s
                    .recv
                    .stop(VarInt::from_u32(close_code::UNKNOWN_STREAM_KIND));
            }
        }
        None => {
            match kind {
                StreamKind::Unknown(k) => tracing::warn!(
                    peer = %stream.peer,
                    kind = k,
                    "refusing a stream of unknown kind {k}: the peer runs a wanmig build with a subsystem this gateway lacks; run the same wanmig version at both sites"
                ),
                known => {
                    tracing::warn!(peer = %stream.peer, kind = ?known, "no handler for stream kind; resetting it")
                }
            }
            send = stream.send;
            recv = stream.recv;
            let _ = send.reset(VarInt::from_u32(close_code::UNKNOWN_STREAM_KIND));
            let _ = recv.stop(VarInt::from_u32(close_code::UNKNOWN_STREAM_KIND));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_side_dials() {
        for (a, b) in [("site-a", "site-b"), ("dc1", "dc2"), ("b", "a")] {
            let ab = Role::between(a, b);
            let ba = Role::between(b, a);
            assert_ne!(ab, ba, "{a} / {b}");
        }
        assert_eq!(Role::between("site-a", "site-b"), Role::Dial);
    }
}
