//! Target `storage_presence`: [`PresenceBitmap::from_bytes`] on arbitrary
//! sidecar bytes, for a disk geometry the input picks (the geometry is
//! the destination's own configuration, so it is bounded here: blocks of
//! 4–64 KiB, disks up to 4 GiB).
//!
//! The sidecar ends in a BLAKE3 checksum of the rest; the input's first
//! byte says whether to take the bytes as they are or to append the
//! checksum of the bytes, so the parsing behind the checksum is reached.
//!
//! An accepted bitmap must encode back to exactly its bytes (the form is
//! canonical), describe the wanted geometry, and answer consistently:
//! present + missing = blocks, the first missing block is absent and
//! every block before it present, marking a block present counts once.

use wanmig_storage::{Geometry, PresenceBitmap};

use crate::input::{Input, Script};

/// Blocks checked one by one (a 4 GiB disk of 4 KiB blocks has 2^20).
const CHECKED_BLOCKS: u64 = 4096;

/// The geometry the input picks, and whether to append the checksum.
pub(crate) fn geometry(input: &mut Input<'_>) -> Geometry {
    let block_size = 4096u32 << (input.u8() % 5);
    let disk_len = u64::from(input.u32());
    Geometry::new(disk_len, block_size).expect("block sizes 4-64 KiB are valid")
}

/// The bytes to load: as given, or with their BLAKE3 appended.
pub(crate) fn with_checksum(fix: bool, body: &[u8]) -> Vec<u8> {
    let mut b = body.to_vec();
    if fix {
        b.extend_from_slice(blake3::hash(body).as_bytes());
    }
    b
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let fix = input.bool();
    let want = geometry(&mut input);
    let bytes = with_checksum(fix, input.rest());
    let path = std::path::Path::new("fuzz.presence");
    if let Ok(map) = PresenceBitmap::from_bytes(&bytes, want, path) {
        check(&map, want);
        assert_eq!(
            map.to_bytes(),
            bytes,
            "an accepted bitmap does not encode back to itself"
        );
    }
}

pub(crate) fn check(map: &PresenceBitmap, want: Geometry) {
    assert_eq!(map.geometry(), want);
    let count = want.block_count();
    assert_eq!(map.present_count() + map.missing_count(), count);
    assert_eq!(map.is_complete(), map.missing_count() == 0);
    match map.next_missing(0) {
        Some(b) => {
            assert!(
                b < count && !map.is_present(b),
                "next_missing gave a present block"
            );
            for before in 0..b.min(CHECKED_BLOCKS) {
                assert!(
                    map.is_present(before),
                    "a missing block before next_missing"
                );
            }
        }
        None => assert!(
            map.is_complete(),
            "no missing block in an incomplete bitmap"
        ),
    }
    let mut set = 0;
    for block in 0..count.min(CHECKED_BLOCKS) {
        set += u64::from(map.is_present(block));
    }
    if count <= CHECKED_BLOCKS {
        assert_eq!(
            set,
            map.present_count(),
            "present count differs from the bits"
        );
    }
    assert!(!map.is_present(count), "a block past the end is present");
    let mut more = map.clone();
    if let Some(b) = map.next_missing(count / 2) {
        assert!(more.set(b) && !more.set(b), "marking a block counted wrong");
        assert_eq!(more.present_count(), map.present_count() + 1);
    }
}

/// The seed geometries: a 1 MiB disk of 64 KiB blocks, 100 blocks of
/// 4 KiB, a disk whose last block is short, and an empty disk.
pub(crate) fn seed_geometries() -> Vec<(u8, u32)> {
    vec![(4, 1 << 20), (0, 100 * 4096), (2, 3 * 16384 + 5000), (0, 0)]
}

/// Seeds: real sidecars (empty, partly and fully present), with and
/// without their checksum in the input, one for another geometry, and one
/// with a flipped bit.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (shift, len) in seed_geometries() {
        let g = Geometry::new(u64::from(len), 4096 << shift).expect("seed geometry");
        let mut maps = vec![PresenceBitmap::new(g)];
        let mut some = PresenceBitmap::new(g);
        for b in (0..g.block_count()).step_by(3) {
            some.set(b);
        }
        maps.push(some);
        let mut all = PresenceBitmap::new(g);
        for b in 0..g.block_count() {
            all.set(b);
        }
        maps.push(all);
        for m in maps {
            let bytes = m.to_bytes();
            let body = &bytes[..bytes.len() - 32];
            out.push(
                Script::new()
                    .bool(false)
                    .u8(shift)
                    .u32(len)
                    .bytes(&bytes)
                    .finish(),
            );
            out.push(
                Script::new()
                    .bool(true)
                    .u8(shift)
                    .u32(len)
                    .bytes(body)
                    .finish(),
            );
            let mut flipped = body.to_vec();
            if let Some(last) = flipped.last_mut() {
                *last ^= 0x80;
            }
            out.push(
                Script::new()
                    .bool(true)
                    .u8(shift)
                    .u32(len)
                    .bytes(&flipped)
                    .finish(),
            );
            out.push(
                Script::new()
                    .bool(true)
                    .u8(shift)
                    .u32(len + 4096)
                    .bytes(body)
                    .finish(),
            );
        }
    }
    out
}
