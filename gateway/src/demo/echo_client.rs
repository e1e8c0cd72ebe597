//! The demo's TCP client: a smoltcp host on an in-process overlay port that
//! holds one TCP session to the guest's echo service, streams a
//! deterministic byte sequence through it and checks that every echoed
//! byte comes back complete and in order — before, during and after the
//! VM's move. It runs on its own thread (smoltcp is synchronous) and paces
//! itself so the session carries steady traffic without starving the guest.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};
use wanmig_overlay::port::ChannelPort;

/// The byte at position `i` of the stream the client sends.
pub fn stream_byte(i: u64) -> u8 {
    let x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x >> 56) as u8 ^ (i as u8)
}

/// Where the client lives and whom it talks to.
#[derive(Debug, Clone)]
pub struct EchoClientConfig {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub server: Ipv4Addr,
    pub port: u16,
    /// Bytes per second the client offers at most.
    pub rate: u64,
}

/// What the session did, as the client saw it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EchoStats {
    /// The TCP handshake completed.
    pub connected: bool,
    /// Bytes written into the session.
    pub bytes_sent: u64,
    /// Echoed bytes received and equal to what was sent, in order.
    pub bytes_verified: u64,
    /// Echoed bytes that differed from what was sent (must stay 0).
    pub mismatched: u64,
    /// The session was reset or closed by the far end.
    pub reset: bool,
    /// Longest stretch without a verified byte while data was outstanding,
    /// milliseconds (covers the migration's downtime and MAC move).
    pub longest_stall_ms: u64,
    /// Why the client stopped early, if it did.
    pub error: Option<String>,
}

/// A running client; [`EchoClient::stop`] ends it and returns its stats.
pub struct EchoClient {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<EchoStats>>,
    thread: Option<JoinHandle<()>>,
}

impl EchoClient {
    /// Starts the client on `port` (the host end of an overlay port).
    pub fn start(cfg: EchoClientConfig, port: ChannelPort) -> std::io::Result<EchoClient> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(EchoStats::default()));
        let (s, st) = (stop.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name("demo-echo-client".into())
            .spawn(move || run(cfg, port, &s, &st))?;
        Ok(EchoClient {
            stop,
            stats,
            thread: Some(thread),
        })
    }

    /// A snapshot of the session's counters.
    pub fn stats(&self) -> EchoStats {
        lock(&self.stats).clone()
    }

    /// Waits until `verified` bytes have come back (or the timeout, or an
    /// error); returns whether they did.
    pub fn wait_verified(&self, verified: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let s = self.stats();
            if s.bytes_verified >= verified {
                return true;
            }
            if s.reset || s.error.is_some() || s.mismatched > 0 {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Stops the client and returns the final counters.
    pub fn stop(mut self) -> EchoStats {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.stats()
    }
}

impl Drop for EchoClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// smoltcp device over the port's frame queues.
struct PortDevice {
    rx: VecDeque<Bytes>,
    tx: Vec<Vec<u8>>,
}

struct Rx(Bytes);
struct Tx<'a>(&'a mut Vec<Vec<u8>>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; len];
        let r = f(&mut frame);
        self.0.push(frame);
        r
    }
}

