//! Where a virtio-block device's bytes live: the [`BlockBackend`] trait, its
//! raw (sparse) file implementation, and [`RemoteBackend`], the adapter that
//! puts a storage migration's remote-backed disk behind the same trait.

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

    /// Wraps an image file the caller opened read-write (e.g. with its own
    /// checks on where the file may live); `path` names it in messages.
    pub fn from_file(file: File, path: PathBuf) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(RawFileBackend { file, path, len })
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

/// A follow-on storage migration's destination disk
/// ([`wanmig_storage::RemoteDisk`]) as a virtio-block backend: reads of
/// blocks not yet local wait for them (or fail with `TimedOut`, never with
/// made-up data); writes land locally; `flush` makes data and presence
/// durable.
#[derive(Debug, Clone)]
pub struct RemoteBackend(pub std::sync::Arc<wanmig_storage::RemoteDisk>);

impl BlockBackend for RemoteBackend {
    fn len(&self) -> u64 {
        self.0.len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.0.write_at(offset, buf)
    }

    fn flush(&self) -> io::Result<()> {
        self.0.flush()
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

    #[test]
    fn remote_backend_serves_a_remote_disk() {
        use wanmig_storage::copy::{CopyConfig, InProcessCopy};
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        let len = 4u64 << 20;
        std::fs::write(&src, vec![0u8; len as usize]).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
        f.write_all_at(&[9u8; 4096], 3 << 20).unwrap();
        drop(f);
        let copy = InProcessCopy::start(&src, &dst, len, CopyConfig::default()).unwrap();
        let b = RemoteBackend(std::sync::Arc::clone(copy.disk()));
        assert_eq!(b.len(), len);
        // A read of a block the copy may not have reached yet waits for it.
        let mut buf = [0u8; 4096];
        b.read_at(3 << 20, &mut buf).unwrap();
        assert_eq!(buf, [9u8; 4096]);
        b.write_at(4096, &[5u8; 512]).unwrap();
        b.flush().unwrap();
        let mut back = [0u8; 512];
        b.read_at(4096, &mut back).unwrap();
        assert_eq!(back, [5u8; 512]);
        assert!(copy
            .disk()
            .wait_all_local(std::time::Duration::from_secs(20)));
        copy.shutdown().unwrap();
    }
}
