//! The persistent page store on real files: survives reopen, stays under its
//! cap with CLOCK eviction, detects corrupt content on read.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use wanmig_codec::store::validate_scope;
use wanmig_codec::{CodecError, ContentStore, Fingerprint, PageBytes, PageStore, PAGE_SIZE};

fn page(i: u32) -> PageBytes {
    let mut p = [0u8; PAGE_SIZE];
    for (j, c) in p.chunks_exact_mut(4).enumerate() {
        c.copy_from_slice(&(i.wrapping_mul(2654435761) ^ j as u32).to_le_bytes());
    }
    p
}

fn put(s: &mut PageStore, i: u32) -> Fingerprint {
    let p = page(i);
    let fp = Fingerprint::of(&p);
    s.put(&fp, &p).unwrap();
    fp
}

fn get(s: &mut PageStore, fp: &Fingerprint) -> Option<PageBytes> {
    let mut out = [0u8; PAGE_SIZE];
    s.get(fp, &mut out).unwrap().then_some(out)
}

#[test]
fn contents_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let fps: Vec<Fingerprint> = {
        let mut s = PageStore::open(dir.path(), 100 * PAGE_SIZE as u64).unwrap();
        let fps = (0..50).map(|i| put(&mut s, i)).collect();
        s.sync().unwrap();
        fps
    };
    let mut s = PageStore::open(dir.path(), 100 * PAGE_SIZE as u64).unwrap();
    assert_eq!(s.stats().entries, 50);
    let inv = s.inventory();
    assert_eq!(inv.len(), 50);
    for (i, fp) in fps.iter().enumerate() {
        assert!(inv.contains(fp));
        assert_eq!(get(&mut s, fp), Some(page(i as u32)));
    }
    assert_eq!(s.stats().hits, 50);
    assert!(get(&mut s, &Fingerprint::of(&page(999))).is_none());
    assert_eq!(s.stats().misses, 1);
}

#[test]
fn eviction_keeps_the_store_under_its_cap_and_prefers_used_pages() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 16u64;
    let mut s = PageStore::open(dir.path(), cap * PAGE_SIZE as u64).unwrap();
    let hot = put(&mut s, 0);
    for i in 1..200 {
        put(&mut s, i);
        // Keep page 0 in use.
        assert!(
            get(&mut s, &hot).is_some(),
            "hot page evicted after {i} inserts"
        );
        assert!(s.stats().entries <= cap);
    }
    assert_eq!(s.stats().entries, cap);
    assert_eq!(s.stats().evictions, 200 - cap);
    let len = |n: &str| std::fs::metadata(dir.path().join(n)).unwrap().len();
    assert_eq!(len("data"), cap * PAGE_SIZE as u64);
    // The most recent page is present; an early cold one is gone.
    assert!(get(&mut s, &Fingerprint::of(&page(199))).is_some());
    assert!(get(&mut s, &Fingerprint::of(&page(1))).is_none());
    drop(s);
    // Reopening with a smaller cap shrinks the files and the contents.
    let mut s = PageStore::open(dir.path(), 4 * PAGE_SIZE as u64).unwrap();
    assert!(s.stats().entries <= 4);
    assert_eq!(len("data"), 4 * PAGE_SIZE as u64);
    for fp in s.inventory_fps() {
        assert!(get(&mut s, &fp).is_some());
    }
}

#[test]
fn corrupt_content_is_detected_on_read_and_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let fps: Vec<Fingerprint> = {
        let mut s = PageStore::open(dir.path(), 8 * PAGE_SIZE as u64).unwrap();
        (0..8).map(|i| put(&mut s, i)).collect()
    };
    // Flip one byte in the middle of the data file (bit rot / torn write).
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.path().join("data"))
        .unwrap();
    let at = 3 * PAGE_SIZE as u64 + 1234;
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], at).unwrap();
    drop(f);
    let mut s = PageStore::open(dir.path(), 8 * PAGE_SIZE as u64).unwrap();
    let bad: Vec<_> = fps.iter().filter(|fp| get(&mut s, fp).is_none()).collect();
    assert_eq!(
        bad.len(),
        1,
        "exactly the damaged page must fail verification"
    );
    assert_eq!(s.stats().corrupt, 1);
    assert!(
        !s.contains(bad[0]),
        "a corrupt entry is dropped from the index"
    );
    assert_eq!(s.stats().entries, 7);
    // The slot is reusable.
    put(&mut s, 100);
    assert_eq!(s.stats().entries, 8);
}

#[test]
fn foreign_index_file_is_rejected_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("index"),
        b"not a wanmig store at all, definitely",
    )
    .unwrap();
    match PageStore::open(dir.path(), 1 << 20) {
        Err(CodecError::StoreFormat { why, .. }) => assert!(why.contains("magic"), "{why}"),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("foreign index accepted"),
    }
}

#[test]
fn truncated_index_header_is_a_format_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index"), b"WMPS").unwrap();
    assert!(matches!(
        PageStore::open(dir.path(), 1 << 20),
        Err(CodecError::StoreFormat { .. })
    ));
}

#[test]
fn scope_names_are_checked() {
    for ok in ["tenant-a", "site_b.2", "x"] {
        validate_scope(ok).unwrap();
    }
    for bad in ["", "..", ".hidden", "a/b", "a b", &"x".repeat(65)] {
        assert!(validate_scope(bad).is_err(), "{bad:?} accepted");
    }
}

/// A store has one writer: a second open of the same directory, from this
/// process or another, is refused while the first is open, and succeeds
/// once it is closed.
#[test]
fn a_store_open_elsewhere_is_refused_until_closed() {
    let d = tempfile::tempdir().unwrap();
    let first = PageStore::open(d.path(), 1 << 20).unwrap();
    let e = PageStore::open(d.path(), 1 << 20).err().expect("refused");
    assert!(matches!(e, CodecError::StoreBusy { .. }), "{e}");
    assert!(e.to_string().contains("store_dir"), "{e}");
    drop(first);
    PageStore::open(d.path(), 1 << 20).expect("free again");
}
