//! The downtime goal of a migration and the part of it the source shim's
//! planner gets.
//!
//! The operator's goal covers the VM's whole pause as seen from the
//! source: the shim pauses the VM for the final copy and the later of its
//! memory digest and the Complete→Confirmed round trip (the two overlap),
//! then the Handover→Resumed round trip. The planner predicts only the
//! first part, so the gateway gives it the goal less one round trip.

use std::time::Duration;

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
}
