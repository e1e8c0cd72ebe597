//! Runs one scenario on this machine: wanmig (the demo path with data
//! reduction), the raw pre-copy baseline (reduction off) on the same link
//! right after it, and QEMU's own live migration when asked and possible;
//! then puts the three beside the scenario's physical floor.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use wanmig_gateway::demo::{self, DemoReport};

use super::floor::{self, Floor, ImageFloor};
use super::matrix::{Loss, Scenario};
use crate::qemu::{QemuResult, QemuScenario};

/// Whether a run's checks held, and what it measured, in the form the
/// report tabulates.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Everything the demo checks held (outcome, memory, workload, TCP,
    /// disk).
    pub ok: bool,
    pub outcome: String,
    pub total_ms: u64,
    pub downtime_ms: Option<f64>,
    pub rounds: u32,
    pub wire_bytes: u64,
    pub reduction: f64,
    pub convergence: Option<String>,
    pub stop_reason: Option<String>,
    pub max_throttle: Option<u8>,
    pub tcp_session_survived: bool,
    pub memory_verified: bool,
    pub workload_verified: bool,
    /// `None`: no disk.
    pub disk_verified: Option<bool>,
    /// When the run failed to run at all (not a failed check).
    pub error: Option<String>,
}

impl RunSummary {
    fn of(r: &DemoReport) -> Self {
        RunSummary {
            ok: r.ok(),
            outcome: r.outcome.clone(),
            total_ms: r.total_ms,
            downtime_ms: r.downtime_ms,
            rounds: r.rounds,
            wire_bytes: r.wire_bytes,
            reduction: r.reduction,
            convergence: r.convergence.clone(),
            stop_reason: r.stop_reason.clone(),
            max_throttle: r.max_throttle,
            tcp_session_survived: r.tcp_session_survived,
            memory_verified: r.memory_verified,
            workload_verified: r.workload_verified,
            disk_verified: r.storage.as_ref().map(|s| s.verified),
            error: None,
        }
    }

    fn failed(why: String) -> Self {
        RunSummary {
            ok: false,
            outcome: "did-not-run".into(),
            total_ms: 0,
            downtime_ms: None,
            rounds: 0,
            wire_bytes: 0,
            reduction: 0.0,
            convergence: None,
            stop_reason: None,
            max_throttle: None,
            tcp_session_survived: false,
            memory_verified: false,
            workload_verified: false,
            disk_verified: None,
            error: Some(why),
        }
    }

    /// Succeeded and reported a downtime: the migration converged.
    pub fn converged(&self) -> bool {
        self.outcome == "succeeded" && self.downtime_ms.is_some()
    }
}

/// QEMU's run, or why there is none.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum QemuOutcome {
    NotRun { why: String },
    Ran(Box<QemuResult>),
}

/// One scenario's results.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub name: String,
    pub scenario: Scenario,
    pub wanmig: RunSummary,
    pub raw: RunSummary,
    pub qemu: QemuOutcome,
    pub image_floor: ImageFloor,
    pub floor: Floor,
    /// wanmig's total time ÷ the floor.
    pub time_over_floor: Option<f64>,
    /// Raw pre-copy time ÷ wanmig time (> 1: wanmig is faster).
    pub raw_over_wanmig_time: Option<f64>,
    /// Raw wire bytes ÷ wanmig wire bytes.
    pub raw_over_wanmig_bytes: Option<f64>,
    /// QEMU time ÷ wanmig time, when QEMU ran and succeeded.
    pub qemu_over_wanmig_time: Option<f64>,
    pub qemu_over_wanmig_bytes: Option<f64>,
    /// Wall time of the whole scenario (all runs), seconds.
    pub wall_s: f64,
    /// The full demo reports (series, per-kind bytes, storage).
    pub wanmig_report: Option<DemoReport>,
    pub raw_report: Option<DemoReport>,
}

impl ScenarioResult {
    /// The downtime goal: ≤ 300 ms + one RTT.
    pub fn downtime_goal_ms(&self) -> f64 {
        300.0 + self.scenario.link.rtt_ms as f64
    }

    pub fn clean(&self) -> bool {
        self.scenario.link.loss == Loss::Clean
    }
}

