//! The source relay's in-flight windows: how many bytes it lets be sent and
//! not yet acknowledged by the destination relay, sized from the measured
//! delivery rate and ack round trip, and the gain schedule over the copy.
//!
//! QUIC's own windows are several bandwidth-delay products (for goodput);
//! without a window of its own the relay would let the shim fill them at
//! memory speed, the shim's planner would see a bandwidth the WAN does not
//! have, and seconds' worth of pages would be left to drain while the VM
//! is paused.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use wanmig_codec::PAGE_SIZE;

/// Smallest in-flight window of batch bytes (2 MiB: 64 ms at 250 Mbit/s).
/// It must exceed twice what the destination leaves unacknowledged (its
/// ack cadence; the gateway session asserts it).
pub const MIN_WINDOW: u64 = 2 << 20;
/// Largest in-flight window of batch bytes.
pub const MAX_WINDOW: u64 = 256 << 20;
/// Smallest in-flight window of guest bytes (4096 pages: about 60 ms of
/// work for a destination applying 70 000 pages/s). It must exceed twice
/// what can stay unacknowledged, or the source would wait for an ack that
/// never comes (the gateway session asserts it against its ack cadence).
pub const MIN_GUEST_WINDOW: u64 = 16 << 20;
/// Largest in-flight window of guest bytes.
pub const MAX_GUEST_WINDOW: u64 = 1 << 30;

/// The window is this many bandwidth-delay products near a pause: room
/// for the rate to grow by a quarter each round trip while the link has
/// room, and a standing queue of at most a quarter of a round trip once it
/// has none, so what is in flight when the shim pauses drains in about one
/// round trip (the shim's planner does not see it).
pub const WINDOW_GAIN: f64 = 1.25;
/// The gain during the bulk of round 0 (BBR's window gain), far from any
/// pause. The shortest round trip leaves out delays that come only with
/// load (the destination relay decoding behind, CPU shared with the VMs);
/// with a gain of [`WINDOW_GAIN`], a round trip a quarter longer than the
/// shortest makes the window limit itself (about 140 Mbit/s of a
/// 250 Mbit/s link at 100 ms). Twice the BDP keeps growing while acks come
/// within two shortest round trips. It ends before round 0 does: a second
/// BDP in flight at the pause drains while the VM is paused, about one RTT
/// of downtime.
pub const BULK_GAIN: f64 = 2.0;
/// Delivery-rate samples (each at least one RTT long) the window takes the
/// highest of.
pub const RATE_SAMPLES: usize = 8;
/// Sends remembered for round-trip samples; older ones are dropped (the
/// round trip is then sampled from the newer ones).
const MAX_SENDS: usize = 4096;

/// Where the copy is, as the source relay sees it: what the window gain
/// depends on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyProgress {
    /// Guest memory in pages.
    pub memory_pages: u64,
    /// Current pre-copy round (0 = all of memory).
    pub round: u32,
    /// Pages relayed in the current round.
    pub round_pages: u64,
}

/// The window gain for the copy's `progress`: [`BULK_GAIN`] in round 0
/// while more than two guest windows of it remain (the pause cannot come
/// before round 0 ends, and the window has that long to settle back),
/// [`WINDOW_GAIN`] after.
///
/// `settled_guest_window` is the guest window at [`WINDOW_GAIN`]
/// ([`FlowWindow::window_at`]), not the one in force: the window in force
/// grows with the gain this picks, so near the threshold the bulk gain
/// would push it past the threshold and the smaller gain pull it back,
/// flipping the gain with every batch. [`crate::policy::RelayPolicy`] keeps
/// [`WINDOW_GAIN`] once it has been chosen.
pub fn window_gain(progress: &CopyProgress, settled_guest_window: u64) -> f64 {
    let left = progress
        .memory_pages
        .saturating_sub(progress.round_pages)
        .saturating_mul(PAGE_SIZE as u64);
    if progress.round == 0 && left > settled_guest_window.saturating_mul(2) {
        BULK_GAIN
    } else {
        WINDOW_GAIN
    }
}

