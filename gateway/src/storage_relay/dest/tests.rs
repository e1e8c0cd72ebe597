//! The destination's completion handshake through two real gateways (QUIC,
//! mutual TLS, the WAN emulator relay): a destination that crashes after
//! `Done` but before `Released`, with a guest write since, is verified
//! after its restart.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wanmig_storage::{ReleasePolicy, RemoteDiskConfig, DEFAULT_BLOCK_SIZE};

use crate::lab::{Link, MeshBuilder};
use crate::peering::LinkState;

const BS: u64 = DEFAULT_BLOCK_SIZE as u64;
const BLOCKS: u64 = 32;
const DISK: u64 = BLOCKS * BS;

/// Distinct bytes in every block (a splitmix64 stream).
fn source_image() -> Vec<u8> {
    let mut x = 0x5eed_u64;
    (0..DISK / 8)
        .flat_map(|_| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)).to_le_bytes()
        })
        .collect()
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The sequence: the guest at B reads every block but the last (fetched on
/// demand), the link is cut, the guest writes the last block whole — the
/// copy completes with the link down, so B's `Done` cannot reach A — then
/// writes a copied block (after `Done`, its written bit never saved), and
/// B crashes. After the link returns, B imports the same disk into the same
/// local copy again: the `Done` it resends must pass A's check (before the
/// fix B recomputed the digest over the guest's unsaved write and A
/// reported a verification failure), A releases, and B's copy holds the
/// source's bytes with both guest writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_done_and_released_after_a_guest_write_still_verifies() {
    let mesh = MeshBuilder::new(2)
        .link(Link::wan(Duration::from_millis(10), 200_000_000))
        .prepare()
        .await
        .unwrap()
        .start()
        .await
        .unwrap();
    assert!(mesh.wait_all_up(Duration::from_secs(20)).await);
    let a = mesh.gw("site-a").storage().clone();
    let b = mesh.gw("site-b").storage().clone();
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src.img"), dir.path().join("dst.img"));
    let original = source_image();
    std::fs::write(&src, &original).unwrap();
    a.export("vm9.img", &src, DISK, ReleasePolicy::Keep, "site-b")
        .unwrap();
    let config = RemoteDiskConfig::default();

    let import = b
        .import_with("site-a", "vm9.img", &dst, DISK, config, false)
        .await
        .unwrap();
    let disk = Arc::clone(import.disk());
    let d = Arc::clone(&disk);
    let read = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; BS as usize];
        let mut all = Vec::new();
        for blk in 0..BLOCKS - 1 {
            d.read_at(blk * BS, &mut buf).unwrap();
            all.extend_from_slice(&buf);
        }
        all
    })
    .await
    .unwrap();
    assert_eq!(read, original[..((BLOCKS - 1) * BS) as usize]);
    assert!(!disk.is_all_local());

    let relay = mesh.relay("site-a", "site-b");
    relay.cut();
    let last = vec![0x5a_u8; BS as usize];
    disk.write_at((BLOCKS - 1) * BS, &last).unwrap();
    assert!(disk.is_all_local());
    wait_for("B's Done", || disk.confirmed().is_some()).await;
    let late = b"written after Done, never flushed";
    disk.write_at(100, late).unwrap();
    // The crash: nothing more is saved; what B had buffered for A dies with
    // the connection (the cut outlasts the 3 s idle timeout), as it would
    // with the process.
    import.abort();
    drop(disk);
    let peering = mesh.gw("site-b").peering().clone();
    wait_for("B to see the link down", || {
        peering.peer_state("site-a") != Some(LinkState::Up)
    })
    .await;
    assert!(!a.is_released("vm9.img"), "A never heard B's Done");
    relay.restore();
    assert!(mesh.wait_all_up(Duration::from_secs(20)).await);

    let import = b
        .import_with("site-a", "vm9.img", &dst, DISK, config, true)
        .await
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(60), import.finish())
        .await
        .expect("the resumed import ends within a minute")
        .expect("the resent Done passes the source's check");
    assert!(report.verified, "{report:?}");
    assert!(a.is_released("vm9.img"));
    let status = a.export_status("vm9.img").unwrap();
    assert!(status.verified && status.error.is_none(), "{status:?}");
    assert_eq!(std::fs::read(&src).unwrap(), original, "A's copy is kept");
    let mut want = original.clone();
    want[100..100 + late.len()].copy_from_slice(late);
    want[((BLOCKS - 1) * BS) as usize..].copy_from_slice(&last);
    let got = std::fs::File::open(&dst).unwrap();
    let mut buf = vec![0u8; DISK as usize];
    got.read_exact_at(&mut buf, 0).unwrap();
    assert!(
        buf == want,
        "B's copy: the source's bytes and both guest writes"
    );
    mesh.shutdown().await;
}
