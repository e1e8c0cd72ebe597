//! Settling a migration whose link was cut while `Handover` was in flight:
//! the source (A) has released the VM and the destination (B) holds a
//! confirmed copy parked, paused. The parked copy is never dropped on a
//! timeout — a cut that outlasts `handover_wait` still ends with the VM
//! running at B once the link returns — and only the site that sent the
//! migration may settle it: a third site (C) that knows the id is refused,
//! whichever way it asks. Real KVM guests, real QUIC/mTLS gateways, the
//! WAN emulator's cut; each case checks the guest's memory-workload
//! digests against an unmigrated run and the two shims' memory digest.

#[path = "fault_support.rs"]
mod fault_support;

use std::time::Duration;

use fault_support::*;
use wanmig_e2e::Mesh;
use wanmig_gateway::migration::{Direction, Outcome, Phase};
use wanmig_gateway::peering::StreamKind;
use wanmig_gateway::vms::VmState;
use wanmig_migration::machine::VmConfig;
use wanmig_migration::session::frame::{self, Frame, Resolution, SESSION};

/// `handover_wait` in these tests: short, so a cut of a few seconds
/// outlasts it.
const SHORT_WAIT: Duration = Duration::from_secs(1);

/// Starts a dirtying guest at A, migrates it to B with A's `Handover`
/// held 250 ms on the wire, cuts A–B while it is in flight and waits for B
/// to park the VM. Returns the guest's config and the migration id.
async fn parked_at_b(mesh: &Mesh) -> (VmConfig, String) {
    let config = dirtying_vm(16, 16, Duration::from_micros(500));
    guest_at_a(mesh, &config).await;
    let (a, b) = (mesh.gw("site-a"), mesh.gw("site-b"));
    let id = begin(a, "site-b");
    poll("the handover", WAIT, || {
        record(a, &id, Direction::Outgoing).is_some_and(|r| r.phase == Phase::HandedOver)
    })
    .await;
    mesh.relay("site-a", "site-b").cut();
    poll("B to park the VM", WAIT, || {
        record(b, &id, Direction::Incoming).is_some_and(|r| r.parked)
    })
    .await;
    (config, id)
}

/// B still holds the VM paused and parked, A's copy is stopped: the VM
/// runs nowhere yet, and both records say it waits to be settled.
fn still_parked(mesh: &Mesh, id: &str) {
    let (a, b) = (mesh.gw("site-a"), mesh.gw("site-b"));
    let inc = record(b, id, Direction::Incoming).unwrap();
    assert!(inc.parked && inc.outcome.is_none(), "B: {inc:?}");
    assert!(
        matches!(b.vm_host().state(VM), Some(VmState::Incoming { .. })),
        "B keeps its paused copy: {:?}",
        b.vm_host().state(VM)
    );
    assert!(matches!(
        a.vm_host().state(VM),
        Some(VmState::HandoverUnconfirmed { .. })
    ));
    let out = record(a, id, Direction::Outgoing).unwrap();
    assert_eq!(out.outcome, Some(Outcome::HandoverUnconfirmed), "{out:?}");
}

