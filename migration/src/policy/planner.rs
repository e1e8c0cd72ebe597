//! The pre-copy convergence planner the source shim runs, sans-IO: it is
//! told what each round achieved (pages and bytes sent, time taken, pages
//! found dirty afterwards) and the time, and decides what the migration does
//! next — another round, throttle the vCPU further (auto-converge, up to a
//! configured limit), stop-and-copy now, or cancel because the total timeout
//! has passed. [`ConvergenceMode`] sums up how it ended.
//!
//! Stop-and-copy happens when the predicted final round (dirty pages at the
//! measured bandwidth) fits the downtime budget; when it cannot converge
//! (throttle at its limit and the dirty set no longer shrinking) it stops at
//! a local minimum of the dirty set ("smart stop"), and at the round limit
//! at the latest.
//!
//! Progress is measured against the smallest dirty set seen so far, not the
//! previous round's: a dirty set that merely wobbles (a guest dirtying at a
//! steady rate gives rounds ±10 % apart by chance) would otherwise count
//! every dip after a high round as progress, restart the stall count and
//! push the stop toward the round limit.

use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Tunables of the planner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannerConfig {
    /// Longest acceptable pause of the VM (default 300 ms).
    pub downtime_budget: Duration,
    /// The whole migration is cancelled after this long.
    pub total_timeout: Duration,
    /// Stop-and-copy at this round at the latest.
    pub max_rounds: u32,
    /// Throttle the vCPU when the dirty set stops shrinking.
    pub auto_converge: bool,
    /// First throttle step, in percent of vCPU time taken away.
    pub throttle_initial: u8,
    /// Increment per further step.
    pub throttle_step: u8,
    /// Highest throttle auto-converge may apply.
    pub max_throttle: u8,
    /// A round "makes progress" when its dirty set is below this fraction
    /// (in percent) of the smallest dirty set of the rounds before it.
    pub progress_percent: u8,
    /// Rounds without progress before acting (throttle or smart stop).
    pub stall_rounds: u32,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            downtime_budget: Duration::from_millis(300),
            total_timeout: Duration::from_secs(300),
            max_rounds: 30,
            auto_converge: true,
            throttle_initial: 20,
            throttle_step: 20,
            max_throttle: 80,
            progress_percent: 90,
            stall_rounds: 2,
        }
    }
}

/// What one round achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundResult {
    /// Pages sent in the round.
    pub pages_sent: u64,
    /// Bytes written to the stream in the round.
    pub bytes_sent: u64,
    /// How long the round took.
    pub elapsed: Duration,
    /// Pages found dirty after the round (what the next round must send).
    pub dirty_pages: u64,
}

/// Why stop-and-copy was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    /// The predicted final round fits the downtime budget.
    FitsBudget,
    /// The dirty set stopped shrinking; stopped at its local minimum.
    SmartStop,
    /// The round limit was reached.
    MaxRounds,
}

/// How a migration converged.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum ConvergenceMode {
    /// The dirty set shrank until the final round fit the budget.
    Converged,
    /// It fit the budget only after throttling the vCPU.
    AutoConverge,
    /// It could not fit; stopped at a local minimum of the dirty set.
    SmartStop,
    /// Stopped at the round limit.
    RoundLimit,
}

impl ConvergenceMode {
    /// How a migration converged that stopped for `reason` after
    /// throttling the vCPU up to `max_throttle` percent.
    pub fn of(reason: StopReason, max_throttle: u8) -> ConvergenceMode {
        match reason {
            StopReason::FitsBudget if max_throttle == 0 => ConvergenceMode::Converged,
            StopReason::FitsBudget => ConvergenceMode::AutoConverge,
            StopReason::SmartStop => ConvergenceMode::SmartStop,
            StopReason::MaxRounds => ConvergenceMode::RoundLimit,
        }
    }
}

/// The planner's decision after a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send the dirty pages in another round.
    NextRound,
    /// Set the vCPU throttle to this percentage, then run another round.
    Throttle(u8),
    /// Pause the VM, send the remaining dirty pages and the state.
    StopAndCopy(StopReason),
    /// Give up; the VM stays at the source.
    Cancel,
}

