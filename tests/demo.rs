//! The main job end to end: `wanmig demo`'s library entry point, at a size
//! that suits CI (a 64 MiB guest over a 40 ms, 250 Mbit/s emulated WAN). It
//! must succeed and its report must state what it verified: the memory
//! digest at the handover, the guest's own results against an unmigrated
//! run, and a TCP session that carried bytes in order before, between and
//! after the moves A->B and back B->A. Real KVM, real QUIC, the real overlay.

use std::time::Duration;

use wanmig_gateway::demo::{self, DemoOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_migrates_a_guest_with_a_live_tcp_session_and_verifies_it() {
    if !wanmig_testenv::require_kvm("demo_migrates_a_guest_with_a_live_tcp_session_and_verifies_it")
    {
        return;
    }
    wanmig_e2e::init_logging();
    let opts = DemoOptions {
        rtt: Duration::from_millis(40),
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
        report.pages_zero > 0 && report.pages_ref > 0 && report.pages_compressed > 0,
        "{json}"
    );
    assert!(report.downtime_ms.is_some(), "{json}");
    assert!(updates > 0, "the progress callback never ran");
    // The move back: the session survives it too, every byte in order.
    let back = report.return_move.as_ref().expect("a return-move report");
    assert_eq!(back.outcome, "succeeded", "{json}");
    assert!(back.memory_verified && back.workload_verified, "{json}");
    assert!(back.tcp_bytes_verified_after_return >= 128 << 10, "{json}");
    // A clone of the same image moved to the same site finds its pages in
    // the destination's (now warm) page store.
    let clone = report.warm_clone.as_ref().expect("a warm-clone report");
    assert!(clone.memory_verified && clone.workload_verified, "{json}");
    assert!(clone.pages_ref > 0, "{json}");
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
    ] {
        assert!(
            json.contains(&format!("\"{key}\"")),
            "report lacks {key}: {json}"
        );
    }
}
