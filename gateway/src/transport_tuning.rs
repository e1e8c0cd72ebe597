//! WAN tuning of QUIC: turns a peer's link hints (bandwidth, RTT, MTU) and
//! the transport settings into a quinn `TransportConfig`.
//!
//! [`WindowPlan::for_link`] is the pure computation (unit-tested); the
//! `transport_config` functions apply it to quinn, wrapping the congestion
//! controller in [`CappedController`] so the window (and with it quinn's
//! pacing rate) never exceeds what the link can hold.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{
    BbrConfig, Controller, ControllerFactory, ControllerMetrics, CubicConfig, NewRenoConfig,
};
use quinn::{IdleTimeout, MtuDiscoveryConfig, TransportConfig, VarInt};
use quinn_proto::RttEstimator;

use crate::config::{Congestion, LinkHints, TransportSettings};

const MIB: u64 = 1 << 20;
/// Windows never go below this (a LAN-sized default that still ramps fast).
const MIN_WINDOW: u64 = 4 * MIB;
/// Nor above this (bounds the memory one peer can pin).
const MAX_WINDOW: u64 = 512 * MIB;
/// Per-stream window in bandwidth-delay products: above the congestion
/// window cap (1.5 × BDP) with room for the receiver's window updates to
/// lag an RTT, so one stream is limited by the congestion controller, not
/// by flow control. A smaller window caps a stream's goodput below the
/// link rate; a much larger one lets a burst of bottleneck drops leave
/// more gaps in one stream than quinn-proto buffers (1024 chunks), and the
/// receiver closes the connection. `docs/tuning.md` (Transport) has the
/// measurements.
const STREAM_BDP_MULTIPLE: u64 = 3;
/// Connection window: room for two full-speed streams.
const CONN_BDP_MULTIPLE: u64 = 2 * STREAM_BDP_MULTIPLE;
/// Congestion window cap in bandwidth-delay products: the path holds one
/// BDP in flight plus what its bottleneck queue absorbs. quinn paces at
/// 1.25 × window / RTT, so an uncapped window means no pacing at all; and
/// quinn 0.11's BBR counts flow-control-blocked rounds as app-limited, so
/// it never leaves startup and its window grows without bound. The sender
/// would then burst whole flow-control windows into the bottleneck queue
/// and lose packets to its overflow.
const CWND_BDP_MULTIPLE_PERCENT: u64 = 150;
/// The congestion window cap never goes below this (44 full packets; also
/// the emulator's smallest bottleneck queue). It is separate from
/// [`MIN_WINDOW`]: a 4 MiB floor would put the cap far above 1.5 × BDP on
/// every link whose BDP is under 2.8 MB (100 Mbit/s × 100 ms is 1.25 MB),
/// and BBR's startup would overfill a one-BDP bottleneck queue.
const MIN_CWND_CAP: u64 = 64 << 10;
/// Initial congestion window as a fraction (1/n) of the link's BDP, sent
/// paced (1.25 × window / the hinted RTT), not as a burst. The link hints
/// are the operator's statement of the path, like a route's `initcwnd` for
/// kernel TCP. It matters for every migration, not only the connection's
/// first: the gateways' connection idles between migrations, BBR does not
/// grow its window while application-limited, so each migration starts
/// from here. A smaller start leaves BBR ramping for a large part of a
/// short migration; a whole BDP gains little over half, and half leaves
/// room for hints that overstate the path.
const INITIAL_WINDOW_BDP_DIVISOR: u64 = 2;
/// quinn's own initial window (10 × 1472 bytes): never start below it.
const QUINN_INITIAL_WINDOW: u64 = 14_720;
/// IPv6 + UDP header bytes: the conservative per-packet overhead.
const IP_UDP_OVERHEAD: u32 = 48;

