//! Remote-backed disk tests with real files, driven by hand: a fetcher that
//! records requests stands in for the transport, and the test thread plays
//! the source by delivering payloads.

use super::*;
use crate::wire::{BlockContent, BlockEncoder};

const BS: u32 = 4096;

#[derive(Default)]
struct Recorder {
    requests: Mutex<Vec<FetchRequest>>,
    changed: Condvar,
}

impl Fetcher for Recorder {
    fn fetch(&self, request: FetchRequest) -> Result<(), LinkDown> {
        self.requests.lock().unwrap().push(request);
        self.changed.notify_all();
        Ok(())
    }
}

impl Recorder {
    fn take(&self) -> Vec<FetchRequest> {
        std::mem::take(&mut *self.requests.lock().unwrap())
    }
    /// Waits until some request asks for `block`.
    fn wait_for(&self, block: u64) -> Vec<FetchRequest> {
        let mut g = self.requests.lock().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !g.iter().any(|r| r.blocks().contains(&block)) {
            assert!(Instant::now() < deadline, "block {block} never requested");
            g = self
                .changed
                .wait_timeout(g, Duration::from_millis(50))
                .unwrap()
                .0;
        }
        std::mem::take(&mut *g)
    }
}

fn config() -> RemoteDiskConfig {
    RemoteDiskConfig {
        block_size: BS,
        planner: PlannerConfig {
            window_blocks: 4,
            // A fixed window of 4, whatever blocks cost on the wire.
            window_wire_bytes: 0,
            max_window_blocks: 4,
            demand_window_blocks: 4,
            max_request_blocks: 4,
            read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
        },
        persist_every_blocks: 2,
    }
}

/// Deterministic "source" content of a block.
fn source_block(b: u64) -> Vec<u8> {
    (0..BS as usize)
        .map(|i| (i as u64 * 7 + b * 13) as u8)
        .collect()
}

fn payload(b: u64) -> Vec<u8> {
    BlockEncoder::new(1)
        .unwrap()
        .encode(BlockContent::Data(&source_block(b)))
}

fn open(dir: &tempfile::TempDir, blocks: u64) -> (Arc<RemoteDisk>, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let disk = RemoteDisk::open(
        &dir.path().join("d.img"),
        blocks * u64::from(BS),
        config(),
        rec.clone(),
    )
    .unwrap();
    (Arc::new(disk), rec)
}

#[test]
fn a_read_waits_for_its_block_and_gets_source_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, rec) = open(&dir, 32);
    disk.start();
    assert_eq!(
        rec.take().iter().map(|r| r.count).sum::<u32>(),
        4,
        "window of 4"
    );
    let reader = {
        let disk = disk.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 100];
            disk.read_at(20 * u64::from(BS) + 50, &mut buf).map(|_| buf)
        })
    };
    let reqs = rec.wait_for(20);
    assert!(reqs
        .iter()
        .any(|r| r.priority == Priority::OnDemand && r.first_block == 20));
    disk.on_block_arrived(20, &payload(20)).unwrap();
    let got = reader.join().unwrap().unwrap();
    assert_eq!(got, source_block(20)[50..150]);
    let m = disk.metrics().snapshot();
    assert_eq!(m.blocks_fetched_on_demand, 1);
}

/// A transport with no session until `connect`: fetches fail with
/// `LinkDown` before it, as the gateway's do before its streams exist.
#[derive(Default)]
struct LateSession {
    connected: std::sync::atomic::AtomicBool,
    inner: Recorder,
}

impl Fetcher for LateSession {
    fn fetch(&self, request: FetchRequest) -> Result<(), LinkDown> {
        if !self.connected.load(Ordering::SeqCst) {
            return Err(LinkDown);
        }
        self.inner.fetch(request)
    }
}

