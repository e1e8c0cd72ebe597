//! Which link rate the codec's level is tuned to: the migration's own
//! delivery rate while it fills the link, else the QUIC path's estimate.
//!
//! The delivery rate the wire window measures says what the link carries
//! only while the window held the shim back (the link, not the guest or
//! the codec, set the pace). Otherwise the migration does not fill the
//! link, and the path's congestion window per round trip is the better
//! guess: an upper bound (the gateway caps the congestion window at
//! 1.5 × BDP), but one that moves with the link.

use std::time::Duration;

/// The QUIC path's own estimate, as its congestion controller keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathEstimate {
    /// Congestion window, bytes.
    pub cwnd: u64,
    /// Smoothed round-trip time.
    pub rtt: Duration,
}

impl PathEstimate {
    /// What the path could carry, bytes per second: the congestion window
    /// per round trip (`None` before a round trip was measured).
    pub fn rate(&self) -> Option<f64> {
        let rtt = self.rtt.as_secs_f64();
        (rtt > 0.0).then(|| self.cwnd as f64 / rtt)
    }
}

/// Picks the link rate between two level decisions.
#[derive(Debug, Clone, Default)]
pub struct LinkRate {
    /// The wire window held the shim back since the last pick.
    wire_limited: bool,
    path: Option<PathEstimate>,
}

impl LinkRate {
    /// `in_flight` wire bytes were unacknowledged while the wire window
    /// allowed `window`.
    pub fn on_in_flight(&mut self, in_flight: u64, window: u64) {
        self.wire_limited |= in_flight >= window;
    }

    /// The path's latest estimate.
    pub fn on_path(&mut self, path: PathEstimate) {
        self.path = Some(path);
    }

    /// The link rate, bytes per second, given the wire window's measured
    /// `delivery_rate`; starts the next period.
    pub fn pick(&mut self, delivery_rate: f64) -> Option<f64> {
        let rate = if self.wire_limited && delivery_rate > 0.0 {
            Some(delivery_rate)
        } else {
            self.path.and_then(|p| p.rate())
        };
        self.wire_limited = false;
        rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delivery_rate_counts_only_while_the_window_held_the_shim_back() {
        let path = PathEstimate {
            cwnd: 3_000_000,
            rtt: Duration::from_millis(100),
        };
        let mut l = LinkRate::default();
        assert_eq!(l.pick(1e6), None, "nothing measured");
        l.on_path(path);
        assert_eq!(l.pick(1e6), Some(30e6), "not window-limited: the path");
        l.on_in_flight(4 << 20, 4 << 20);
        l.on_in_flight(0, 4 << 20);
        assert_eq!(l.pick(1e6), Some(1e6), "held back once since the last pick");
        assert_eq!(l.pick(1e6), Some(30e6), "a new period");
        l.on_in_flight(5 << 20, 4 << 20);
        assert_eq!(l.pick(0.0), Some(30e6), "no delivery measured yet");
    }

    #[test]
    fn a_path_without_a_round_trip_has_no_rate() {
        let p = PathEstimate {
            cwnd: 1 << 20,
            rtt: Duration::ZERO,
        };
        assert_eq!(p.rate(), None);
    }
}