/// The planner.
#[derive(Debug, Clone)]
pub struct Planner {
    cfg: PlannerConfig,
    started: Instant,
    rounds: u32,
    throttle: u8,
    /// Smallest dirty set after any round so far (`u64::MAX` before the
    /// first).
    min_dirty: u64,
    stalled: u32,
    /// Bytes per second, exponentially smoothed.
    bandwidth: Option<f64>,
    /// Average bytes on the wire per page.
    bytes_per_page: f64,
    /// Fixed cost of the stop-and-copy phase besides sending pages
    /// (digests, state), counted against the downtime budget.
    stop_overhead: Duration,
    /// Cost per page left at the stop besides sending it (hashing its
    /// digest block), done beside the sending.
    per_page_overhead: Duration,
}

impl Planner {
    /// A planner for a migration that starts at `now`.
    pub fn new(cfg: PlannerConfig, now: Instant) -> Planner {
        Planner {
            cfg,
            started: now,
            rounds: 0,
            throttle: 0,
            min_dirty: u64::MAX,
            stalled: 0,
            bandwidth: None,
            bytes_per_page: 4096.0,
            stop_overhead: Duration::ZERO,
            per_page_overhead: Duration::ZERO,
        }
    }

    /// Sets the fixed part of the downtime (measured by the caller, e.g.
    /// the time to digest guest memory), which predictions add.
    pub fn set_stop_overhead(&mut self, overhead: Duration) {
        self.stop_overhead = overhead;
    }

    /// Sets the cost per page left at the stop besides sending it (e.g.
    /// hashing the digest block it lies in), work done beside the sending:
    /// predictions take the longer of the two.
    pub fn set_per_page_overhead(&mut self, overhead: Duration) {
        self.per_page_overhead = overhead;
    }

    /// The configuration.
    pub fn config(&self) -> &PlannerConfig {
        &self.cfg
    }

    /// The throttle currently asked for, in percent.
    pub fn throttle(&self) -> u8 {
        self.throttle
    }

    /// Rounds completed.
    pub fn rounds(&self) -> u32 {
        self.rounds
    }

    /// Smoothed bandwidth estimate in bytes per second.
    pub fn bandwidth(&self) -> Option<f64> {
        self.bandwidth
    }

    /// Predicted downtime of a stop-and-copy with `pages` left: sending
    /// them at the measured bandwidth or the per-page work beside it,
    /// whichever takes longer, plus the fixed stop overhead.
    pub fn predict(&self, pages: u64) -> Option<Duration> {
        let bw = self.bandwidth?;
        let send = pages as f64 * self.bytes_per_page / bw;
        let beside = pages as f64 * self.per_page_overhead.as_secs_f64();
        Some(Duration::from_secs_f64(send.max(beside)) + self.stop_overhead)
    }

