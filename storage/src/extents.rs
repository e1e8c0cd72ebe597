//! Allocated extents of a file, found with `lseek(SEEK_DATA/SEEK_HOLE)`, so
//! holes in a sparse disk image are never read or sent.
//!
//! Uses nix's safe `lseek` wrapper, so this module has no `unsafe`. On a
//! filesystem without SEEK_DATA support the whole file counts as one extent
//! (correct, just without the saving).

use std::fs::File;
use std::ops::Range;

use nix::errno::Errno;
use nix::unistd::{lseek, Whence};

use crate::geometry::Geometry;

/// The byte ranges of `file` (of length `len`) that hold data, in order and
/// non-overlapping. Everything else reads as zeros.
pub fn allocated_extents(file: &File, len: u64) -> std::io::Result<Vec<Range<u64>>> {
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    while pos < len {
        let data = match lseek(file, pos as i64, Whence::SeekData) {
            Ok(off) => off as u64,
            // ENXIO: no data at or after pos.
            Err(Errno::ENXIO) => break,
            Err(Errno::EINVAL | Errno::EOPNOTSUPP) if out.is_empty() && pos == 0 => {
                return Ok(std::iter::once(0..len).collect());
            }
            Err(e) => return Err(e.into()),
        };
        if data >= len {
            break;
        }
        let hole = match lseek(file, data as i64, Whence::SeekHole) {
            Ok(off) => (off as u64).min(len),
            Err(Errno::ENXIO) => len,
            Err(e) => return Err(e.into()),
        };
        if hole <= data {
            // A file changing under us; stop rather than loop.
            break;
        }
        out.push(data..hole);
        pos = hole;
    }
    Ok(out)
}

/// Total bytes in `extents`.
pub fn allocated_bytes(extents: &[Range<u64>]) -> u64 {
    extents.iter().map(|r| r.end - r.start).sum()
}

/// Whether any byte of `range` lies in one of the sorted `extents`.
pub fn overlaps(extents: &[Range<u64>], range: Range<u64>) -> bool {
    // First extent whose end is past range.start.
    let i = extents.partition_point(|e| e.end <= range.start);
    extents.get(i).is_some_and(|e| e.start < range.end)
}

/// Block ranges that lie entirely in holes (no byte allocated), coalesced.
pub fn hole_blocks(geometry: Geometry, extents: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    let n = geometry.block_count();
    let bs = u64::from(geometry.block_size());
    // Walk the gaps between extents and keep the whole blocks inside each gap.
    let mut gap_start = 0u64;
    let gaps = extents
        .iter()
        .map(|e| e.start..e.end)
        .chain(std::iter::once(geometry.disk_len()..geometry.disk_len()));
    for e in gaps {
        let gap = gap_start..e.start.min(geometry.disk_len());
        gap_start = gap_start.max(e.end);
        if gap.start >= gap.end {
            continue;
        }
        let first = gap.start.div_ceil(bs);
        // The last block may be short: it is whole if the gap reaches disk end.
        let last = if gap.end >= geometry.disk_len() {
            n
        } else {
            gap.end / bs
        };
        if first < last {
            match out.last_mut() {
                Some(prev) if prev.end == first => prev.end = last,
                _ => out.push(first..last),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    const MIB: u64 = 1 << 20;

    #[test]
    fn finds_data_and_skips_holes_in_a_real_sparse_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse.img");
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let len = 16 * MIB;
        f.set_len(len).unwrap();
        f.write_all_at(&[1u8; 8192], MIB).unwrap();
        f.write_all_at(&[2u8; 100], 10 * MIB + 5).unwrap();
        f.write_all_at(&[3u8; 4096], len - 4096).unwrap();
        f.sync_all().unwrap();
        let ext = allocated_extents(&f, len).unwrap();
        assert_eq!(ext.len(), 3, "{ext:?}");
        assert!(ext[0].start <= MIB && ext[0].end >= MIB + 8192);
        assert!(ext[1].start <= 10 * MIB + 5 && ext[1].end >= 10 * MIB + 105);
        assert_eq!(ext[2].end, len);
        // Filesystem allocation granularity is at most a few pages here.
        assert!(
            allocated_bytes(&ext) < MIB,
            "holes must not count as data: {ext:?}"
        );

        let g = Geometry::new(len, 64 * 1024).unwrap();
        let holes = hole_blocks(g, &ext);
        let hole_count: u64 = holes.iter().map(|r| r.end - r.start).sum();
        assert_eq!(hole_count, g.block_count() - 3, "{holes:?}");
        for (i, r) in holes.iter().enumerate() {
            for b in r.clone() {
                let o = g.block_offset(b);
                assert!(
                    !overlaps(&ext, o..o + g.block_len(b) as u64),
                    "hole block {b} (range {i}) overlaps data"
                );
            }
        }
        assert!(overlaps(&ext, MIB..MIB + 1));
        assert!(!overlaps(&ext, 0..MIB - 65536));
    }

    #[test]
    fn empty_and_fully_written_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.img");
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(MIB).unwrap();
        assert!(allocated_extents(&f, MIB).unwrap().is_empty());
        let g = Geometry::new(MIB + 100, 65536).unwrap();
        assert_eq!(
            hole_blocks(g, &[]),
            vec![0..17],
            "short last block counts when wholly in a hole"
        );
        f.write_all_at(&vec![9u8; MIB as usize], 0).unwrap();
        assert_eq!(allocated_extents(&f, MIB).unwrap(), vec![0..MIB]);
        let g = Geometry::new(MIB, 65536).unwrap();
        assert!(hole_blocks(g, std::slice::from_ref(&(0..MIB))).is_empty());
    }

    #[test]
    fn hole_blocks_keeps_only_whole_blocks() {
        let g = Geometry::new(10 * 4096, 4096).unwrap();
        // Data in bytes 100..200 of block 0 and 3*4096+1..5*4096-1.
        let ext = vec![100..200, 3 * 4096 + 1..5 * 4096 - 1];
        assert_eq!(hole_blocks(g, &ext), vec![1..3, 5..10]);
    }
}
