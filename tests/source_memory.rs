//! A VM that migrated away gives its memory back at the source. Its own
//! test binary: the check reads this process's resident memory, which
//! tests running beside it in one process would add to.

#[path = "migration_support.rs"]
mod support;

use std::time::Duration;

use support::*;
use wanmig_e2e::{init_logging, MeshBuilder};
use wanmig_gateway::migration::{MigrateRequest, Outcome};
use wanmig_gateway::vms::VmState;
use wanmig_migration::machine::VmConfig;

fn hex(d: &[u8; 32]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// The gateway's resident memory, bytes (`VmRSS` of /proc/self/status).
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib << 10
}

/// A VM that migrated away gives its memory back at the source: after a
/// 256 MiB guest (all of it written) moves A → B, both gateways in this
/// process hold about one copy of it, not two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_frees_a_migrated_vms_memory() {
    if !wanmig_testenv::require_kvm("the_source_frees_a_migrated_vms_memory") {
        return;
    }
    init_logging();
    const MEM: u64 = 256 << 20;
    let mesh = MeshBuilder::new(2).start().await.unwrap();
    assert!(mesh.wait_all_up(Duration::from_secs(20)).await);
    let (a, b) = (mesh.gw("site-a"), mesh.gw("site-b"));
    // An image that fills every page (each with its own number, so pages
    // neither read as zero nor dedup), written in pieces so the test's own
    // buffers stay small.
    let images = mesh.dir().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let image = images.join("full.img");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&image).unwrap());
        for page in 0..MEM / 4096 {
            let word = (page + 1).to_le_bytes();
            for _ in 0..4096 / 8 {
                f.write_all(&word).unwrap();
            }
        }
        f.flush().unwrap();
    }
    let config = VmConfig {
        mem_size: MEM,
        mem_image: Some(image),
        ..VmConfig::default()
    };
    let before = rss();
    start_vm(a.vm_host(), "vm1", config).await;
    let running = rss();
    assert!(
        running > before + MEM * 3 / 4,
        "the guest's memory is resident: {before} -> {running} bytes"
    );
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
    // B holds its copy now; A's must be gone (a kept copy adds MEM). The
    // sessions' buffers (the destination decoder's cache of received
    // pages, up to 256 MiB) go when their tasks end, a moment after the
    // source's record finished: wait for that, within a deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut moved = rss();
    while moved >= running + MEM / 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        moved = rss();
    }
    eprintln!("RSS: before {before}, running at A {running}, moved to B {moved}");
    assert!(
        moved < running + MEM / 2,
        "the source still holds the VM's memory: RSS {running} -> {moved} bytes"
    );
    assert!(a.vm_host().with_vm("vm1", |_| ()).is_none());
    let released = a.vm_host().released("vm1").expect("A keeps a record");
    assert_eq!(
        released.exit,
        Some(wanmig_migration::admin::RunExit::Stopped)
    );
    assert_eq!(
        rec.memory_digest.as_deref(),
        Some(hex(&released.memory_digest).as_str())
    );
    mesh.shutdown().await;
}
