//! The source side: validating the source disk before anything moves, and
//! reading blocks to answer fetch requests (holes and zero blocks reported
//! cheaply as [`BlockContent::Zero`]). Also what happens to the source copy
//! once the destination has confirmed it holds the whole disk.
//!
//! The source file is opened read-only: after the compute handover nothing
//! writes to it, and it stays the authoritative copy until release.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::StorageError;
use crate::extents::{allocated_bytes, allocated_extents, hole_blocks, overlaps};
use crate::geometry::Geometry;
use crate::planner::FetchRequest;
use crate::presence::PresenceBitmap;
use crate::wire::{is_zero, BlockContent};

/// A validated, read-only source disk.
#[derive(Debug)]
pub struct SourceDisk {
    file: File,
    path: PathBuf,
    geometry: Geometry,
    extents: Vec<Range<u64>>,
}

impl SourceDisk {
    /// Opens and validates the source disk at `path` against the VM's
    /// configured size `disk_len`: a missing file, a non-file, a truncated or
    /// oversized image are clear errors, before any byte moves.
    pub fn open(path: &Path, disk_len: u64, block_size: u32) -> Result<Self, StorageError> {
        let geometry = Geometry::new(disk_len, block_size)?;
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StorageError::SourceMissing {
                    path: path.to_owned(),
                })
            }
            Err(e) => return Err(StorageError::io("inspect source disk", path, e)),
        };
        if !meta.is_file() {
            return Err(StorageError::SourceNotFile {
                path: path.to_owned(),
            });
        }
        let actual = meta.len();
        if actual < disk_len {
            return Err(StorageError::SourceTruncated {
                path: path.to_owned(),
                expected: disk_len,
                actual,
            });
        }
        if actual > disk_len {
            return Err(StorageError::SourceTooLarge {
                path: path.to_owned(),
                expected: disk_len,
                actual,
            });
        }
        let file = File::open(path).map_err(|e| StorageError::io("open source disk", path, e))?;
        let extents = allocated_extents(&file, disk_len)
            .map_err(|e| StorageError::io("map allocated extents of source disk", path, e))?;
        Ok(SourceDisk {
            file,
            path: path.to_owned(),
            geometry,
            extents,
        })
    }

    /// The disk geometry.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Allocated byte ranges, as found when opened.
    pub fn extents(&self) -> &[Range<u64>] {
        &self.extents
    }

    /// Bytes allocated on disk (what a naive copy of the data would send).
    pub fn allocated_bytes(&self) -> u64 {
        allocated_bytes(&self.extents)
    }

    /// Block ranges that are wholly holes: the destination marks them present
    /// without fetching ([`crate::remote_disk::RemoteDisk::apply_source_holes`]).
    pub fn hole_blocks(&self) -> Vec<Range<u64>> {
        hole_blocks(self.geometry, &self.extents)
    }

    /// Reads `block`: [`BlockContent::Zero`] without I/O for a hole, after
    /// reading for an all-zero block, else the bytes (in `buf`).
    pub fn read_block<'b>(
        &self,
        block: u64,
        buf: &'b mut Vec<u8>,
    ) -> Result<BlockContent<'b>, StorageError> {
        let count = self.geometry.block_count();
        if block >= count {
            return Err(StorageError::NoSuchBlock {
                block,
                block_count: count,
            });
        }
        let off = self.geometry.block_offset(block);
        let len = self.geometry.block_len(block);
        if !overlaps(&self.extents, off..off + len as u64) {
            return Ok(BlockContent::Zero);
        }
        buf.resize(len, 0);
        self.file
            .read_exact_at(buf, off)
            .map_err(|e| StorageError::io("read source disk", &self.path, e))?;
        if is_zero(buf) {
            return Ok(BlockContent::Zero);
        }
        Ok(BlockContent::Data(buf))
    }

    /// The end-of-copy digest ([`crate::verify`]) of this disk over the
    /// blocks not in `written`, computed block by block (memory does not
    /// grow with the disk); written blocks and holes are not read.
    pub fn end_of_copy_digest(&self, written: &PresenceBitmap) -> Result<[u8; 32], StorageError> {
        let mut c = crate::verify::Combiner::new(self.geometry);
        let mut buf = Vec::new();
        for b in 0..self.geometry.block_count() {
            if !written.is_present(b) {
                c.add(b, &crate::verify::block_hash(self.read_block(b, &mut buf)?));
            }
        }
        Ok(c.finish())
    }

    /// Serves a fetch request block by block; stops at the first error (a
    /// request for blocks past the end is an error, not a panic).
    pub fn serve(
        &self,
        request: &FetchRequest,
        buf: &mut Vec<u8>,
        mut each: impl FnMut(u64, BlockContent<'_>),
    ) -> Result<(), StorageError> {
        for block in request.blocks() {
            let content = self.read_block(block, buf)?;
            each(block, content);
        }
        Ok(())
    }
}