/// A guest read that comes before the transport's session exists (the VM
/// resumed on the disk while the import was still connecting): its fetch
/// fails, and it is sent as soon as the session starts — not after the
/// request timeout (60 s, longer than the read timeout of 10 s).
#[test]
fn a_read_before_the_session_exists_is_fetched_when_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let fetcher = Arc::new(LateSession::default());
    let disk = Arc::new(
        RemoteDisk::open(
            &dir.path().join("d.img"),
            32 * u64::from(BS),
            config(),
            fetcher.clone(),
        )
        .unwrap(),
    );
    let reader = {
        let disk = disk.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64];
            disk.read_at(9 * u64::from(BS), &mut buf).map(|_| buf)
        })
    };
    // Let the read ask (and fail to send) before the session starts.
    let deadline = Instant::now() + Duration::from_secs(10);
    while disk.planner_stats().demand_blocks_requested == 0 {
        assert!(
            Instant::now() < deadline,
            "the read never asked for block 9"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    fetcher.connected.store(true, Ordering::SeqCst);
    disk.start();
    let reqs = fetcher.inner.wait_for(9);
    assert_eq!(reqs[0].priority, Priority::OnDemand, "{reqs:?}");
    assert_eq!(reqs[0].first_block, 9);
    disk.on_block_arrived(9, &payload(9)).unwrap();
    let got = reader.join().unwrap().expect("the read completes");
    assert_eq!(got, source_block(9)[..64]);
}

#[test]
fn partial_write_to_a_missing_block_merges_over_fetched_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, rec) = open(&dir, 16);
    let writer = {
        let disk = disk.clone();
        std::thread::spawn(move || disk.write_at(9 * u64::from(BS) + 1000, &[0xffu8; 10]))
    };
    rec.wait_for(9);
    disk.on_block_arrived(9, &payload(9)).unwrap();
    writer.join().unwrap().unwrap();
    let mut block = vec![0u8; BS as usize];
    disk.read_at(9 * u64::from(BS), &mut block).unwrap();
    let mut want = source_block(9);
    want[1000..1010].fill(0xff);
    assert_eq!(block, want, "source bytes around the guest's 10 bytes");
}

#[test]
fn bad_payloads_are_errors_and_the_block_is_asked_again() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, rec) = open(&dir, 8);
    disk.start();
    rec.take();
    let err = disk.on_block_arrived(2, &[1, 2, 3]).unwrap_err();
    assert!(
        matches!(err, StorageError::BadBlockLength { block: 2, .. }),
        "{err}"
    );
    let again = rec.take();
    assert!(again.iter().any(|r| r.blocks().contains(&2)), "{again:?}");
    assert!(matches!(
        disk.on_block_arrived(8, &payload(0)),
        Err(StorageError::NoSuchBlock { .. })
    ));
    assert!(
        disk.read_at(8 * u64::from(BS) - 1, &mut [0u8; 2]).is_err(),
        "read past the end"
    );
    assert_eq!(
        disk.progress().0,
        0,
        "nothing became present from bad input"
    );
}

#[test]
fn bitmap_is_saved_only_after_data_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, _rec) = open(&dir, 8);
    disk.start();
    let sidecar = disk.sidecar_path().to_owned();
    let g = disk.geometry();
    disk.on_block_arrived(0, &payload(0)).unwrap();
    disk.on_block_arrived(1, &payload(1)).unwrap();
    assert!(
        !sidecar.exists(),
        "arrivals never fsync on the transport's thread"
    );
    disk.tick().unwrap();
    let saved = PresenceBitmap::load(&sidecar, g).unwrap().unwrap();
    assert!(saved.is_present(0) && saved.is_present(1) && !saved.is_present(2));
    // A whole-block write plus flush is durable with its bit.
    disk.write_at(5 * u64::from(BS), &vec![0xabu8; BS as usize])
        .unwrap();
    disk.flush().unwrap();
    assert!(PresenceBitmap::load(&sidecar, g)
        .unwrap()
        .unwrap()
        .is_present(5));
    assert!(matches!(
        disk.complete(),
        Err(StorageError::NotComplete { missing: 5 })
    ));
    drop(disk);

    let (disk, rec) = open(&dir, 8);
    assert_eq!(disk.progress(), (3, 8));
    disk.start();
    let asked: Vec<u64> = rec.take().iter().flat_map(|r| r.blocks()).collect();
    assert_eq!(
        asked,
        vec![2, 3, 4, 6],
        "only missing blocks are fetched after resume"
    );
    let mut buf = vec![0u8; BS as usize];
    disk.read_at(5 * u64::from(BS), &mut buf).unwrap();
    assert_eq!(buf, vec![0xabu8; BS as usize]);
    for b in [2, 3, 4, 6, 7] {
        disk.on_block_arrived(b, &payload(b)).unwrap();
    }
    assert!(disk.is_all_local());
    disk.complete().unwrap();
    assert!(PresenceBitmap::load(&sidecar, g)
        .unwrap()
        .unwrap()
        .is_complete());
}

