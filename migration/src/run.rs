//! What a shim migration is asked to do and what it reports having done:
//! the options of the outgoing ([`MigrateOptions`]) and incoming
//! ([`ReceiveOptions`]) side and their reports ([`MigrationReport`] with a
//! [`RoundReport`] per pre-copy round, [`IncomingReport`]). Plain data: the
//! shim runs migrations, the gateway asks for them and relays the reports.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::policy::{ConvergenceMode, PauseBreakdown, PlannerConfig, StopReason};

/// Options of an outgoing migration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrateOptions {
    /// The convergence planner's tunables (downtime budget, timeout...).
    pub planner: PlannerConfig,
    /// How long to wait for any one answer from the destination.
    pub answer_timeout: Duration,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        MigrateOptions {
            planner: PlannerConfig::default(),
            answer_timeout: Duration::from_secs(30),
        }
    }
}

/// One pre-copy round as reported.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoundReport {
    /// Round number (0 = all of memory), as the round's `Pages`
    /// messages carry it.
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

/// What an outgoing migration did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrationReport {
    /// Guest memory in pages.
    pub memory_pages: u64,
    /// The live rounds.
    pub rounds: Vec<RoundReport>,
    /// Pages sent while paused (the stop-and-copy round).
    pub final_pages: u64,
    /// All pages sent.
    pub total_pages_sent: u64,
    /// All bytes written to the stream.
    pub total_bytes_sent: u64,
    /// Source pause until the destination reported it resumed.
    pub downtime: Duration,
    /// Where the pause went (all zero from a shim that does not say).
    #[serde(default)]
    pub pause: PauseBreakdown,
    /// Whole migration.
    pub total_time: Duration,
    /// Why stop-and-copy was chosen.
    pub stop_reason: StopReason,
    /// How it converged.
    pub mode: ConvergenceMode,
    /// Highest vCPU throttle applied, percent.
    pub max_throttle: u8,
    /// BLAKE3 of guest memory at pause (hex), confirmed by the destination.
    pub memory_digest: String,
    /// Size of the VM state blob.
    pub state_bytes: u64,
}

/// Options of an incoming migration.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    /// Longest silence from the source before giving up.
    pub idle_timeout: Duration,
    /// Longest wait for the `Handover` after confirming complete state;
    /// `None`: until the stream closes. A gateway that holds a confirmed VM
    /// parked while a lost link is settled asks for `None`, so the VM is
    /// never dropped on a timeout (closing the stream still discards it).
    pub handover_timeout: Option<Duration>,
}

impl Default for ReceiveOptions {
    fn default() -> Self {
        ReceiveOptions {
            idle_timeout: Duration::from_secs(60),
            handover_timeout: Some(Duration::from_secs(60)),
        }
    }
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