/// After the link returns: A's retried `Resolve` reaches B, B resumes the
/// VM, and it runs there only with its memory intact.
async fn resumes_at_b(mesh: &Mesh, config: &VmConfig, id: &str) {
    let (a, b) = (mesh.gw("site-a"), mesh.gw("site-b"));
    let a_last = iteration(a.vm_host(), VM);
    mesh.relay("site-a", "site-b").restore();
    settled_at_b(mesh, config, id).await;
    let inc = finished(b, id, Direction::Incoming).await;
    assert_eq!(inc.outcome, Some(Outcome::Succeeded), "{inc:?}");
    assert!(!inc.parked);
    // Both shims checked this digest of guest memory at the handover.
    assert!(inc.memory_digest.is_some(), "{inc:?}");
    assert!(wait_iteration(b.vm_host(), VM, a_last + 10).await);
    assert_eq!(iteration(a.vm_host(), VM), a_last, "A's copy stays stopped");
    let at_b = samples(b.vm_host(), VM);
    assert!(
        at_b[0].iteration <= a_last + 1,
        "no iteration lost: A reported up to {a_last}, B from {:?}",
        &at_b[..3.min(at_b.len())]
    );
    assert_matches_reference(config, &at_b, "at B");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_cut_outlasting_handover_wait_still_resumes_at_the_destination() {
    if !wanmig_testenv::require_kvm(
        "a_handover_cut_outlasting_handover_wait_still_resumes_at_the_destination",
    ) {
        return;
    }
    let mesh = sites(
        2,
        100_000_000,
        Duration::from_millis(250),
        Duration::ZERO,
        SHORT_WAIT,
    )
    .await;
    let (config, id) = parked_at_b(&mesh).await;
    let (a, b) = (mesh.gw("site-a"), mesh.gw("site-b"));
    // Both sides wait out `handover_wait` several times over (A notices
    // the cut after the 3 s idle timeout, then asks for a while).
    poll("A to start asking B", WAIT, || {
        record(a, &id, Direction::Outgoing).is_some_and(|r| r.outcome.is_some())
    })
    .await;
    tokio::time::sleep(SHORT_WAIT * 4).await;
    still_parked(&mesh, &id);
    // Both flag it for an operator, and say so where `wanmig status` looks.
    let inc = mesh.control("site-b").migration(&id).await.unwrap();
    assert!(
        inc.parked
            && inc
                .resolution
                .as_deref()
                .is_some_and(|n| n.contains("wanmig migration settle")),
        "{inc:?}"
    );
    let out = record(a, &id, Direction::Outgoing).unwrap();
    assert!(
        out.resolution
            .as_deref()
            .is_some_and(|n| n.contains("still asking")),
        "{out:?}"
    );
    assert_eq!(parked_metric(b).await, 1, "B's metrics show the parked VM");
    resumes_at_b(&mesh, &config, &id).await;
    assert_eq!(parked_metric(b).await, 0);
    mesh.shutdown().await;
}

/// Site C asks B to settle migration `id` as if it had sent it; returns
/// B's answer frame.
async fn resolve_from(mesh: &Mesh, site: &str, id: &str, handed_over: bool) -> Frame {
    let peering = mesh.gw(site).migration().peering();
    let (mut send, mut recv) = peering
        .open_stream("site-b", StreamKind::Migration)
        .await
        .expect("C reaches B");
    let mut buf = Vec::new();
    frame::encode(
        &Frame::Resolve {
            version: SESSION.current,
            id: id.to_string(),
            vm: Some(VM.to_string()),
            handed_over,
        },
        &mut buf,
    );
    send.write_all(&buf).await.unwrap();
    let _ = send.finish();
    let bytes = tokio::time::timeout(WAIT, recv.read_to_end(1 << 20))
        .await
        .expect("B answers C")
        .expect("B's answer");
    let mut dec = frame::Decoder::new();
    dec.feed(&bytes);
    dec.next().unwrap().expect("one frame from B")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_site_cannot_settle_a_migration_parked_at_the_destination() {
    if !wanmig_testenv::require_kvm(
        "a_third_site_cannot_settle_a_migration_parked_at_the_destination",
    ) {
        return;
    }
    // A long `handover_wait`: nothing here waits for it.
    let mesh = sites(
        3,
        100_000_000,
        Duration::from_millis(250),
        Duration::ZERO,
        HANDOVER_WAIT,
    )
    .await;
    let (config, id) = parked_at_b(&mesh).await;
    // C knows the id and asks both ways: to discard the copy (the VM would
    // run nowhere) and to resume it (two copies, had A kept it).
    for handed_over in [false, true] {
        match resolve_from(&mesh, "site-c", &id, handed_over).await {
            Frame::Refuse(reason) => assert!(
                reason.contains("site-c") && reason.contains("site-a"),
                "{reason}"
            ),
            Frame::Resolved(r) => {
                panic!("B settled A's migration for C (handed_over {handed_over}): {r:?}")
            }
            other => panic!("unexpected answer {}", other.name()),
        }
        still_parked(&mesh, &id);
    }
    // A made-up id of a migration B never saw settles nothing either.
    let made_up = format!("site-a-{:032x}", 1u128);
    assert_eq!(
        resolve_from(&mesh, "site-c", &made_up, false).await,
        Frame::Resolved(Resolution::Discarded)
    );
    still_parked(&mesh, &id);
    // A, the sender, settles it once its link is back.
    resumes_at_b(&mesh, &config, &id).await;
    mesh.shutdown().await;
}

/// The gateway's `wanmig_migration_parked` gauge, from its metrics
/// endpoint.
async fn parked_metric(gw: &wanmig_gateway::GatewayHandle) -> u64 {
    let addr = gw.metrics_addr().expect("the lab's gateways serve metrics");
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("wanmig_migration_parked{") || l.starts_with("wanmig_migration_parked ")
        })
        .unwrap_or_else(|| panic!("no wanmig_migration_parked in:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}