/// How many bytes the source relay lets be in flight (sent to QUIC, not
/// yet acknowledged by the destination relay): a small multiple of the
/// bandwidth-delay product ([`window_gain`]).
///
/// The window is a gain × the highest delivery rate of the last
/// [`RATE_SAMPLES`] samples × the round trip the acks take (BBR's model:
/// bottleneck rate × propagation delay). That round trip is the shortest
/// time from sending a byte to its ack seen so far, and never less than the
/// link's configured RTT: it includes the destination's processing before
/// it acks, which a window of rate × link RTT would leave out — the
/// delivery rate would then be capped by that window, the next window
/// computed from the lower rate, and the window would settle well below the
/// link's BDP. Taking the shortest round trip (not the latest) keeps a
/// queue at the bottleneck from growing the window that built it; taking
/// the highest recent rate keeps a slow ack or two from shrinking it. A
/// sample in which nothing was acknowledged (the shim between rounds)
/// leaves the window as it is.
///
/// The relay runs two: one over batch (wire) bytes ([`FlowWindow::new`]),
/// and one over the guest bytes those batches carry ([`FlowWindow::guest`]).
/// The second matters when most pages reduce to a few bytes (references
/// into a warm page store): a wire window's worth of references is then
/// hundreds of MiB of pages the destination must still look up and write,
/// which it would drain only after the source paused — downtime no planner
/// predicted.
#[derive(Debug, Clone)]
pub struct FlowWindow {
    /// The link's configured RTT: the least round trip assumed.
    rtt: Duration,
    /// The shortest send-to-ack time seen.
    min_ack_rtt: Option<Duration>,
    /// (total bytes sent, when) not yet acknowledged, oldest first.
    sends: VecDeque<(u64, Instant)>,
    /// The last [`RATE_SAMPLES`] delivery rates, bytes per second.
    samples: VecDeque<f64>,
    rate: f64,
    sample_start: Option<(Instant, u64)>,
    gain: f64,
    window: u64,
    min: u64,
    max: u64,
}

impl FlowWindow {
    /// A window of batch bytes for a link with round-trip time `rtt`.
    pub fn new(rtt: Duration) -> Self {
        Self::bounded(rtt, MIN_WINDOW, MAX_WINDOW)
    }

    /// A window of guest bytes (pages × 4 KiB) acknowledged by the
    /// destination, for a link with round-trip time `rtt`.
    pub fn guest(rtt: Duration) -> Self {
        Self::bounded(rtt, MIN_GUEST_WINDOW, MAX_GUEST_WINDOW)
    }

    fn bounded(rtt: Duration, min: u64, max: u64) -> Self {
        FlowWindow {
            rtt: rtt.max(Duration::from_millis(1)),
            min_ack_rtt: None,
            sends: VecDeque::new(),
            samples: VecDeque::with_capacity(RATE_SAMPLES),
            rate: 0.0,
            sample_start: None,
            gain: WINDOW_GAIN,
            window: min,
            min,
            max,
        }
    }

    /// The delivery rate the window uses (the highest recent sample),
    /// bytes per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Bytes allowed in flight.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// The window the measured rate and round trip give at `gain`.
    pub fn window_at(&self, gain: f64) -> u64 {
        ((gain * self.rate * self.round_trip().as_secs_f64()) as u64).clamp(self.min, self.max)
    }

    /// The round trip the window uses: the shortest send-to-ack time seen,
    /// at least the configured RTT.
    pub fn round_trip(&self) -> Duration {
        self.min_ack_rtt.map_or(self.rtt, |m| m.max(self.rtt))
    }

    /// The shortest send-to-ack time seen, if any ack has come.
    pub fn min_ack_rtt(&self) -> Option<Duration> {
        self.min_ack_rtt
    }