#[test]
fn hole_blocks_are_local_zeros_without_a_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.img");
    // Stale bytes in a reused local file must not survive as "holes".
    std::fs::write(&path, vec![0x77u8; 8 * BS as usize]).unwrap();
    let rec = Arc::new(Recorder::default());
    let disk = RemoteDisk::open(&path, 8 * u64::from(BS), config(), rec.clone()).unwrap();
    assert_eq!(disk.apply_source_holes(&[1..3, 6..100]).unwrap(), 4);
    disk.start();
    let asked: Vec<u64> = rec.take().iter().flat_map(|r| r.blocks()).collect();
    assert_eq!(asked, vec![0, 3, 4, 5]);
    let mut buf = vec![1u8; 2 * BS as usize];
    disk.read_at(u64::from(BS), &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    assert_eq!(disk.metrics().snapshot().hole_blocks_skipped, 4);
}

/// The end-of-copy check against a real source file: equal when the copy is
/// faithful (guest writes excluded), different when a copied block was
/// corrupted behind the disk's back; the written set survives a reopen.
#[test]
fn verification_digest_matches_the_source_except_guest_writes() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = 6u64;
    let src_path = dir.path().join("src.img");
    let mut src = Vec::new();
    for b in 0..blocks {
        src.extend(if b == 4 {
            vec![0u8; BS as usize]
        } else {
            source_block(b)
        });
    }
    std::fs::write(&src_path, &src).unwrap();
    let source = crate::SourceDisk::open(&src_path, blocks * u64::from(BS), BS).unwrap();

    let (disk, _rec) = open(&dir, blocks);
    disk.set_background(false);
    assert!(!disk.is_background_enabled());
    disk.write_at(u64::from(BS), &vec![0x55; BS as usize])
        .unwrap();
    for b in 0..blocks {
        if b == 1 {
            continue;
        }
        let p = if b == 4 { vec![0] } else { payload(b) };
        disk.on_block_arrived(b, &p).unwrap();
    }
    assert!(disk.is_all_local());
    // Written after the copy: excluded as well.
    disk.write_at(2 * u64::from(BS) + 10, b"guest").unwrap();
    disk.complete().unwrap();
    let (digest, written) = disk.verification_digest().unwrap();
    assert_eq!(written.present_count(), 2);
    assert_eq!(disk.written_blocks(), 2);
    let expect = source.end_of_copy_digest(&written).unwrap();
    assert_eq!(digest, expect);

    // Reopened (a restart), the written set is still known.
    let path = disk.path().to_owned();
    drop(disk);
    let again = RemoteDisk::open(
        &path,
        blocks * u64::from(BS),
        config(),
        Arc::new(Recorder::default()),
    )
    .unwrap();
    assert_eq!(again.written_set(), written);
    // A block changed behind the disk's back is caught.
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(b"bitrot", 3 * u64::from(BS)).unwrap();
    let (bad, _) = again.verification_digest().unwrap();
    assert_ne!(bad, expect);
}

