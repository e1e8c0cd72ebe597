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
    let opts = DemoOptions {
        link: Link::wan(Duration::from_millis(40), 250_000_000),
        mem_bytes: 64 << 20,
        working_set_pages: 2048,
        warm_clone: true,
        round_trip: true,
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
}
