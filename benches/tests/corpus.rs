//! The real-memory corpus, built and checked end to end (opt-in: it boots
//! Linux under QEMU TCG and downloads Debian packages, minutes of work).
//!
//! Runs only with `WANMIG_CORPUS_TEST=1` (the test-sized images,
//! `corpus::TEST_IMAGES`) or `WANMIG_CORPUS_TEST=all` (every image,
//! including the 2 GiB guests); otherwise it prints why it skipped. Needs
//! root, `qemu-system-x86_64` and Debian's package archive.
//!
//! Each image must be what its description says: the right size; a guest's
//! RAM holds the Linux kernel and what its workload put there (the page
//! cache the disk's nonce, a heap the token only that heap holds); a mix of
//! zero and non-zero pages. And real memory must survive wanmig's codec
//! (cold, and warm against a page store holding it) and the QEMU multifd
//! model's zstd streams byte for byte.

use wanmig_benches::corpus::{self, Census, Image, Kind};
use wanmig_benches::qemu::multifd_model::{MultifdZstd, PACKET_PAGES};
use wanmig_codec::{
    Decoder, DecoderConfig, Encoder, EncoderConfig, Gfn, Inventory, PageBytes, PageStore, PAGE_SIZE,
};
use wanmig_migration::shim::BATCH_PAGES;
use zstd::stream::raw::{InBuffer, Operation, OutBuffer};

fn images_to_test() -> Option<&'static [&'static str]> {
    match std::env::var("WANMIG_CORPUS_TEST").as_deref() {
        Ok("1") => Some(corpus::TEST_IMAGES),
        Ok("all") => Some(corpus::BENCH_IMAGES),
        _ => {
            eprintln!(
                "SKIPPED corpus: set WANMIG_CORPUS_TEST=1 (test-sized images) or =all (every image) \
                 to build the real-memory corpus under QEMU and check it"
            );
            None
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn pages(image: &[u8]) -> impl Iterator<Item = (Gfn, &PageBytes)> {
    image
        .chunks_exact(PAGE_SIZE)
        .enumerate()
        .map(|(i, p)| (Gfn(i as u64), p.try_into().unwrap()))
}

/// Encodes `image` as the gateway does, decodes it into `store`, and
/// checks every page; returns the wire bytes.
fn roundtrip(image: &[u8], inventory: Inventory, store: &mut PageStore) -> u64 {
    let mut enc = Encoder::new(EncoderConfig::default(), inventory).unwrap();
    let mut dec = Decoder::new(DecoderConfig::default(), &mut *store).unwrap();
    let all: Vec<_> = pages(image).collect();
    let mut seen = vec![false; all.len()];
    let mut wire = 0u64;
    for msg in all.chunks(BATCH_PAGES) {
        for batch in enc.encode(msg.iter().copied()) {
            wire += batch.len() as u64;
            let out = dec.decode(&batch).unwrap();
            assert!(out.nacks.is_empty(), "NACKs: {:?}", out.nacks.len());
            for (gfn, page) in out.pages {
                let i = gfn.0 as usize;
                assert!(
                    page[..] == image[i * PAGE_SIZE..(i + 1) * PAGE_SIZE],
                    "page {i}"
                );
                seen[i] = true;
            }
        }
    }
    assert!(seen.iter().all(|s| *s), "every page delivered");
    wire
}

fn check(img: &Image) {
    let m = &img.meta;
    let data = img
        .read()
        .expect("the image reads back at its recorded size");
    let census = Census::of(&data);
    eprintln!(
        "{}: {} MiB, {:.1}% zero, {} MiB non-zero, {} MiB distinct",
        m.name,
        data.len() >> 20,
        census.zero as f64 * 100.0 / census.pages as f64,
        (census.nonzero() * PAGE_SIZE as u64) >> 20,
        (census.distinct.len() * PAGE_SIZE) >> 20
    );
    match m.kind {
        Kind::Guest => {
            let mib = m.ram_mib.expect("a guest records its RAM size");
            assert_eq!(data.len() as u64, mib << 20, "the whole RAM was saved");
            assert!(contains(&data, b"Linux version 6."), "the kernel is in RAM");
            match m.workload.as_deref() {
                Some("pagecache") => assert!(
                    contains(&data, m.nonce.as_bytes()),
                    "the page cache holds the disk's files"
                ),
                Some("pyheap") => assert!(
                    contains(&data, m.heap_token.as_bytes()),
                    "the Python heap is in RAM"
                ),
                other => panic!("unknown workload {other:?}"),
            }
        }
        Kind::Process => {
            assert!(
                contains(&data, m.heap_token.as_bytes()),
                "the process's heap was dumped"
            );
        }
    }
    assert!(census.zero > 0 && census.nonzero() > census.pages / 10);
    assert!(census.distinct.len() as u64 <= census.nonzero());

    // wanmig's codec: cold into a store, then warm against it.
    let dir = tempfile::tempdir().unwrap();
    let mut store = PageStore::open(dir.path(), data.len() as u64).unwrap();
    let cold = roundtrip(&data, Inventory::new(), &mut store);
    let warm = roundtrip(&data, store.inventory(), &mut store);
    eprintln!("{}: wanmig cold {cold} B, warm {warm} B", m.name);
    assert!(cold < data.len() as u64 && warm < cold / 4);

    // The QEMU model's channel streams decode back to the non-zero pages.
    let cfg = MultifdZstd::default();
    let mut streams = vec![Vec::new(); cfg.channels];
    let sent = cfg
        .send(&data, |ch, bytes| streams[ch].extend_from_slice(bytes))
        .unwrap();
    assert_eq!(sent.zero_pages, census.zero);
    let nonzero: Vec<&[u8]> = data
        .chunks_exact(PAGE_SIZE)
        .filter(|p| p.iter().any(|&b| b != 0))
        .collect();
    for (ch, stream) in streams.iter().enumerate() {
        let want: Vec<u8> = nonzero
            .chunks(PACKET_PAGES)
            .skip(ch)
            .step_by(cfg.channels)
            .flat_map(|packet| packet.concat())
            .collect();
        // A channel's stream is flushed after each packet but never ended.
        let mut dec = zstd::stream::raw::Decoder::new().unwrap();
        let mut got = vec![0u8; want.len() + PAGE_SIZE];
        let mut src = InBuffer::around(&stream[..]);
        let mut dst = OutBuffer::around(&mut got[..]);
        while src.pos() < stream.len() {
            dec.run(&mut src, &mut dst).unwrap();
        }
        let n = dst.pos();
        assert!(got[..n] == want[..], "{}: QEMU model channel {ch}", m.name);
    }
}

#[test]
fn corpus_images_hold_real_memory_that_survives_the_codecs() {
    let Some(names) = images_to_test() else {
        return;
    };
    let images = corpus::ensure(names).expect("the corpus builds");
    for img in &images {
        check(img);
    }
}
