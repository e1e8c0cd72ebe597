//! The scenario runner: runs a set of the matrix
//! ([`matrix`]) on this machine — wanmig, raw pre-copy and (where asked)
//! QEMU side by side per scenario ([`run`]) — computes each scenario's
//! physical floor ([`floor`]), and writes per-run JSON, the combined JSON
//! and the Markdown report with its charts ([`report`], [`plot`]).

pub mod floor;
pub mod matrix;
pub mod plot;
pub mod report;
pub mod run;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use floor::ImageFloor;
use matrix::{Scenario, Set};
use run::{QemuPolicy, ScenarioResult};

/// What to run and where to write it.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    pub set: Set,
    pub out_dir: PathBuf,
    pub qemu: QemuPolicy,
    /// Only scenarios whose name contains this.
    pub filter: Option<String>,
}

/// The floors of memory images, computed once per (mix, seed, size).
#[derive(Default)]
struct FloorCache(HashMap<(String, u64, u64), ImageFloor>);

impl FloorCache {
    async fn get(&mut self, s: &Scenario) -> Result<ImageFloor> {
        let key = (s.mix.label().to_string(), s.seed, s.mem_bytes);
        if let Some(f) = self.0.get(&key) {
            return Ok(*f);
        }
        let (spec, seed, mem) = (s.mix.spec(), s.seed, s.mem_bytes);
        let f = tokio::task::spawn_blocking(move || floor::image_floor(&spec, seed, mem))
            .await
            .context("floor thread")??;
        self.0.insert(key, f);
        Ok(f)
    }
}

/// Where the benchmarks write their report: `$WANMIG_REPORT_DIR` (relative
/// to the workspace root), else `target/scenarios` in the workspace.
pub fn report_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = root.canonicalize().unwrap_or(root);
    std::env::var_os("WANMIG_REPORT_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root.join(p) })
        .unwrap_or_else(|| root.join("target/scenarios"))
}

fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0) as u64;
    format!("{}m{:02}s", s / 60, s % 60)
}

/// Runs `opts.set`, printing progress and an ETA, writing each result to
/// `out_dir/runs/NAME.json` as it finishes and the report at the end.
pub async fn run_set(opts: &RunnerOptions) -> Result<Vec<ScenarioResult>> {
    let scenarios: Vec<Scenario> = opts
        .set
        .scenarios()
        .into_iter()
        .filter(|s| {
            opts.filter
                .as_ref()
                .is_none_or(|f| s.slug().contains(f.as_str()))
        })
        .collect();
    let runs = opts.out_dir.join("runs");
    std::fs::create_dir_all(&runs).with_context(|| format!("creating {}", runs.display()))?;
    let started = Instant::now();
    let mut floors = FloorCache::default();
    let mut results = Vec::new();
    let n = scenarios.len();
    println!(
        "scenarios: {n} to run ({:?} set), QEMU baseline {:?}, writing to {}",
        opts.set,
        opts.qemu,
        opts.out_dir.display()
    );
    for (i, s) in scenarios.iter().enumerate() {
        let image = floors.get(s).await?;
        let r = run::run(s, image, opts.qemu).await;
        println!(
            "[{}/{n}] {}: wanmig {} ms ({}, downtime {}), raw {} ms, ×floor {}, {}",
            i + 1,
            r.name,
            r.wanmig.total_ms,
            r.wanmig.convergence.as_deref().unwrap_or(&r.wanmig.outcome),
            r.wanmig
                .downtime_ms
                .map_or("-".into(), |d| format!("{d:.0} ms")),
            r.raw.total_ms,
            r.time_over_floor.map_or("-".into(), |x| format!("{x:.2}")),
            if r.wanmig.ok {
                "verified"
            } else {
                "CHECKS FAILED"
            },
        );
        let elapsed = started.elapsed().as_secs_f64();
        let eta = elapsed / (i + 1) as f64 * (n - i - 1) as f64;
        println!(
            "    elapsed {}, ETA {} for the remaining {}",
            fmt_secs(elapsed),
            fmt_secs(eta),
            n - i - 1
        );
        write_json(&runs.join(format!("{}.json", r.name)), &r)?;
        results.push(r);
    }
    let wall = started.elapsed().as_secs_f64();
    report::write(&opts.out_dir, opts.set, &results, wall)?;
    println!(
        "scenarios: done in {}; report at {}",
        fmt_secs(wall),
        opts.out_dir.join("report.md").display()
    );
    Ok(results)
}

fn write_json(path: &Path, r: &ScenarioResult) -> Result<()> {
    let json = serde_json::to_string_pretty(r).context("serialising a scenario result")?;
    std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
}