    /// `sent` bytes have been sent in total at `now`.
    pub fn on_sent(&mut self, sent: u64, now: Instant) {
        if self.sends.back().is_some_and(|&(s, _)| s >= sent) {
            return;
        }
        if self.sends.len() == MAX_SENDS {
            self.sends.pop_front();
        }
        self.sends.push_back((sent, now));
    }

    /// The destination has acknowledged `acked` bytes in total at `now`.
    pub fn on_ack(&mut self, acked: u64, now: Instant) {
        // The newest send this ack covers gives a round-trip sample.
        let mut covered = None;
        while let Some(&(sent, at)) = self.sends.front() {
            if sent > acked {
                break;
            }
            covered = Some(at);
            self.sends.pop_front();
        }
        if let Some(at) = covered {
            let sample = now.saturating_duration_since(at);
            self.min_ack_rtt = Some(self.min_ack_rtt.map_or(sample, |m| m.min(sample)));
        }
        let Some((t0, a0)) = self.sample_start else {
            self.sample_start = Some((now, acked));
            return;
        };
        let elapsed = now.saturating_duration_since(t0);
        if elapsed < self.rtt {
            return;
        }
        self.sample_start = Some((now, acked));
        if acked <= a0 {
            // Nothing delivered: the pipe was idle, which says nothing
            // about the link.
            return;
        }
        if self.samples.len() == RATE_SAMPLES {
            self.samples.pop_front();
        }
        self.samples
            .push_back((acked - a0) as f64 / elapsed.as_secs_f64());
        self.rate = self.samples.iter().copied().fold(0.0, f64::max);
        self.resize();
    }

    /// Sets the window to `gain` bandwidth-delay products (see
    /// [`window_gain`]); [`WINDOW_GAIN`] until set.
    pub fn set_gain(&mut self, gain: f64) {
        if gain != self.gain {
            self.gain = gain;
            self.resize();
        }
    }

