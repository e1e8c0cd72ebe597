//! The migrations this gateway took part in, in flight and finished: what
//! `wanmig status` and `GET /v1/migrations` show, and what the progress
//! display polls.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use wanmig_migration::policy::{ConvergenceMode, DowntimeGoal, DowntimeVerdict, StopReason};
use wanmig_migration::run::MigrationReport;

use wanmig_migration::session::{Phase, Progress};

/// Finished migrations kept for status.
const KEEP_FINISHED: usize = 64;

/// Which end of the migration this gateway was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    Outgoing,
    Incoming,
}

/// How a migration ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The VM runs at the destination, which confirmed it.
    Succeeded,
    /// It failed before the handover; the VM runs at the source.
    FailedKeptAtSource,
    /// The source handed the VM over but never heard that the destination
    /// resumed it: the source will not run it again; check the destination.
    HandoverUnconfirmed,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::FailedKeptAtSource => "failed-kept-at-source",
            Outcome::HandoverUnconfirmed => "handover-unconfirmed",
        }
    }
}

/// One migration as reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationRecord {
    pub id: String,
    pub vm: String,
    pub from: String,
    pub to: String,
    pub direction: Direction,
    pub phase: Phase,
    pub progress: Progress,
    /// Unix time the migration started, milliseconds.
    pub started_unix_ms: u64,
    pub elapsed_ms: u64,
    /// `None` while in flight.
    pub outcome: Option<Outcome>,
    /// What went wrong, for the operator.
    pub error: Option<String>,
    /// The VM's pause, once it succeeded. Outgoing: the source's pause
    /// until the destination reported the VM running. Incoming: from the
    /// first page of the stop-and-copy round arriving here until the VM
    /// resumed here, the part of the source's pause this end sees (the
    /// source's adds the link's delay both ways; when that round carried
    /// no pages, this end cannot tell it began and counts from the first
    /// page of the round before).
    pub downtime_ms: Option<f64>,
    /// The live pre-copy rounds, once it succeeded: as the source shim
    /// reported them (outgoing), or the stop-and-copy round's number, the
    /// same count, as the destination saw it in the page order (incoming).
    pub rounds: u32,
    /// BLAKE3 of guest memory at the handover (hex), as both shims checked.
    pub memory_digest: Option<String>,
    /// How a migration whose link failed late was (or is being) settled.
    pub resolution: Option<String>,
    /// Incoming: the VM is held here, paused, until the source or an
    /// operator settles it (`wanmig migration settle`).
    #[serde(default)]
    pub parked: bool,
    /// How the source shim's pre-copy converged ("normal", "auto-converge",
    /// "smart-stop" or "round-limit"; outgoing, when it finished).
    #[serde(default)]
    pub convergence: Option<String>,
    /// Why the source shim chose stop-and-copy ("fits-budget",
    /// "smart-stop" or "max-rounds").
    #[serde(default)]
    pub stop_reason: Option<String>,
    /// Highest vCPU throttle the source shim applied, percent.
    #[serde(default)]
    pub max_throttle: Option<u8>,
    /// Pages of each live round, then the final stop-and-copy round's
    /// pages last (empty until the source shim finished).
    #[serde(default)]
    pub round_pages: Vec<u64>,
    /// Size of the VM state blob, bytes.
    #[serde(default)]
    pub state_bytes: Option<u64>,
    /// The downtime goal the migration ran with, ms (outgoing, when the
    /// source shim finished).
    #[serde(default)]
    pub downtime_goal_ms: Option<f64>,
    /// Whether the pause (`downtime_ms`) met the goal.
    #[serde(default)]
    pub downtime_met: Option<bool>,
    /// When the goal was missed, the largest part of the pause:
    /// "final-dirty-set", "digest", "device-state", "link" or "host".
    #[serde(default)]
    pub downtime_miss: Option<String>,
    /// When the goal was missed, the pause in parts, for the operator.
    #[serde(default)]
    pub downtime_why: Option<String>,
}

impl MigrationRecord {
    pub fn finished(&self) -> bool {
        self.outcome.is_some()
    }

