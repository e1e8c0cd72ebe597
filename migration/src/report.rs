//! What a shim's live migration reports, as the gateway records it: each
//! pre-copy round ([`RoundReport`]), how pre-copy converged
//! ([`ConvergenceMode`]), and what the destination received
//! ([`IncomingReport`]). Plain data, serialized by the shim and read by
//! the gateway (over the shim's control channel, or from the report file
//! a shim process leaves).

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// One pre-copy round as reported.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoundReport {
    /// Round number (0 = all of memory), as the round's `Pages` messages
    /// carried it.
    pub round: u32,
    /// Pages sent.
    pub pages: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Milliseconds the round took.
    pub elapsed_ms: f64,
    /// Pages dirty after the round.
    pub dirty_after: u64,
    /// vCPU throttle during the round, percent.
    pub throttle: u8,
}

/// How the migration converged.
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

/// What an incoming migration received.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IncomingReport {
    /// Pages received (re-sent pages count each time).
    pub pages_received: u64,
    /// BLAKE3 of guest memory as received, equal to the source's.
    pub memory_digest: String,
    /// Time from hello to resume.
    pub total_time: Duration,
}
