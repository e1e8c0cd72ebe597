//! BLAKE3 digest of a whole disk file, streaming, holes read as zeros, so a
//! sparse copy and a dense copy of the same disk have the same digest.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::StorageError;
use crate::extents::allocated_extents;

const CHUNK: usize = 1 << 20;

/// The BLAKE3 digest of the file's `len()` bytes; holes are hashed as zeros
/// without reading them.
pub fn disk_digest(path: &Path) -> Result<blake3::Hash, StorageError> {
    let file = File::open(path).map_err(|e| StorageError::io("open disk for digest", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| StorageError::io("stat disk for digest", path, e))?
        .len();
    let extents = allocated_extents(&file, len)
        .map_err(|e| StorageError::io("map extents of disk for digest", path, e))?;
    let zeros = vec![0u8; CHUNK];
    let mut buf = vec![0u8; CHUNK];
    let mut hasher = blake3::Hasher::new();
    let mut pos = 0u64;
    let hash_zeros = |hasher: &mut blake3::Hasher, mut n: u64| {
        while n > 0 {
            let k = n.min(CHUNK as u64) as usize;
            hasher.update(&zeros[..k]);
            n -= k as u64;
        }
    };
    for e in extents {
        hash_zeros(&mut hasher, e.start - pos);
        let mut off = e.start;
        while off < e.end {
            let k = (e.end - off).min(CHUNK as u64) as usize;
            file.read_exact_at(&mut buf[..k], off)
                .map_err(|e| StorageError::io("read disk for digest", path, e))?;
            hasher.update(&buf[..k]);
            off += k as u64;
        }
        pos = e.end;
    }
    hash_zeros(&mut hasher, len - pos);
    Ok(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_and_dense_files_hash_alike_and_content_matters() {
        let dir = tempfile::tempdir().unwrap();
        let len = 5 * CHUNK + 123;
        let mut dense = vec![0u8; len];
        dense[CHUNK + 7..CHUNK + 5000].fill(0xab);
        dense[len - 10..].fill(1);
        let dense_path = dir.path().join("dense");
        std::fs::write(&dense_path, &dense).unwrap();

        let sparse_path = dir.path().join("sparse");
        let f = File::create(&sparse_path).unwrap();
        f.set_len(len as u64).unwrap();
        f.write_all_at(&dense[CHUNK + 7..CHUNK + 5000], (CHUNK + 7) as u64)
            .unwrap();
        f.write_all_at(&dense[len - 10..], (len - 10) as u64)
            .unwrap();

        let want = blake3::hash(&dense);
        assert_eq!(disk_digest(&dense_path).unwrap(), want);
        assert_eq!(disk_digest(&sparse_path).unwrap(), want);
        f.write_all_at(&[1], 3 * CHUNK as u64).unwrap();
        assert_ne!(disk_digest(&sparse_path).unwrap(), want);
        assert!(disk_digest(&dir.path().join("missing")).is_err());
    }
}