    /// Whether the total timeout has passed at `now`.
    pub fn timed_out(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.started) >= self.cfg.total_timeout
    }

    /// Takes a round's result and decides what happens next.
    pub fn on_round(&mut self, r: RoundResult, now: Instant) -> Decision {
        self.rounds += 1;
        if r.pages_sent > 0 && r.bytes_sent > 0 {
            self.bytes_per_page = r.bytes_sent as f64 / r.pages_sent as f64;
            let secs = r.elapsed.as_secs_f64().max(1e-6);
            let bw = r.bytes_sent as f64 / secs;
            self.bandwidth = Some(match self.bandwidth {
                Some(old) => 0.5 * old + 0.5 * bw,
                None => bw,
            });
        }
        if self.timed_out(now) {
            return Decision::Cancel;
        }
        let predicted_fits = self
            .predict(r.dirty_pages)
            .is_some_and(|d| d <= self.cfg.downtime_budget);
        if predicted_fits {
            return Decision::StopAndCopy(StopReason::FitsBudget);
        }
        if r.dirty_pages == 0 {
            // Nothing left to send: more rounds cannot shorten the pause.
            return Decision::StopAndCopy(StopReason::SmartStop);
        }

        // u128: a dirty-page count from the caller times 100 must not wrap.
        let progress = self.min_dirty == u64::MAX
            || (r.dirty_pages as u128) * 100
                < (self.min_dirty as u128) * self.cfg.progress_percent as u128;
        let new_min = r.dirty_pages <= self.min_dirty;
        self.min_dirty = self.min_dirty.min(r.dirty_pages);
        if progress {
            self.stalled = 0;
        } else {
            self.stalled += 1;
        }
        if self.rounds >= self.cfg.max_rounds {
            return Decision::StopAndCopy(StopReason::MaxRounds);
        }
        if self.stalled < self.cfg.stall_rounds {
            return Decision::NextRound;
        }
        if self.cfg.auto_converge && self.throttle < self.cfg.max_throttle {
            let next = if self.throttle == 0 {
                self.cfg.throttle_initial
            } else {
                self.throttle.saturating_add(self.cfg.throttle_step)
            };
            self.throttle = next.min(self.cfg.max_throttle);
            self.stalled = 0;
            return Decision::Throttle(self.throttle);
        }
        // Cannot converge any further: stop at a local minimum of the dirty
        // set, or after one more stalled window at the latest.
        if new_min || self.stalled >= 2 * self.cfg.stall_rounds {
            return Decision::StopAndCopy(StopReason::SmartStop);
        }
        Decision::NextRound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE_WIRE: u64 = 4096 + 8;

    /// A round sending `pages` at `mib_s` MiB/s, after which `dirty` pages
    /// are dirty.
    fn round(pages: u64, mib_s: u64, dirty: u64) -> RoundResult {
        let bytes = pages * PAGE_WIRE;
        RoundResult {
            pages_sent: pages,
            bytes_sent: bytes,
            elapsed: Duration::from_secs_f64(bytes as f64 / (mib_s << 20) as f64),
            dirty_pages: dirty,
        }
    }

    /// Feeds `steps` (pages sent, MiB/s, pages dirty after, expected
    /// decision) to `p` in order, naming the step that went wrong.
    fn expect_rounds(p: &mut Planner, t: Instant, steps: &[(u64, u64, u64, Decision)]) {
        for (i, &(pages, mib_s, dirty, expected)) in steps.iter().enumerate() {
            assert_eq!(
                p.on_round(round(pages, mib_s, dirty), t),
                expected,
                "round {i}"
            );
        }
    }

    #[test]
    fn idle_guest_stops_after_round_zero() {
        let t = Instant::now();
        let mut p = Planner::new(PlannerConfig::default(), t);
        // 256 MiB at 500 MiB/s; 10 pages dirty afterwards.
        assert_eq!(
            p.on_round(round(65536, 500, 10), t + Duration::from_millis(512)),
            Decision::StopAndCopy(StopReason::FitsBudget)
        );
        assert_eq!(p.rounds(), 1);
        let bw = p.bandwidth().unwrap();
        assert!((bw / (500u64 << 20) as f64 - 1.0).abs() < 0.01, "{bw}");
    }

    #[test]
    fn converging_guest_runs_rounds_until_the_rest_fits() {
        let t = Instant::now();
        let mut p = Planner::new(PlannerConfig::default(), t);
        // 100 MiB/s => 300 ms budget holds ~7500 pages.
        assert_eq!(
            p.on_round(round(65536, 100, 40_000), t),
            Decision::NextRound
        );
        assert_eq!(
            p.on_round(round(40_000, 100, 20_000), t),
            Decision::NextRound
        );
        assert_eq!(
            p.on_round(round(20_000, 100, 9_000), t),
            Decision::NextRound
        );
        assert_eq!(
            p.on_round(round(9_000, 100, 5_000), t),
            Decision::StopAndCopy(StopReason::FitsBudget)
        );
        assert_eq!(p.throttle(), 0);
        let d = p.predict(5_000).unwrap();
        assert!(d <= Duration::from_millis(300), "{d:?}");
    }

    #[test]
    fn stalled_guest_is_throttled_in_steps_up_to_the_limit_then_smart_stopped() {
        let t = Instant::now();
        let cfg = PlannerConfig {
            max_throttle: 60,
            ..Default::default()
        };
        let mut p = Planner::new(cfg, t);
        let mut throttles = Vec::new();
        let mut decision = Decision::NextRound;
        // Dirty set stuck at 30k pages (does not fit: ~180 ms per 5k pages).
        for i in 0..20 {
            let dirty = 30_000 + (i % 3) * 100;
            decision = p.on_round(round(30_000, 100, dirty), t);
            match decision {
                Decision::Throttle(x) => throttles.push(x),
                Decision::NextRound => {}
                _ => break,
            }
        }
        assert_eq!(throttles, [20, 40, 60]);
        assert_eq!(p.throttle(), 60);
        assert_eq!(decision, Decision::StopAndCopy(StopReason::SmartStop));
        assert!(p.rounds() < 20);
    }

    #[test]
    fn smart_stop_prefers_a_local_minimum() {
        let t = Instant::now();
        let cfg = PlannerConfig {
            auto_converge: false,
            stall_rounds: 2,
            ..Default::default()
        };
        let mut p = Planner::new(cfg, t);
        use Decision::{NextRound, StopAndCopy};
        expect_rounds(
            &mut p,
            t,
            &[
                (65536, 100, 30_000, NextRound),
                (30_000, 100, 29_500, NextRound),
                // Stalled twice, but 31k is above the minimum: keep going.
                (29_500, 100, 31_000, NextRound),
                // A new minimum while stalled: stop here.
                (31_000, 100, 29_000, StopAndCopy(StopReason::SmartStop)),
            ],
        );
    }

    /// Feeds a sequence of dirty-set sizes (each round sends the previous
    /// round's dirty set, round 0 the whole 128 MiB, at ~100 Mbit/s) until
    /// the planner stops; returns the throttles it asked for, the stop
    /// reason and the round it stopped after.
    fn run_sequence(cfg: PlannerConfig, dirty: &[u64]) -> (Vec<u8>, Option<StopReason>, u32) {
        let t = Instant::now();
        let mut p = Planner::new(cfg, t);
        let mut throttles = Vec::new();
        let mut sent = 32_768;
        for &d in dirty {
            match p.on_round(round(sent, 12, d), t) {
                Decision::NextRound => {}
                Decision::Throttle(x) => throttles.push(x),
                Decision::StopAndCopy(r) => return (throttles, Some(r), p.rounds()),
                Decision::Cancel => panic!("cancelled after {} rounds", p.rounds()),
            }
            sent = d;
        }
        (throttles, None, p.rounds())
    }

    /// A plateau the size of the write-heavy-pages guest's at 100 Mbit/s
    /// (~7,000 pages), wobbling ±6 %: every other round dips more than
    /// 10 % below the one before it, yet never below what was already
    /// reached.
    fn wobbling_plateau(rounds: usize) -> Vec<u64> {
        (0..rounds)
            .map(|i| if i % 2 == 0 { 6_900 } else { 7_750 })
            .collect()
    }

    #[test]
    fn a_wobbling_dirty_set_is_not_progress() {
        let dirty = wobbling_plateau(40);
        let (throttles, stop, rounds) = run_sequence(PlannerConfig::default(), &dirty);
        // Two stalled rounds per throttle step, then a smart stop at the
        // next local minimum: nowhere near the 30-round limit.
        assert_eq!(throttles, [20, 40, 60, 80]);
        assert_eq!(stop, Some(StopReason::SmartStop));
        assert!(rounds <= 12, "stopped after {rounds} rounds");
        // Without auto-converge it stops at the first minimum after two
        // stalled rounds.
        let cfg = PlannerConfig {
            auto_converge: false,
            ..Default::default()
        };
        let (throttles, stop, rounds) = run_sequence(cfg, &dirty);
        assert!(throttles.is_empty());
        assert_eq!((stop, rounds), (Some(StopReason::SmartStop), 3));
    }

    #[test]
    fn a_lucky_low_round_does_not_restart_the_stall_count() {
        // One round happens to catch few writes (e.g. a short round), the
        // rest of the plateau sits above it: the stall count keeps running.
        let mut dirty = vec![8_000, 5_900];
        dirty.extend(wobbling_plateau(30));
        let (throttles, stop, rounds) = run_sequence(PlannerConfig::default(), &dirty);
        assert_eq!(throttles, [20, 40, 60, 80]);
        assert_eq!(stop, Some(StopReason::SmartStop));
        assert!(rounds <= 16, "stopped after {rounds} rounds");
    }

    #[test]
    fn recorded_write_heavy_pages_run_under_an_ineffective_throttle_smart_stops() {
        // Dirty sets after each round of a demo run (write-heavy-pages,
        // 128 MiB, 100 Mbit/s) under a throttle that barely slowed the
        // guest: the planner throttles in steps to 80 % and, the set still
        // far above the budget, stops at a minimum.
        let recorded = [
            8_001, 7_195, 6_832, 6_619, 6_290, 6_965, 6_588, 6_792, 6_670, 6_331, 5_845, 4_993,
            3_937, 3_843, 3_756, 3_900, 3_800, 3_950,
        ];
        let (throttles, stop, rounds) = run_sequence(PlannerConfig::default(), &recorded);
        assert_eq!(throttles, [20, 40, 60, 80]);
        assert_eq!(stop, Some(StopReason::SmartStop));
        assert!(rounds <= 16, "stopped after {rounds} rounds");
    }

    #[test]
    fn a_throttle_that_bites_converges_within_the_budget() {
        // The plateau until the throttle reaches 40 %, then the dirty set
        // shrinks by more than 10 % a round until it fits the budget.
        let dirty = [
            8_000, 7_100, 7_300, 7_000, 7_250, 6_300, 5_000, 3_300, 1_900, 800,
        ];
        let (throttles, stop, rounds) = run_sequence(PlannerConfig::default(), &dirty);
        assert_eq!(throttles, [20, 40]);
        assert_eq!((stop, rounds), (Some(StopReason::FitsBudget), 10));
    }

    #[test]
    fn a_slow_steady_decline_is_not_progress_but_a_steep_one_is() {
        // 5 % less each round: stalls, so throttled.
        let slow: Vec<u64> = (0..6)
            .map(|i| (20_000.0 * 0.95f64.powi(i)) as u64)
            .collect();
        let (throttles, _, _) = run_sequence(PlannerConfig::default(), &slow);
        assert_eq!(throttles, [20, 40]);
        // 15 % less each round: progress every round, never throttled.
        let steep: Vec<u64> = (0..6)
            .map(|i| (20_000.0 * 0.85f64.powi(i)) as u64)
            .collect();
        let (throttles, stop, _) = run_sequence(PlannerConfig::default(), &steep);
        assert!(throttles.is_empty());
        assert_eq!(stop, None);
    }

    #[test]
    fn stop_overhead_counts_against_the_budget() {
        let t = Instant::now();
        let mut p = Planner::new(PlannerConfig::default(), t);
        p.set_stop_overhead(Duration::from_millis(250));
        // 2000 pages at 100 MiB/s ~ 78 ms: fits alone, not with 250 ms more.
        assert_eq!(p.on_round(round(65536, 100, 2_000), t), Decision::NextRound);
        assert_eq!(
            p.on_round(round(2_000, 100, 500), t),
            Decision::StopAndCopy(StopReason::FitsBudget)
        );
    }

    #[test]
    fn per_page_overhead_counts_against_the_budget() {
        let t = Instant::now();
        let mut p = Planner::new(PlannerConfig::default(), t);
        // 2000 pages at 100 MiB/s ~ 78 ms, but 0.2 ms of work per page
        // beside the sending makes it 400 ms.
        p.set_per_page_overhead(Duration::from_micros(200));
        assert_eq!(p.on_round(round(65536, 100, 2_000), t), Decision::NextRound);
        let d = p.predict(2_000).unwrap();
        assert!(d >= Duration::from_millis(400), "{d:?}");
        assert_eq!(
            p.on_round(round(2_000, 100, 1_000), t),
            Decision::StopAndCopy(StopReason::FitsBudget)
        );
    }

    #[test]
    fn nothing_dirty_stops_even_when_the_overhead_exceeds_the_budget() {
        let t = Instant::now();
        let mut p = Planner::new(PlannerConfig::default(), t);
        p.set_stop_overhead(Duration::from_millis(400));
        assert_eq!(p.on_round(round(65536, 100, 10), t), Decision::NextRound);
        assert_eq!(
            p.on_round(round(10, 100, 0), t),
            Decision::StopAndCopy(StopReason::SmartStop)
        );
    }

    #[test]
    fn round_limit_forces_stop() {
        let t = Instant::now();
        let cfg = PlannerConfig {
            max_rounds: 3,
            ..Default::default()
        };
        let mut p = Planner::new(cfg, t);
        use Decision::{NextRound, StopAndCopy};
        expect_rounds(
            &mut p,
            t,
            &[
                (65536, 100, 50_000, NextRound),
                (50_000, 100, 25_000, NextRound),
                (25_000, 100, 12_000, StopAndCopy(StopReason::MaxRounds)),
            ],
        );
    }

    #[test]
    fn total_timeout_cancels() {
        let t = Instant::now();
        let cfg = PlannerConfig {
            total_timeout: Duration::from_secs(10),
            ..Default::default()
        };
        let mut p = Planner::new(cfg, t);
        assert!(!p.timed_out(t + Duration::from_secs(9)));
        assert_eq!(
            p.on_round(round(65536, 100, 40_000), t + Duration::from_secs(5)),
            Decision::NextRound
        );
        assert_eq!(
            p.on_round(round(40_000, 100, 100), t + Duration::from_secs(11)),
            Decision::Cancel
        );
    }

    #[test]
    fn budget_scales_the_stop_point() {
        let t = Instant::now();
        let tight = PlannerConfig {
            downtime_budget: Duration::from_millis(10),
            ..Default::default()
        };
        let mut p = Planner::new(tight, t);
        // 5000 pages at 100 MiB/s ~ 196 ms: fits 300 ms, not 10 ms.
        assert_eq!(p.on_round(round(65536, 100, 5_000), t), Decision::NextRound);
        let mut q = Planner::new(PlannerConfig::default(), t);
        assert_eq!(
            q.on_round(round(65536, 100, 5_000), t),
            Decision::StopAndCopy(StopReason::FitsBudget)
        );
    }

    /// One round of a recorded run: pages sent, bytes sent, nanoseconds
    /// it took, pages dirty after it, nanoseconds since the start when the
    /// planner was asked, and what it decided.
    type Recorded = (u64, u64, u64, u64, u64, Decision);

    /// Replays `rounds` through a planner with the shim's budget and stop
    /// overhead of the run.
    fn replay(budget_ns: u64, overhead_ns: u64, rounds: &[Recorded]) {
        let t = Instant::now();
        let cfg = PlannerConfig {
            downtime_budget: Duration::from_nanos(budget_ns),
            ..Default::default()
        };
        let mut p = Planner::new(cfg, t);
        p.set_stop_overhead(Duration::from_nanos(overhead_ns));
        for (i, &(pages, bytes, elapsed, dirty, at, decision)) in rounds.iter().enumerate() {
            let r = RoundResult {
                pages_sent: pages,
                bytes_sent: bytes,
                elapsed: Duration::from_nanos(elapsed),
                dirty_pages: dirty,
            };
            assert_eq!(
                p.on_round(r, t + Duration::from_nanos(at)),
                decision,
                "round {i}"
            );
        }
    }

    #[test]
    fn recorded_demo_runs_get_the_decisions_they_got() {
        use Decision::{NextRound, StopAndCopy, Throttle};
        // `wanmig demo --mem 128MiB --no-disk` (250 Mbit/s, 100 ms): the
        // gateway's budget of 300 ms less the link's round trip.
        replay(
            184_661_906,
            93_152_218,
            &[
                (32768, 134481024, 1918283415, 2353, 2210954721, NextRound),
                (
                    2353,
                    9656802,
                    18362151,
                    0,
                    2229452557,
                    StopAndCopy(StopReason::FitsBudget),
                ),
            ],
        );
        // The same with `--workload write-heavy-pages`: throttled in three
        // steps until the rest fit.
        replay(
            195_927_132,
            5_000_000,
            &[
                (32768, 134481024, 2530251255, 7936, 2729685109, NextRound),
                (7936, 32569623, 1158604771, 7243, 3888633635, NextRound),
                (7243, 29725533, 873547946, 6520, 4762541536, Throttle(20)),
                (6520, 26758314, 753335940, 2696, 5517106834, NextRound),
                (2696, 11064483, 315730461, 3078, 5844654333, NextRound),
                (3078, 12632229, 402576378, 3217, 6250412262, Throttle(40)),
                (3217, 13202685, 534852915, 2183, 6796565886, NextRound),
                (2183, 8959113, 387367295, 2023, 7184576088, NextRound),
                (2023, 8302464, 343075821, 2686, 7528482488, Throttle(60)),
                (2686, 11023443, 450303199, 1889, 7981601431, NextRound),
                (
                    1889,
                    7752528,
                    220244751,
                    1042,
                    8205317316,
                    StopAndCopy(StopReason::FitsBudget),
                ),
            ],
        );
    }

    #[test]
    fn the_convergence_mode_says_whether_the_throttle_was_needed() {
        use ConvergenceMode as M;
        assert_eq!(M::of(StopReason::FitsBudget, 0), M::Converged);
        assert_eq!(M::of(StopReason::FitsBudget, 40), M::AutoConverge);
        assert_eq!(M::of(StopReason::SmartStop, 0), M::SmartStop);
        assert_eq!(M::of(StopReason::SmartStop, 80), M::SmartStop);
        assert_eq!(M::of(StopReason::MaxRounds, 20), M::RoundLimit);
    }
}
