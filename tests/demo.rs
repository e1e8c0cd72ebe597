//! The main job end to end: `wanmig demo`'s library entry point, at a size
//! that suits CI (a 64 MiB guest over a 40 ms, 250 Mbit/s emulated WAN). It
//! must succeed and its report must state what it verified: the memory
//! digest at the handover, the guest's own results against an unmigrated
//! run, and a TCP session that carried bytes in order before, between and
//! after the moves A->B and back B->A, and a disk that followed the VM to
//! site B and holds what the guest wrote. Real KVM, real QUIC, the real
//! overlay, a real disk file.

use std::time::Duration;

use wanmig_codec::PageKind;
use wanmig_gateway::demo::{self, DemoOptions};
use wanmig_gateway::lab::Link;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_migrates_a_guest_with_a_live_tcp_session_and_verifies_it() {
    if !wanmig_testenv::require_kvm("demo_migrates_a_guest_with_a_live_tcp_session_and_verifies_it")
    {
        return;
    }
    wanmig_e2e::init_logging();
    let metrics = tempfile::tempdir().unwrap();
    let opts = DemoOptions {
        link: Link::wan(Duration::from_millis(40), 250_000_000),
        mem_bytes: 64 << 20,
        working_set_pages: 2048,
        warm_clone: true,
        round_trip: true,
        metrics_out: Some(metrics.path().to_path_buf()),
        ..DemoOptions::default()
    };
    let mut updates = 0u32;
    let report = demo::run(opts, |_| updates += 1)
        .await
        .expect("the demo runs");
    let json = serde_json::to_string_pretty(&report).expect("the report serialises");
    assert!(report.ok(), "demo checks failed: {json}");
    assert_eq!(report.outcome, "succeeded", "{json}");
    assert!(
        report.memory_verified && report.memory_digest.is_some(),
        "{json}"
    );
    assert!(
        report.workload_verified && report.workload_iterations_checked >= 10,
        "{json}"
    );
    assert!(report.tcp_session_survived, "{json}");
    assert_eq!(report.tcp.stats.mismatched, 0, "{json}");
    assert!(report.tcp.bytes_verified_after_move >= 128 << 10, "{json}");
    assert_eq!(report.guest_mem_bytes, 64 << 20);
    // Round 0 sends all of memory; the demo mix shrinks to well under half.
    assert!(report.guest_bytes_sent >= report.guest_mem_bytes, "{json}");
    assert!(
        report.wire_bytes > 0 && report.wire_bytes < report.guest_mem_bytes / 2,
        "{json}"
    );
    assert!(report.reduction > 2.0, "{json}");
    assert!(
        report.pages[PageKind::Zero] > 0
            && report.pages[PageKind::Ref] > 0
            && report.pages[PageKind::Compressed] > 0,
        "{json}"
    );
    assert!(report.downtime_ms.is_some(), "{json}");
    assert!(updates > 0, "the progress callback never ran");
    // The per-run data the scenario report plots.
    assert_eq!(
        (report.mix.as_str(), report.workload.as_str()),
        ("busy", "moderate")
    );
    assert_eq!(report.dirty_bytes_per_sec, 5 << 20);
    // Every live round, then the final stop-and-copy round.
    assert_eq!(report.round_pages.len() as u32, report.rounds + 1, "{json}");
    assert!(
        report.convergence.is_some() && report.stop_reason.is_some(),
        "{json}"
    );
    assert!(
        report.round_pages[0] >= (64 << 20) / 4096,
        "round 0 sends all of memory: {json}"
    );
    let wire = &report.wire_by_kind;
    assert_eq!(
        wire.fixed.total() + wire.shared_section_and_headers,
        report.wire_bytes,
        "{json}"
    );
    for kind in [PageKind::Zero, PageKind::Ref, PageKind::Raw] {
        assert_eq!(
            wire.fixed[kind],
            report.pages[kind] * kind.fixed_wire_bytes().unwrap(),
            "{kind}: {json}"
        );
        assert!(wire.fixed[kind] > 0, "{kind}: {json}");
    }
    assert!(report.progress_series.len() >= 2, "{json}");
    let last = report.progress_series.last().unwrap();
    assert_eq!(last.wire_bytes, report.wire_bytes, "{json}");
    assert!(
        report
            .progress_series
            .windows(2)
            .all(|w| w[0].t_ms <= w[1].t_ms && w[0].wire_bytes <= w[1].wire_bytes),
        "{json}"
    );
    // The disk followed the VM and holds what the guest wrote.
    let storage = report.storage.as_ref().expect("a storage report");
    assert_eq!(storage.disk_bytes, 64 << 20, "{json}");
    assert!(storage.verified, "{json}");
    assert_eq!(
        (storage.guest_errors, storage.blocks_mismatched),
        (0, 0),
        "{json}"
    );
    assert!(storage.iterations > storage.iterations_at_source, "{json}");
    // The guest writes random sectors, a run of them per disk iteration walking
    // the disk, so how much of the disk is random by the handover depends
    // on how fast the machine ran it (a fast one can overwrite it all). What
    // holds at any speed: the blocks the guest never wrote at the source
    // are zeros and cost next to nothing, so the copy carries at most what
    // the guest wrote there (its finished iterations plus the one it was
    // in) and a sixty-fourth of the disk for framing and zero blocks.
    let written = ((storage.iterations_at_source + 1) * demo::disk::BLOCKS_PER_ITERATION * 512)
        .min(storage.disk_bytes);
    assert!(
        storage.wire_bytes > 0 && storage.wire_bytes <= written + storage.disk_bytes / 64,
        "{} wire bytes for {written} bytes the guest wrote at the source: {json}",
        storage.wire_bytes
    );
    // The move back: the session survives it too, every byte in order.
    let back = report.return_move.as_ref().expect("a return-move report");
    assert_eq!(back.outcome, "succeeded", "{json}");
    assert!(back.memory_verified && back.workload_verified, "{json}");
    assert!(back.tcp_bytes_verified_after_return >= 128 << 10, "{json}");
    // A clone of the same image moved to the same site finds its pages in
    // the destination's (now warm) page store.
    let clone = report.warm_clone.as_ref().expect("a warm-clone report");
    assert!(clone.memory_verified && clone.workload_verified, "{json}");
    assert!(clone.pages[PageKind::Ref] > 0, "{json}");
    assert!(clone.wire_bytes * 5 < report.wire_bytes, "{json}");
    for key in [
        "total_ms",
        "downtime_ms",
        "rounds",
        "guest_mem_bytes",
        "wire_bytes",
        "reduction",
        "tcp_session_survived",
        "memory_verified",
        "link",
        "storage",
        "round_pages",
        "progress_series",
    ] {
        assert!(
            json.contains(&format!("\"{key}\"")),
            "report lacks {key}: {json}"
        );
    }
    dashboard_queries_only_what_the_gateways_export(metrics.path());
}