/// A source file of `blocks` blocks of [`source_block`] content.
fn source_file(dir: &tempfile::TempDir, blocks: u64) -> crate::SourceDisk {
    let src_path = dir.path().join("src.img");
    let src: Vec<u8> = (0..blocks).flat_map(source_block).collect();
    std::fs::write(&src_path, &src).unwrap();
    crate::SourceDisk::open(&src_path, blocks * u64::from(BS), BS).unwrap()
}

/// What the source's check ([`crate::verify`]) says about a `Done` record.
fn source_accepts(source: &crate::SourceDisk, done: &DoneRecord) -> bool {
    source.end_of_copy_digest(&done.written).unwrap() == done.digest
}

/// The destination confirmed its complete copy (`Done`), the guest wrote a
/// copied block, and the destination crashed before the source's
/// `Released` and before any save of the written set: after the restart
/// the confirmation sent again is the one made at `Done` (saved with it),
/// which the source accepts — a digest recomputed now would cover the
/// guest's unsaved write and fail the check falsely.
#[test]
fn a_guest_write_after_done_then_a_crash_does_not_fail_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = 8u64;
    let source = source_file(&dir, blocks);
    let (disk, _rec) = open(&dir, blocks);
    disk.start();
    // The guest wrote block 6 during the copy; the rest was copied.
    disk.write_at(6 * u64::from(BS), &vec![0x66; BS as usize])
        .unwrap();
    for b in (0..blocks).filter(|&b| b != 6) {
        disk.on_block_arrived(b, &payload(b)).unwrap();
    }
    assert!(disk.is_all_local());
    assert!(disk.confirmed().is_none() && !disk.done_path().exists());
    let done = disk.confirmation().unwrap();
    assert!(disk.done_path().exists(), "saved before it is sent");
    assert_eq!(done.written.present_count(), 1);
    assert!(source_accepts(&source, &done), "a faithful copy passes");
    // Sent again in a later session: the same record, not a new digest.
    disk.write_at(2 * u64::from(BS) + 100, b"after done")
        .unwrap();
    assert_eq!(disk.confirmation().unwrap(), done);

    // The crash: nothing saved since (no flush, no tick). The guest's bytes
    // are in the file (the page cache outlives a killed process).
    let path = disk.path().to_owned();
    drop(disk);
    let again = RemoteDisk::open(
        &path,
        blocks * u64::from(BS),
        config(),
        Arc::new(Recorder::default()),
    )
    .unwrap();
    assert!(again.is_all_local());
    let (recomputed, stale_written) = again.verification_digest().unwrap();
    assert!(
        !stale_written.is_present(2),
        "the crash lost block 2's written bit (the case at hand)"
    );
    assert!(
        !source_accepts(
            &source,
            &DoneRecord {
                digest: recomputed,
                written: stale_written
            }
        ),
        "recomputing after the restart would be a false mismatch"
    );
    assert_eq!(again.confirmed(), Some(done.clone()));
    let resent = again.confirmation().unwrap();
    assert_eq!(resent, done);
    assert!(source_accepts(&source, &resent), "the restart passes");
}

/// A copy that differed from the source when it completed fails the check,
/// before and after a restart: the saved record does not launder it.
#[test]
fn a_copy_wrong_at_done_still_fails_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = 8u64;
    let source = source_file(&dir, blocks);
    let (disk, _rec) = open(&dir, blocks);
    disk.start();
    for b in 0..blocks {
        // Block 5 arrives with block 4's bytes (damaged in transit).
        let p = if b == 5 { payload(4) } else { payload(b) };
        disk.on_block_arrived(b, &p).unwrap();
    }
    let done = disk.confirmation().unwrap();
    assert!(!source_accepts(&source, &done));
    let path = disk.path().to_owned();
    drop(disk);
    let again = RemoteDisk::open(
        &path,
        blocks * u64::from(BS),
        config(),
        Arc::new(Recorder::default()),
    )
    .unwrap();
    assert!(!source_accepts(&source, &again.confirmation().unwrap()));
}