/// Live migrations one peer may run towards this gateway at once (one
/// stream each). More queue at the sender: quinn's `open_bi` waits for the
/// next free stream, so a burst of migrations is served in turn, not
/// refused.
const PEER_MIGRATIONS: u64 = 16;
/// Follow-on disk copies one peer may pull from this gateway at once, each
/// with an on-demand and a background lane (a stream each). Copies outlive
/// their migration and go the other way, so they get a budget of their own.
const PEER_DISK_COPIES: u64 = 48;
/// Streams of a disk copy.
const STREAMS_PER_DISK_COPY: u64 = 2;
/// The peer's overlay control stream, a goodput probe, and short-lived
/// streams (a disk's size query, a migration's `Resolve` after a link cut),
/// with room to spare.
const PEER_CONTROL_STREAMS: u64 = 8;
/// Bidirectional streams one peer may have open to this gateway. Every
/// stream may buffer up to one whole frame of its kind (a migration batch,
/// a storage frame, an overlay control message) before this gateway acts on
/// it, so this bounds what one peer can make this gateway hold; a stream
/// over the limit waits at the peer until one of its streams ends.
pub const PEER_BIDI_STREAMS: u64 =
    PEER_MIGRATIONS + PEER_DISK_COPIES * STREAMS_PER_DISK_COPY + PEER_CONTROL_STREAMS;
/// Unidirectional streams one peer may open: gateways use none, so a peer
/// gets no credit for them at all.
pub const PEER_UNI_STREAMS: u64 = 0;

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
    /// Most bytes the congestion controller may keep in flight.
    pub congestion_window_cap: u64,
    /// The congestion controller's first window.
    pub initial_window: u64,
}

