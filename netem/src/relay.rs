//! The UDP relay: a WAN path between two gateways, on real sockets.
//!
//! The relay listens on `listen`; every distinct client address gets its own
//! upstream socket (NAT-like), so replies find their way back. Datagrams
//! from clients go through the forward [`crate::LinkModel`], replies through the
//! reverse one. Receiving runs on tokio (one task for the listening
//! socket, one per session); each direction's departures are sent by its
//! sender thread (`lane.rs`), which keeps timing precise.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};

use crate::error::NetemError;
use crate::lane::Lane;
use crate::model::LinkStats;
use crate::params::LinkParams;
use crate::workers::Workers;

/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;
/// Client addresses the relay tracks at most (each costs a socket).
const MAX_SESSIONS: usize = 4096;
/// A session without traffic in either direction for this long is
/// forgotten (its upstream socket closed), like a NAT entry.
const SESSION_IDLE: Duration = if cfg!(test) {
    Duration::from_millis(200)
} else {
    Duration::from_secs(180)
};
/// Socket buffer size requested for relay sockets (capped by the kernel).
const SOCKET_BUFFER: usize = 4 << 20;

/// Which direction of the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Client → upstream.
    Forward,
    /// Upstream → client.
    Reverse,
}

/// Where the relay listens, where it forwards to, and the two directions'
/// link parameters.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    pub forward: LinkParams,
    pub reverse: LinkParams,
    pub seed: u64,
}

/// Counters of a running relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayStats {
    pub forward: LinkStats,
    pub reverse: LinkStats,
    /// Client addresses seen (each gets its own upstream socket).
    pub sessions: u64,
    /// Sessions forgotten after being idle (a later datagram from the same
    /// client opens a new one, with a new upstream port).
    pub sessions_expired: u64,
    /// Datagrams dropped because the session table was full.
    pub sessions_refused: u64,
    /// Datagrams the kernel refused to send (e.g. nothing listening).
    pub send_errors: u64,
    pub cut: bool,
}

struct Shared {
    /// Client → upstream, routed by the session's connected socket.
    forward: Arc<Lane<Arc<UdpSocket>>>,
    /// Upstream → client, routed by the client's address.
    reverse: Arc<Lane<SocketAddr>>,
    cut: AtomicBool,
    sessions: AtomicU64,
    sessions_expired: AtomicU64,
    sessions_refused: AtomicU64,
}

struct Inner {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    /// Dropping the sender tells every receive task to stop.
    stop: Mutex<Option<watch::Sender<()>>>,
    workers: Workers,
}

impl Inner {
    fn stop(&self) {
        drop(lock(&self.stop).take());
        self.shared.forward.stop();
        self.shared.reverse.stop();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts relays; see [`UdpRelay::start`].
pub struct UdpRelay;

/// Controls a running relay. Clones share the relay; dropping the last
/// handle (or calling [`RelayHandle::shutdown`]) stops it.
#[derive(Clone)]
pub struct RelayHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayHandle")
            .field("local_addr", &self.inner.local_addr)
            .finish()
    }
}

fn udp_socket(bind: SocketAddr) -> io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(bind);
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    // Best effort: bigger buffers absorb bursts at high rates; the kernel
    // caps them at net.core.[rw]mem_max.
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    s.set_nonblocking(true)?;
    s.bind(&bind.into())?;
    UdpSocket::from_std(s.into())
}

