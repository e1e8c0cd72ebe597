//! The WAN link between two gateways is cut (the emulator's control) at the
//! worst moments of a live migration of a real KVM guest: during round 0,
//! during the final round, after the destination resumed but before the
//! source heard it, and after the source handed the VM over but before the
//! handover reached the destination. Each time the VM ends up running in
//! exactly one place with its memory intact (its workload digests equal an
//! unmigrated run's), and the status API says what happened.

#[path = "migration_support.rs"]
mod support;

use std::time::{Duration, Instant};

use support::*;
use wanmig_e2e::{init_logging, Link, Mesh, MeshBuilder};
use wanmig_gateway::migration::{
    Direction, MigrateRequest, MigrationRecord, Outcome, Phase, VmState,
};
use wanmig_gateway::GatewayHandle;
use wanmig_netem::LinkParams;

const VM: &str = "vm1";

/// Two sites whose link has `rtt` and `rate`, plus `slow_a_to_b` /
/// `slow_b_to_a` extra one-way delay (to hold a message in flight while
/// the test cuts the link).
async fn two_sites(rate: u64, slow_a_to_b: Duration, slow_b_to_a: Duration) -> Mesh {
    init_logging();
    let rtt = Duration::from_millis(60);
    let base = LinkParams::wan(rtt, rate);
    let mesh = MeshBuilder::new(2)
        .link(Link {
            forward: base.clone().with_delay(rtt / 2 + slow_a_to_b),
            reverse: base.with_delay(rtt / 2 + slow_b_to_a),
        })
        .hints((rate / 1_000_000) as f64, rtt)
        .start()
        .await
        .unwrap();
    assert!(mesh.wait_all_up(Duration::from_secs(20)).await);
    mesh
}

async fn poll(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn record(gw: &GatewayHandle, id: &str, dir: Direction) -> Option<MigrationRecord> {
    gw.migration()
        .records()
        .into_iter()
        .find(|r| r.id == id && r.direction == dir)
}

async fn finished(gw: &GatewayHandle, id: &str, dir: Direction) -> MigrationRecord {
    poll("the migration to end", WAIT, || {
        record(gw, id, dir).is_some_and(|r| r.finished())
    })
    .await;
    record(gw, id, dir).unwrap()
}

fn begin(gw: &GatewayHandle, to: &str) -> String {
    gw.migration()
        .begin(MigrateRequest {
            vm: VM.into(),
            to: to.into(),
            downtime: None,
            scope: None,
        })
        .expect("migration starts")
        .0
}

/// Starts the guest at A and lets it run a little.
async fn guest_at_a(mesh: &Mesh) -> wanmig_vmm::VmConfig {
    let config = dirtying_vm(16, 16, Duration::from_micros(500));
    start_vm(mesh.gw("site-a").vm_host(), VM, config.clone()).await;
    assert!(wait_iteration(mesh.gw("site-a").vm_host(), VM, 10).await);
    config
}

/// The VM failed to move: it runs at A only, intact, and a later attempt
/// over the restored link succeeds.
async fn kept_at_a_then_moves(mesh: &Mesh, config: &wanmig_vmm::VmConfig, id: &str) {
    let (a, b) = (mesh.gw("site-a"), mesh.gw("site-b"));
    let out = finished(a, id, Direction::Outgoing).await;
    eprintln!("{}", serde_json::to_string_pretty(&out).unwrap());
    assert_eq!(out.outcome, Some(Outcome::FailedKeptAtSource));
    assert!(out.error.is_some());
    assert_eq!(a.vm_host().state(VM), Some(VmState::Running));
    assert!(
        keeps_running(a.vm_host(), VM).await,
        "the guest runs on at A"
    );
    // B gave its copy up (its record says so) and runs nothing.
    if record(b, id, Direction::Incoming).is_some() {
        let inc = finished(b, id, Direction::Incoming).await;
        assert_ne!(inc.outcome, Some(Outcome::Succeeded));
    }
    assert_eq!(b.vm_host().state(VM), None);
    assert_matches_reference(config, &samples(a.vm_host(), VM), "at A after the cut");

    // The control API tells the operator.
    let vms = mesh.control("site-a").vms().await.unwrap();
    let v = vms.vms.iter().find(|v| v.name == VM).unwrap();
    assert_eq!(v.state, VmState::Running);
    assert!(
        v.last_error.as_deref().unwrap_or("").contains("site-b"),
        "{v:?}"
    );
    let m = mesh.control("site-a").migration(id).await.unwrap();
    assert_eq!(m.outcome, Some(Outcome::FailedKeptAtSource));

    // Once the link is back the VM moves for real.
    mesh.relay("site-a", "site-b").restore();
    assert!(mesh.wait_all_up(Duration::from_secs(30)).await);
    if out.resolution.is_some() {
        poll("the destination to discard its copy", WAIT, || {
            record(a, id, Direction::Outgoing)
                .and_then(|r| r.resolution)
                .is_some_and(|r| r.contains("discarded its copy"))
        })
        .await;
    }
    let again = begin(a, "site-b");
    let rec = finished(a, &again, Direction::Outgoing).await;
    assert_eq!(rec.outcome, Some(Outcome::Succeeded), "{:?}", rec.error);
    let n = iteration(a.vm_host(), VM);
    assert!(wait_iteration(b.vm_host(), VM, n + 10).await);
    assert_matches_reference(config, &samples(b.vm_host(), VM), "at B");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_during_round_0_keeps_the_vm_at_the_source() {
    if !wanmig_testenv::require_kvm("cut_during_round_0_keeps_the_vm_at_the_source") {
        return;
    }
    // A slow link, so round 0 takes a while on the wire.
    let mesh = two_sites(8_000_000, Duration::ZERO, Duration::ZERO).await;
    let config = guest_at_a(&mesh).await;
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
    let config = guest_at_a(&mesh).await;
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
async fn runs_at_b_only(mesh: &Mesh, config: &wanmig_vmm::VmConfig, id: &str) {
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
    let stopped = a.vm_host().with_vm(VM, |v| v.exit_status()).flatten();
    assert_eq!(stopped, Some(wanmig_vmm::RunExit::Stopped));
    let a_last = iteration(a.vm_host(), VM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(iteration(a.vm_host(), VM), a_last, "A's copy stays stopped");

    mesh.relay("site-a", "site-b").restore();
    poll("A to settle with B", WAIT, || {
        record(a, id, Direction::Outgoing).is_some_and(|r| r.outcome == Some(Outcome::Succeeded))
    })
    .await;
    let settled = record(a, id, Direction::Outgoing).unwrap();
    assert!(
        settled.resolution.as_deref().unwrap().contains("confirmed"),
        "{settled:?}"
    );
    assert_eq!(
        a.vm_host().state(VM),
        Some(VmState::MigratedAway {
            to: "site-b".into()
        })
    );
    assert_eq!(b.vm_host().state(VM), Some(VmState::Running));
    assert!(wait_iteration(b.vm_host(), VM, a_last + 10).await);
    let at_b = samples(b.vm_host(), VM);
    assert!(
        at_b[0].iteration <= a_last + 1,
        "no iteration lost: A reported up to {a_last}, B from {:?}",
        &at_b[..3]
    );
    assert_matches_reference(config, &samples(a.vm_host(), VM), "at A");
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
    let config = guest_at_a(&mesh).await;
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
    let config = guest_at_a(&mesh).await;
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
