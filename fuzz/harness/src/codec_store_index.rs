//! Target `codec_store_index`: the page store's loader on arbitrary
//! `index` and `data` files (written to a fresh directory, then
//! [`PageStore::open`]), and the store's use after it.
//!
//! Nothing read from the files is trusted, so whatever they hold:
//! - the store opens or fails with an error, holding at most its slot
//!   count, and its inventory lists (by prefix) what it holds;
//! - a lookup of anything it lists returns that content or a miss;
//! - pages put after opening are found at once (or, if the files listed
//!   them with damaged content, once the miss has dropped the damaged
//!   copy and they are put again) and after a reopen with
//!   the same capacity (unused leftovers of the loaded files go first, and
//!   the files the store rewrote load again), and a reopen at another
//!   capacity succeeds.

use wanmig_codec::{ContentStore, Fingerprint, PageStore, PAGE_SIZE};

use crate::codec_batch::known_page;
use crate::input::{Input, Script};

/// Pages put after opening (the smallest capacity holds them all).
const PUT: u64 = 4;

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let slots = 4 + u64::from(input.u8() % 29);
    let reopen_slots = 1 + u64::from(input.u8() % 32);
    let index = input.big_blob();
    let data_file = input.big_blob();
    let dir = crate::scratch_dir();
    std::fs::write(dir.path().join("index"), index).expect("write index file");
    std::fs::write(dir.path().join("data"), data_file).expect("write data file");

    let Ok(mut store) = PageStore::open(dir.path(), slots * PAGE_SIZE as u64) else {
        return;
    };
    check_listing(&store, slots);
    let listed = store.inventory_fps();
    let mut page = [0u8; PAGE_SIZE];
    let put: Vec<Fingerprint> = (0..PUT)
        .map(|i| {
            let p = known_page(i);
            let fp = Fingerprint::of(&p);
            store.put(&fp, &p).expect("the store takes a page");
            if !store.get(&fp, &mut page).expect("read") {
                // A put of content the index already lists keeps the
                // stored copy; if that copy was damaged the read drops it
                // (a miss, which the decoder NACKs) and the next put
                // stores the page.
                assert!(listed.contains(&fp), "a page just put is missing");
                store.put(&fp, &p).expect("the store takes a page");
                assert!(
                    store.get(&fp, &mut page).expect("read"),
                    "a page put again is missing"
                );
            }
            assert_eq!(page, *p);
            fp
        })
        .collect();
    check_listing(&store, slots);
    // After the puts: a hit marks a page as used, and CLOCK would then
    // rightly keep the loader's leftovers over the new pages.
    for fp in listed {
        if store.get(&fp, &mut page).expect("the data file reads") {
            assert_eq!(
                Fingerprint::of(&page),
                fp,
                "the store returned other content"
            );
        }
    }
    check_listing(&store, slots);
    store.sync().expect("sync the store");
    drop(store);

    let mut store = PageStore::open(dir.path(), slots * PAGE_SIZE as u64)
        .expect("a store reopens the files it wrote");
    check_listing(&store, slots);
    for (i, fp) in put.iter().enumerate() {
        assert!(
            store.get(fp, &mut page).expect("read"),
            "page {i} put before the reopen is gone"
        );
        assert_eq!(page, *known_page(i as u64));
    }
    drop(store);
    let store = PageStore::open(dir.path(), reopen_slots * PAGE_SIZE as u64)
        .expect("a store reopens at another capacity");
    check_listing(&store, reopen_slots);
}

fn check_listing(store: &PageStore, slots: u64) {
    let s = store.stats();
    assert_eq!(s.slots, slots);
    assert!(s.entries <= slots, "{} entries in {slots} slots", s.entries);
    let fps = store.inventory_fps();
    assert_eq!(fps.len() as u64, s.entries);
    // The inventory holds 64-bit prefixes: fingerprints may share one.
    let inv = store.inventory();
    assert!(inv.len() as u64 <= s.entries);
    assert!(
        fps.iter().all(|fp| inv.contains(fp)),
        "a held page is not in the inventory"
    );
}

/// Seeds: the files of real stores (empty, partly filled, full after
/// evictions), and the same files torn, bit-flipped, with a duplicated
/// entry, and with a header claiming more slots than the file has.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (slots, pages) in [(4u64, 0u64), (6, 3), (8, 12)] {
        let dir = crate::scratch_dir();
        let mut store = PageStore::open(dir.path(), slots * PAGE_SIZE as u64).expect("store");
        for i in 0..pages {
            let p = known_page(100 + i);
            store.put(&Fingerprint::of(&p), &p).expect("put");
        }
        store.sync().expect("sync");
        drop(store);
        let index = std::fs::read(dir.path().join("index")).expect("index");
        let data = std::fs::read(dir.path().join("data")).expect("data");
        let seed = |index: &[u8], data: &[u8], reopen: u8| {
            Script::new()
                .u8((slots - 4) as u8)
                .u8(reopen)
                .big_blob(index)
                .big_blob(data)
                .finish()
        };
        out.push(seed(&index, &data, 3));
        if pages == 0 {
            continue;
        }
        out.push(seed(&index[..index.len() - 40], &data, 31));
        let mut flipped = data.clone();
        flipped[PAGE_SIZE + 17] ^= 0x80;
        out.push(seed(&index, &flipped, 7));
        let mut dup = index.clone();
        dup.copy_within(32..64, 64);
        out.push(seed(&dup, &data, 0));
        let mut claims = index.clone();
        claims[8..16].copy_from_slice(&1000u64.to_le_bytes());
        out.push(seed(&claims, &data[..data.len() / 2], 15));
    }
    // No files at all, and an index shorter than its header.
    out.push(
        Script::new()
            .u8(0)
            .u8(0)
            .big_blob(&[])
            .big_blob(&[])
            .finish(),
    );
    out.push(
        Script::new()
            .u8(1)
            .u8(1)
            .big_blob(b"WMPS\x01")
            .big_blob(&[])
            .finish(),
    );
    out
}
