//! The scenario report: which goals each run met ([`Goals`]), the
//! combined JSON, and the Markdown report with its SVG charts (and the
//! real-memory benchmark's tables when its JSON is in the same directory).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use wanmig_codec::PageKind;
use wanmig_gateway::demo::{GuestWorkload, MemoryMix};

use super::floor::{
    FLOOR_ZSTD_LEVEL, FULL_PAGE_RESEND_BYTES, HANDSHAKE_RTTS, RESEND_BYTES_PER_PAGE,
};
use super::matrix::{Loss, Set};
use super::plot::{self, Line};
use super::run::{QemuOutcome, ScenarioResult};

/// wanmig's time may be at most this multiple of the floor on clean links.
pub const FLOOR_GOAL: f64 = 1.3;

/// A goal's verdict for one scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Met,
    Missed,
    /// The goal does not apply to this scenario.
    NotApplicable,
}

impl Verdict {
    fn of(applies: bool, met: bool) -> Self {
        match (applies, met) {
            (false, _) => Verdict::NotApplicable,
            (true, true) => Verdict::Met,
            (true, false) => Verdict::Missed,
        }
    }

    pub fn mark(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "**missed**",
            Verdict::NotApplicable => "–",
        }
    }
}

/// The project's goals for a migration, judged for one scenario.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Goals {
    /// ≤ 1.3 × the floor (clean links).
    pub within_floor: Verdict,
    /// Converged with a reported downtime and every check held (every
    /// link ≥ 100 Mbit/s with RTT ≤ 150 ms).
    pub converged: Verdict,
    /// Downtime ≤ 300 ms + one RTT (0 loss).
    pub downtime: Verdict,
}

impl Goals {
    pub fn judge(r: &ScenarioResult) -> Goals {
        let link = &r.scenario.link;
        let clean = link.loss == Loss::Clean;
        Goals {
            within_floor: Verdict::of(clean, r.time_over_floor.is_some_and(|x| x <= FLOOR_GOAL)),
            converged: Verdict::of(
                link.rate_mbit >= 100 && link.rtt_ms <= 150,
                r.wanmig.ok && r.wanmig.converged(),
            ),
            downtime: Verdict::of(
                clean,
                r.wanmig
                    .downtime_ms
                    .is_some_and(|d| d <= r.downtime_goal_ms()),
            ),
        }
    }
}

/// The whole run as written to `scenarios.json`.
#[derive(Debug, Serialize)]
pub struct Combined<'a> {
    pub set: Set,
    pub machine: String,
    pub wall_s: f64,
    pub goals: Vec<(String, Goals)>,
    pub results: &'a [ScenarioResult],
}

const MIB: f64 = (1 << 20) as f64;

fn ms(v: Option<f64>) -> String {
    v.map_or("–".into(), |d| format!("{d:.0}"))
}

fn x(v: Option<f64>) -> String {
    v.map_or("–".into(), |d| format!("{d:.2}×"))
}

fn checks(r: &super::run::RunSummary) -> String {
    if let Some(e) = &r.error {
        return format!("did not run: {}", e.chars().take(80).collect::<String>());
    }
    let flag = |b: bool| if b { "✓" } else { "✗" };
    format!(
        "mem {} wl {} tcp {} disk {}",
        flag(r.memory_verified),
        flag(r.workload_verified),
        flag(r.tcp_session_survived),
        r.disk_verified.map_or("–", flag)
    )
}

fn qemu_cell(q: &QemuOutcome) -> String {
    match q {
        QemuOutcome::NotRun { .. } => "not run".into(),
        QemuOutcome::Ran(r) if r.ok => format!(
            "{} ms, {} ms down, {:.1} MiB",
            r.total_ms,
            ms(r.downtime_ms),
            r.wire_bytes as f64 / MIB
        ),
        QemuOutcome::Ran(r) => format!("failed: {}", r.status),
    }
}

fn is_link_sweep(r: &ScenarioResult) -> bool {
    r.scenario.workload == GuestWorkload::Moderate && r.scenario.mix == MemoryMix::Busy
}

