//! The guest's TCP service on smoltcp over the virtio-net driver.
//!
//! * Echo port (`BootParams::net_port`): one session at a time (a connect
//!   while a session is open is refused with RST; retry); every byte
//!   received is sent back unchanged, in order. The service folds every
//!   echoed byte into a digest ([`abi::virtio::stream_digest`]) per session
//!   and over all sessions, kept in guest memory — so it migrates with the VM.
//! * Status port (echo port + [`abi::virtio::NET_STATUS_PORT_OFFSET`]): on
//!   connect the service sends one line and closes:
//!   `conns=<n> bytes=<n> digest=<16 hex> session_bytes=<n> session_digest=<16 hex>
//!   rx_frames=<n> tx_frames=<n> rx_bad=<n> tx_dropped=<n>\n` (one line)
//!   where `session_*` describe the current (or last) echo session and the
//!   rest are the NIC driver's counters. A client
//!   that kept one session across a migration checks that the echo came back
//!   byte for byte and that `session_digest` equals the digest of what it sent.

use core::fmt::Write;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet, SocketStorage};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};
use wanmig_guest_abi::{self as abi, virtio::stream_digest, virtio::NET_STATUS_PORT_OFFSET};

use super::arena;
use super::decimal::Dec;
use super::error::VirtioError;
use super::net::NetDriver;

/// Echo socket buffer sizes (each direction).
const ECHO_BUF: usize = 16 * 1024;
/// Status socket buffer sizes (each direction).
const STATUS_BUF: usize = 256;
/// Bytes moved from the receive to the send buffer at a time.
const CHUNK: usize = 1024;
/// Chunks moved per step at most (bounds the work of one step).
const CHUNKS_PER_STEP: usize = 8;
/// Minimum guest-clock time between status reports to the VMM.
const REPORT_EVERY_MS: u64 = 1000;

/// What the service has done (all of it lives in guest memory).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Echo sessions accepted.
    pub connections: u64,
    /// Bytes echoed over all sessions.
    pub bytes: u64,
    /// Digest of all echoed bytes, in order, over all sessions.
    pub digest: u64,
    /// Bytes echoed in the current (or last) session.
    pub session_bytes: u64,
    /// Digest of the current (or last) session's bytes.
    pub session_digest: u64,
}

/// The TCP echo + status service.
pub struct TcpService {
    dev: NetDriver,
    iface: Interface,
    sockets: SocketSet<'static>,
    echo: SocketHandle,
    status: SocketHandle,
    port: u16,
    echo_active: bool,
    status_sent: bool,
    stats: ServiceStats,
    reported: ServiceStats,
    last_report_ms: u64,
}

/// A fixed-size line for the status reply.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(core::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

fn tcp_socket(rx: usize, tx: usize) -> Result<tcp::Socket<'static>, VirtioError> {
    let rx = arena::bytes(rx, 16).ok_or(VirtioError::OutOfMemory)?;
    let tx = arena::bytes(tx, 16).ok_or(VirtioError::OutOfMemory)?;
    Ok(tcp::Socket::new(
        tcp::SocketBuffer::new(rx),
        tcp::SocketBuffer::new(tx),
    ))
}

impl TcpService {
    /// Bring up the NIC and the IP stack with the MAC/IP/port from `params`.
    pub fn new(params: &abi::BootParams, now_ms: u64) -> Result<Self, VirtioError> {
        let mut dev = NetDriver::new()?;
        let mac = params.net_mac;
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        config.random_seed = abi::splitmix64(
            &mut (u64::from_le_bytes([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 0])
                ^ now_ms),
        );
        let mut iface = Interface::new(config, &mut dev, Instant::from_millis(now_ms as i64));
        let [a, b, c, d] = params.net_ip;
        let prefix = params.net_prefix_len.min(32);
        iface.update_ip_addrs(|addrs| {
            // One address on an empty list always fits.
            let _ = addrs.push(IpCidr::new(IpAddress::v4(a, b, c, d), prefix));
        });
        let storage = arena::leak([SocketStorage::EMPTY; 2]).ok_or(VirtioError::OutOfMemory)?;
        let mut sockets = SocketSet::new(&mut storage[..]);
        let echo = sockets.add(tcp_socket(ECHO_BUF, ECHO_BUF)?);
        let status = sockets.add(tcp_socket(STATUS_BUF, STATUS_BUF)?);
        Ok(TcpService {
            dev,
            iface,
            sockets,
            echo,
            status,
            port: params.net_port,
            echo_active: false,
            status_sent: false,
            stats: ServiceStats::default(),
            reported: ServiceStats::default(),
            last_report_ms: now_ms,
        })
    }

