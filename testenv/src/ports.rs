//! Loopback ports for child processes that bind them themselves.
//!
//! A port that `bind(…:0)` handed out and the test let go is free for any
//! other test's outgoing connection or `bind(…:0)` to take before the child
//! binds it. A port below the kernel's ephemeral range is not handed out
//! that way, so these come from there: tried from a random start, and never
//! twice in this process, so parallel tests do not pick the same one.

use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;

/// The lowest port handed out.
const FROM: u16 = 10_000;

/// A loopback port free for TCP now, below the ephemeral range.
pub fn free_tcp_port() -> u16 {
    free_port(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
}

/// A loopback port free for UDP now, below the ephemeral range.
pub fn free_udp_port() -> u16 {
    free_port(|p| std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok())
}

/// The first port of the kernel's ephemeral range (32768 if unreadable).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768)
}

fn free_port(free: impl Fn(u16) -> bool) -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let below = ephemeral_start();
    let span = u64::from(below.saturating_sub(FROM).max(1));
    let start = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..span {
        let port = FROM + (start.wrapping_add(i) % span) as u16;
        if !given.contains(&port) && free(port) {
            given.push(port);
            return port;
        }
    }
    panic!("no free loopback port in {FROM}..{below}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_free_and_never_repeated() {
        let (a, b, c) = (free_tcp_port(), free_tcp_port(), free_udp_port());
        assert!(a != b && b != c && a != c, "{a} {b} {c}");
        // Below the kernel's ephemeral range, so no bind(…:0) takes them.
        // Whether they are still free a moment later is not asserted: any
        // other process on the machine may bind one in between, which is
        // the race these ports narrow, not one they can rule out.
        let below = ephemeral_start();
        for p in [a, b, c] {
            assert!((FROM..below).contains(&p), "{p} not in {FROM}..{below}");
        }
    }
}