impl UdpRelay {
    /// Binds `cfg.listen` and starts relaying to `cfg.upstream`. Must be
    /// called inside a tokio runtime.
    pub async fn start(cfg: RelayConfig) -> Result<RelayHandle, NetemError> {
        cfg.forward.validate()?;
        cfg.reverse.validate()?;
        let listen = Arc::new(udp_socket(cfg.listen).map_err(|source| NetemError::Bind {
            addr: cfg.listen,
            source,
        })?);
        let local_addr = listen
            .local_addr()
            .map_err(|e| NetemError::io("reading the relay's bound address", e))?;
        let forward = Lane::new(cfg.forward, cfg.seed);
        // A different stream for the other direction, still seed-determined.
        let reverse = Lane::new(cfg.reverse, cfg.seed ^ 0x9e37_79b9_7f4a_7c15);
        let spawn_err = |e| NetemError::io("starting a relay sender thread", e);
        let threads = vec![
            forward
                .spawn_sender("netem-fwd", |sock: &Arc<UdpSocket>, data: &[u8]| {
                    socket2::SockRef::from(&**sock).send(data).map(drop)
                })
                .map_err(spawn_err)?,
            {
                let listen = listen.clone();
                reverse
                    .spawn_sender("netem-rev", move |to: &SocketAddr, data: &[u8]| {
                        socket2::SockRef::from(&*listen)
                            .send_to(data, &(*to).into())
                            .map(drop)
                    })
                    .map_err(spawn_err)?
            },
        ];
        let shared = Arc::new(Shared {
            forward,
            reverse,
            cut: AtomicBool::new(false),
            sessions: AtomicU64::new(0),
            sessions_expired: AtomicU64::new(0),
            sessions_refused: AtomicU64::new(0),
        });
        let (stop_tx, stop_rx) = watch::channel(());
        let tasks = vec![tokio::spawn(accept_loop(
            shared.clone(),
            listen,
            cfg.upstream,
            stop_rx,
        ))];
        tracing::info!(%local_addr, upstream = %cfg.upstream, "netem relay started");
        Ok(RelayHandle {
            inner: Arc::new(Inner {
                shared,
                local_addr,
                stop: Mutex::new(Some(stop_tx)),
                workers: Workers::new(tasks, threads),
            }),
        })
    }
}

impl RelayHandle {
    /// The address clients send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Cuts the link in both directions: everything is dropped, including
    /// packets already on their way, until [`RelayHandle::restore`].
    pub fn cut(&self) {
        self.set_cut(true);
    }

    pub fn restore(&self) {
        self.set_cut(false);
    }

    fn set_cut(&self, cut: bool) {
        let s = &self.inner.shared;
        s.cut.store(cut, Ordering::SeqCst);
        s.forward.with_model(|m| m.set_cut(cut));
        s.reverse.with_model(|m| m.set_cut(cut));
        tracing::info!(addr = %self.inner.local_addr, cut, "netem relay link state");
    }

    pub fn is_cut(&self) -> bool {
        self.inner.shared.cut.load(Ordering::SeqCst)
    }

    /// Replaces one direction's parameters; packets already scheduled keep
    /// their departure times.
    pub fn set_params(&self, dir: Direction, params: LinkParams) {
        let s = &self.inner.shared;
        match dir {
            Direction::Forward => s.forward.with_model(|m| m.set_params(params)),
            Direction::Reverse => s.reverse.with_model(|m| m.set_params(params)),
        }
    }

    pub fn stats(&self) -> RelayStats {
        let s = &self.inner.shared;
        RelayStats {
            forward: s.forward.with_model(|m| m.stats()),
            reverse: s.reverse.with_model(|m| m.stats()),
            sessions: s.sessions.load(Ordering::Relaxed),
            sessions_expired: s.sessions_expired.load(Ordering::Relaxed),
            sessions_refused: s.sessions_refused.load(Ordering::Relaxed),
            send_errors: s.forward.send_errors() + s.reverse.send_errors(),
            cut: s.cut.load(Ordering::SeqCst),
        }
    }

    /// Stops the relay (for every clone) and waits until its tasks ended
    /// and its sockets are closed.
    pub async fn shutdown(self) {
        self.inner.stop();
        self.inner.workers.join().await;
    }
}