    /// Keeps what the source shim reported about a finished migration
    /// run with the downtime goal `goal`, and returns the verdict on it.
    pub fn absorb_report(
        &mut self,
        report: &MigrationReport,
        goal: &DowntimeGoal,
    ) -> DowntimeVerdict {
        let verdict = goal.judge(report.downtime, &report.pause, report.final_pages);
        self.downtime_goal_ms = Some(verdict.goal.as_secs_f64() * 1e3);
        self.downtime_met = Some(verdict.met);
        self.downtime_miss = verdict.miss.map(|m| m.label().to_string());
        self.downtime_why = verdict.why.clone();
        self.downtime_ms = Some(report.downtime.as_secs_f64() * 1e3);
        self.rounds = report.rounds.len() as u32;
        self.memory_digest = Some(report.memory_digest.clone());
        self.convergence = Some(convergence_label(report.mode).to_string());
        self.stop_reason = Some(stop_reason_label(report.stop_reason).to_string());
        self.max_throttle = Some(report.max_throttle);
        self.round_pages = report
            .rounds
            .iter()
            .map(|r| r.pages)
            .chain(std::iter::once(report.final_pages))
            .collect();
        self.state_bytes = Some(report.state_bytes);
        verdict
    }
}

/// The record's name for how pre-copy converged.
pub fn convergence_label(mode: ConvergenceMode) -> &'static str {
    match mode {
        ConvergenceMode::Converged => "normal",
        ConvergenceMode::AutoConverge => "auto-converge",
        ConvergenceMode::SmartStop => "smart-stop",
        ConvergenceMode::RoundLimit => "round-limit",
    }
}

/// The record's name for why the shim stopped pre-copy.
pub fn stop_reason_label(reason: StopReason) -> &'static str {
    match reason {
        StopReason::FitsBudget => "fits-budget",
        StopReason::SmartStop => "smart-stop",
        StopReason::MaxRounds => "max-rounds",
    }
}

struct Slot {
    record: MigrationRecord,
    started: Instant,
}

/// The shared list of migrations.
#[derive(Clone, Default)]
pub struct Records {
    inner: Arc<Mutex<RecordsInner>>,
}