/// Points `(x, y)` of the link-sweep results passing `keep`, grouped by
/// `group`, sorted by x.
fn sweep(
    results: &[ScenarioResult],
    keep: impl Fn(&ScenarioResult) -> bool,
    group: impl Fn(&ScenarioResult) -> String,
    xy: impl Fn(&ScenarioResult) -> Option<(f64, f64)>,
) -> BTreeMap<String, Vec<(f64, f64)>> {
    let mut m: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for r in results.iter().filter(|r| is_link_sweep(r) && keep(r)) {
        if let Some(p) = xy(r) {
            m.entry(group(r)).or_default().push(p);
        }
    }
    for v in m.values_mut() {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    m.retain(|_, v| v.len() >= 2);
    m
}

fn clean(r: &ScenarioResult) -> bool {
    r.scenario.link.loss == Loss::Clean
}

/// Draws one line chart into `dir` (nothing when there are no lines) and
/// lists it in `out`.
fn chart(
    dir: &Path,
    out: &mut Vec<(String, String)>,
    file: &str,
    caption: &str,
    x_desc: &str,
    y_desc: &str,
    ls: Vec<Line>,
) -> Result<()> {
    if ls.is_empty() {
        return Ok(());
    }
    plot::lines(&dir.join(file), caption, x_desc, y_desc, &ls)?;
    out.push((file.to_string(), caption.to_string()));
    Ok(())
}

/// Writes the charts into `dir`; returns `(file, caption)` of each.
fn charts(dir: &Path, results: &[ScenarioResult]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let by_rate = |r: &ScenarioResult| format!("{:>4} Mbit/s", r.scenario.link.rate_mbit);
    let by_rtt = |r: &ScenarioResult| format!("{:>3} ms", r.scenario.link.rtt_ms);
    let rtt = |r: &ScenarioResult| r.scenario.link.rtt_ms as f64;
    let rate = |r: &ScenarioResult| r.scenario.link.rate_mbit as f64;
    let ok_ms = |r: &ScenarioResult| r.wanmig.ok.then_some(r.wanmig.total_ms as f64);

    // Time and downtime against RTT and rate (clean links, moderate busy).
    let mut ls = Vec::new();
    for (g, p) in sweep(results, clean, by_rate, |r| Some((rtt(r), ok_ms(r)?))) {
        ls.push(Line::new(format!("wanmig {g}"), p));
    }
    for (g, p) in sweep(results, clean, by_rate, |r| {
        r.raw.ok.then_some((rtt(r), r.raw.total_ms as f64))
    }) {
        ls.push(Line::new(format!("raw pre-copy {g}"), p));
    }
    for (g, p) in sweep(results, clean, by_rate, |r| {
        Some((rtt(r), r.floor.floor_ms))
    }) {
        ls.push(Line::reference(format!("floor {g}"), p));
    }
    chart(
        dir,
        &mut out,
        "time_vs_rtt.svg",
        "Migration time vs RTT (clean links)",
        "RTT (ms)",
        "total time (ms)",
        ls,
    )?;

    let mut ls = Vec::new();
    for (g, p) in sweep(
        results,
        |_| true,
        |r| format!("{} {}", by_rate(r), r.scenario.link.loss.label()),
        |r| Some((rtt(r), r.wanmig.downtime_ms?)),
    ) {
        ls.push(Line::new(g, p));
    }
    let goal: Vec<(f64, f64)> = [1.0, 150.0].iter().map(|&t| (t, 300.0 + t)).collect();
    if !ls.is_empty() {
        ls.push(Line::reference("goal 300 ms + RTT", goal));
    }
    chart(
        dir,
        &mut out,
        "downtime_vs_rtt.svg",
        "Downtime vs RTT",
        "RTT (ms)",
        "downtime (ms)",
        ls,
    )?;

    let mut ls = Vec::new();
    for (g, p) in sweep(results, clean, by_rtt, |r| Some((rate(r), ok_ms(r)?))) {
        ls.push(Line::new(format!("wanmig {g}"), p));
    }
    for (g, p) in sweep(results, clean, by_rtt, |r| {
        Some((rate(r), r.floor.floor_ms))
    }) {
        ls.push(Line::reference(format!("floor {g}"), p));
    }
    chart(
        dir,
        &mut out,
        "time_vs_rate.svg",
        "Migration time vs link rate (clean links)",
        "rate (Mbit/s)",
        "total time (ms)",
        ls,
    )?;

    let mut ls = Vec::new();
    for (g, p) in sweep(results, clean, by_rtt, |r| {
        Some((rate(r), r.wanmig.downtime_ms?))
    }) {
        ls.push(Line::new(g, p));
    }
    chart(
        dir,
        &mut out,
        "downtime_vs_rate.svg",
        "Downtime vs link rate (clean links)",
        "rate (Mbit/s)",
        "downtime (ms)",
        ls,
    )?;

    // Ratios.
    let mut ls = Vec::new();
    for (g, p) in sweep(
        results,
        |_| true,
        |r| format!("{} {}", by_rate(r), r.scenario.link.loss.label()),
        |r| Some((rtt(r), r.time_over_floor?)),
    ) {
        ls.push(Line::new(g, p));
    }
    if !ls.is_empty() {
        ls.push(Line::reference(
            "goal 1.3× (clean)",
            vec![(1.0, FLOOR_GOAL), (150.0, FLOOR_GOAL)],
        ));
    }
    chart(
        dir,
        &mut out,
        "time_over_floor.svg",
        "wanmig time ÷ physical floor",
        "RTT (ms)",
        "× floor",
        ls,
    )?;

    let mut ls = Vec::new();
    for (g, p) in sweep(
        results,
        |_| true,
        |r| format!("{} {}", by_rate(r), r.scenario.link.loss.label()),
        |r| Some((rtt(r), r.raw_over_wanmig_time?)),
    ) {
        ls.push(Line::new(format!("raw ÷ wanmig time {g}"), p));
    }
    for (g, p) in sweep(
        results,
        |_| true,
        by_rate,
        |r| Some((rtt(r), r.qemu_over_wanmig_time?)),
    ) {
        ls.push(Line::new(format!("QEMU ÷ wanmig time {g}"), p));
    }
    chart(
        dir,
        &mut out,
        "baseline_ratios.svg",
        "Baselines' time ÷ wanmig's (> 1: wanmig faster)",
        "RTT (ms)",
        "ratio",
        ls,
    )?;

    // Per guest: wire bytes by kind, rounds, goodput.
    let guests: Vec<&ScenarioResult> = {
        let mut g: Vec<&ScenarioResult> = results.iter().filter(|r| !is_link_sweep(r)).collect();
        if let Some(first) = g.first().map(|r| r.scenario.link) {
            // The guest sweep at its first link, with the link sweep's
            // moderate busy run at the same link.
            let same = |r: &&ScenarioResult| r.scenario.link == first;
            let mut v: Vec<&ScenarioResult> = results.iter().filter(same).collect();
            v.sort_by_key(|r| (r.scenario.workload.label(), r.scenario.mix.label()));
            g = v;
        } else {
            g = results.iter().take(12).collect();
        }
        g
    };
    let name =
        |r: &ScenarioResult| format!("{}/{}", r.scenario.workload.label(), r.scenario.mix.label());
    if !guests.is_empty() {
        let with: Vec<(&ScenarioResult, &wanmig_gateway::demo::DemoReport)> = guests
            .iter()
            .filter_map(|r| r.wanmig_report.as_ref().map(|d| (*r, d)))
            .collect();
        if !with.is_empty() {
            let short = |r: &ScenarioResult| {
                let w = match r.scenario.workload {
                    GuestWorkload::Idle => "idle",
                    GuestWorkload::Moderate => "mod",
                    GuestWorkload::WriteHeavy => "heavy",
                    GuestWorkload::WriteHeavyPages => "heavy-pages",
                };
                let m = match r.scenario.mix {
                    MemoryMix::Fresh => "fresh",
                    MemoryMix::Busy => "busy",
                    MemoryMix::Incompressible => "incomp",
                };
                format!("{w}/{m}")
            };
            let cats: Vec<String> = with.iter().map(|(r, _)| short(r)).collect();
            let layer = |f: &dyn Fn(&wanmig_gateway::demo::DemoReport) -> u64| -> Vec<f64> {
                with.iter().map(|(_, d)| f(d) as f64 / MIB).collect()
            };
            // One layer per kind whose records have a fixed size, then the
            // shared compressed section.
            let mut layers: Vec<(String, Vec<f64>)> = PageKind::ALL
                .into_iter()
                .filter(|k| k.fixed_wire_bytes().is_some())
                .map(|k| (format!("{k} pages"), layer(&|d| d.wire_by_kind.fixed[k])))
                .collect();
            let shared: Vec<String> = PageKind::ALL
                .into_iter()
                .filter(|k| k.fixed_wire_bytes().is_none())
                .map(|k| k.to_string())
                .collect();
            layers.push((
                format!("compressed section ({}) + headers", shared.join(", ")),
                layer(&|d| d.wire_by_kind.shared_section_and_headers),
            ));
            let link = with[0].0.scenario.link.label();
            let caption = format!("Wire bytes by record kind ({link})");
            plot::stacked_bars(
                &dir.join("wire_by_kind.svg"),
                &caption,
                "MiB on the wire",
                &cats,
                &layers,
            )?;
            out.push(("wire_by_kind.svg".into(), caption));

            let ls: Vec<Line> = with
                .iter()
                .filter(|(_, d)| !d.round_pages.is_empty())
                .map(|(r, d)| {
                    Line::new(
                        name(r),
                        d.round_pages
                            .iter()
                            .enumerate()
                            .skip(1)
                            .map(|(i, &p)| (i as f64, p as f64))
                            .collect(),
                    )
                })
                .collect();
            chart(
                dir,
                &mut out,
                "round_pages.svg",
                &format!(
                    "Pages per round after round 0 (all of memory), final round last ({link})"
                ),
                "round",
                "pages",
                ls,
            )?;

            let ls: Vec<Line> = with
                .iter()
                .filter(|(r, _)| r.scenario.mix == MemoryMix::Busy)
                .map(|(r, d)| {
                    Line::new(
                        format!("wanmig {}", name(r)),
                        d.progress_series
                            .iter()
                            .skip(1)
                            .map(|s| (s.t_ms as f64 / 1e3, s.wire_mbit_s))
                            .collect(),
                    )
                })
                .chain(guests.iter().filter(|r| is_link_sweep(r)).filter_map(|r| {
                    let d = r.raw_report.as_ref()?;
                    Some(Line::new(
                        "raw pre-copy moderate/busy",
                        d.progress_series
                            .iter()
                            .skip(1)
                            .map(|s| (s.t_ms as f64 / 1e3, s.wire_mbit_s))
                            .collect(),
                    ))
                }))
                .collect();
            chart(
                dir,
                &mut out,
                "goodput.svg",
                &format!("Codec output rate over time, 100 ms samples ({link})"),
                "seconds since the migration began",
                "Mbit/s",
                ls,
            )?;
        }
    }
    Ok(out)
}

/// Writes `report.md`, `scenarios.json` and the charts into `dir`.
pub fn write(dir: &Path, set: Set, results: &[ScenarioResult], wall_s: f64) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let goals: Vec<(String, Goals)> = results
        .iter()
        .map(|r| (r.name.clone(), Goals::judge(r)))
        .collect();
    let machine = machine();
    let combined = Combined {
        set,
        machine: machine.clone(),
        wall_s,
        goals: goals.clone(),
        results,
    };
    let json = serde_json::to_string_pretty(&combined).context("serialising the results")?;
    std::fs::write(dir.join("scenarios.json"), json)
        .with_context(|| format!("writing {}", dir.join("scenarios.json").display()))?;
    let figures = charts(dir, results)?;
    let mut md = markdown(set, results, &goals, &figures, wall_s, &machine);
    if let Some(real) = crate::real_memory::section(dir)? {
        md.push_str(&real);
    }
    std::fs::write(dir.join("report.md"), md)
        .with_context(|| format!("writing {}", dir.join("report.md").display()))?;
    Ok(())
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} CPUs ({model})")
}

