//! The per-block presence bitmap of a destination disk and its persistent
//! sidecar file.
//!
//! A set bit means "this block's bytes are in the local sparse copy and are
//! authoritative" (copied from the source or written by the guest). The
//! sidecar is what makes the copy resumable after a crash or link cut, so its
//! contents must never run ahead of the data: the owner fsyncs the local copy
//! *before* saving a bitmap snapshot taken before that fsync (see
//! [`crate::remote_disk`]). Saving is atomic: temp file, fsync, rename, fsync
//! of the directory. A checksum guards against a torn or edited sidecar.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::StorageError;
use crate::geometry::Geometry;

const MAGIC: &[u8; 8] = b"WMPRESNC";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 4 + 8 + 8;
const HASH_LEN: usize = 32;

/// The sidecar path for a local disk copy: `<disk>.presence`.
pub fn sidecar_path(disk: &Path) -> PathBuf {
    suffixed(disk, ".presence")
}

/// `path` with `suffix` appended to its file name (`disk` → `disk.done`).
pub(crate) fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Which blocks of a disk are present locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceBitmap {
    geometry: Geometry,
    words: Vec<u64>,
    present: u64,
}

impl PresenceBitmap {
    /// A bitmap with no block present.
    pub fn new(geometry: Geometry) -> Self {
        let words = vec![0u64; geometry.block_count().div_ceil(64) as usize];
        PresenceBitmap {
            geometry,
            words,
            present: 0,
        }
    }

    /// The disk geometry this bitmap describes.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Whether `block` is present. Blocks past the end are reported absent.
    pub fn is_present(&self, block: u64) -> bool {
        if block >= self.geometry.block_count() {
            return false;
        }
        self.words[(block / 64) as usize] & (1 << (block % 64)) != 0
    }

    /// Marks `block` present; returns whether it was absent before.
    /// Blocks past the end are ignored (returns false).
    pub fn set(&mut self, block: u64) -> bool {
        if block >= self.geometry.block_count() {
            return false;
        }
        let word = &mut self.words[(block / 64) as usize];
        let bit = 1 << (block % 64);
        if *word & bit != 0 {
            return false;
        }
        *word |= bit;
        self.present += 1;
        true
    }

    /// Number of present blocks.
    pub fn present_count(&self) -> u64 {
        self.present
    }

    /// Number of blocks not yet present.
    pub fn missing_count(&self) -> u64 {
        self.geometry.block_count() - self.present
    }

    /// Whether every block is present.
    pub fn is_complete(&self) -> bool {
        self.present == self.geometry.block_count()
    }

    /// The first absent block at or after `from`, if any.
    pub fn next_missing(&self, from: u64) -> Option<u64> {
        let count = self.geometry.block_count();
        let mut block = from;
        while block < count {
            let w = self.words[(block / 64) as usize] | ((1u64 << (block % 64)) - 1);
            if w != u64::MAX {
                let found = (block / 64) * 64 + u64::from((!w).trailing_zeros());
                return (found < count).then_some(found);
            }
            block = (block / 64 + 1) * 64;
        }
        None
    }

    /// The serialized sidecar form (header, bits, BLAKE3 of both).
    pub fn to_bytes(&self) -> Vec<u8> {
        let nbytes = self.geometry.block_count().div_ceil(8) as usize;
        let mut out = Vec::with_capacity(HEADER_LEN + nbytes + HASH_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.geometry.block_size().to_le_bytes());
        out.extend_from_slice(&self.geometry.disk_len().to_le_bytes());
        out.extend_from_slice(&self.geometry.block_count().to_le_bytes());
        let bits: Vec<u8> = self.words.iter().flat_map(|w| w.to_le_bytes()).collect();
        out.extend_from_slice(&bits[..nbytes]);
        let hash = blake3::hash(&out);
        out.extend_from_slice(hash.as_bytes());
        out
    }

    /// Parses the sidecar form, checking it against the expected geometry.
    /// `path` only names the file in errors.
    pub fn from_bytes(bytes: &[u8], want: Geometry, path: &Path) -> Result<Self, StorageError> {
        let corrupt = |reason: &str| StorageError::PresenceCorrupt {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        if bytes.len() < HEADER_LEN + HASH_LEN {
            return Err(corrupt("shorter than its header"));
        }
        let (body, hash) = bytes.split_at(bytes.len() - HASH_LEN);
        if blake3::hash(body).as_bytes() != hash {
            return Err(corrupt("checksum mismatch (torn or edited file)"));
        }
        if &body[..8] != MAGIC {
            return Err(corrupt("not a wanmig presence file (bad magic)"));
        }
        let u32_at = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
        let version = u32_at(8);
        if version != VERSION {
            return Err(corrupt(&format!("unsupported version {version}")));
        }
        let block_size = u32_at(12);
        let disk_len = u64_at(16);
        let block_count = u64_at(24);
        if block_size != want.block_size() || disk_len != want.disk_len() {
            return Err(StorageError::PresenceMismatch {
                path: path.to_owned(),
                found_len: disk_len,
                found_block: block_size,
                want_len: want.disk_len(),
                want_block: want.block_size(),
            });
        }
        if block_count != want.block_count() {
            return Err(corrupt("block count disagrees with disk size"));
        }
        let bits = &body[HEADER_LEN..];
        if bits.len() as u64 != block_count.div_ceil(8) {
            return Err(corrupt("bitmap length disagrees with block count"));
        }
        let mut map = PresenceBitmap::new(want);
        for (i, chunk) in bits.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            map.words[i] = u64::from_le_bytes(w);
        }
        // Bits past the last block must be clear, or the file is not ours.
        let tail = block_count % 64;
        if tail != 0 {
            if let Some(last) = map.words.last() {
                if last >> tail != 0 {
                    return Err(corrupt("bits set past the last block"));
                }
            }
        }
        map.present = map.words.iter().map(|w| u64::from(w.count_ones())).sum();
        Ok(map)
    }

