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
    let expect =
        crate::verify::combine(source.geometry(), &source.block_hashes().unwrap(), &written);
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