    /// Poll the stack once and serve both sockets; a bounded amount of work.
    /// Returns whether anything happened (so the caller may idle otherwise).
    pub fn step(&mut self, now_ms: u64) -> bool {
        let now = Instant::from_millis(now_ms as i64);
        let polled = self.iface.poll(now, &mut self.dev, &mut self.sockets);
        let mut busy = !matches!(polled, smoltcp::iface::PollResult::None);
        busy |= self.serve_echo();
        busy |= self.serve_status();
        if busy {
            // Send what the sockets queued without waiting for the next step.
            self.iface.poll(now, &mut self.dev, &mut self.sockets);
        }
        if self.stats != self.reported
            && now_ms.saturating_sub(self.last_report_ms) >= REPORT_EVERY_MS
        {
            self.report(now_ms);
        }
        busy
    }

    fn report(&mut self, now_ms: u64) {
        let s = self.stats;
        crate::control::report(
            abi::REPORT_NET_STATUS,
            [s.connections, s.bytes, s.digest, s.session_bytes],
        );
        self.reported = s;
        self.last_report_ms = now_ms;
    }

    fn serve_echo(&mut self) -> bool {
        let sock = self.sockets.get_mut::<tcp::Socket>(self.echo);
        let mut busy = false;
        if !sock.is_open() || sock.state() == tcp::State::TimeWait {
            sock.abort();
            if sock.listen(self.port).is_err() {
                return false;
            }
            self.echo_active = false;
        }
        if sock.is_active() && !self.echo_active && sock.state() != tcp::State::SynReceived {
            self.echo_active = true;
            self.stats.connections += 1;
            self.stats.session_bytes = 0;
            self.stats.session_digest = 0;
            busy = true;
        }
        // Move up to CHUNKS_PER_STEP chunks from the receive to the send buffer.
        for _ in 0..CHUNKS_PER_STEP {
            let room = sock.send_capacity() - sock.send_queue();
            if !(sock.can_recv() && sock.can_send() && room > 0) {
                break;
            }
            let mut tmp = [0u8; CHUNK];
            let want = room.min(CHUNK);
            let Ok(n) = sock.recv_slice(&mut tmp[..want]) else {
                break;
            };
            // `n <= room`, so the whole chunk fits in the send buffer.
            let sent = sock.send_slice(&tmp[..n]).unwrap_or(0);
            let bytes = &tmp[..sent];
            self.stats.bytes += sent as u64;
            self.stats.session_bytes += sent as u64;
            self.stats.digest = stream_digest(self.stats.digest, bytes);
            self.stats.session_digest = stream_digest(self.stats.session_digest, bytes);
            if n == 0 {
                break;
            }
            busy = true;
        }
        // The client finished sending and everything was echoed: close our half.
        if sock.state() == tcp::State::CloseWait && !sock.can_recv() {
            sock.close();
            busy = true;
        }
        busy
    }

    fn serve_status(&mut self) -> bool {
        let stats = self.stats;
        let sock = self.sockets.get_mut::<tcp::Socket>(self.status);
        if !sock.is_open() || sock.state() == tcp::State::TimeWait {
            sock.abort();
            if sock
                .listen(self.port.wrapping_add(NET_STATUS_PORT_OFFSET))
                .is_err()
            {
                return false;
            }
            self.status_sent = false;
        }
        if sock.may_send() && !self.status_sent {
            let c = self.dev.counters();
            let mut line = Line {
                buf: [0; 256],
                len: 0,
            };
            let _ = writeln!(
                line,
                "conns={} bytes={} digest={:016x} session_bytes={} session_digest={:016x} \
                 rx_frames={} tx_frames={} rx_bad={} tx_dropped={}",
                Dec(stats.connections),
                Dec(stats.bytes),
                stats.digest,
                Dec(stats.session_bytes),
                stats.session_digest,
                Dec(c.rx_frames),
                Dec(c.tx_frames),
                Dec(c.rx_bad),
                Dec(c.tx_dropped)
            );
            if sock.send_slice(&line.buf[..line.len]) == Ok(line.len) {
                self.status_sent = true;
                sock.close();
                return true;
            }
        }
        false
    }
}
