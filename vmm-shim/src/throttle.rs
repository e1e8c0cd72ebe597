//! The vCPU throttle of auto-converge, sans-IO: a throttle of `p` % holds
//! the vCPU off `p` % of wall-clock time, as QEMU's cpu-throttle does,
//! whether the guest would have been computing or sleeping in the sleep
//! port meanwhile. The vCPU thread asks [`Throttle::hold_off`] with the
//! current `Instant` after each exit and after each guest sleep, and sits
//! out what it returns.
//!
//! Wall time is cut into cycles of [`CYCLE`] from the moment the throttle
//! was set: the first `100 - p` % of each cycle the vCPU may run, the rest
//! it is held off. Counting only time inside KVM_RUN would barely slow a
//! guest that paces itself with the sleep port and runs a few % of the
//! time; holding it off wall time cuts such a guest's work roughly in
//! proportion. The cycle is long compared with the guest's
//! own pacing period (a few ms) because a paced guest that wakes behind
//! schedule does one catch-up step at the start of each run window: with
//! QEMU's 10 ms timeslice that step alone would keep a guest ticking every
//! 8 ms near full rate at 40 %; with 100 ms it is one step per cycle, and the
//! longest hold-off (at 99 %) stays under 100 ms.

use std::time::{Duration, Instant};

/// Length of one run-then-hold-off cycle.
pub const CYCLE: Duration = Duration::from_millis(100);

/// Highest throttle, in percent: the vCPU always gets some time.
pub const MAX_PERCENT: u8 = 99;

/// The throttle state of one vCPU.
#[derive(Debug, Clone, Default)]
pub struct Throttle {
    percent: u8,
    /// Start of the current cycle's schedule (when the throttle was set).
    anchor: Option<Instant>,
}

impl Throttle {
    /// An unthrottled vCPU.
    pub fn new() -> Throttle {
        Throttle::default()
    }

    /// Sets the throttle to `percent` (clamped to [`MAX_PERCENT`]) at
    /// `now`; the first cycle starts with its run window. Zero removes it.
    pub fn set(&mut self, percent: u8, now: Instant) {
        self.percent = percent.min(MAX_PERCENT);
        self.anchor = (self.percent > 0).then_some(now);
    }

    /// The throttle in effect, in percent.
    pub fn percent(&self) -> u8 {
        self.percent
    }