/// Every metric the Grafana dashboard (`deploy/grafana/wanmig.json`)
/// queries is on the `/metrics` page of a gateway that has done what the
/// demo does (peering, migrations both ways, a disk copy, overlay traffic).
fn dashboard_queries_only_what_the_gateways_export(scraped: &std::path::Path) {
    let mut exported = std::collections::BTreeSet::new();
    for site in ["site-a", "site-b"] {
        let page = std::fs::read_to_string(scraped.join(format!("{site}.prom")))
            .unwrap_or_else(|e| panic!("{site}'s saved /metrics: {e}"));
        for line in page.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            exported.insert(name.to_string());
        }
    }
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/wanmig.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .expect("the dashboard is JSON");
    let mut queried = std::collections::BTreeSet::new();
    let mut exprs = vec![];
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() > 20, "the dashboard's queries: {exprs:?}");
    for e in &exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("wanmig_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            queried.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    // Labelled families appear on the page with their first event; these
    // count events the demo does not cause, or not every time (a refused
    // peer, an ARP request answered from the suppression cache, a dropped
    // frame), so for them the name must be one the gateway registers.
    let event_only = [
        ("wanmig_peering_refused_total", "../gateway/src/metrics.rs"),
        ("wanmig_overlay_drops_total", "../overlay/src/metrics.rs"),
        (
            "wanmig_overlay_arp_suppressed_total",
            "../overlay/src/metrics.rs",
        ),
    ];
    for (name, file) in event_only {
        let src =
            std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
                .unwrap();
        if src.contains(&format!("\"{name}\"")) {
            exported.insert(name.to_string());
        }
    }
    let missing: Vec<_> = queried.iter().filter(|m| !exported.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no gateway exports: {missing:?} (exported: {exported:?})"
    );
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}
