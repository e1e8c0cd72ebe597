//! Follow-on storage migration through two real gateways (QUIC + mutual TLS)
//! over the WAN emulator relay: the destination's remote-backed disk is fed
//! by the storage relay while a writer at the destination keeps writing and
//! reading back its blocks. Checks the digests after completion, a link cut
//! mid-copy, and a destination crash mid-copy; and that a stream in another
//! storage protocol version, or opening with a frame this build does not
//! know, is answered with a reason (an unknown advisory frame is skipped).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use wanmig_gateway::lab::{Link, Mesh, MeshBuilder};
use wanmig_gateway::peering::StreamKind;
use wanmig_gateway::storage_relay::{ImportReport, StorageImport, StorageRelay, StorageRelayError};
use wanmig_gateway::LinkState;
use wanmig_migration::storage::{decode_frame, Frame, MAX_FRAME, STORAGE};
use wanmig_storage::presence::PresenceBitmap;
use wanmig_storage::testdisk::{build_image, ImageMix};
use wanmig_storage::{disk_digest, ReleasePolicy, RemoteDisk, RemoteDiskConfig};

const DISK: u64 = 12 << 20;

fn mix() -> ImageMix {
    ImageMix {
        text: 30,
        binary: 20,
        random: 30,
        zeros: 5,
        partial: 15,
    }
}

async fn mesh(rate_bps: u64) -> Mesh {
    mesh_with(rate_bps, "").await
}

/// [`mesh`] with `extra` TOML added to both gateways' config.
async fn mesh_with(rate_bps: u64, extra: &str) -> Mesh {
    let mesh = MeshBuilder::new(2)
        .link(Link::wan(Duration::from_millis(20), rate_bps))
        .extra_config(extra)
        .prepare()
        .await
        .unwrap()
        .start()
        .await
        .unwrap();
    assert!(mesh.wait_all_up(Duration::from_secs(30)).await);
    mesh
}