#[derive(Default)]
struct RecordsInner {
    slots: VecDeque<Slot>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Records {
    /// A fresh id for an outgoing migration from `site`: 128 random bits
    /// from the thread's CSPRNG, so another site cannot guess the id of a
    /// migration it did not take part in (the destination checks who
    /// settles a migration anyway; see [`super::settle`]).
    pub fn next_id(&self, site: &str) -> String {
        format!("{site}-{:032x}", rand::random::<u128>())
    }

    /// Adds an in-flight migration.
    pub fn insert(&self, id: &str, vm: &str, from: &str, to: &str, direction: Direction) {
        let started_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut g = lock(&self.inner);
        g.slots.push_back(Slot {
            record: MigrationRecord {
                id: id.to_string(),
                vm: vm.to_string(),
                from: from.to_string(),
                to: to.to_string(),
                direction,
                phase: Phase::Opening,
                progress: Progress::default(),
                started_unix_ms,
                elapsed_ms: 0,
                outcome: None,
                error: None,
                downtime_ms: None,
                rounds: 0,
                memory_digest: None,
                resolution: None,
                parked: false,
                convergence: None,
                stop_reason: None,
                max_throttle: None,
                round_pages: Vec::new(),
                state_bytes: None,
                downtime_goal_ms: None,
                downtime_met: None,
                downtime_miss: None,
                downtime_why: None,
            },
            started: Instant::now(),
        });
        while g.slots.len() > KEEP_FINISHED
            && g.slots.iter().filter(|s| s.record.finished()).count() > KEEP_FINISHED / 2
        {
            let Some(i) = g.slots.iter().position(|s| s.record.finished()) else {
                break;
            };
            g.slots.remove(i);
        }
    }

    /// Changes the record `id` (for the given direction: one gateway may
    /// be both ends of a migration in tests).
    /// Applies `f` to the record `id` of `direction`, if there is one,
    /// and returns what `f` returned.
    pub fn update<R>(
        &self,
        id: &str,
        direction: Direction,
        f: impl FnOnce(&mut MigrationRecord) -> R,
    ) -> Option<R> {
        let mut g = lock(&self.inner);
        let s = g
            .slots
            .iter_mut()
            .find(|s| s.record.id == id && s.record.direction == direction)?;
        s.record.elapsed_ms = s.started.elapsed().as_millis() as u64;
        Some(f(&mut s.record))
    }

    pub fn get(&self, id: &str) -> Option<MigrationRecord> {
        self.all().into_iter().find(|r| r.id == id)
    }

    /// Every record, oldest first, with elapsed times brought up to date.
    pub fn all(&self) -> Vec<MigrationRecord> {
        let g = lock(&self.inner);
        g.slots
            .iter()
            .map(|s| {
                let mut r = s.record.clone();
                if !r.finished() {
                    r.elapsed_ms = s.started.elapsed().as_millis() as u64;
                }
                r
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wanmig_migration::policy::PauseBreakdown;

    #[test]
    fn records_track_updates_and_keep_a_bounded_history() {
        let r = Records::default();
        let id = r.next_id("site-a");
        assert_ne!(id, r.next_id("site-a"));
        let random = id.strip_prefix("site-a-").unwrap();
        assert_eq!(random.len(), 32, "{id}");
        assert!(u128::from_str_radix(random, 16).is_ok(), "{id}");
        r.insert(&id, "web", "site-a", "site-b", Direction::Outgoing);
        r.update(&id, Direction::Outgoing, |m| m.phase = Phase::Copying);
        r.update(&id, Direction::Incoming, |m| m.phase = Phase::Aborted);
        let m = r.get(&id).unwrap();
        assert_eq!(m.phase, Phase::Copying);
        assert!(!m.finished());
        for i in 0..(2 * KEEP_FINISHED) {
            let id = format!("x{i}");
            r.insert(&id, "v", "a", "b", Direction::Incoming);
            r.update(&id, Direction::Incoming, |m| {
                m.outcome = Some(Outcome::Succeeded)
            });
        }
        let all = r.all();
        assert!(all.len() <= KEEP_FINISHED + 1, "{}", all.len());
        assert!(all.iter().any(|m| m.id == id), "in-flight records are kept");
    }

    fn round(round: u32, pages: u64) -> wanmig_migration::run::RoundReport {
        wanmig_migration::run::RoundReport {
            round,
            pages,
            bytes: pages * 4096,
            elapsed_ms: 10.0,
            dirty_after: 0,
            throttle: 0,
        }
    }

    #[test]
    fn a_finished_report_fills_the_convergence_fields() {
        let report = MigrationReport {
            memory_pages: 1000,
            rounds: vec![round(0, 1000), round(1, 80), round(2, 30)],
            final_pages: 7,
            total_pages_sent: 1117,
            total_bytes_sent: 1117 * 4096,
            downtime: std::time::Duration::from_millis(250),
            pause: PauseBreakdown {
                final_copy: std::time::Duration::from_millis(200),
                ..PauseBreakdown::default()
            },
            total_time: std::time::Duration::from_secs(3),
            stop_reason: StopReason::SmartStop,
            mode: ConvergenceMode::AutoConverge,
            max_throttle: 40,
            memory_digest: "ab".repeat(32),
            state_bytes: 12345,
        };
        let r = Records::default();
        r.insert("m1", "web", "a", "b", Direction::Outgoing);
        let ms = std::time::Duration::from_millis;
        let goal = DowntimeGoal::new(ms(300), ms(20));
        r.update("m1", Direction::Outgoing, |m| {
            m.absorb_report(&report, &goal);
        });
        let m = r.get("m1").unwrap();
        assert_eq!(m.round_pages, vec![1000, 80, 30, 7]);
        assert_eq!(m.rounds, 3);
        assert_eq!(m.convergence.as_deref(), Some("auto-converge"));
        assert_eq!(m.stop_reason.as_deref(), Some("smart-stop"));
        assert_eq!(m.max_throttle, Some(40));
        assert_eq!(m.state_bytes, Some(12345));
        assert_eq!(m.downtime_ms, Some(250.0));
        assert_eq!(m.downtime_goal_ms, Some(300.0));
        assert_eq!(m.downtime_met, Some(true));
        assert_eq!(
            (m.downtime_miss.as_deref(), m.downtime_why.as_deref()),
            (None, None)
        );

        // The same pause against a goal of 100 ms: missed, the final copy
        // to blame.
        let mut missed = m.clone();
        let v = missed.absorb_report(&report, &DowntimeGoal::new(ms(100), ms(20)));
        assert!(!v.met);
        assert_eq!(missed.downtime_met, Some(false));
        assert_eq!(missed.downtime_miss.as_deref(), Some("final-dirty-set"));
        assert!(missed.downtime_why.as_deref().unwrap().contains("7 pages"));

        // Records serialised before these fields existed still parse.
        let mut v = serde_json::to_value(&m).unwrap();
        for k in [
            "convergence",
            "stop_reason",
            "max_throttle",
            "round_pages",
            "state_bytes",
            "downtime_goal_ms",
            "downtime_met",
            "downtime_miss",
            "downtime_why",
        ] {
            v.as_object_mut().unwrap().remove(k);
        }
        let old: MigrationRecord = serde_json::from_value(v).unwrap();
        assert!(old.round_pages.is_empty() && old.convergence.is_none());
    }
}
