//! WAN tuning of QUIC: turns a peer's link hints (bandwidth, RTT, MTU) and
//! the transport settings into a quinn `TransportConfig`.
//!
//! [`WindowPlan::for_link`] is the pure computation (unit-tested); the
//! `transport_config` functions apply it to quinn.

use std::sync::Arc;
use std::time::Duration;

use quinn::congestion::{BbrConfig, CubicConfig, NewRenoConfig};
use quinn::{IdleTimeout, MtuDiscoveryConfig, TransportConfig, VarInt};

use crate::config::{Congestion, LinkHints, TransportSettings};

const MIB: u64 = 1 << 20;
/// Windows never go below this (a LAN-sized default that still ramps fast).
const MIN_WINDOW: u64 = 4 * MIB;
/// Nor above this (bounds the memory one peer can pin).
const MAX_WINDOW: u64 = 512 * MIB;
/// Per-stream window in bandwidth-delay products. Measured on the emulated
/// 250 Mbit/s × 100 ms link (benches/wan_goodput, BBR): 2 × BDP capped the
/// goodput at ~78 % (the bottleneck queue inflates the RTT up to 2 × and
/// window updates lag); 3 × gives 83-90 %. Not more: at 4 × and 8 × a burst
/// of bottleneck drops during BBR's startup left more than quinn-proto's
/// 1024 buffered chunks in one stream, and the receiver aborted the whole
/// connection ("too many gaps in stream buffer").
const STREAM_BDP_MULTIPLE: u64 = 3;
/// Connection window: room for two full-speed streams.
const CONN_BDP_MULTIPLE: u64 = 2 * STREAM_BDP_MULTIPLE;
/// IPv6 + UDP header bytes: the conservative per-packet overhead.
const IP_UDP_OVERHEAD: u32 = 48;

/// Window and buffer sizes derived from a link's bandwidth-delay product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowPlan {
    /// Bandwidth-delay product in bytes.
    pub bdp: u64,
    /// Per-stream flow-control window (a multiple of the BDP so one stream
    /// fills the link even while the bottleneck queue inflates the RTT).
    pub stream_receive_window: u64,
    /// Connection flow-control window (room for several full streams).
    pub receive_window: u64,
    /// How much unacknowledged data we buffer to send.
    pub send_window: u64,
    /// QUIC DATAGRAM buffers (overlay frames), each way.
    pub datagram_buffer: usize,
    /// Upper bound for path MTU discovery (UDP payload bytes).
    pub mtu_upper_bound: u16,
}

impl WindowPlan {
    pub fn for_link(hints: &LinkHints) -> Self {
        let bdp = (hints.bandwidth_bps / 8.0 * hints.rtt.as_secs_f64()).ceil() as u64;
        let clamp = |v: u64| v.clamp(MIN_WINDOW, MAX_WINDOW);
        let stream = clamp(bdp.saturating_mul(STREAM_BDP_MULTIPLE));
        let conn = clamp(bdp.saturating_mul(CONN_BDP_MULTIPLE)).max(stream);
        let mtu = hints.mtu.saturating_sub(IP_UDP_OVERHEAD).clamp(1200, 65527);
        WindowPlan {
            bdp,
            stream_receive_window: stream,
            receive_window: conn,
            send_window: conn,
            datagram_buffer: bdp.clamp(MIB, 64 * MIB) as usize,
            mtu_upper_bound: mtu as u16,
        }
    }

    /// The plan that serves every link in `hints` (largest windows, largest
    /// MTU bound: discovery backs off where a path is smaller). Used by the
    /// accepting side, which learns who dialled only after the handshake.
    pub fn for_links<'a>(hints: impl IntoIterator<Item = &'a LinkHints>) -> Self {
        let mut out = WindowPlan::for_link(&LinkHints {
            bandwidth_bps: 0.0,
            rtt: Duration::ZERO,
            mtu: 1280,
        });
        for h in hints {
            let p = WindowPlan::for_link(h);
            out = WindowPlan {
                bdp: out.bdp.max(p.bdp),
                stream_receive_window: out.stream_receive_window.max(p.stream_receive_window),
                receive_window: out.receive_window.max(p.receive_window),
                send_window: out.send_window.max(p.send_window),
                datagram_buffer: out.datagram_buffer.max(p.datagram_buffer),
                mtu_upper_bound: out.mtu_upper_bound.max(p.mtu_upper_bound),
            };
        }
        out
    }
}

fn varint(v: u64) -> VarInt {
    VarInt::from_u64(v).unwrap_or(VarInt::MAX)
}