/// Waits (a minute at most) until `disk` holds at least `blocks` blocks,
/// and returns its progress then. Polls every few milliseconds: the tests
/// that act mid-copy act as soon as the copy is under way, not after a
/// fixed sleep that a fast machine outruns and a slow one undershoots.
async fn copied_at_least(disk: &RemoteDisk, blocks: u64) -> (u64, u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (present, total) = disk.progress();
        if present >= blocks.min(total) {
            return (present, total);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the copy did not reach {blocks} blocks: {present} of {total}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Deterministic contents for writer iteration `i`.
fn pattern(i: u64) -> Vec<u8> {
    (0..4096u64).map(|k| (i * 31 + k * 7) as u8).collect()
}

fn offset_of(i: u64) -> u64 {
    // Spread over the disk, unaligned to blocks, some spanning two blocks.
    (i * 977 * 4096 + (i % 3) * 1000) % (DISK - 8192)
}

/// Writes at the destination while the copy runs, reading each write back.
fn writer(disk: Arc<RemoteDisk>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let mut done = Vec::new();
        let mut i = 0;
        while !stop.load(Ordering::Acquire) && i < 200 {
            let p = pattern(i);
            disk.write_at(offset_of(i), &p)
                .expect("write at destination");
            let mut back = vec![0u8; p.len()];
            disk.read_at(offset_of(i), &mut back)
                .expect("read at destination");
            assert_eq!(back, p, "read-back of write {i}");
            done.push(i);
            i += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        done
    })
}

/// The source image with the destination's writes applied, in order.
fn expected_digest(source_copy: &Path, writes: &[u64]) -> blake3::Hash {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(source_copy)
        .unwrap();
    for &i in writes {
        f.write_all_at(&pattern(i), offset_of(i)).unwrap();
    }
    drop(f);
    disk_digest(source_copy).unwrap()
}

fn config() -> RemoteDiskConfig {
    RemoteDiskConfig {
        persist_every_blocks: 16,
        ..RemoteDiskConfig::default()
    }
}

/// One test's disk files and the two sites' storage relays: `src` (a
/// built image) is what site-a exports, `dst` where site-b copies it.
struct Disks {
    dir: TempDir,
    src: PathBuf,
    dst: PathBuf,
    a: StorageRelay,
    b: StorageRelay,
}

/// Builds the source image from `seed` in a fresh directory.
fn disks(mesh: &Mesh, seed: u64) -> Disks {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    let dst = dir.path().join("dst.img");
    build_image(&src, DISK, mix(), seed).unwrap();
    Disks {
        src,
        dst,
        dir,
        a: mesh.gw("site-a").storage().clone(),
        b: mesh.gw("site-b").storage().clone(),
    }
}

impl Disks {
    /// Site-a exports `src` as `name`; site-b starts copying it to `dst`.
    async fn export_and_import(&self, name: &str, policy: ReleasePolicy) -> StorageImport {
        self.a
            .export(name, &self.src, DISK, policy, "site-b")
            .unwrap();
        self.import(name, &self.dst).await
    }

    /// Site-b starts copying site-a's `name` to `dst`.
    async fn import(&self, name: &str, dst: &Path) -> StorageImport {
        self.try_import(name, dst).await.unwrap()
    }

    /// [`Disks::import`] where the source may refuse.
    async fn try_import(&self, name: &str, dst: &Path) -> Result<StorageImport, StorageRelayError> {
        self.b.import("site-a", name, dst, DISK, config()).await
    }
}

/// Waits (two minutes at most: the machine may be loaded) for the copy to
/// end.
async fn finish(import: StorageImport) -> Result<ImportReport, StorageRelayError> {
    tokio::time::timeout(Duration::from_secs(120), import.finish())
        .await
        .expect("the copy ends within two minutes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_with_writes_at_destination_and_link_cut() {
    let mesh = mesh(60_000_000).await;
    let d = disks(&mesh, 7);
    let (src, dst) = (&d.src, &d.dst);
    let before = disk_digest(src).unwrap();
    let oracle = d.dir.path().join("oracle.img");
    std::fs::copy(src, &oracle).unwrap();

    let import = d.export_and_import("vm1.img", ReleasePolicy::Keep).await;
    let disk = Arc::clone(import.disk());
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(Arc::clone(&disk), Arc::clone(&stop));

    // Cut the WAN as soon as the copy is under way (the rest of the ~12 MiB
    // image takes the 60 Mbit/s link most of a second at any CPU speed),
    // keep it cut until both gateways have given the connection up (the
    // idle timeout fired: the copy must re-establish its session, not just
    // ride out a pause), then restore it.
    let (present, total) = copied_at_least(&disk, 1).await;
    mesh.relay("site-a", "site-b").cut();
    assert!(present < total, "the copy must still be running at the cut");
    for site in ["site-a", "site-b"] {
        let down = mesh
            .gw(site)
            .wait_until(Duration::from_secs(60), |ps| {
                ps.iter().all(|p| p.state != LinkState::Up)
            })
            .await;
        assert!(down, "{site} still sees the peer up a minute after the cut");
    }
    mesh.relay("site-a", "site-b").restore();

    let report = finish(import).await.unwrap();
    stop.store(true, Ordering::Release);
    let writes = tokio::task::spawn_blocking(move || w.join().unwrap())
        .await
        .unwrap();
    assert!(!writes.is_empty());
    assert!(
        report.reconnects >= 1,
        "the session was re-established: {report:?}"
    );
    assert!(
        report.wire_bytes > 0 && report.wire_bytes < DISK,
        "{report:?}"
    );
    assert!(disk.is_all_local());
    assert!(d.a.is_released("vm1.img"));
    assert_eq!(disk_digest(src).unwrap(), before, "source kept unchanged");
    assert_eq!(disk_digest(dst).unwrap(), expected_digest(&oracle, &writes));
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_crash_leaves_source_intact_and_copy_resumes() {
    let mesh = mesh(30_000_000).await;
    let d = disks(&mesh, 11);
    let (src, dst) = (&d.src, &d.dst);
    let before = disk_digest(src).unwrap();

    let import = d.export_and_import("vm2.img", ReleasePolicy::Delete).await;
    // The crash comes once the destination has saved a bitmap that holds
    // blocks (saved off the transport thread by a tick every 100 ms, once
    // 16 blocks arrived), with most of the copy (over a second on the
    // 30 Mbit/s link at any CPU speed) still to go.
    let disk = Arc::clone(import.disk());
    copied_at_least(&disk, 16).await;
    let sidecar = wanmig_storage::presence::sidecar_path(dst);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let saved = PresenceBitmap::load(&sidecar, disk.geometry())
            .ok()
            .flatten()
            .map_or(0, |b| b.present_count());
        if saved > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the destination never saved its bitmap"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (present, total) = disk.progress();
    import.abort();
    drop(disk);
    assert!(present < total, "crash must happen mid-copy");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        src.exists() && !d.a.is_released("vm2.img"),
        "source not released"
    );
    assert_eq!(disk_digest(src).unwrap(), before, "source unchanged");

    // A new import of the same path resumes from the saved bitmap.
    let import = d.import("vm2.img", dst).await;
    let (resumed_at, _) = import.disk().progress();
    assert!(resumed_at > 0, "resumed from the saved bitmap");
    let disk = Arc::clone(import.disk());
    finish(import).await.unwrap();
    assert!(disk.is_all_local());
    assert_eq!(disk_digest(dst).unwrap(), before);
    assert!(
        !src.exists(),
        "released by the Delete policy after confirmation"
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_source_disk_is_refused_before_anything_moves() {
    let mesh = mesh(1_000_000_000).await;
    let d = disks(&mesh, 3);
    let (src, dst, a) = (&d.src, &d.dst, &d.a);
    // Missing file: refused at export.
    assert!(a
        .export(
            "x.img",
            &d.dir.path().join("missing.img"),
            DISK,
            ReleasePolicy::Keep,
            "site-b"
        )
        .is_err());
    // Truncated after export: the source refuses the import.
    a.export("t.img", src, DISK, ReleasePolicy::Keep, "site-b")
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(src)
        .unwrap()
        .set_len(DISK / 2)
        .unwrap();
    let e = d.try_import("t.img", dst).await.unwrap_err();
    assert!(e.to_string().contains("t.img"), "{e}");
    // Unknown name.
    let e = d.try_import("nope.img", dst).await.unwrap_err();
    assert!(e.to_string().contains("no disk"), "{e}");
    assert!(!dst.exists(), "nothing created at the destination");
    mesh.shutdown().await;
}

/// The destination heard nothing after its `Done` (the `Released` was lost
/// and it restarted): importing the same disk into the same complete copy
/// again is answered with `Released` and succeeds, verified; a fresh copy of
/// a released disk is refused with a reason, creating nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_release_ack_does_not_fail_a_finished_copy() {
    let mesh = mesh(1_000_000_000).await;
    let d = disks(&mesh, 5);
    let (src, dst) = (&d.src, &d.dst);
    let before = disk_digest(src).unwrap();
    let first = d.export_and_import("vm3.img", ReleasePolicy::Delete).await;
    let r = finish(first).await.unwrap();
    assert!(r.verified);
    assert!(!src.exists(), "deleted after the confirmed, verified copy");
    let status = d.a.export_status("vm3.img").unwrap();
    assert!(status.released && status.verified, "{status:?}");
    assert_eq!(status.to.as_deref(), Some("site-b"));

    let again = d
        .try_import("vm3.img", dst)
        .await
        .expect("the source answers Released again");
    let r = again.finish().await.unwrap();
    assert!(r.verified);
    assert_eq!(disk_digest(dst).unwrap(), before);

    let elsewhere = d.dir.path().join("other.img");
    let e = d.try_import("vm3.img", &elsewhere).await.unwrap_err();
    assert!(e.to_string().contains("released"), "{e}");
    assert!(!elsewhere.exists(), "nothing created");
    mesh.shutdown().await;
}

/// A source block changed after the destination copied it (nothing should
/// write a source disk after the handover): the end-of-copy check catches
/// it, the import fails with a reason, and the source keeps its file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_of_copy_check_catches_a_diverged_copy_and_keeps_the_source() {
    use std::os::unix::fs::FileExt;
    let mesh = mesh(20_000_000).await;
    let d = disks(&mesh, 9);
    let src = &d.src;
    let import = d.export_and_import("vm4.img", ReleasePolicy::Delete).await;
    let disk = Arc::clone(import.disk());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !disk.is_block_local(0) {
        assert!(
            std::time::Instant::now() < deadline,
            "block 0 never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!disk.is_all_local(), "the change must land mid-copy");
    std::fs::OpenOptions::new()
        .write(true)
        .open(src)
        .unwrap()
        .write_all_at(b"changed behind the copy's back", 100)
        .unwrap();
    let e = finish(import).await.unwrap_err();
    assert!(e.to_string().contains("end-of-copy check failed"), "{e}");
    assert!(src.exists(), "the source copy is kept");
    let status = d.a.export_status("vm4.img").unwrap();
    assert!(!status.released && status.error.is_some(), "{status:?}");
    mesh.shutdown().await;
}

/// With a page store at the destination (`[migration] store_dir`), a second
/// disk with the same content as one copied before travels as page
/// references: a fraction of the wire bytes, the same bytes at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_disk_with_known_content_sends_references() {
    let mesh = mesh_with(1_000_000_000, "[migration]\nstore_dir = \"store-{site}\"\n").await;
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one.img"), dir.path().join("two.img"));
    build_image(&one, DISK, mix(), 21).unwrap();
    std::fs::copy(&one, &two).unwrap();
    let want = disk_digest(&one).unwrap();
    let a = mesh.gw("site-a").storage().clone();
    let b = mesh.gw("site-b").storage().clone();
    let mut wire = Vec::new();
    for (name, src) in [("one.img", &one), ("two.img", &two)] {
        a.export(name, src, DISK, ReleasePolicy::Keep, "site-b")
            .unwrap();
        let dst = dir.path().join(format!("copy-{name}"));
        let import = b
            .import("site-a", name, &dst, DISK, config())
            .await
            .unwrap();
        let r = finish(import).await.unwrap();
        assert!(r.verified);
        assert_eq!(disk_digest(&dst).unwrap(), want, "{name}");
        wire.push(r.wire_bytes);
    }
    assert!(
        wire[1] * 5 < wire[0],
        "the second copy sends references: {wire:?} bytes"
    );
    mesh.shutdown().await;
}

/// A page store too small for the disk evicts pages the source believes the
/// destination holds: references that no longer resolve are asked for again
/// without references, and the copy still ends byte-identical and verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_to_evicted_pages_fall_back_to_plain_blocks() {
    use std::os::unix::fs::FileExt;
    wanmig_e2e::init_logging();
    let mesh = mesh_with(
        1_000_000_000,
        "[migration]\nstore_dir = \"store-{site}\"\nstore_cap_mib = 1\n",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (one, two, other) = (
        dir.path().join("one.img"),
        dir.path().join("two.img"),
        dir.path().join("other.img"),
    );
    build_image(&one, DISK, mix(), 31).unwrap();
    build_image(&other, DISK, mix(), 32).unwrap();
    // Two: the first half new content, the second half like one's (whose
    // last pages the 1 MiB store still holds when two's copy starts): the
    // new pages evict them before the references to them arrive.
    std::fs::copy(&other, &two).unwrap();
    let src = std::fs::read(&one).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&two).unwrap();
    f.write_all_at(&src[(DISK / 2) as usize..], DISK / 2)
        .unwrap();
    let a = mesh.gw("site-a").storage().clone();
    let b = mesh.gw("site-b").storage().clone();
    for (name, src) in [("one.img", &one), ("two.img", &two)] {
        a.export(name, src, DISK, ReleasePolicy::Keep, "site-b")
            .unwrap();
        let dst = dir.path().join(format!("copy-{name}"));
        let import = b
            .import("site-a", name, &dst, DISK, config())
            .await
            .unwrap();
        let r = finish(import).await.unwrap();
        assert!(r.verified, "{name}");
        assert_eq!(
            disk_digest(&dst).unwrap(),
            disk_digest(src).unwrap(),
            "{name}"
        );
    }
    mesh.shutdown().await;
}

/// What the source gateway answers to a storage stream that opens with
/// `opening` (raw storage bytes).
async fn storage_answer_to(mesh: &Mesh, opening: &[u8]) -> Frame {
    let (mut send, mut recv) = mesh
        .gw("site-b")
        .peering()
        .open_stream("site-a", StreamKind::Storage)
        .await
        .expect("a storage stream");
    send.write_all(opening).await.unwrap();
    let bytes = tokio::time::timeout(Duration::from_secs(60), recv.read_to_end(1 << 20))
        .await
        .expect("an answer in time")
        .expect("the answer");
    let f = wanmig_wire::split_frame(&bytes, MAX_FRAME)
        .unwrap()
        .expect("one whole frame");
    decode_frame(f.tag, f.body).unwrap().expect("a known frame")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_storage_versions_and_unknown_frames_are_answered_with_a_reason() {
    let mesh = mesh(100_000_000).await;
    let query = |version| {
        Frame::QuerySize {
            version,
            name: "nothing".into(),
        }
        .to_bytes()
    };
    for (version, upgrade) in [
        (
            STORAGE.current + 1,
            "upgrade wanmig at the source gateway's site",
        ),
        (
            STORAGE.oldest - 1,
            "upgrade wanmig at the destination gateway's site",
        ),
    ] {
        match storage_answer_to(&mesh, &query(version)).await {
            Frame::Error(reason) => assert!(
                reason.contains(&format!("version {version}")) && reason.contains(upgrade),
                "{reason}"
            ),
            other => panic!("expected an error, got {other:?}"),
        }
    }
    // An essential kind this build does not know is refused; an advisory
    // one is skipped and the query behind it answered.
    match storage_answer_to(&mesh, &[0x6e, 0, 0, 0, 0]).await {
        Frame::Error(reason) => assert!(reason.contains("message kind 110"), "{reason}"),
        other => panic!("expected an error, got {other:?}"),
    }
    let mut advisory_first = vec![0x9b, 3, 0, 0, 0, 1, 2, 3];
    advisory_first.extend(query(STORAGE.current));
    match storage_answer_to(&mesh, &advisory_first).await {
        Frame::Error(reason) => {
            assert!(reason.contains("no disk 'nothing' is exported"), "{reason}")
        }
        other => panic!("expected an error, got {other:?}"),
    }
    mesh.shutdown().await;
}