    /// How long the vCPU is held off from `now` on: zero inside a run
    /// window, else the rest of the cycle's hold-off window.
    pub fn hold_off(&self, now: Instant) -> Duration {
        let Some(anchor) = self.anchor else {
            return Duration::ZERO;
        };
        let cycle = CYCLE.as_nanos();
        let run = cycle * (100 - self.percent as u128) / 100;
        // A clock reading before the anchor (a caller's stale `now`) is
        // inside the first run window.
        let into = now.saturating_duration_since(anchor).as_nanos() % cycle;
        if into < run {
            Duration::ZERO
        } else {
            Duration::from_nanos((cycle - into) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn unthrottled_never_holds_off() {
        let t = Instant::now();
        let mut th = Throttle::new();
        assert_eq!(th.hold_off(t + ms(95)), Duration::ZERO);
        th.set(60, t);
        th.set(0, t + ms(1));
        for i in 0..300 {
            assert_eq!(th.hold_off(t + ms(i)), Duration::ZERO, "at {i} ms");
        }
        assert_eq!(th.percent(), 0);
    }

    #[test]
    fn each_cycle_runs_first_and_holds_off_the_throttled_share() {
        let t = Instant::now();
        let mut th = Throttle::new();
        th.set(80, t);
        assert_eq!(th.hold_off(t), Duration::ZERO);
        assert_eq!(th.hold_off(t + ms(19)), Duration::ZERO);
        assert_eq!(th.hold_off(t + ms(20)), ms(80));
        assert_eq!(th.hold_off(t + ms(70)), ms(30));
        // The next cycle's run window, then its hold-off.
        assert_eq!(th.hold_off(t + ms(100)), Duration::ZERO);
        assert_eq!(th.hold_off(t + ms(125)), ms(75));
        // Setting it again restarts the schedule from that moment.
        th.set(30, t + ms(125));
        assert_eq!(th.hold_off(t + ms(125)), Duration::ZERO);
        assert_eq!(th.hold_off(t + ms(194)), Duration::ZERO);
        assert_eq!(th.hold_off(t + ms(195)), ms(30));
        // A reading from before the anchor is not held off.
        assert_eq!(th.hold_off(t), Duration::ZERO);
    }

    #[test]
    fn percent_is_clamped_so_the_vcpu_always_runs_a_little() {
        let t = Instant::now();
        let mut th = Throttle::new();
        th.set(255, t);
        assert_eq!(th.percent(), MAX_PERCENT);
        assert_eq!(th.hold_off(t), Duration::ZERO);
        assert_eq!(th.hold_off(t + ms(1)), ms(99));
    }

    /// Simulates `secs` of wall time of a guest that paces itself like the
    /// test guest's memory workload (an iteration every `period`, each
    /// taking `work` of vCPU time, sleeping in between; when it wakes behind
    /// schedule it does one iteration and restarts its schedule from then,
    /// never bursting) under a throttle of `percent`, the way the vCPU
    /// thread drives it: after every step and every sleep it sits out what
    /// `hold_off` says. Returns the iterations it ran.
    fn paced_guest_iterations(percent: u8, period: Duration, work: Duration, secs: u64) -> u64 {
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs(secs);
        let mut th = Throttle::new();
        th.set(percent, t0);
        let mut now = t0;
        let mut deadline: Option<Instant> = None;
        let mut iterations = 0;
        while now < end {
            let due = *deadline.get_or_insert(now);
            if now < due {
                // The sleep port: sleep, then obey the throttle.
                now = due;
            } else {
                let next = due + period;
                deadline = Some(if next < now { now + period } else { next });
                now += work;
                iterations += 1;
            }
            now += th.hold_off(now);
        }
        iterations
    }

    #[test]
    fn a_paced_guest_slows_roughly_in_proportion_to_the_throttle() {
        // The write-heavy-pages guest at 100 Mbit/s: 32-page iterations at
        // 25 MB/s (one every ~5.2 ms), each ~0.5 ms of vCPU time, so it
        // runs under 10 % of the time.
        let period = Duration::from_micros(5_243);
        let work = Duration::from_micros(500);
        let full = paced_guest_iterations(0, period, work, 20);
        assert!((3_750..=3_850).contains(&full), "{full}");
        let mut last = full;
        for p in [20u8, 40, 60, 80] {
            let n = paced_guest_iterations(p, period, work, 20);
            let share = n as f64 / full as f64;
            let wanted = (100 - p) as f64 / 100.0;
            // Roughly proportional: the catch-up iteration at each run
            // window's start adds at most one iteration per cycle.
            assert!(
                share >= wanted * 0.9 && share <= wanted + 0.1,
                "{p}%: {n} of {full} iterations ({share:.2}, wanted ~{wanted:.2})"
            );
            assert!(n < last, "{p}%: {n} not below {last}");
            last = n;
        }
    }

    #[test]
    fn a_busy_guest_gets_the_unthrottled_share_of_wall_time() {
        // A guest that never sleeps, exiting every 50 µs.
        let t0 = Instant::now();
        let mut th = Throttle::new();
        th.set(75, t0);
        let mut now = t0;
        let mut ran = Duration::ZERO;
        while now < t0 + Duration::from_secs(10) {
            let step = Duration::from_micros(50);
            now += step;
            ran += step;
            now += th.hold_off(now);
        }
        let share = ran.as_secs_f64() / (now - t0).as_secs_f64();
        assert!((share - 0.25).abs() < 0.01, "{share}");
    }
}
