//! The convergence policy of a live migration: every decision about how
//! fast to copy and when to stop, as opposed to what the protocols say.
//! The I/O shells measure and pass the measurements in, with the clock
//! readings they were taken at; the policy answers with decisions. To
//! change how a migration converges, change this module tree.
//!
//! Two drivers, one where each decision is made:
//! - [`Planner`], in the source shim, once per pre-copy round. In: what
//!   the round achieved ([`RoundResult`]) and the costs of the pause
//!   (fixed, and per page left). Out: another round, a vCPU throttle,
//!   stop-and-copy or cancel ([`Decision`]); at the end, how it converged
//!   ([`ConvergenceMode`]).
//! - [`RelayPolicy`], in the source gateway's relay, whenever bytes move.
//!   In: bytes sent and acknowledged ([`Flight`]), the QUIC path's estimate
//!   ([`PathEstimate`]), the encoder's statistics and CPU time, where the
//!   copy is ([`CopyProgress`]). Out: whether to take more pages from the
//!   shim, how long to hold bytes back under a bandwidth cap, and the
//!   codec's level and long-distance matching ([`CodecSetting`]).
//!
//! The gateway links the two: it turns the operator's downtime goal into
//! the shim's budget ([`DowntimeGoal::shim_budget`]), and the relay's
//! windows pace the shim's rounds, so the round results the planner sees
//! are the WAN's pace.
//!
//! The parts: [`planner`] (the stop decision), [`window`] (in-flight
//! windows), [`pacer`] (the bandwidth cap), [`link`] (which link rate the
//! codec is tuned to), [`level`] (the codec level), [`downtime`] (the
//! budget), [`relay`] (the gateway's parts behind one type).

pub mod downtime;
pub mod level;
pub mod link;
pub mod pacer;
pub mod planner;
pub mod relay;
pub mod window;

pub use downtime::{DowntimeGoal, DowntimeMiss, DowntimeVerdict, PauseBreakdown};
pub use level::{Bottleneck, LevelConfig, LevelController};
pub use link::PathEstimate;
pub use planner::{ConvergenceMode, Decision, Planner, PlannerConfig, RoundResult, StopReason};
pub use relay::{CodecSetting, Flight, RelayConfig, RelayPolicy};
pub use window::{CopyProgress, FlowWindow};

/// A policy setting out of range; `key` names it as a config file would.
#[derive(Debug, thiserror::Error)]
#[error("invalid migration policy setting: {key} {why}")]
pub struct ConfigError {
    pub key: &'static str,
    pub why: String,
}