    /// Saves atomically to `path`: write `<path>.tmp`, fsync it, rename over
    /// `path`, fsync the directory. A crash leaves either the old or the new
    /// bitmap, never a mix.
    pub fn save(&self, path: &Path) -> Result<(), StorageError> {
        save_atomically(path, &self.to_bytes())
    }

    /// Loads from `path`; `Ok(None)` when the file does not exist.
    pub fn load(path: &Path, want: Geometry) -> Result<Option<Self>, StorageError> {
        read_if_present(path, "read presence bitmap")?
            .map(|bytes| Self::from_bytes(&bytes, want, path))
            .transpose()
    }
}

/// The whole file at `path`, or `None` when there is none (`what` names it
/// in the error otherwise).
pub(crate) fn read_if_present(
    path: &Path,
    what: &'static str,
) -> Result<Option<Vec<u8>>, StorageError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::io(what, path, e)),
    }
}

/// Writes `bytes` to `path` atomically and durably: `<path>.tmp`, fsync,
/// rename over `path`, fsync of the directory. A crash leaves either the
/// old or the new file.
pub(crate) fn save_atomically(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let tmp = suffixed(path, ".tmp");
    let io = |what, e| StorageError::io(what, path, e);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| io("create temp file for", e))?;
        f.write_all(bytes).map_err(|e| io("write", e))?;
        f.sync_all().map_err(|e| io("fsync", e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| io("rename temp file into", e))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("fsync directory", dir, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn geom(blocks: u64) -> Geometry {
        Geometry::new(blocks * 4096 - 7, 4096).unwrap()
    }

    #[test]
    fn set_count_and_next_missing() {
        let mut m = PresenceBitmap::new(geom(130));
        assert_eq!(m.next_missing(0), Some(0));
        for b in 0..70 {
            assert!(m.set(b));
        }
        assert!(!m.set(5), "setting twice reports no change");
        assert!(!m.set(130), "past the end is ignored");
        assert_eq!(m.present_count(), 70);
        assert_eq!(m.next_missing(0), Some(70));
        for b in 70..129 {
            m.set(b);
        }
        assert_eq!(m.next_missing(3), Some(129));
        m.set(129);
        assert!(m.is_complete());
        assert_eq!(m.next_missing(0), None);
    }

    #[test]
    fn save_load_round_trip_and_atomic_replace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img.presence");
        let g = geom(1000);
        assert_eq!(PresenceBitmap::load(&path, g).unwrap(), None);
        let mut m = PresenceBitmap::new(g);
        for b in (0..1000).step_by(3) {
            m.set(b);
        }
        m.save(&path).unwrap();
        m.set(1);
        m.save(&path).unwrap();
        let back = PresenceBitmap::load(&path, g).unwrap().unwrap();
        assert_eq!(back, m);
        assert!(back.is_present(1) && back.is_present(999) && !back.is_present(2));
        assert!(!dir.path().join("disk.img.presence.tmp").exists());
    }

    #[test]
    fn corrupt_or_foreign_sidecar_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.presence");
        let g = geom(100);
        let mut m = PresenceBitmap::new(g);
        m.set(4);
        m.save(&path).unwrap();

        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER_LEN] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let err = PresenceBitmap::load(&path, g).unwrap_err();
        assert!(matches!(err, StorageError::PresenceCorrupt { .. }), "{err}");
        assert!(err.to_string().contains("checksum"));

        std::fs::write(&path, &bytes[..10]).unwrap();
        assert!(matches!(
            PresenceBitmap::load(&path, g).unwrap_err(),
            StorageError::PresenceCorrupt { .. }
        ));

        m.save(&path).unwrap();
        let other = Geometry::new(g.disk_len() * 2, 4096).unwrap();
        let err = PresenceBitmap::load(&path, other).unwrap_err();
        assert!(
            matches!(err, StorageError::PresenceMismatch { .. }),
            "{err}"
        );
    }

    proptest! {
        #[test]
        fn bytes_round_trip(blocks in 1u64..600, picks in proptest::collection::vec(0u64..600, 0..200)) {
            let g = geom(blocks);
            let mut m = PresenceBitmap::new(g);
            for p in picks { m.set(p % blocks); }
            let back = PresenceBitmap::from_bytes(&m.to_bytes(), g, Path::new("x")).unwrap();
            prop_assert_eq!(back.present_count(), m.present_count());
            prop_assert_eq!(back, m);
        }
    }
}