/// Builds the quinn transport config for a plan, an initial RTT guess and
/// the liveness/congestion settings.
pub fn transport_config(
    plan: &WindowPlan,
    initial_rtt: Duration,
    s: &TransportSettings,
) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.stream_receive_window(varint(plan.stream_receive_window))
        .receive_window(varint(plan.receive_window))
        .send_window(plan.send_window)
        .initial_rtt(initial_rtt)
        .datagram_receive_buffer_size(Some(plan.datagram_buffer))
        .datagram_send_buffer_size(plan.datagram_buffer)
        .keep_alive_interval(Some(s.keep_alive))
        .max_concurrent_bidi_streams(varint(1024))
        .max_concurrent_uni_streams(varint(1024));
    let idle = IdleTimeout::try_from(s.idle_timeout)
        .unwrap_or_else(|_| IdleTimeout::from(VarInt::from_u32(5_000)));
    t.max_idle_timeout(Some(idle));
    let mut mtu = MtuDiscoveryConfig::default();
    mtu.upper_bound(plan.mtu_upper_bound);
    t.mtu_discovery_config(Some(mtu));
    match s.congestion {
        Congestion::Bbr => t.congestion_controller_factory(Arc::new(BbrConfig::default())),
        Congestion::Cubic => t.congestion_controller_factory(Arc::new(CubicConfig::default())),
        Congestion::NewReno => t.congestion_controller_factory(Arc::new(NewRenoConfig::default())),
    };
    t
}

/// Transport config for dialling one peer.
pub fn for_peer(hints: &LinkHints, s: &TransportSettings) -> TransportConfig {
    transport_config(&WindowPlan::for_link(hints), hints.rtt, s)
}

/// Transport config for accepting from any of the configured peers.
pub fn for_server<'a>(
    hints: impl IntoIterator<Item = &'a LinkHints> + Clone,
    s: &TransportSettings,
) -> TransportConfig {
    let rtt = hints
        .clone()
        .into_iter()
        .map(|h| h.rtt)
        .max()
        .unwrap_or(LinkHints::default().rtt);
    transport_config(&WindowPlan::for_links(hints), rtt, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wan(mbit: f64, rtt_ms: u64) -> LinkHints {
        LinkHints {
            bandwidth_bps: mbit * 1e6,
            rtt: Duration::from_millis(rtt_ms),
            mtu: 1500,
        }
    }

    #[test]
    fn windows_cover_twice_the_bdp_of_a_long_fat_link() {
        // 250 Mbit/s × 100 ms = 3.125 MB.
        let p = WindowPlan::for_link(&wan(250.0, 100));
        assert_eq!(p.bdp, 3_125_000);
        assert!(p.stream_receive_window >= 2 * p.bdp);
        assert!(p.receive_window >= p.stream_receive_window);
        assert!(p.send_window >= 2 * p.bdp);
        assert_eq!(p.mtu_upper_bound, 1452);
        assert_eq!(p.stream_receive_window, STREAM_BDP_MULTIPLE * p.bdp);
        // 1 Gbit/s × 20 ms is 2.5 MB: windows grow with it, up to the cap.
        let mid = WindowPlan::for_link(&wan(1_000.0, 20));
        assert_eq!(mid.stream_receive_window, STREAM_BDP_MULTIPLE * 2_500_000);
        let big = WindowPlan::for_link(&wan(10_000.0, 200));
        assert_eq!(big.stream_receive_window, MAX_WINDOW);
        assert_eq!(big.receive_window, MAX_WINDOW);
    }

    #[test]
    fn small_links_get_the_minimum_window_and_jumbo_paths_a_larger_mtu() {
        let p = WindowPlan::for_link(&wan(10.0, 1));
        assert_eq!(p.stream_receive_window, MIN_WINDOW);
        assert_eq!(p.datagram_buffer as u64, MIB);
        let jumbo = WindowPlan::for_link(&LinkHints {
            mtu: 9000,
            ..wan(10.0, 1)
        });
        assert_eq!(jumbo.mtu_upper_bound, 8952);
    }

    #[test]
    fn server_plan_takes_the_largest_of_all_links() {
        let links = [
            wan(10.0, 5),
            wan(250.0, 100),
            LinkHints {
                mtu: 9000,
                ..wan(1.0, 1)
            },
        ];
        let p = WindowPlan::for_links(links.iter());
        assert_eq!(p.bdp, 3_125_000);
        assert_eq!(p.mtu_upper_bound, 8952);
    }
}
