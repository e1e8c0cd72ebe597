//! What the demo samples from the source's migration record while the
//! migration runs: the progress series (wire and guest bytes over time,
//! from which goodput follows) and the pages of each pre-copy round.

use serde::Serialize;

use crate::migration::MigrationRecord;

/// One reading of the source's migration record.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProgressSample {
    /// Milliseconds since the migration began.
    pub t_ms: u64,
    /// Codec bytes on the WAN so far.
    pub wire_bytes: u64,
    /// Guest page bytes relayed so far (before reduction).
    pub guest_bytes: u64,
    pub round: u32,
    pub phase: String,
    /// Wire goodput since the previous sample, Mbit/s.
    pub wire_mbit_s: f64,
    /// Guest bytes relayed since the previous sample, as Mbit/s.
    pub guest_mbit_s: f64,
}

/// Collects [`ProgressSample`]s and the per-round page counts.
#[derive(Debug, Default, Clone)]
pub struct Series {
    samples: Vec<ProgressSample>,
    /// Pages of each round seen complete (index = round).
    rounds: Vec<u64>,
}

impl Series {
    /// Takes one reading `t_ms` after the migration began.
    pub fn observe(&mut self, t_ms: u64, rec: &MigrationRecord) {
        let p = &rec.progress;
        let (wire_mbit_s, guest_mbit_s) = match self.samples.last() {
            Some(prev) if t_ms > prev.t_ms => {
                let dt = (t_ms - prev.t_ms) as f64 / 1e3;
                (
                    p.bytes_out.saturating_sub(prev.wire_bytes) as f64 * 8.0 / dt / 1e6,
                    p.bytes_in.saturating_sub(prev.guest_bytes) as f64 * 8.0 / dt / 1e6,
                )
            }
            _ => (0.0, 0.0),
        };
        // Rounds finished since the last reading: the previous round's
        // count is exact; rounds shorter than a sampling period between
        // them are unknown (0) unless the record lists them.
        let round = p.round as usize;
        if round > 0 && self.rounds.len() < round {
            self.rounds.resize(round, 0);
            self.rounds[round - 1] = p.last_round_pages;
        }
        self.samples.push(ProgressSample {
            t_ms,
            wire_bytes: p.bytes_out,
            guest_bytes: p.bytes_in,
            round: p.round,
            phase: format!("{:?}", rec.phase),
            wire_mbit_s,
            guest_mbit_s,
        });
    }

    /// The samples and the round page counts, the current (last) round's
    /// pages from `last`.
    pub fn finish(mut self, last: &MigrationRecord) -> (Vec<ProgressSample>, Vec<u64>) {
        let p = &last.progress;
        let round = p.round as usize;
        if self.rounds.len() <= round {
            self.rounds.resize(round + 1, 0);
        }
        if round > 0 {
            self.rounds[round - 1] = p.last_round_pages;
        }
        self.rounds[round] = p.round_pages;
        (self.samples, self.rounds)
    }
}
