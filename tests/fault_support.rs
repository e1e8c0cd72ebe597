//! Helpers of the fault-scenario tests, included with `#[path]`:
//! the two-site mesh the link-cut cases run on, a guest whose round 0 and
//! later rounds take long enough on a slow link to be cut in the middle,
//! reading migration records, and the end-state checks every fault case
//! shares — the VM runs in exactly one place, its memory matches an
//! unmigrated run, no iteration was lost, and the operator sees the outcome.
//!
//! The guest helpers come from `migration_support.rs` (the migration tests'
//! own helpers), re-exported here.
#![allow(dead_code)]

#[path = "migration_support.rs"]
mod migration_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use migration_support::*;
use wanmig_e2e::{init_logging, Link, Mesh, MeshBuilder};
use wanmig_gateway::migration::{Direction, MigrateRequest, MigrationRecord, Outcome, Phase};
use wanmig_gateway::vms::VmState;
use wanmig_gateway::GatewayHandle;
use wanmig_migration::machine::{MemoryWorkloadConfig, VmConfig};
use wanmig_netem::LinkParams;

pub const VM: &str = "vm1";

/// RTT of the emulated link in the fault tests.
pub const RTT: Duration = Duration::from_millis(60);

/// How long a migration whose link failed after the destination confirmed
/// may stay unsettled before the gateways flag it for an operator
/// (`[migration] handover_wait`; the destination keeps the VM parked after
/// that too): longer than the 10 s cut plus the idle timeout, so the
/// 10 s cases settle without being flagged.
pub const HANDOVER_WAIT: Duration = Duration::from_secs(16);

/// Two sites over an emulated link of `rate` bits/s and [`RTT`], plus
/// `slow_b_to_a` extra one-way delay on B's answers (to hold a message in
/// flight while the test cuts the link). The transport is the lab's: a 3 s
/// QUIC idle timeout (the gateway default is 5 s), 500 ms keep-alives.
pub async fn two_sites(rate: u64, slow_a_to_b: Duration, slow_b_to_a: Duration) -> Mesh {
    sites(2, rate, slow_a_to_b, slow_b_to_a, HANDOVER_WAIT).await
}

/// [`two_sites`] with `n` sites (every pair linked alike: `slow_a_to_b`
/// delays each link's forward direction, from the earlier site of the
/// pair) and the given `handover_wait`.
pub async fn sites(
    n: usize,
    rate: u64,
    slow_a_to_b: Duration,
    slow_b_to_a: Duration,
    handover_wait: Duration,
) -> Mesh {
    init_logging();
    let base = LinkParams::wan(RTT, rate);
    let mesh = MeshBuilder::new(n)
        .link(Link {
            forward: base.clone().with_delay(RTT / 2 + slow_a_to_b),
            reverse: base.with_delay(RTT / 2 + slow_b_to_a),
        })
        .hints((rate / 1_000_000) as f64, RTT)
        .extra_config(&format!(
            "[migration]\nhandover_wait = \"{}ms\"\n",
            handover_wait.as_millis()
        ))
        .start()
        .await
        .unwrap();
    assert!(mesh.wait_all_up(Duration::from_secs(20)).await);
    mesh
}

/// Writes a memory image of `mem` bytes whose `text` bytes from 12 MiB on
/// are random lowercase letters (a fixed BLAKE3 stream mapped to a-z):
/// they compress to about 60%, so round 0 must carry most of them and
/// takes about `0.6 × text / link rate`, and nothing dirties them, so later
/// rounds stay short. (12 MiB is the end of the memory workload's working
/// set, which starts at `WORKLOAD_BASE`, 8 MiB, and spans 4 MiB here: the
/// unmigrated reference assumes the working set starts zeroed.)
///
/// `dir` is created if missing: pass a gateway's `[vms] image_dirs`
/// (`images/` next to the mesh's configs by default).
pub fn write_image(dir: &Path, mem: u64, text: u64) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut image = vec![0u8; mem as usize];
    let start = 12 << 20;
    let region = &mut image[start..start + text as usize];
    blake3::Hasher::new()
        .update(b"wanmig fault image")
        .finalize_xof()
        .fill(region);
    for b in region.iter_mut() {
        *b = b'a' + *b % 26;
    }
    let path = dir.join("image.bin");
    std::fs::write(&path, image).unwrap();
    path
}

/// The fault tests' guest: 32 MiB, optionally preloaded from `image` (see
/// [`write_image`]), and a memory workload that writes 3 pages every 10 ms
/// at most (1024-page working set; the emulated vCPU manages a few hundred
/// pages/s): on an 8 Mbit/s link round 1 is a live round long enough to be
/// cut (a guest dirtying less converges straight into the final round),
/// and the migration still converges.
pub fn fault_vm(image: Option<PathBuf>) -> VmConfig {
    VmConfig {
        mem_size: 32 << 20,
        memory_workload: Some(MemoryWorkloadConfig {
            seed: 0x5eed_0007,
            working_set_pages: 1024,
            pages_per_iteration: 3,
            iterations: 0,
            iteration_period: Duration::from_millis(10),
            page_writes: Default::default(),
        }),
        mem_image: image,
        ..Default::default()
    }
}