    fn resize(&mut self) {
        self.window = self.window_at(self.gain);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_guest_window_starts_at_its_own_floor_and_follows_the_apply_rate() {
        let t0 = Instant::now();
        let mut w = FlowWindow::guest(ms(100));
        assert_eq!(w.window(), MIN_GUEST_WINDOW);
        w.on_ack(0, t0);
        // 40 MiB of pages applied in 100 ms: 400 MiB/s.
        w.on_ack(40 << 20, t0 + ms(100));
        assert_eq!(w.window(), (WINDOW_GAIN * (40u64 << 20) as f64) as u64);
        assert!((w.rate() - (400u64 << 20) as f64).abs() < 1.0);
    }

    #[test]
    fn the_flow_window_follows_the_highest_recent_delivery_rate() {
        let t0 = Instant::now();
        let mut w = FlowWindow::new(ms(100));
        assert_eq!(w.window(), MIN_WINDOW);
        w.on_ack(0, t0);
        // Shorter than an RTT: no sample yet.
        w.on_ack(50 << 20, t0 + ms(50));
        assert_eq!(w.window(), MIN_WINDOW);
        // 10 MiB in 100 ms: WINDOW_GAIN × 100 MiB/s × 100 ms.
        w.on_ack(10 << 20, t0 + ms(100));
        let full = (WINDOW_GAIN * (100u64 << 20) as f64 * 0.1) as u64;
        assert_eq!(w.window(), full);
        // Idle round trips (the shim between rounds) leave it as it is.
        for i in 2..40 {
            w.on_ack(10 << 20, t0 + ms(100 * i));
        }
        assert_eq!(w.window(), full);
        // A slower link (1 MiB per RTT) takes over once the fast sample
        // has left the filter, and the floor holds.
        let mut acked = 10u64 << 20;
        for i in 40..40 + RATE_SAMPLES as u64 - 1 {
            acked += 1 << 20;
            w.on_ack(acked, t0 + ms(100 * i));
        }
        assert_eq!(w.window(), full, "one fast sample still in the filter");
        acked += 1 << 20;
        w.on_ack(acked, t0 + ms(100 * (40 + RATE_SAMPLES as u64 - 1)));
        assert_eq!(w.window(), MIN_WINDOW);
    }

    #[test]
    fn the_bulk_of_round_0_gets_the_larger_gain_and_the_rest_the_smaller() {
        let mut p = CopyProgress {
            memory_pages: 131_072,
            ..CopyProgress::default()
        };
        let guest_window = 64 << 20;
        assert_eq!(window_gain(&p, guest_window), BULK_GAIN);
        // 128 MiB (two guest windows) of round 0 left: near the pause.
        p.round_pages = 131_072 - 32_768;
        assert_eq!(window_gain(&p, guest_window), WINDOW_GAIN);
        p.round_pages = 131_072 - 32_769;
        assert_eq!(window_gain(&p, guest_window), BULK_GAIN);
        p.round = 1;
        p.round_pages = 0;
        assert_eq!(window_gain(&p, guest_window), WINDOW_GAIN);
        // The window follows the gain at once.
        let t0 = Instant::now();
        let mut w = FlowWindow::new(ms(100));
        w.on_ack(0, t0);
        w.on_ack(10 << 20, t0 + ms(100));
        assert_eq!(w.window(), (WINDOW_GAIN * (10u64 << 20) as f64) as u64);
        w.set_gain(BULK_GAIN);
        assert_eq!(w.window(), (BULK_GAIN * (10u64 << 20) as f64) as u64);
    }

    #[test]
    fn the_gain_does_not_flip_with_the_window_it_sizes() {
        // 40 MiB of pages applied per 100 ms: the guest window is 50 MiB at
        // WINDOW_GAIN and 80 MiB at BULK_GAIN. With 120 MiB of round 0
        // left, two windows at the bulk gain exceed it and two at the
        // smaller gain do not; judged by the window in force, the gain
        // would flip between the two with every batch.
        let t0 = Instant::now();
        let mut w = FlowWindow::guest(ms(100));
        w.on_ack(0, t0);
        w.on_ack(40 << 20, t0 + ms(100));
        let p = CopyProgress {
            memory_pages: 131_072,
            round_pages: 131_072 - (120 << 20) / PAGE_SIZE as u64,
            ..CopyProgress::default()
        };
        let mut gains = Vec::new();
        for _ in 0..4 {
            let gain = window_gain(&p, w.window_at(WINDOW_GAIN));
            w.set_gain(gain);
            gains.push(gain);
        }
        assert_eq!(gains, [BULK_GAIN; 4]);
        assert_eq!(w.window(), (BULK_GAIN * (40u64 << 20) as f64) as u64);
        assert_eq!(
            w.window_at(WINDOW_GAIN),
            (WINDOW_GAIN * (40u64 << 20) as f64) as u64
        );
    }

    #[test]
    fn the_window_spans_the_ack_round_trip_but_never_less_than_the_link_rtt() {
        let t0 = Instant::now();
        let mut w = FlowWindow::new(ms(100));
        assert_eq!(w.round_trip(), ms(100));
        w.on_ack(0, t0);
        w.on_sent(8 << 20, t0);
        w.on_sent(16 << 20, t0 + ms(10));
        // The ack of the first 8 MiB comes 160 ms after they left; the
        // rest is not acknowledged yet.
        w.on_ack(12 << 20, t0 + ms(160));
        assert_eq!(w.min_ack_rtt(), Some(ms(160)));
        assert_eq!(w.round_trip(), ms(160));
        // 12 MiB in 160 ms, over a round trip of 160 ms.
        assert_eq!(w.window(), (WINDOW_GAIN * (12u64 << 20) as f64) as u64);
        // A later, slower ack (a queue) does not lengthen it.
        w.on_ack(16 << 20, t0 + ms(400));
        assert_eq!(w.round_trip(), ms(160));
        assert_eq!(w.window(), (WINDOW_GAIN * (12u64 << 20) as f64) as u64);
        // A faster path than configured does not shorten it below the
        // link's RTT.
        let mut w = FlowWindow::new(ms(100));
        w.on_sent(1 << 20, t0);
        w.on_ack(1 << 20, t0 + ms(30));
        assert_eq!(w.min_ack_rtt(), Some(ms(30)));
        assert_eq!(w.round_trip(), ms(100));
    }

    /// Runs a sender that always has data through a window over a link of
    /// `link` bytes/s with round-trip time `rtt`, whose receiver acks each
    /// 128 KiB (the destination relay's ack cadence) only `processing`
    /// after it arrived; returns the window at the end and the rate
    /// delivered over the last second, bytes/s.
    fn window_over_link(
        link: f64,
        rtt: Duration,
        processing: Duration,
        secs: u64,
    ) -> (FlowWindow, f64) {
        let t0 = Instant::now();
        let mut w = FlowWindow::new(rtt);
        let chunk = 128u64 << 10;
        let delay_ms = (rtt + processing).as_secs_f64() * 1e3;
        // (ack arrival ms, total bytes the ack covers), in order.
        let mut acks = VecDeque::new();
        let (mut sent, mut acked, mut bottleneck_free_ms) = (0u64, 0u64, 0.0f64);
        let mut acked_at_last_second = 0;
        w.on_ack(0, t0);
        // Steps of 100 µs.
        for step in 0..secs * 10_000 {
            let t = step as f64 / 10.0;
            let now = t0 + Duration::from_micros(step * 100);
            while acks.front().is_some_and(|&(at, _)| at <= t) {
                acked = acks.pop_front().unwrap().1;
                w.on_ack(acked, now);
            }
            if step == (secs - 1) * 10_000 {
                acked_at_last_second = acked;
            }
            while sent - acked < w.window() {
                // Leaves the bottleneck after whatever queued before it.
                bottleneck_free_ms = bottleneck_free_ms.max(t) + chunk as f64 / link * 1e3;
                sent += chunk;
                acks.push_back((bottleneck_free_ms + delay_ms, sent));
                w.on_sent(sent, now);
            }
        }
        let delivered = (acked - acked_at_last_second) as f64;
        (w, delivered)
    }

    #[test]
    fn the_window_fills_the_link_when_the_destination_delays_its_acks() {
        // 250 Mbit/s, 100 ms, and a destination that takes 60 ms to ack:
        // a window of 1.25 × rate × 100 ms would cap the rate at
        // 1.25 × 100 / 160 of the link, and each window computed from that
        // rate would be smaller still.
        let link = 250e6 / 8.0;
        let (w, rate) = window_over_link(link, ms(100), ms(60), 6);
        assert!(rate >= 0.95 * link, "delivered {rate} of {link} bytes/s");
        // (Plus the time one 128 KiB chunk takes on the link.)
        assert!(
            (ms(160)..ms(170)).contains(&w.round_trip()),
            "the ack round trip, not the queue: {:?}",
            w.round_trip()
        );
        // (Up to 15% over: the round trip includes one chunk's time on the
        // link, and the highest of several samples, each counting whole
        // acks, runs a little above the link's rate.)
        let bdp = link * 0.16;
        assert!(
            (w.window() as f64) <= 1.15 * WINDOW_GAIN * bdp,
            "window {} for an ack BDP of {bdp}",
            w.window()
        );
        // And with prompt acks the window is about the link's BDP: the
        // queue it builds at the bottleneck does not grow it further.
        let link = 1e9 / 8.0;
        let (w, rate) = window_over_link(link, ms(20), ms(0), 4);
        assert!(rate >= 0.95 * link, "delivered {rate} of {link} bytes/s");
        let bdp = link * 0.02;
        assert!(
            (w.window() as f64) <= 1.15 * WINDOW_GAIN * bdp && w.window() as f64 >= bdp,
            "window {} for a BDP of {bdp}",
            w.window()
        );
    }
}
