//! A real KVM guest with a disk migrates A → B through the WAN emulator;
//! its disk follows it (follow-on storage migration). Checks: the guest's
//! disk workload keeps verifying without errors at B while the disk is
//! still being copied, the copy completes, the destination disk holds what
//! the guest-abi model says the guest wrote, and the source file is
//! unchanged since the handover.

use std::time::{Duration, Instant};

use wanmig_e2e::{init_logging, MeshBuilder};
use wanmig_gateway::migration::api::MigrateBody;
use wanmig_gateway::migration::{MigrateRequest, Outcome};
use wanmig_gateway::vms::{DiskState, VmHost, VmHosting, VmState};
use wanmig_guest_abi::virtio::{disk_block_fill, disk_block_last_iteration, DISK_BLOCK_WORDS};
use wanmig_migration::machine::{DiskConfig, VmConfig};

const DISK_LEN: u64 = 4 << 20;
const SEED: u64 = 0x0510_7a6e;
const PER_ITERATION: u64 = 64;

/// The guest's latest disk report: [iteration, digest, verified, errors].
fn disk_report(host: &VmHost, vm: &str) -> Option<[u64; 4]> {
    host.reports(vm)?
        .latest(wanmig_guest_abi::REPORT_DISK_ITERATION)
        .map(|r| [r.values[0], r.values[1], r.values[2], r.values[3]])
}