/// What to do with the source copy after the destination confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleasePolicy {
    /// Keep the file (e.g. as a backup); nothing is deleted.
    Keep,
    /// Delete the file.
    Delete,
}

/// Releases the source copy by `policy`. Call only after the destination has
/// confirmed that its copy is complete and durable
/// ([`crate::remote_disk::RemoteDisk::complete`]).
pub fn release_source(path: &Path, policy: ReleasePolicy) -> Result<(), StorageError> {
    match policy {
        ReleasePolicy::Keep => Ok(()),
        ReleasePolicy::Delete => std::fs::remove_file(path)
            .map_err(|e| StorageError::io("delete released source disk", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BS: u32 = 65536;

    fn write_file(path: &Path, len: u64, writes: &[(u64, &[u8])]) {
        let f = File::create(path).unwrap();
        f.set_len(len).unwrap();
        for (off, data) in writes {
            f.write_all_at(data, *off).unwrap();
        }
    }

    #[test]
    fn validation_names_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.img");
        let err = SourceDisk::open(&p, 1 << 20, BS).unwrap_err();
        assert!(matches!(err, StorageError::SourceMissing { .. }));
        assert!(err.to_string().contains("does not exist"), "{err}");

        let err = SourceDisk::open(dir.path(), 1 << 20, BS).unwrap_err();
        assert!(matches!(err, StorageError::SourceNotFile { .. }), "{err}");

        write_file(&p, (1 << 20) - 512, &[]);
        let err = SourceDisk::open(&p, 1 << 20, BS).unwrap_err();
        assert!(
            matches!(err, StorageError::SourceTruncated { actual, .. } if actual == (1 << 20) - 512)
        );
        assert!(err.to_string().contains("truncated"), "{err}");

        write_file(&p, (1 << 20) + 512, &[]);
        let err = SourceDisk::open(&p, 1 << 20, BS).unwrap_err();
        assert!(matches!(err, StorageError::SourceTooLarge { .. }), "{err}");

        write_file(&p, 1 << 20, &[]);
        assert!(
            SourceDisk::open(&p, 1 << 20, 1000).is_err(),
            "bad block size"
        );
        assert!(SourceDisk::open(&p, 1 << 20, BS).is_ok());
    }

    #[test]
    fn reads_report_holes_and_zero_blocks_as_zero() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.img");
        let len = 8 * u64::from(BS) + 1000;
        let zeros = vec![0u8; BS as usize];
        write_file(
            &p,
            len,
            &[
                (u64::from(BS), b"hello"),
                (3 * u64::from(BS), &zeros),
                (8 * u64::from(BS), &[5u8; 1000]),
            ],
        );
        let src = SourceDisk::open(&p, len, BS).unwrap();
        let mut buf = Vec::new();
        assert_eq!(
            src.read_block(0, &mut buf).unwrap(),
            BlockContent::Zero,
            "hole"
        );
        match src.read_block(1, &mut buf).unwrap() {
            BlockContent::Data(d) => {
                assert_eq!(d.len(), BS as usize);
                assert_eq!(&d[..5], b"hello");
            }
            BlockContent::Zero => panic!("block 1 has data"),
        }
        assert_eq!(
            src.read_block(3, &mut buf).unwrap(),
            BlockContent::Zero,
            "written zeros"
        );
        match src.read_block(8, &mut buf).unwrap() {
            BlockContent::Data(d) => assert_eq!(d, &[5u8; 1000][..], "short last block"),
            BlockContent::Zero => panic!("block 8 has data"),
        }
        assert!(matches!(
            src.read_block(9, &mut buf),
            Err(StorageError::NoSuchBlock { .. })
        ));
        let holes: u64 = src.hole_blocks().iter().map(|r| r.end - r.start).sum();
        assert!(
            holes >= 5,
            "blocks 0,2,4..8 are holes (3 may be allocated zeros): {:?}",
            src.hole_blocks()
        );

        let req = FetchRequest {
            first_block: 0,
            count: 3,
            priority: crate::planner::Priority::Background,
        };
        let mut seen = Vec::new();
        src.serve(&req, &mut buf, |b, c| {
            seen.push((b, matches!(c, BlockContent::Zero)))
        })
        .unwrap();
        assert_eq!(seen, vec![(0, true), (1, false), (2, true)]);
    }

    #[test]
    fn release_policies() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.img");
        write_file(&p, 4096, &[]);
        release_source(&p, ReleasePolicy::Keep).unwrap();
        assert!(p.exists());
        release_source(&p, ReleasePolicy::Delete).unwrap();
        assert!(!p.exists());
        assert!(release_source(&p, ReleasePolicy::Delete).is_err());
    }
}