fn unspecified_like(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

/// A client's NAT entry: its upstream socket, when it last saw traffic
/// (milliseconds since the relay started, either direction) and its
/// reply-receiving task.
struct Session {
    sock: Arc<UdpSocket>,
    last_active: Arc<AtomicU64>,
    task: AbortHandle,
}

fn millis_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

/// Receives from clients, creates sessions, submits to the forward model,
/// and expires sessions idle for `SESSION_IDLE`.
async fn accept_loop(
    shared: Arc<Shared>,
    listen: Arc<UdpSocket>,
    upstream: SocketAddr,
    mut stop: watch::Receiver<()>,
) {
    let epoch = Instant::now();
    let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
    // Session tasks end with this one: dropping the set aborts them.
    let mut session_tasks = JoinSet::new();
    let mut sweep = tokio::time::interval(SESSION_IDLE / 4);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = sweep.tick() => {
                let now = millis_since(epoch);
                let idle = SESSION_IDLE.as_millis() as u64;
                sessions.retain(|client, s| {
                    let keep = now.saturating_sub(s.last_active.load(Ordering::Relaxed)) < idle;
                    if !keep {
                        s.task.abort();
                        shared.sessions_expired.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%client, "netem relay: session expired");
                    }
                    keep
                });
                // Reap finished (aborted) tasks so the set does not grow.
                while session_tasks.try_join_next().is_some() {}
                continue;
            },
            r = listen.readable() => if let Err(e) = r {
                tracing::error!(error = %e, "netem relay: listening socket failed; relay stops");
                return;
            },
        }
        // Drain everything that is ready in one go.
        loop {
            let (n, from) = match listen.try_recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // e.g. ICMP errors reported on the socket; keep going.
                    tracing::debug!(error = %e, "netem relay: receive error");
                    continue;
                }
            };
            let now = Instant::now();
            let sock = match sessions.get(&from) {
                Some(s) => {
                    s.last_active.store(millis_since(epoch), Ordering::Relaxed);
                    s.sock.clone()
                }
                None => {
                    if sessions.len() >= MAX_SESSIONS {
                        shared.sessions_refused.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    match open_session(upstream) {
                        Ok(sock) => {
                            let sock = Arc::new(sock);
                            let last_active = Arc::new(AtomicU64::new(millis_since(epoch)));
                            let task = session_tasks.spawn(session_loop(
                                shared.clone(),
                                sock.clone(),
                                from,
                                (epoch, last_active.clone()),
                                stop.clone(),
                            ));
                            sessions.insert(
                                from,
                                Session {
                                    sock: sock.clone(),
                                    last_active,
                                    task,
                                },
                            );
                            shared.sessions.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(client = %from, "netem relay: new session");
                            sock
                        }
                        Err(e) => {
                            tracing::warn!(client = %from, error = %e, "netem relay: cannot open an upstream socket; dropping datagram");
                            continue;
                        }
                    }
                }
            };
            shared.forward.submit(now, &buf[..n], sock);
        }
    }
}

fn open_session(upstream: SocketAddr) -> io::Result<UdpSocket> {
    let s = udp_socket(unspecified_like(upstream))?;
    // Connected: the kernel filters replies to the upstream address.
    let std_sock = s.into_std()?;
    std_sock.connect(upstream)?;
    UdpSocket::from_std(std_sock)
}

/// Receives replies on one session's upstream socket and submits them to
/// the reverse model, addressed to the session's client.
async fn session_loop(
    shared: Arc<Shared>,
    sock: Arc<UdpSocket>,
    client: SocketAddr,
    (epoch, last_active): (Instant, Arc<AtomicU64>),
    mut stop: watch::Receiver<()>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            r = sock.readable() => if r.is_err() { return },
        }
        loop {
            match sock.try_recv(&mut buf) {
                Ok(n) => {
                    last_active.store(millis_since(epoch), Ordering::Relaxed);
                    shared.reverse.submit(Instant::now(), &buf[..n], client)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // ECONNREFUSED when the upstream is not (yet) listening.
                Err(_) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Under `cfg(test)` sessions expire after 200 ms.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_sessions_expire_and_reopen() {
        let upstream = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        upstream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let relay = UdpRelay::start(RelayConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            upstream: upstream.local_addr().unwrap(),
            forward: LinkParams::ideal(),
            reverse: LinkParams::ideal(),
            seed: 0,
        })
        .await
        .unwrap();
        let to = relay.local_addr();
        let seen_from = tokio::task::spawn_blocking(move || {
            let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut buf = [0u8; 8];
            client.send_to(b"one", to).unwrap();
            let (_, first) = upstream.recv_from(&mut buf).unwrap();
            // Traffic within the idle time keeps the session (well within
            // it: a loaded machine can oversleep by tens of milliseconds).
            std::thread::sleep(Duration::from_millis(40));
            client.send_to(b"two", to).unwrap();
            let (_, second) = upstream.recv_from(&mut buf).unwrap();
            std::thread::sleep(Duration::from_millis(600));
            client.send_to(b"three", to).unwrap();
            let (_, third) = upstream.recv_from(&mut buf).unwrap();
            (first, second, third)
        })
        .await
        .unwrap();
        let (first, second, third) = seen_from;
        assert_eq!(first, second, "an active session kept its upstream port");
        assert_ne!(first, third, "an idle session was not expired");
        let st = relay.stats();
        assert_eq!((st.sessions, st.sessions_expired), (2, 1), "{st:?}");
        relay.shutdown().await;
    }
}