fn summary_line(goals: &[(String, Goals)], pick: impl Fn(&Goals) -> Verdict) -> String {
    let (mut met, mut missed) = (0, 0);
    for (_, g) in goals {
        match pick(g) {
            Verdict::Met => met += 1,
            Verdict::Missed => missed += 1,
            Verdict::NotApplicable => {}
        }
    }
    format!("{met} met, {missed} missed")
}

/// Orders the per-link tables: rate, RTT, loss.
type LinkKey = (u64, u64, u8);

fn markdown(
    set: Set,
    results: &[ScenarioResult],
    goals: &[(String, Goals)],
    figures: &[(String, String)],
    wall_s: f64,
    machine: &str,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# wanmig scenario report\n");
    let _ = writeln!(
        s,
        "Generated by `WANMIG_SCENARIO_SET={} WANMIG_REPORT_DIR=docs/report cargo bench -p wanmig-benches --bench scenarios` \
         on {machine}: {} scenarios in {:.1} min. Every scenario runs wanmig (the `wanmig demo` \
         path: two gateways over the userspace WAN emulator, a real KVM guest with a live TCP \
         session, and a 16 MiB disk that follows it) and then the same guest on the same link with data reduction off \
         (raw pre-copy); QEMU's own migration where the table says so.\n",
        match set {
            Set::Quick => "quick",
            Set::Report => "report",
            Set::Full => "full",
        },
        results.len(),
        wall_s / 60.0
    );
    let _ = writeln!(s, "## Goals\n");
    let _ = writeln!(
        s,
        "| goal | scenarios |\n|---|---|\n\
         | wanmig ≤ {FLOOR_GOAL}× the physical floor (clean links) | {} |\n\
         | converges with a reported downtime, every check holding (links ≥ 100 Mbit/s, RTT ≤ 150 ms, every guest) | {} |\n\
         | downtime ≤ 300 ms + one RTT (0 loss) | {} |\n",
        summary_line(goals, |g| g.within_floor),
        summary_line(goals, |g| g.converged),
        summary_line(goals, |g| g.downtime),
    );
    let _ = writeln!(s, "## The physical floor\n");
    let _ = writeln!(
        s,
        "floor = (U + R) · 8 / rate + {HANDSHAKE_RTTS} · RTT, where **U** (unique compressed bytes) \
         is the guest's memory image (the mix the demo preloads) split into 4 KiB pages, zero pages \
         dropped, the rest deduplicated by content (BLAKE3), the distinct pages concatenated and \
         compressed as one zstd stream at level {FLOOR_ZSTD_LEVEL} with long-distance matching; \
         **R** is {RESEND_BYTES_PER_PAGE} bytes (the changed 8-byte word and its address) per \
         distinct page the guest dirties while U crosses the link (expected distinct pages of \
         uniform writes into its working set) — {FULL_PAGE_RESEND_BYTES} bytes less the average \
         page's share of U for `heavy-pages`, whose writes fill the whole page with random words; \
         the two RTTs are the migration session's open and \
         the handover's confirmation (the QUIC connection is already up). Loss and jitter do not \
         lower it.\n"
    );
    let _ = writeln!(
        s,
        "Links: RTT as listed (half each way), rate on each direction with a one-BDP queue; \
         `0.1%` is independent loss, `1% bursty` is Gilbert-Elliott loss in bursts of 4 packets on \
         average; lossy links also carry uniform jitter of ±5% of the one-way delay (at least \
         0.2 ms), clean links none. Guests: `idle` dirties 128 KiB/s, `moderate` 5 MiB/s, \
         `write-heavy` twice the link rate (at least 16 MiB/s) over a quarter of memory; mixes \
         `fresh` (90% zero pages), `busy` (the demo mix), `incompressible`. The raw baseline \
         runs without the disk. The goodput chart shows the codec's output handed to QUIC \
         every 100 ms; bursts above the link rate wait in QUIC's buffers.\n"
    );
    if !figures.is_empty() {
        let _ = writeln!(s, "## Charts\n");
        for (file, caption) in figures {
            let _ = writeln!(s, "![{caption}]({file})\n");
        }
    }
    let _ = writeln!(s, "## Results by link\n");
    let mut by_link: BTreeMap<LinkKey, Vec<(&ScenarioResult, &Goals)>> = BTreeMap::new();
    for (r, (_, g)) in results.iter().zip(goals) {
        let l = r.scenario.link;
        by_link
            .entry((l.rate_mbit, l.rtt_ms, l.loss as u8))
            .or_default()
            .push((r, g));
    }
    for rows in by_link.values() {
        let link = rows[0].0.scenario.link;
        let _ = writeln!(s, "### {}\n", link.label());
        let _ = writeln!(
            s,
            "| guest | wanmig ms | downtime ms | rounds | convergence | wire MiB | reduction | raw ms | raw MiB | raw÷wanmig time / bytes | QEMU | floor ms | ×floor | ≤1.3× floor | converged | downtime goal | wanmig checks | raw checks |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for (r, g) in rows {
            let w = &r.wanmig;
            let _ = writeln!(
                s,
                "| {}/{} {} MiB | {} | {} | {} | {} | {:.1} | {:.2}× | {} | {:.1} | {} / {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
                r.scenario.workload.label(),
                r.scenario.mix.label(),
                r.scenario.mem_bytes >> 20,
                w.total_ms,
                ms(w.downtime_ms),
                w.rounds,
                w.convergence.as_deref().unwrap_or("–"),
                w.wire_bytes as f64 / MIB,
                w.reduction,
                r.raw.total_ms,
                r.raw.wire_bytes as f64 / MIB,
                x(r.raw_over_wanmig_time),
                x(r.raw_over_wanmig_bytes),
                qemu_cell(&r.qemu),
                r.floor.floor_ms,
                x(r.time_over_floor),
                g.within_floor.mark(),
                g.converged.mark(),
                g.downtime.mark(),
                checks(w),
                checks(&r.raw),
            );
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "Per-run JSON (with the progress series, pages per round and wire bytes by record kind) \
         is in `runs/`; everything together in `scenarios.json`."
    );
    s
}
