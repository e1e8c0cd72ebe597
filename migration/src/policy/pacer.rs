//! A token-bucket pacer for the migration's WAN bytes (`--bandwidth`):
//! sans-IO, it takes a byte count and a clock reading and says how long to
//! wait before sending them. The source shim feels the wait as
//! backpressure on its local stream, so its planner sees the limited rate.

use std::time::{Duration, Instant};

/// Paces bytes to `rate_bps` bits per second with a burst of `burst` bytes.
#[derive(Debug, Clone)]
pub struct Pacer {
    bytes_per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    /// A pacer at `rate_bps` (> 0) that allows bursts of 50 ms of traffic
    /// (at least 64 KiB).
    pub fn new(rate_bps: u64, now: Instant) -> Self {
        let bytes_per_sec = rate_bps.max(1) as f64 / 8.0;
        let burst = (bytes_per_sec * 0.05).max(65536.0);
        Pacer {
            bytes_per_sec,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes `bytes` and returns how long to wait before sending them.
    pub fn reserve(&mut self, bytes: u64, now: Instant) -> Duration {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + dt * self.bytes_per_sec).min(self.burst);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.bytes_per_sec)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_long_run_rate_after_a_burst() {
        let t0 = Instant::now();
        let mut p = Pacer::new(8_000_000, t0); // 1 MB/s, 64 KiB burst
        assert_eq!(p.reserve(65536, t0), Duration::ZERO, "the burst is free");
        // The next 1 MB must wait about a second.
        let w = p.reserve(1_000_000, t0);
        assert!((w.as_secs_f64() - 1.0).abs() < 0.01, "{w:?}");
        // Sending 10 MB in 100 KB steps, each after its wait, takes ~10 s.
        let mut now = t0 + w;
        let mut total = Duration::ZERO;
        for _ in 0..100 {
            let w = p.reserve(100_000, now);
            now += w;
            total += w;
        }
        assert!((total.as_secs_f64() - 10.0).abs() < 0.1, "{total:?}");
    }

    #[test]
    fn idle_time_refills_only_up_to_the_burst() {
        let t0 = Instant::now();
        let mut p = Pacer::new(8_000_000, t0);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(p.reserve(65536, later), Duration::ZERO);
        assert!(p.reserve(100_000, later) > Duration::from_millis(90));
    }
}
