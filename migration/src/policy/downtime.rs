//! The downtime goal of a migration: the part of it the source shim's
//! planner gets, and the verdict on the pause as measured.
//!
//! The operator's goal covers the VM's whole pause as seen from the
//! source: the shim pauses the VM for the final copy and the later of its
//! memory digest and the Complete→Confirmed round trip (the two overlap),
//! then the Handover→Resumed round trip. The planner predicts only the
//! first part, so the gateway gives it the goal less one round trip.
//!
//! After the migration the shim's [`PauseBreakdown`] says where the pause
//! went, and [`DowntimeGoal::judge`] says whether the goal was met and,
//! when not, which part is to blame ([`DowntimeMiss`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// An operator's downtime goal on a link of round-trip time `rtt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DowntimeGoal {
    /// The longest acceptable pause of the VM.
    pub target: Duration,
    /// The link's round trip to the destination.
    pub rtt: Duration,
}

impl DowntimeGoal {
    /// The goal `target` on a link of round-trip time `rtt`.
    pub fn new(target: Duration, rtt: Duration) -> Self {
        DowntimeGoal { target, rtt }
    }

    /// The stop-and-copy budget for the source shim's planner: the target
    /// less the handover's round trip, and never less than a tenth of the
    /// target, so a long link still converges.
    pub fn shim_budget(&self) -> Duration {
        self.target.saturating_sub(self.rtt).max(self.target / 10)
    }
}

/// Where a migration's pause went, as the source shim measured it. The
/// parts follow each other except the digest, which runs beside the final
/// copy and the state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PauseBreakdown {
    /// Pausing the vCPU and taking the last dirty log.
    pub stop: Duration,
    /// Writing the final dirty pages to the stream.
    pub final_copy: Duration,
    /// Saving the vCPU and device state and writing it.
    pub device_state: Duration,
    /// The source's memory digest at the pause (hashing the blocks
    /// written since they were sent), beside the final copy and state.
    pub digest: Duration,
    /// Digest blocks (64 KiB) hashed at the pause.
    pub digest_blocks: u64,
    /// From the digest sent until the destination confirmed: the rest of
    /// the final copy crossing the link, the destination's own digest and
    /// one round trip.
    pub confirm: Duration,
    /// From `Handover` sent until `Resumed` read: one round trip and the
    /// destination's resume.
    pub handover: Duration,
    /// The pause the planner predicted for the final dirty set when it
    /// chose to stop (`None` before it had measured a rate).
    pub predicted: Option<Duration>,
}

/// The part of a pause that made it miss its goal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DowntimeMiss {
    /// The final dirty set: more pages than the link carries within the
    /// goal at its measured rate.
    FinalDirtySet,
    /// The source's memory digest, beyond what the final copy covered.
    Digest,
    /// Saving and sending the vCPU and device state.
    DeviceState,
    /// The link's round trips: a handover needs two, and the goal is
    /// shorter than they took.
    Link,
    /// None of the measured parts: the host (scheduling, load).
    Host,
}

impl DowntimeMiss {
    /// The kebab-case name reports use.
    pub fn label(self) -> &'static str {
        match self {
            DowntimeMiss::FinalDirtySet => "final-dirty-set",
            DowntimeMiss::Digest => "digest",
            DowntimeMiss::DeviceState => "device-state",
            DowntimeMiss::Link => "link",
            DowntimeMiss::Host => "host",
        }
    }
}

