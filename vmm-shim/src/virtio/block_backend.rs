//! Where a virtio-block device's bytes live: the [`BlockBackend`] trait and
//! its raw (sparse) file implementation. Storage migration plugs a
//! remote-backed disk in behind the same trait.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Storage behind a virtio-block device. Offsets are in bytes; the device
/// only issues requests that lie within `len()`.
///
/// Methods take `&self` so one backend can be shared (in an `Arc`) between
/// the VMM's vCPU thread and, for a remote-backed disk, the thread that
/// delivers fetched blocks; implementations use interior mutability.
pub trait BlockBackend: Send + Sync {
    /// Size in bytes.
    fn len(&self) -> u64;
    /// Whether the disk has no bytes at all.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fill `buf` with the bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Store `buf` at `offset`.
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Make earlier writes durable.
    fn flush(&self) -> io::Result<()>;
}

impl<T: BlockBackend + ?Sized> BlockBackend for std::sync::Arc<T> {
    fn len(&self) -> u64 {
        (**self).len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        (**self).write_at(offset, buf)
    }

    fn flush(&self) -> io::Result<()> {
        (**self).flush()
    }
}

impl<T: BlockBackend + ?Sized> BlockBackend for Box<T> {
    fn len(&self) -> u64 {
        (**self).len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        (**self).write_at(offset, buf)
    }

    fn flush(&self) -> io::Result<()> {
        (**self).flush()
    }
}

/// A raw disk image in a regular file; holes read as zeros, so a new image
/// is sparse until written.
#[derive(Debug)]
pub struct RawFileBackend {
    file: File,
    path: PathBuf,
    len: u64,
}

impl RawFileBackend {
    /// Open an existing image read-write; its size is the disk size.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| {
                io::Error::new(e.kind(), format!("open disk image {}: {e}", path.display()))
            })?;
        let len = file.metadata()?.len();
        Ok(RawFileBackend {
            file,
            path: path.to_owned(),
            len,
        })
    }

    /// Create (or truncate) a sparse image of `len` bytes.
    pub fn create(path: &Path, len: u64) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("create disk image {}: {e}", path.display()),
                )
            })?;
        file.set_len(len)?;
        Ok(RawFileBackend {
            file,
            path: path.to_owned(),
            len,
        })
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl BlockBackend for RawFileBackend {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_file_is_sparse_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let b = RawFileBackend::create(&path, 1 << 20).unwrap();
        assert_eq!(b.len(), 1 << 20);
        let mut buf = [0xffu8; 512];
        b.read_at(4096, &mut buf).unwrap();
        assert!(buf.iter().all(|&x| x == 0), "holes read as zeros");
        b.write_at(4096, &[7u8; 512]).unwrap();
        b.flush().unwrap();
        let again = std::sync::Arc::new(RawFileBackend::open(&path).unwrap());
        again.read_at(4096, &mut buf).unwrap();
        assert_eq!(buf, [7u8; 512]);
        // Reading past the end of the file fails instead of inventing bytes.
        assert!(again.read_at((1 << 20) - 256, &mut buf).is_err());
    }
}
