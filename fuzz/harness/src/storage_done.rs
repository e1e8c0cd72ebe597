//! Target `storage_done`: the destination's done-record loader
//! ([`DoneRecord::load`]) on arbitrary file contents, written to a file
//! first as the gateway finds it after a restart.
//!
//! The record nests the presence bitmap's checksummed form inside its own
//! checksum; the input's first byte says, per level, whether to append the
//! checksum of the bytes given, so the parsing behind both is reached.
//! An accepted record must encode back to exactly the file, its written
//! set must answer consistently (see [`crate::storage_presence`]), and it
//! must save and load back equal.

use wanmig_storage::done::done_path;
use wanmig_storage::DoneRecord;

use crate::input::{Input, Script};
use crate::storage_presence::{check, geometry, seed_geometries, with_checksum};

const MAGIC_AND_DIGEST: usize = 8 + 32;

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let fix = input.u8();
    let want = geometry(&mut input);
    let rest = input.rest();
    // The written set's own checksum, then the record's.
    let bytes = if fix & 2 != 0 && rest.len() >= MAGIC_AND_DIGEST {
        let (head, bitmap) = rest.split_at(MAGIC_AND_DIGEST);
        let mut b = head.to_vec();
        b.extend_from_slice(&with_checksum(true, bitmap));
        with_checksum(fix & 1 != 0, &b)
    } else {
        with_checksum(fix & 1 != 0, rest)
    };
    let dir = crate::scratch_dir();
    let path = done_path(&dir.path().join("disk.img"));
    std::fs::write(&path, &bytes).expect("write the record file");
    if let Ok(Some(r)) = DoneRecord::load(&path, want) {
        check(&r.written, want);
        assert_eq!(
            r.to_bytes(),
            bytes,
            "an accepted record does not encode back to itself"
        );
        let again = dir.path().join("again.done");
        r.save(&again).expect("save the record");
        assert_eq!(
            DoneRecord::load(&again, want).expect("load it back"),
            Some(r)
        );
    }
}

/// Seeds: real records (nothing written, some blocks written), as files
/// and with either checksum left to the harness, and one for another
/// geometry.
pub fn seeds() -> Vec<Vec<u8>> {
    use wanmig_storage::{Geometry, PresenceBitmap};
    let mut out = Vec::new();
    for (shift, len) in seed_geometries() {
        let g = Geometry::new(u64::from(len), 4096 << shift).expect("seed geometry");
        let mut some = PresenceBitmap::new(g);
        for b in (0..g.block_count()).step_by(5) {
            some.set(b);
        }
        for written in [PresenceBitmap::new(g), some] {
            let r = DoneRecord {
                digest: *blake3::hash(&len.to_le_bytes()).as_bytes(),
                written,
            };
            let bytes = r.to_bytes();
            let outer = &bytes[..bytes.len() - 32];
            let inner = &outer[..outer.len() - 32];
            out.push(
                Script::new()
                    .u8(0)
                    .u8(shift)
                    .u32(len)
                    .bytes(&bytes)
                    .finish(),
            );
            out.push(Script::new().u8(1).u8(shift).u32(len).bytes(outer).finish());
            out.push(Script::new().u8(3).u8(shift).u32(len).bytes(inner).finish());
            out.push(
                Script::new()
                    .u8(3)
                    .u8(shift)
                    .u32(len / 2)
                    .bytes(inner)
                    .finish(),
            );
        }
    }
    out
}