async fn wait_disk_iteration(host: &VmHost, vm: &str, n: u64) -> [u64; 4] {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(r) = disk_report(host, vm) {
            assert_eq!(r[3], 0, "the guest saw disk errors: {r:?}");
            if r[0] >= n {
                return r;
            }
        }
        assert!(Instant::now() < deadline, "disk iteration {n} not reached");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Freezes the guest at `host` and compares its disk file at `path` with
/// what the guest-abi model says the guest wrote.
fn check_against_model(host: &VmHost, path: &std::path::Path) {
    host.with_vm("vm1", |v| v.pause().unwrap()).unwrap();
    let done = disk_report(host, "vm1").unwrap();
    assert_eq!(done[3], 0, "no disk errors after the copy: {done:?}");
    let image = std::fs::read(path).unwrap();
    assert_eq!(image.len() as u64, DISK_LEN);
    let total = DISK_LEN / 512;
    let mut words = [0u64; DISK_BLOCK_WORDS];
    let mut checked = 0;
    for block in 0..total {
        let got = &image[(block * 512) as usize..((block + 1) * 512) as usize];
        // The report names the iteration just finished (so done[0] + 1
        // iterations are complete); the guest may be part way through the
        // next one.
        let candidates = [
            disk_block_last_iteration(block, PER_ITERATION, total, done[0] + 1),
            disk_block_last_iteration(block, PER_ITERATION, total, done[0] + 2),
        ];
        let ok = candidates.iter().any(|c| match c {
            None => got.iter().all(|&b| b == 0),
            Some(i) => {
                disk_block_fill(SEED, *i, block, &mut words);
                let want: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
                got == want.as_slice()
            }
        });
        assert!(ok, "block {block} differs from the model ({candidates:?})");
        checked += u64::from(candidates[0].is_some());
    }
    assert!(checked > 0, "the guest wrote blocks");
}

/// A 32 MiB VM whose disk workload runs on a fresh sparse disk of
/// `DISK_LEN` bytes in `disks/` under the mesh's `dir` (the gateways'
/// default `[vms] disk_dirs`): the disk's path and the VM's config.
fn disk_vm(dir: &std::path::Path) -> (std::path::PathBuf, VmConfig) {
    let disks = dir.join("disks");
    std::fs::create_dir_all(&disks).unwrap();
    let src_path = disks.join("vm1-src.disk");
    std::fs::File::create(&src_path)
        .unwrap()
        .set_len(DISK_LEN)
        .unwrap();
    let config = VmConfig {
        mem_size: 32 << 20,
        disk: Some(DiskConfig {
            path: src_path.clone(),
            seed: SEED,
            blocks_per_iteration: PER_ITERATION,
            iterations: 0,
        }),
        ..VmConfig::default()
    };
    (src_path, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_disk_follows_it_and_stays_consistent() {
    if !wanmig_testenv::require_kvm("a_vm_disk_follows_it_and_stays_consistent") {
        return;
    }
    init_logging();
    let rtt = Duration::from_millis(30);
    let mesh = MeshBuilder::new(2)
        .wan(rtt, 200_000_000)
        .start()
        .await
        .unwrap();
    assert!(mesh.wait_all_up(Duration::from_secs(20)).await);
    let (a, b) = (mesh.gw("site-a"), mesh.gw("site-b"));

    let (src_path, config) = disk_vm(mesh.dir());
    mesh.control("site-a")
        .start_vm("vm1", &config)
        .await
        .expect("the VM starts");
    wait_disk_iteration(a.vm_host(), "vm1", 5).await;

    let rec = a
        .migration()
        .migrate(MigrateRequest {
            vm: "vm1".into(),
            to: "site-b".into(),
            downtime: Some(Duration::from_millis(300)),
            scope: None,
        })
        .await
        .expect("the migration starts");
    assert_eq!(rec.outcome, Some(Outcome::Succeeded), "{:?}", rec.error);
    assert_eq!(b.vm_host().state("vm1"), Some(VmState::Running));
    // The source VM never runs again: its file is frozen from here on.
    let src_at_handover = wanmig_storage::disk_digest(&src_path).unwrap();
    let at_handover = disk_report(a.vm_host(), "vm1").expect("reports at A");

    // The guest keeps writing and verifying at B, on the remote-backed disk.
    let later = wait_disk_iteration(b.vm_host(), "vm1", at_handover[0] + 5).await;
    assert_eq!(later[3], 0);

    let deadline = Instant::now() + Duration::from_secs(60);
    let local = loop {
        match b.vm_host().disk_state("vm1") {
            Some(s @ DiskState::Local { .. }) => break s,
            Some(DiskState::Failed { reason, .. }) => panic!("disk copy failed: {reason}"),
            other => assert!(Instant::now() < deadline, "copy not done: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let DiskState::Local {
        path,
        disk_bytes,
        verified,
        ..
    } = local
    else {
        unreachable!()
    };
    assert_eq!(disk_bytes, DISK_LEN);
    assert!(verified, "the source checked B's copy before releasing");
    assert_ne!(path, src_path, "B runs on its own copy");
    let listed = b.vm_host().list();
    assert!(listed[0].storage.is_some(), "status shows the disk state");

    check_against_model(b.vm_host(), &path);
    assert_eq!(
        wanmig_storage::disk_digest(&src_path).unwrap(),
        src_at_handover,
        "the source disk is unchanged since the handover (release = keep)"
    );
}

/// `wanmig migrate --no-storage` through the control API, then `wanmig
/// storage migrate` at the destination, with `release = "delete"`: the disk
/// stays at A (read on demand, no background copy) until the operator asks;
/// migrating on from B is refused meanwhile; after the copy the source
/// verified B's copy and only then deleted its file; B's /metrics count it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_storage_leaves_the_disk_remote_until_asked_then_deletes_the_source() {
    if !wanmig_testenv::require_kvm("no_storage_leaves_the_disk_remote_until_asked") {
        return;
    }
    init_logging();
    let mesh = MeshBuilder::new(2)
        .wan(Duration::from_millis(30), 200_000_000)
        .extra_config("[storage]\nrelease = \"delete\"\n")
        .start()
        .await
        .unwrap();
    assert!(mesh.wait_all_up(Duration::from_secs(20)).await);
    let (a, b) = (mesh.gw("site-a"), mesh.gw("site-b"));
    let (ctl_a, ctl_b) = (mesh.control("site-a"), mesh.control("site-b"));

    let (src_path, config) = disk_vm(mesh.dir());
    ctl_a.start_vm("vm1", &config).await.expect("the VM starts");
    wait_disk_iteration(a.vm_host(), "vm1", 5).await;

    let started = ctl_a
        .migrate_compute_only(&MigrateBody {
            request: MigrateRequest {
                vm: "vm1".into(),
                to: "site-b".into(),
                downtime: Some(Duration::from_millis(300)),
                scope: None,
            },
            bandwidth_bps: None,
        })
        .await
        .expect("the migration starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    let rec = loop {
        let r = ctl_a.migration(&started.id).await.unwrap();
        if r.finished() {
            break r;
        }
        assert!(Instant::now() < deadline, "migration never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(rec.outcome, Some(Outcome::Succeeded), "{:?}", rec.error);
    let at_handover = disk_report(a.vm_host(), "vm1").expect("reports at A");

    // At B the guest keeps verifying on a remote-only disk.
    wait_disk_iteration(b.vm_host(), "vm1", at_handover[0] + 5).await;
    let Some(DiskState::RemoteOnly {
        from,
        local_blocks,
        total_blocks,
        ..
    }) = b.vm_host().disk_state("vm1")
    else {
        panic!("remote-only expected: {:?}", b.vm_host().disk_state("vm1"))
    };
    assert_eq!(from, "site-a");
    assert!(
        local_blocks < total_blocks,
        "no background copy: {local_blocks}/{total_blocks} local"
    );
    let export = ctl_a
        .storage("vm1")
        .await
        .unwrap()
        .export
        .expect("A exports");
    assert!(!export.background && !export.released);
    assert!(src_path.exists(), "A keeps the authoritative disk");

    // Migrating on while the disk is remote is refused, saying what to do.
    let e = b
        .migration()
        .begin(MigrateRequest {
            vm: "vm1".into(),
            to: "site-a".into(),
            downtime: None,
            scope: None,
        })
        .expect_err("refused while the disk is remote");
    assert!(e.to_string().contains("wanmig storage migrate vm1"), "{e}");
    // Asking A (where the VM no longer runs) says where to ask.
    let e = ctl_a.storage_migrate("vm1").await.unwrap_err();
    assert!(e.to_string().contains("site-b"), "{e}");

    let s = ctl_b.storage_migrate("vm1").await.expect("the copy starts");
    assert!(
        matches!(
            s.disk,
            Some(DiskState::Copying { .. } | DiskState::Local { .. })
        ),
        "{:?}",
        s.disk
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let (path, verified) = loop {
        match ctl_b.storage("vm1").await.unwrap().disk {
            Some(DiskState::Local { path, verified, .. }) => break (path, verified),
            Some(DiskState::Failed { reason, .. }) => panic!("disk copy failed: {reason}"),
            other => assert!(Instant::now() < deadline, "copy not done: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(verified, "the source checked B's copy");
    let export = ctl_a.storage("vm1").await.unwrap().export.unwrap();
    assert!(export.released && export.verified, "{export:?}");
    assert!(
        !src_path.exists(),
        "release = delete removed A's file after the check"
    );

    let text = reqwest::get(format!(
        "http://{}/metrics",
        b.metrics_addr().expect("the lab serves metrics")
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{prefix} missing in:\n{text}"))
    };
    assert_eq!(
        value("wanmig_storage_copies_total{outcome=\"verified\""),
        1.0
    );
    assert!(value("wanmig_storage_blocks_total{how=\"copied\"") > 0.0);
    // A label appears once its count is above zero.
    let blocks = |how: &str| -> f64 {
        let prefix = format!("wanmig_storage_blocks_total{{how=\"{how}\"");
        text.lines()
            .find(|l| l.starts_with(&prefix))
            .map_or(0.0, |_| value(&prefix))
    };
    let arrived = blocks("copied") + blocks("on_demand") + blocks("discarded");
    let (before, after) = (
        value("wanmig_storage_bytes_before_reduction_total"),
        value("wanmig_storage_bytes_after_reduction_total"),
    );
    assert!(after > 0.0 && before > 0.0);
    // The guest writes random words, and given time it overwrites the whole
    // disk, so how much zstd saves here depends on how far it got (the
    // reduction itself is asserted on fixed content in the storage crate's
    // tests). What holds for any content: a block zstd cannot shrink goes
    // raw, so the wire never costs more than the blocks plus a kind byte.
    assert!(
        after <= before + arrived,
        "{after} wire bytes for {before} bytes in {arrived} blocks"
    );

    check_against_model(b.vm_host(), &path);
}