/// A `.done` left next to a copy it cannot belong to (a new, empty local
/// copy; or a copy that is not complete) is removed at open, and a damaged
/// one is ignored: the confirmation is computed from the copy itself.
#[test]
fn a_done_record_that_does_not_belong_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = 4u64;
    let source = source_file(&dir, blocks);
    let g = Geometry::new(blocks * u64::from(BS), BS).unwrap();
    let stale = DoneRecord {
        digest: [9; 32],
        written: PresenceBitmap::new(g),
    };
    let done_file = crate::done::done_path(&dir.path().join("d.img"));
    stale.save(&done_file).unwrap();
    let (disk, _rec) = open(&dir, blocks);
    assert!(!done_file.exists(), "removed with a fresh local copy");
    assert!(disk.confirmed().is_none());
    disk.start();
    disk.on_block_arrived(0, &payload(0)).unwrap();
    disk.flush().unwrap();
    drop(disk);

    stale.save(&done_file).unwrap();
    let (disk, _rec) = open(&dir, blocks);
    assert!(!done_file.exists(), "removed with an incomplete copy");
    disk.start();
    for b in 1..blocks {
        disk.on_block_arrived(b, &payload(b)).unwrap();
    }
    disk.flush().unwrap();
    drop(disk);

    // Complete on disk, but the record is damaged: ignored, computed anew.
    std::fs::write(&done_file, b"garbage").unwrap();
    let (disk, _rec) = open(&dir, blocks);
    assert!(disk.is_all_local());
    assert!(disk.confirmed().is_none());
    let done = disk.confirmation().unwrap();
    assert!(source_accepts(&source, &done));
    assert_eq!(DoneRecord::load(&done_file, g).unwrap(), Some(done));
}

/// Before `Done`: the guest writes a block the saved sidecar holds, and one
/// that arrived after the last save, then the destination crashes before
/// the next save. The first block's written bit was saved before its bytes
/// were written, so after the restart the check excludes it (it holds the
/// guest's bytes); the second is missing again, fetched anew and checked.
/// The source accepts the copy.
#[test]
fn a_guest_write_to_a_saved_block_then_a_crash_does_not_fail_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = 8u64;
    let source = source_file(&dir, blocks);
    let (disk, _rec) = open(&dir, blocks);
    disk.start();
    for b in 0..6 {
        disk.on_block_arrived(b, &payload(b)).unwrap();
    }
    disk.flush().unwrap();
    disk.on_block_arrived(6, &payload(6)).unwrap();
    let saved_block = b"the guest wrote a saved block";
    disk.write_at(2 * u64::from(BS) + 10, saved_block).unwrap();
    disk.write_at(6 * u64::from(BS) + 10, b"and an unsaved one")
        .unwrap();
    // The crash: no flush, no tick.
    let path = disk.path().to_owned();
    drop(disk);

    let (again, rec) = open(&dir, blocks);
    assert_eq!(again.progress(), (6, blocks), "resumed from the last save");
    let written = again.written_set();
    assert!(written.is_present(2), "saved before the guest's bytes");
    assert!(!written.is_present(6), "missing again: nothing to save");
    again.start();
    let asked: Vec<u64> = rec.take().iter().flat_map(|r| r.blocks()).collect();
    assert_eq!(asked, vec![6, 7]);
    for b in [6, 7] {
        again.on_block_arrived(b, &payload(b)).unwrap();
    }
    let done = again.confirmation().unwrap();
    assert!(source_accepts(&source, &done), "no false mismatch");
    let mut buf = vec![0u8; BS as usize];
    again.read_at(2 * u64::from(BS), &mut buf).unwrap();
    let mut want = source_block(2);
    want[10..10 + saved_block.len()].copy_from_slice(saved_block);
    assert_eq!(buf, want, "the guest's bytes survived the crash");
    again.read_at(6 * u64::from(BS), &mut buf).unwrap();
    assert_eq!(buf, source_block(6), "unflushed, fetched again");
    assert_eq!(std::fs::read(&path).unwrap().len() as u64, again.len());
}
