//! Loopback test fixtures for the relay tests: an echo server, a sink that
//! records sequence numbers and arrival times, and a paced sender, all on
//! plain blocking sockets in their own threads so they measure real time
//! independently of the relay's runtime.

#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Real-socket tests measure time; running them one at a time keeps them
/// from disturbing each other on a 2-core machine.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A thread that echoes every datagram back to its sender until dropped.
pub struct Echo {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    pub fn start() -> Echo {
        let sock = UdpSocket::bind(loopback()).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        Echo {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Datagrams a [`Sink`] received: (sequence number, bytes, arrival).
pub type Arrivals = Vec<(u64, usize, Instant)>;

/// A thread that records sequence-numbered datagrams until it has been
/// idle for `idle`.
pub struct Sink {
    pub addr: SocketAddr,
    thread: JoinHandle<Arrivals>,
}

impl Sink {
    pub fn start(idle: Duration) -> Sink {
        let sock = UdpSocket::bind(loopback()).unwrap();
        socket2::SockRef::from(&sock)
            .set_recv_buffer_size(4 << 20)
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let thread = std::thread::spawn(move || {
            // Wait long for the first datagram, then stop after `idle`.
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut got = Vec::new();
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = sock.recv(&mut buf) {
                let now = Instant::now();
                if n >= 8 {
                    let seq = u64::from_be_bytes(buf[..8].try_into().unwrap());
                    got.push((seq, n, now));
                }
                sock.set_read_timeout(Some(idle)).unwrap();
            }
            got
        });
        Sink { addr, thread }
    }

    pub fn finish(self) -> Arrivals {
        self.thread.join().unwrap()
    }
}

/// Sends `count` datagrams of `size` bytes (sequence number first) to `to`
/// at `pps` packets per second, paced against the wall clock. Returns the
/// socket it sent from.
pub fn send_paced(to: SocketAddr, count: u64, size: usize, pps: f64) -> UdpSocket {
    let sock = UdpSocket::bind(loopback()).unwrap();
    socket2::SockRef::from(&sock)
        .set_send_buffer_size(4 << 20)
        .unwrap();
    let mut buf = vec![0xabu8; size.max(8)];
    let start = Instant::now();
    let mut seq = 0;
    while seq < count {
        let owed = ((start.elapsed().as_secs_f64() * pps) as u64 + 1).min(count);
        while seq < owed {
            buf[..8].copy_from_slice(&seq.to_be_bytes());
            // Loopback send errors (ENOBUFS) just count as not sent.
            let _ = sock.send_to(&buf, to);
            seq += 1;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    sock
}

/// Runs `f` on a blocking thread so the relay's runtime stays free.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// Mean of round trips of `n` pings through `relay`, one every `gap`.
pub fn ping_rtts(relay: SocketAddr, n: usize, gap: Duration) -> Vec<Duration> {
    let sock = UdpSocket::bind(loopback()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 64];
    for i in 0..n as u64 {
        let t = Instant::now();
        sock.send_to(&i.to_be_bytes(), relay).unwrap();
        loop {
            match sock.recv(&mut buf) {
                Ok(8) if buf[..8] == i.to_be_bytes() => {
                    out.push(t.elapsed());
                    break;
                }
                Ok(_) => continue,
                Err(e) => panic!("ping {i} got no reply: {e}"),
            }
        }
        std::thread::sleep(gap);
    }
    out
}

/// Four standard deviations of a binomial count.
pub fn four_sigma(n: f64, p: f64) -> f64 {
    4.0 * (n * p * (1.0 - p)).sqrt()
}