/// Polls `f` every few milliseconds until it holds.
pub async fn poll(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub fn record(gw: &GatewayHandle, id: &str, dir: Direction) -> Option<MigrationRecord> {
    gw.migration()
        .records()
        .into_iter()
        .find(|r| r.id == id && r.direction == dir)
}

/// Waits for the migration's record at `gw` to say it ended.
pub async fn finished(gw: &GatewayHandle, id: &str, dir: Direction) -> MigrationRecord {
    poll("the migration to end", WAIT, || {
        record(gw, id, dir).is_some_and(|r| r.finished())
    })
    .await;
    record(gw, id, dir).unwrap()
}

/// Starts migrating [`VM`] from `gw` to `to`; returns the migration id.
pub fn begin(gw: &GatewayHandle, to: &str) -> String {
    begin_with(gw, to, None)
}

/// [`begin`] with a downtime budget (default: the site's 300 ms).
pub fn begin_with(gw: &GatewayHandle, to: &str, downtime: Option<Duration>) -> String {
    gw.migration()
        .begin(MigrateRequest {
            vm: VM.into(),
            to: to.into(),
            downtime,
            scope: None,
        })
        .expect("migration starts")
        .0
}

/// Boots `config` as [`VM`] at site-a and lets it run a little.
pub async fn guest_at_a(mesh: &Mesh, config: &VmConfig) {
    start_vm(mesh.gw("site-a").vm_host(), VM, config.clone()).await;
    assert!(wait_iteration(mesh.gw("site-a").vm_host(), VM, 10).await);
}

/// The migration failed before the handover: the VM runs at A only, its
/// memory matches the unmigrated run, B runs nothing, and A's record and
/// VM list say why.
pub async fn kept_at_a(mesh: &Mesh, config: &VmConfig, id: &str) -> MigrationRecord {
    let (a, b) = (mesh.gw("site-a"), mesh.gw("site-b"));
    let out = finished(a, id, Direction::Outgoing).await;
    eprintln!("{}", serde_json::to_string_pretty(&out).unwrap());
    assert_eq!(out.outcome, Some(Outcome::FailedKeptAtSource), "{out:?}");
    assert!(!out.phase.past_handover(), "{out:?}");
    let error = out.error.clone().unwrap_or_default();
    assert!(!error.is_empty(), "the record says why: {out:?}");
    assert_eq!(a.vm_host().state(VM), Some(VmState::Running));
    assert!(
        keeps_running(a.vm_host(), VM).await,
        "the guest runs on at A"
    );
    assert_ne!(
        b.vm_host().state(VM),
        Some(VmState::Running),
        "the VM must not run at B as well"
    );
    assert_matches_reference(config, &samples(a.vm_host(), VM), "at A after the cut");
    // What `wanmig status` shows.
    let vms = mesh.control("site-a").vms().await.unwrap();
    let v = vms.vms.iter().find(|v| v.name == VM).unwrap();
    assert_eq!(v.state, VmState::Running);
    assert!(
        v.last_error.as_deref().unwrap_or("").contains("site-b"),
        "{v:?}"
    );
    let m = mesh.control("site-a").migration(id).await.unwrap();
    assert_eq!(m.outcome, Some(Outcome::FailedKeptAtSource));
    out
}

/// B gave its partial or paused copy up: nothing of the VM runs at B, and
/// B's record of the incoming migration (if B heard of it) did not
/// succeed.
pub async fn b_discarded(mesh: &Mesh, id: &str) {
    let b = mesh.gw("site-b");
    if record(b, id, Direction::Incoming).is_some() {
        let inc = finished(b, id, Direction::Incoming).await;
        eprintln!("B: {}", serde_json::to_string_pretty(&inc).unwrap());
        assert_ne!(inc.outcome, Some(Outcome::Succeeded), "{inc:?}");
        assert!(inc.error.is_some(), "{inc:?}");
    }
    assert_eq!(b.vm_host().state(VM), None, "B holds no copy");
}

/// With the link down for good: B discards a copy it had not confirmed on
/// its own; one it had confirmed it holds parked (paused, never running)
/// until an operator there discards it (`wanmig migration settle --discard`,
/// through the control API), which then leaves nothing of the VM at B.
pub async fn b_discarded_or_settled_by_operator(mesh: &Mesh, id: &str) {
    let b = mesh.gw("site-b");
    poll("B to discard or park its copy", WAIT, || {
        record(b, id, Direction::Incoming).is_none_or(|r| r.finished() || r.parked)
    })
    .await;
    if record(b, id, Direction::Incoming).is_some_and(|r| r.parked) {
        assert!(
            matches!(b.vm_host().state(VM), Some(VmState::Incoming { .. })),
            "a parked copy is held paused: {:?}",
            b.vm_host().state(VM)
        );
        let settled = mesh
            .control("site-b")
            .settle_migration(id, wanmig_gateway::migration::Decision::Discard)
            .await
            .expect("the operator settles the parked copy");
        assert!(!settled.parked, "{settled:?}");
    }
    b_discarded(mesh, id).await;
}

/// After the link came back: A's record settles (B discarded its copy,
/// when B had confirmed one), and a new migration over the restored link
/// moves the VM with its memory intact.
pub async fn then_moves(mesh: &Mesh, config: &VmConfig, id: &str, out: &MigrationRecord) {
    let a = mesh.gw("site-a");
    assert!(mesh.wait_all_up(Duration::from_secs(30)).await);
    if out.resolution.is_some() {
        poll("the destination to discard its copy", WAIT, || {
            record(a, id, Direction::Outgoing)
                .and_then(|r| r.resolution)
                .is_some_and(|r| r.contains("discarded its copy"))
        })
        .await;
    }
    b_discarded(mesh, id).await;
    let again = begin(a, "site-b");
    let rec = finished(a, &again, Direction::Outgoing).await;
    assert_eq!(rec.outcome, Some(Outcome::Succeeded), "{:?}", rec.error);
    moved_to_b(mesh, config, &again).await;
}

/// The VM runs at B only, with no iteration lost and memory matching the
/// unmigrated run on both sides; A's copy stays stopped.
pub async fn moved_to_b(mesh: &Mesh, config: &VmConfig, id: &str) {
    let (a, b) = (mesh.gw("site-a"), mesh.gw("site-b"));
    let rec = finished(a, id, Direction::Outgoing).await;
    assert_eq!(rec.outcome, Some(Outcome::Succeeded), "{rec:?}");
    assert!(rec.memory_digest.is_some(), "{rec:?}");
    assert_eq!(
        a.vm_host().state(VM),
        Some(VmState::MigratedAway {
            to: "site-b".into()
        })
    );
    assert_eq!(b.vm_host().state(VM), Some(VmState::Running));
    let stopped = a.vm_host().exit_status(VM);
    assert_eq!(stopped, Some(wanmig_migration::admin::RunExit::Stopped));
    let a_last = iteration(a.vm_host(), VM);
    assert!(wait_iteration(b.vm_host(), VM, a_last + 10).await);
    assert_eq!(iteration(a.vm_host(), VM), a_last, "A's copy stays stopped");
    let at_b = samples(b.vm_host(), VM);
    assert!(
        at_b[0].iteration <= a_last + 1,
        "no iteration lost: A reported up to {a_last}, B from {:?}",
        &at_b[..3.min(at_b.len())]
    );
    assert_matches_reference(config, &samples(a.vm_host(), VM), "at A");
    assert_matches_reference(config, &at_b, "at B");
    // B's incoming record agrees on the memory digest.
    let inc = finished(b, id, Direction::Incoming).await;
    assert_eq!(inc.outcome, Some(Outcome::Succeeded));
    assert_eq!(inc.memory_digest, rec.memory_digest);
}

/// The source handed the VM over and did not hear back: it never runs it
/// again (its copy is stopped), B runs it, and A's record and VM state say
/// the handover is unconfirmed and will be settled when the link returns.
pub async fn handed_over_unconfirmed(mesh: &Mesh, config: &VmConfig, id: &str) -> u64 {
    let (a, b) = (mesh.gw("site-a"), mesh.gw("site-b"));
    let out = finished(a, id, Direction::Outgoing).await;
    eprintln!("{}", serde_json::to_string_pretty(&out).unwrap());
    assert_eq!(out.outcome, Some(Outcome::HandoverUnconfirmed), "{out:?}");
    assert!(out.error.is_some(), "{out:?}");
    assert!(out.resolution.is_some(), "A will settle it: {out:?}");
    assert!(matches!(
        a.vm_host().state(VM),
        Some(VmState::HandoverUnconfirmed { .. })
    ));
    let stopped = a.vm_host().exit_status(VM);
    assert_eq!(stopped, Some(wanmig_migration::admin::RunExit::Stopped));
    let a_last = iteration(a.vm_host(), VM);
    assert!(wait_iteration(b.vm_host(), VM, a_last + 10).await);
    assert_eq!(iteration(a.vm_host(), VM), a_last, "A's copy stays stopped");
    assert_eq!(b.vm_host().state(VM), Some(VmState::Running));
    let at_b = samples(b.vm_host(), VM);
    assert!(at_b[0].iteration <= a_last + 1, "no iteration lost");
    assert_matches_reference(config, &at_b, "at B");
    let vms = mesh.control("site-a").vms().await.unwrap();
    let v = vms.vms.iter().find(|v| v.name == VM).unwrap();
    assert!(
        matches!(v.state, VmState::HandoverUnconfirmed { .. }),
        "{v:?}"
    );
    a_last
}

/// After [`handed_over_unconfirmed`] and the link's return: A settles with
/// B (the VM runs there), and says so.
pub async fn settled_at_b(mesh: &Mesh, config: &VmConfig, id: &str) {
    let (a, b) = (mesh.gw("site-a"), mesh.gw("site-b"));
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
    assert_matches_reference(config, &samples(a.vm_host(), VM), "at A");
    assert_matches_reference(config, &samples(b.vm_host(), VM), "at B");
}

/// Whether a record's phase is one of the pre-copy rounds.
pub fn copying(r: &MigrationRecord) -> bool {
    r.phase == Phase::Copying
}
