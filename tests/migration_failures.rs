//! The WAN link between two gateways is cut (the emulator's control) at the
//! worst moments of a live migration of a real KVM guest: during round 0,
//! during the final round, after the destination resumed but before the
//! source heard it, and after the source handed the VM over but before the
//! handover reached the destination. Each time the VM ends up running in
//! exactly one place with its memory intact (its workload digests equal an
//! unmigrated run's), and the status API says what happened.
//!
//! The mesh, the record helpers and the end-state checks are the fault
//! tests' (`fault_support.rs`), shared so that a change to what "kept at
//! the source" or "settled at the destination" means is made once.

#[path = "fault_support.rs"]
mod fault_support;

use std::time::Duration;

use fault_support::*;
use wanmig_e2e::Mesh;
use wanmig_gateway::migration::{Direction, Outcome, Phase};
use wanmig_gateway::vms::VmState;
use wanmig_migration::machine::VmConfig;

/// Starts the guest at A and lets it run a little.
async fn dirtying_guest_at_a(mesh: &Mesh) -> VmConfig {
    let config = dirtying_vm(16, 16, Duration::from_micros(500));
    guest_at_a(mesh, &config).await;
    config
}

/// The VM failed to move: it runs at A only, intact, B gave its copy up,
/// the control API says why, and a later attempt over the restored link
/// succeeds.
async fn kept_at_a_then_moves(mesh: &Mesh, config: &VmConfig, id: &str) {
    let out = kept_at_a(mesh, config, id).await;
    b_discarded(mesh, id).await;
    // Once the link is back the VM moves for real.
    mesh.relay("site-a", "site-b").restore();
    then_moves(mesh, config, id, &out).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_during_round_0_keeps_the_vm_at_the_source() {
    if !wanmig_testenv::require_kvm("cut_during_round_0_keeps_the_vm_at_the_source") {
        return;
    }
    // A slow link and a guest whose memory holds 5 MiB of text-like bytes,
    // so round 0 takes about 3 s on the wire at any CPU speed. (The
    // dirtying guest's round 0 is its mostly-zero memory plus whatever
    // random words it wrote so far: about 130 kB, a tenth of a second at
    // 8 Mbit/s, which a poll on a loaded machine can miss.)
    let mesh = two_sites(8_000_000, Duration::ZERO, Duration::ZERO).await;
    let config = fault_vm(Some(write_image(
        &mesh.dir().join("images"),
        32 << 20,
        5 << 20,
    )));
    guest_at_a(&mesh, &config).await;
    let a = mesh.gw("site-a");
    let id = begin(a, "site-b");
    poll("round 0 to start", WAIT, || {
        record(a, &id, Direction::Outgoing)
            .is_some_and(|r| r.progress.pages > 0 && r.progress.round == 0)
    })
    .await;
    mesh.relay("site-a", "site-b").cut();
    let r = record(a, &id, Direction::Outgoing).unwrap();
    assert!(
        r.progress.round == 0 && r.phase == Phase::Copying,
        "cut in round 0: {r:?}"
    );
    kept_at_a_then_moves(&mesh, &config, &id).await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_during_the_final_round_keeps_the_vm_at_the_source() {
    if !wanmig_testenv::require_kvm("cut_during_the_final_round_keeps_the_vm_at_the_source") {
        return;
    }
    // B's answers take 250 ms longer: the cut lands before Confirmed.
    let mesh = two_sites(100_000_000, Duration::ZERO, Duration::from_millis(250)).await;
    let config = dirtying_guest_at_a(&mesh).await;
    let a = mesh.gw("site-a");
    let id = begin(a, "site-b");
    poll("the stop-and-copy round", WAIT, || {
        record(a, &id, Direction::Outgoing)
            .is_some_and(|r| matches!(r.phase, Phase::StateSent | Phase::Completing))
    })
    .await;
    mesh.relay("site-a", "site-b").cut();
    kept_at_a_then_moves(&mesh, &config, &id).await;
    mesh.shutdown().await;
}

/// The source released the VM and the destination was told (or is about
/// to be): after the link returns, the VM runs at B only, and A's status
/// says it migrated (confirmed late).
async fn runs_at_b_only(mesh: &Mesh, config: &VmConfig, id: &str) {
    let (a, b) = (mesh.gw("site-a"), mesh.gw("site-b"));
    let out = finished(a, id, Direction::Outgoing).await;
    eprintln!("{}", serde_json::to_string_pretty(&out).unwrap());
    assert_eq!(out.outcome, Some(Outcome::HandoverUnconfirmed));
    assert!(matches!(
        a.vm_host().state(VM),
        Some(VmState::HandoverUnconfirmed { .. })
    ));
    assert!(out.resolution.is_some(), "A will settle it");
    // A never runs it again.
    let stopped = a.vm_host().exit_status(VM);
    assert_eq!(stopped, Some(wanmig_migration::admin::RunExit::Stopped));
    let a_last = iteration(a.vm_host(), VM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(iteration(a.vm_host(), VM), a_last, "A's copy stays stopped");

    mesh.relay("site-a", "site-b").restore();
    settled_at_b(mesh, config, id).await;
    assert!(wait_iteration(b.vm_host(), VM, a_last + 10).await);
    let at_b = samples(b.vm_host(), VM);
    assert!(
        at_b[0].iteration <= a_last + 1,
        "no iteration lost: A reported up to {a_last}, B from {:?}",
        &at_b[..3]
    );
    assert_matches_reference(config, &at_b, "at B");
    let m = mesh.control("site-a").migrations().await.unwrap();
    assert!(m
        .migrations
        .iter()
        .any(|r| r.id == id && r.resolution.is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_after_the_destination_resumed_leaves_it_running_there_only() {
    if !wanmig_testenv::require_kvm(
        "cut_after_the_destination_resumed_leaves_it_running_there_only",
    ) {
        return;
    }
    // B's `Resumed` takes 250 ms to reach A: the cut drops it.
    let mesh = two_sites(100_000_000, Duration::ZERO, Duration::from_millis(250)).await;
    let config = dirtying_guest_at_a(&mesh).await;
    let (a, b) = (mesh.gw("site-a"), mesh.gw("site-b"));
    let id = begin(a, "site-b");
    poll("the VM to resume at B", WAIT, || {
        b.vm_host().state(VM) == Some(VmState::Running)
    })
    .await;
    mesh.relay("site-a", "site-b").cut();
    runs_at_b_only(&mesh, &config, &id).await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_while_the_handover_is_in_flight_resumes_at_the_destination_later() {
    if !wanmig_testenv::require_kvm(
        "cut_while_the_handover_is_in_flight_resumes_at_the_destination_later",
    ) {
        return;
    }
    // A's `Handover` takes 250 ms to reach B: the cut drops it, so B holds
    // a confirmed VM it may not run yet, and A has released its copy.
    let mesh = two_sites(100_000_000, Duration::from_millis(250), Duration::ZERO).await;
    let config = dirtying_guest_at_a(&mesh).await;
    let (a, b) = (mesh.gw("site-a"), mesh.gw("site-b"));
    let id = begin(a, "site-b");
    poll("the handover", WAIT, || {
        record(a, &id, Direction::Outgoing).is_some_and(|r| r.phase == Phase::HandedOver)
    })
    .await;
    mesh.relay("site-a", "site-b").cut();
    // B holds the VM paused until A settles it.
    poll("B to park the VM", WAIT, || {
        record(b, &id, Direction::Incoming).is_some_and(|r| r.resolution.is_some())
    })
    .await;
    assert!(matches!(
        b.vm_host().state(VM),
        Some(VmState::Incoming { .. })
    ));
    runs_at_b_only(&mesh, &config, &id).await;
    mesh.shutdown().await;
}