/// Whether a migration's pause met its goal, and if not, why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DowntimeVerdict {
    /// The goal.
    pub goal: Duration,
    /// The pause as measured at the source.
    pub measured: Duration,
    /// `measured <= goal`.
    pub met: bool,
    /// The largest part of the pause, when the goal was missed.
    pub miss: Option<DowntimeMiss>,
    /// The pause in parts, for the operator, when the goal was missed.
    pub why: Option<String>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl DowntimeGoal {
    /// Judges a pause of `measured` (parts in `pause`, `final_pages` pages
    /// sent while paused) against this goal.
    ///
    /// The parts: the link's share is the handover's round trip plus one
    /// more inside the confirmation wait (the link's RTT when known, else
    /// the handover's); the final dirty set's is stopping, writing the
    /// pages and the rest of the confirmation wait (the pages still
    /// crossing the link); the digest's is what the final copy and state
    /// did not cover; what no part explains is the host's. The largest is
    /// to blame, except that a goal shorter than two round trips is the
    /// link's whatever else took time.
    pub fn judge(
        &self,
        measured: Duration,
        pause: &PauseBreakdown,
        final_pages: u64,
    ) -> DowntimeVerdict {
        let met = measured <= self.target;
        if met {
            return DowntimeVerdict {
                goal: self.target,
                measured,
                met,
                miss: None,
                why: None,
            };
        }
        let round_trip = if self.rtt.is_zero() {
            pause.handover
        } else {
            self.rtt
        };
        let link = pause.handover + pause.confirm.min(round_trip);
        let final_set = pause.stop + pause.final_copy + pause.confirm.saturating_sub(round_trip);
        let digest = pause
            .digest
            .saturating_sub(pause.final_copy + pause.device_state);
        let state = pause.device_state;
        let host = measured.saturating_sub(link + final_set + digest + state);
        let parts = [
            (DowntimeMiss::FinalDirtySet, final_set),
            (DowntimeMiss::Digest, digest),
            (DowntimeMiss::DeviceState, state),
            (DowntimeMiss::Link, link),
            (DowntimeMiss::Host, host),
        ];
        let largest = parts
            .iter()
            .max_by_key(|(_, d)| *d)
            .map_or(DowntimeMiss::Host, |(m, _)| *m);
        let miss = if !self.rtt.is_zero() && self.target < 2 * self.rtt {
            DowntimeMiss::Link
        } else {
            largest
        };
        let mut why = format!(
            "the VM paused {:.1} ms against a goal of {:.1} ms; largest part: {}. \
             Final dirty set ({final_pages} pages) {:.1} ms, source digest beyond the copy \
             {:.1} ms ({} blocks), device state {:.1} ms, link round trips {:.1} ms, host {:.1} ms",
            ms(measured),
            ms(self.target),
            miss.label(),
            ms(final_set),
            ms(digest),
            pause.digest_blocks,
            ms(state),
            ms(link),
            ms(host),
        );
        if let Some(p) = pause.predicted {
            why.push_str(&format!("; the planner predicted {:.1} ms", ms(p)));
        }
        if miss == DowntimeMiss::Link && self.target < 2 * self.rtt {
            why.push_str(&format!(
                "; a handover needs two round trips ({:.1} ms on this link), more than the goal",
                ms(2 * self.rtt)
            ));
        }
        DowntimeVerdict {
            goal: self.target,
            measured,
            met,
            miss: Some(miss),
            why: Some(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shim_budget_leaves_room_for_one_round_trip() {
        let ms = Duration::from_millis;
        let budget = |target, rtt| DowntimeGoal::new(target, rtt).shim_budget();
        assert_eq!(budget(ms(300), ms(60)), ms(240));
        assert_eq!(budget(ms(300), Duration::ZERO), ms(300));
        assert_eq!(budget(ms(300), ms(1000)), ms(30));
    }

    fn pause(
        final_copy: u64,
        digest: u64,
        state: u64,
        confirm: u64,
        handover: u64,
    ) -> PauseBreakdown {
        let ms = Duration::from_millis;
        PauseBreakdown {
            stop: ms(1),
            final_copy: ms(final_copy),
            device_state: ms(state),
            digest: ms(digest),
            digest_blocks: 3,
            confirm: ms(confirm),
            handover: ms(handover),
            predicted: Some(ms(20)),
        }
    }

    #[test]
    fn a_pause_within_the_goal_is_met_and_needs_no_reason() {
        let ms = Duration::from_millis;
        let v = DowntimeGoal::new(ms(300), ms(100)).judge(ms(250), &pause(10, 5, 2, 120, 110), 40);
        assert!(v.met);
        assert_eq!(
            (v.goal, v.measured, v.miss, v.why),
            (ms(300), ms(250), None, None)
        );
    }

    #[test]
    fn a_missed_goal_blames_its_largest_part() {
        let ms = Duration::from_millis;
        let goal = DowntimeGoal::new(ms(300), ms(100));
        // The source digest ran 340 ms beside a 10 ms copy.
        let v = goal.judge(ms(565), &pause(10, 350, 2, 101, 101), 1);
        assert!(!v.met);
        assert_eq!(v.miss, Some(DowntimeMiss::Digest));
        let why = v.why.unwrap();
        assert!(why.contains("largest part: digest"), "{why}");
        assert!(why.contains("1 pages"), "{why}");
        // Pages still crossing the link after the copy was written.
        let v = goal.judge(ms(800), &pause(30, 5, 2, 560, 101), 9000);
        assert_eq!(v.miss, Some(DowntimeMiss::FinalDirtySet));
        // Slow state saving.
        let v = goal.judge(ms(600), &pause(10, 5, 300, 101, 101), 10);
        assert_eq!(v.miss, Some(DowntimeMiss::DeviceState));
        // Nothing measured explains it.
        let v = goal.judge(ms(900), &pause(10, 5, 2, 101, 101), 10);
        assert_eq!(v.miss, Some(DowntimeMiss::Host));
    }

    #[test]
    fn a_goal_shorter_than_two_round_trips_is_the_links_fault() {
        let ms = Duration::from_millis;
        let v = DowntimeGoal::new(ms(150), ms(100)).judge(ms(230), &pause(10, 5, 2, 105, 101), 5);
        assert_eq!(v.miss, Some(DowntimeMiss::Link));
        assert!(v.why.unwrap().contains("two round trips"));
        // Without a known RTT the handover's round trip stands in.
        let v = DowntimeGoal::new(ms(1), Duration::ZERO).judge(ms(9), &pause(1, 1, 1, 3, 3), 2);
        assert!(!v.met);
        assert_eq!(v.miss, Some(DowntimeMiss::Link));
    }

    #[test]
    fn a_verdict_reads_back_from_json() {
        let ms = Duration::from_millis;
        let v = DowntimeGoal::new(ms(100), ms(10)).judge(ms(150), &pause(10, 120, 2, 12, 11), 3);
        let back: DowntimeVerdict =
            serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
        assert_eq!(back, v);
        // A report without a breakdown (an older shim) reads as all zero.
        let empty: PauseBreakdown = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, PauseBreakdown::default());
    }
}