impl Device for PortDevice {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let f = self.rx.pop_front()?;
        Some((Rx(f), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

fn run(cfg: EchoClientConfig, mut port: ChannelPort, stop: &AtomicBool, stats: &Mutex<EchoStats>) {
    let fail = |why: String| lock(stats).error = Some(why);
    let epoch = Instant::now();
    let now = || smoltcp::time::Instant::from_micros(epoch.elapsed().as_micros() as i64);
    let mut dev = PortDevice {
        rx: VecDeque::new(),
        tx: Vec::new(),
    };
    let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(cfg.mac)));
    config.random_seed = 0x00de_e0c1;
    let mut iface = Interface::new(config, &mut dev, now());
    iface.update_ip_addrs(|addrs| {
        let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(cfg.ip), cfg.prefix_len));
    });
    let mut sockets = SocketSet::new(Vec::new());
    let socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 64 * 1024]),
        tcp::SocketBuffer::new(vec![0; 64 * 1024]),
    );
    let handle = sockets.add(socket);
    // The guest may not listen yet when the client starts: a refused or
    // timed-out attempt before the session was ever up is retried from a
    // fresh local port.
    let mut local_port = 49152u16;
    let mut last_attempt = Instant::now();
    if let Err(e) = sockets.get_mut::<tcp::Socket>(handle).connect(
        iface.context(),
        (IpAddress::Ipv4(cfg.server), cfg.port),
        local_port,
    ) {
        fail(format!("cannot start the TCP connection: {e}"));
        return;
    }

    let mut sent = 0u64;
    let mut verified = 0u64;
    let mut was_open = false;
    let mut last_progress = Instant::now();
    let mut scratch = vec![0u8; 16 * 1024];
    // Keep the session busy but modest: outstanding bytes are capped, and
    // the offered rate follows `cfg.rate`.
    let max_outstanding = 32 * 1024u64;
    while !stop.load(Ordering::Relaxed) {
        let mut busy = false;
        while let Ok(f) = port.rx.try_recv() {
            dev.rx.push_back(f);
            busy = true;
        }
        iface.poll(now(), &mut dev, &mut sockets);
        for f in dev.tx.drain(..) {
            // A full switch queue drops the frame, as a congested link would;
            // TCP retransmits.
            let _ = port.tx.try_send(Bytes::from(f));
        }

        let sock = sockets.get_mut::<tcp::Socket>(handle);
        if sock.may_send() && sock.may_recv() {
            if !was_open {
                was_open = true;
                lock(stats).connected = true;
                last_progress = Instant::now();
            }
        } else if was_open && !sock.is_open() {
            lock(stats).reset = true;
            break;
        } else if !was_open
            && !sock.is_open()
            && last_attempt.elapsed() > Duration::from_millis(200)
        {
            local_port = local_port.wrapping_add(1).max(49152);
            last_attempt = Instant::now();
            if let Err(e) = sock.connect(
                iface.context(),
                (IpAddress::Ipv4(cfg.server), cfg.port),
                local_port,
            ) {
                fail(format!("cannot start the TCP connection: {e}"));
                break;
            }
        }
        if was_open {
            let allowed = (epoch.elapsed().as_secs_f64() * cfg.rate as f64) as u64;
            let budget = allowed
                .saturating_sub(sent)
                .min(max_outstanding.saturating_sub(sent - verified))
                .min(scratch.len() as u64) as usize;
            if budget > 0 && sock.can_send() {
                for (k, b) in scratch[..budget].iter_mut().enumerate() {
                    *b = stream_byte(sent + k as u64);
                }
                if let Ok(n) = sock.send_slice(&scratch[..budget]) {
                    sent += n as u64;
                    busy |= n > 0;
                }
            }
            while sock.can_recv() {
                let Ok(n) = sock.recv_slice(&mut scratch) else {
                    break;
                };
                if n == 0 {
                    break;
                }
                let bad = scratch[..n]
                    .iter()
                    .enumerate()
                    .filter(|(k, b)| **b != stream_byte(verified + *k as u64))
                    .count() as u64;
                verified += n as u64;
                last_progress = Instant::now();
                busy = true;
                let mut s = lock(stats);
                s.mismatched += bad;
            }
            let mut s = lock(stats);
            s.bytes_sent = sent;
            s.bytes_verified = verified;
            if sent > verified {
                let stall = last_progress.elapsed().as_millis() as u64;
                s.longest_stall_ms = s.longest_stall_ms.max(stall);
            } else {
                last_progress = Instant::now();
            }
        }
        if !busy {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::stream_byte;

    #[test]
    fn the_stream_is_not_periodic_over_short_spans() {
        let first: Vec<u8> = (0..4096).map(stream_byte).collect();
        let later: Vec<u8> = (4096..8192).map(stream_byte).collect();
        assert_ne!(first, later);
        assert!(first.iter().any(|b| *b != first[0]));
    }
}