/// When to run QEMU's baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum QemuPolicy {
    Never,
    /// On clean links with the moderate busy guest (the link sweep).
    CleanLinks,
    Always,
}

fn ratio(num: f64, den: f64) -> Option<f64> {
    (num > 0.0 && den > 0.0).then(|| num / den)
}

async fn demo_run(s: &Scenario, reduction: bool) -> (RunSummary, Option<DemoReport>) {
    match demo::run(s.demo_options(reduction), |_| {}).await {
        Ok(r) => (RunSummary::of(&r), Some(r)),
        Err(e) => (RunSummary::failed(format!("{e:#}")), None),
    }
}

fn qemu_scenario(s: &Scenario) -> QemuScenario {
    let opts = s.demo_options(true);
    QemuScenario {
        mix: s.mix.spec(),
        seed: s.seed,
        mem_bytes: s.mem_bytes,
        rtt: opts.rtt(),
        rate_bps: opts.rate_bps(),
        loss: opts.link.forward.loss.mean_loss(),
        loss_model: Some(opts.link.forward.loss),
        jitter: opts.link.forward.jitter,
        dirty_bytes_per_sec: opts.effective_dirty_rate(),
        working_set_pages: s.working_set_pages,
        downtime: opts.downtime,
        ..QemuScenario::demo()
    }
}

async fn qemu_run(s: &Scenario, policy: QemuPolicy) -> QemuOutcome {
    let wanted = match policy {
        QemuPolicy::Never => false,
        QemuPolicy::Always => true,
        QemuPolicy::CleanLinks => {
            s.link.loss == Loss::Clean
                && s.workload == wanmig_gateway::demo::GuestWorkload::Moderate
                && s.mix == wanmig_gateway::demo::MemoryMix::Busy
        }
    };
    if !wanted {
        return QemuOutcome::NotRun {
            why: format!("not asked for ({policy:?})"),
        };
    }
    if let Err(why) = crate::qemu::available() {
        return QemuOutcome::NotRun { why };
    }
    match crate::qemu::run_baseline(&qemu_scenario(s)).await {
        Ok(r) => QemuOutcome::Ran(Box::new(r)),
        Err(e) => QemuOutcome::NotRun {
            why: format!("QEMU baseline failed to run: {e:#}"),
        },
    }
}

/// Runs `s`: wanmig, then raw pre-copy, then (by `policy`) QEMU, on the
/// same link settings; `image` is the floor of `s`'s memory image.
pub async fn run(s: &Scenario, image: ImageFloor, policy: QemuPolicy) -> ScenarioResult {
    let started = Instant::now();
    let (wanmig, wanmig_report) = demo_run(s, true).await;
    let (raw, raw_report) = demo_run(s, false).await;
    let qemu = qemu_run(s, policy).await;
    let opts = s.demo_options(true);
    let floor = floor::floor(
        &image,
        opts.rate_bps(),
        s.link.rtt_ms as f64,
        opts.effective_dirty_rate(),
        s.working_set_pages,
        floor::PageRewrite::of(s.workload),
    );
    let (qt, qb) = match &qemu {
        QemuOutcome::Ran(q) if q.ok => (
            ratio(q.total_ms as f64, wanmig.total_ms as f64),
            ratio(q.wire_bytes as f64, wanmig.wire_bytes as f64),
        ),
        _ => (None, None),
    };
    ScenarioResult {
        name: s.slug(),
        scenario: s.clone(),
        time_over_floor: if wanmig.ok {
            ratio(wanmig.total_ms as f64, floor.floor_ms)
        } else {
            None
        },
        raw_over_wanmig_time: ratio(raw.total_ms as f64, wanmig.total_ms as f64),
        raw_over_wanmig_bytes: ratio(raw.wire_bytes as f64, wanmig.wire_bytes as f64),
        qemu_over_wanmig_time: qt,
        qemu_over_wanmig_bytes: qb,
        wanmig,
        raw,
        qemu,
        image_floor: image,
        floor,
        wall_s: started.elapsed().as_secs_f64(),
        wanmig_report,
        raw_report,
    }
}