impl WindowPlan {
    pub fn for_link(hints: &LinkHints) -> Self {
        let bdp = (hints.bandwidth_bps / 8.0 * hints.rtt.as_secs_f64()).ceil() as u64;
        let clamp = |v: u64| v.clamp(MIN_WINDOW, MAX_WINDOW);
        let stream = clamp(bdp.saturating_mul(STREAM_BDP_MULTIPLE));
        let conn = clamp(bdp.saturating_mul(CONN_BDP_MULTIPLE)).max(stream);
        let mtu = hints.mtu.saturating_sub(IP_UDP_OVERHEAD).clamp(1200, 65527);
        let cwnd_cap =
            (bdp.saturating_mul(CWND_BDP_MULTIPLE_PERCENT) / 100).clamp(MIN_CWND_CAP, MAX_WINDOW);
        WindowPlan {
            bdp,
            stream_receive_window: stream,
            receive_window: conn,
            send_window: conn,
            datagram_buffer: bdp.clamp(MIB, 64 * MIB) as usize,
            mtu_upper_bound: mtu as u16,
            congestion_window_cap: cwnd_cap,
            initial_window: (bdp / INITIAL_WINDOW_BDP_DIVISOR)
                .max(QUINN_INITIAL_WINDOW)
                .min(cwnd_cap),
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
                congestion_window_cap: out.congestion_window_cap.max(p.congestion_window_cap),
                initial_window: out.initial_window.max(p.initial_window),
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
        .max_concurrent_bidi_streams(varint(PEER_BIDI_STREAMS))
        .max_concurrent_uni_streams(varint(PEER_UNI_STREAMS));
    let idle = IdleTimeout::try_from(s.idle_timeout)
        .unwrap_or_else(|_| IdleTimeout::from(VarInt::from_u32(5_000)));
    t.max_idle_timeout(Some(idle));
    let mut mtu = MtuDiscoveryConfig::default();
    mtu.upper_bound(plan.mtu_upper_bound);
    t.mtu_discovery_config(Some(mtu));
    let inner: Arc<dyn ControllerFactory + Send + Sync> = match s.congestion {
        Congestion::Bbr => Arc::new({
            let mut c = BbrConfig::default();
            c.initial_window(plan.initial_window);
            c
        }),
        Congestion::Cubic => Arc::new({
            let mut c = CubicConfig::default();
            c.initial_window(plan.initial_window);
            c
        }),
        Congestion::NewReno => Arc::new({
            let mut c = NewRenoConfig::default();
            c.initial_window(plan.initial_window);
            c
        }),
    };
    t.congestion_controller_factory(Arc::new(CappedFactory {
        inner,
        cap: plan.congestion_window_cap,
    }));
    t
}

/// Builds [`CappedController`]s around another controller factory.
pub struct CappedFactory {
    pub inner: Arc<dyn ControllerFactory + Send + Sync>,
    pub cap: u64,
}

impl ControllerFactory for CappedFactory {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(CappedController {
            inner: self.inner.clone().build(now, current_mtu),
            cap: self.cap,
        })
    }
}

/// A congestion controller whose window is the inner controller's, at most
/// `cap` bytes. Everything else is the inner controller's decision. The
/// flow-control windows already bound what one peer keeps in flight by the
/// link hints; the cap makes the congestion window agree, which keeps
/// quinn's window-derived pacing near the link rate instead of bursting.
pub struct CappedController {
    inner: Box<dyn Controller>,
    cap: u64,
}

impl Controller for CappedController {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number)
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.inner.on_ack(now, sent, bytes, app_limited, rtt)
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked)
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.inner
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes)
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu)
    }

    fn window(&self) -> u64 {
        self.inner.window().min(self.cap)
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut m = self.inner.metrics();
        m.congestion_window = self.window();
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(CappedController {
            inner: self.inner.clone_box(),
            cap: self.cap,
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window().min(self.cap)
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
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
    fn congestion_window_is_capped_near_the_bdp_and_starts_at_half_of_it() {
        let p = WindowPlan::for_link(&wan(250.0, 100));
        // 1.5 × 3.125 MB: one BDP in the pipe, half a BDP queued.
        assert_eq!(p.congestion_window_cap, 4_687_500);
        assert!(p.congestion_window_cap < p.stream_receive_window);
        assert_eq!(p.initial_window, 1_562_500);
        // A tiny link still starts at quinn's default and never above the cap.
        let tiny = WindowPlan::for_link(&wan(1.0, 1));
        assert_eq!(tiny.initial_window, QUINN_INITIAL_WINDOW);
        assert_eq!(tiny.congestion_window_cap, MIN_CWND_CAP);
        // Below 2.8 MB of BDP the cap follows the BDP, not the 4 MiB
        // flow-control floor (which would overfill a one-BDP queue).
        let slow = WindowPlan::for_link(&wan(100.0, 100));
        assert_eq!(slow.congestion_window_cap, 1_875_000);
        assert_eq!(slow.stream_receive_window, 3_750_000.max(MIN_WINDOW));
        let big = WindowPlan::for_link(&wan(10_000.0, 400));
        assert_eq!(big.congestion_window_cap, MAX_WINDOW);
        assert!(big.initial_window <= big.congestion_window_cap);
    }

    /// A real quinn controller behind the wrapper: the window it reports
    /// (which quinn paces by) is the inner window, at most the cap.
    /// (`on_ack` needs a quinn `RttEstimator`, which only quinn can build;
    /// losses drive the inner window here, the bench drives growth.)
    #[test]
    fn capped_controller_reports_the_smaller_of_inner_window_and_cap() {
        let now = Instant::now();
        let cap = 100_000;
        let mut inner = NewRenoConfig::default();
        inner.initial_window(1_000_000);
        let factory = Arc::new(CappedFactory {
            inner: Arc::new(inner),
            cap,
        });
        let mut c = factory.build(now, 1200);
        assert_eq!(c.initial_window(), cap);
        assert_eq!(c.window(), cap);
        assert_eq!(c.metrics().congestion_window, cap);
        assert_eq!(c.clone_box().window(), cap);
        // Each loss (of a packet sent after the previous recovery began)
        // halves NewReno's window: 500k, 250k, 125k, then 62.5k < cap.
        let mut windows = Vec::new();
        for i in 1..=4u64 {
            let t = now + Duration::from_millis(10 * i);
            c.on_congestion_event(t, t, false, 1200);
            windows.push(c.window());
        }
        assert_eq!(windows[..3], [cap, cap, cap]);
        assert_eq!(windows[3], 62_500);
        assert_eq!(c.metrics().congestion_window, 62_500);
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
