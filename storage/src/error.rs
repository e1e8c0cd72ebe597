//! The crate's error type: every failure names what failed and what to do.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Errors of the storage-migration core.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A block size that is not a power of two in 4 KiB..=16 MiB.
    #[error(
        "block size {block_size} is invalid: use a power of two between 4096 and 16777216 bytes"
    )]
    BadBlockSize {
        /// The rejected size.
        block_size: u32,
    },

    /// A block size that splits a disk into more blocks than a copy
    /// between sites carries ([`crate::geometry::MAX_TRANSFER_BLOCKS`]).
    #[error("block size {block_size} splits the {disk_len}-byte disk into {blocks} blocks, more than the {max} a copy between sites allows; use blocks of {fits} bytes or more ([storage] block_size_kib at the destination)")]
    TooManyBlocks {
        disk_len: u64,
        block_size: u32,
        blocks: u64,
        max: u64,
        /// The smallest block size that fits.
        fits: u64,
    },

    /// A byte range that does not lie within the disk.
    #[error("range {offset}+{len} lies outside the {disk_len}-byte disk")]
    OutOfRange {
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
        /// Disk size.
        disk_len: u64,
    },

    /// The source disk file does not exist.
    #[error(
        "source disk {path} does not exist: check the VM's disk path before migrating its storage"
    )]
    SourceMissing {
        /// The missing path.
        path: PathBuf,
    },

    /// The source disk path is not a regular file.
    #[error("source disk {path} is not a regular file (block devices and directories are not supported)")]
    SourceNotFile {
        /// The offending path.
        path: PathBuf,
    },

    /// The source disk is shorter than the VM's configured disk size.
    #[error("source disk {path} is truncated: {actual} bytes on disk, the VM is configured with {expected}; restore the image before migrating")]
    SourceTruncated {
        /// The file.
        path: PathBuf,
        /// The configured disk size.
        expected: u64,
        /// The file's size.
        actual: u64,
    },

    /// The source disk is longer than the VM's configured disk size.
    #[error("source disk {path} has the wrong size: {actual} bytes on disk, the VM is configured with {expected}; fix the VM's disk size or the image")]
    SourceTooLarge {
        /// The file.
        path: PathBuf,
        /// The configured disk size.
        expected: u64,
        /// The file's size.
        actual: u64,
    },

    /// An I/O operation on a file failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done ("read source disk", ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The presence sidecar is unreadable: the copy cannot safely resume.
    #[error("presence bitmap {path} is corrupt ({reason}); the local copy cannot be trusted: delete {path} and the local disk copy, then restart the storage migration from the (intact) source")]
    PresenceCorrupt {
        /// The sidecar file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The presence sidecar belongs to a disk of another geometry.
    #[error("presence bitmap {path} describes a {found_len}-byte disk in {found_block}-byte blocks, but this disk is {want_len} bytes in {want_block}-byte blocks; it belongs to another disk: delete it and the local copy, or point at the right disk")]
    PresenceMismatch {
        /// The sidecar file.
        path: PathBuf,
        /// Disk size recorded in the sidecar.
        found_len: u64,
        /// Block size recorded in the sidecar.
        found_block: u32,
        /// Disk size expected.
        want_len: u64,
        /// Block size expected.
        want_block: u32,
    },

    /// The destination's local copy has another size than the disk.
    #[error("local disk copy {path} is {actual} bytes but the disk is {expected} bytes; it belongs to another disk: delete it and its presence bitmap to start over")]
    LocalSizeMismatch {
        /// The local copy.
        path: PathBuf,
        /// Disk size.
        expected: u64,
        /// The file's size.
        actual: u64,
    },

    /// A block from the wire names a block past the end of the disk.
    #[error("received block {block} but the disk has only {block_count} blocks; the peer is sending for another disk")]
    NoSuchBlock {
        /// The block number received.
        block: u64,
        /// Blocks on this disk.
        block_count: u64,
    },

    /// A block from the wire has the wrong length.
    #[error("received block {block} with {got} bytes, expected {expected}; the peer uses another block size")]
    BadBlockLength {
        /// The block.
        block: u64,
        /// Expected length.
        expected: usize,
        /// Received length.
        got: usize,
    },

    /// A guest read or write waited too long for blocks still at the source.
    #[error("guest I/O at {offset}+{len} waited {waited:?} for {missing} block(s) still at the source site and timed out; the link to the source is down or too slow: restore it (the copy resumes by itself) or raise the fetch timeout")]
    FetchTimeout {
        /// Start of the guest request.
        offset: u64,
        /// Length of the guest request.
        len: u64,
        /// How long it waited.
        waited: Duration,
        /// Blocks still missing when it gave up.
        missing: usize,
    },

    /// Switch-over was asked for while blocks are still at the source.
    #[error("cannot switch to the local disk: {missing} block(s) are still only at the source site; wait until the copy reports all blocks local")]
    NotComplete {
        /// Blocks still missing.
        missing: u64,
    },

    /// A compressed block from the wire does not decompress.
    #[error(
        "block {block} from the peer does not decompress ({reason}); the block is re-requested"
    )]
    BadCompressedBlock {
        /// The block.
        block: u64,
        /// Decoder message.
        reason: String,
    },
}

impl StorageError {
    /// Wraps an OS error with what was being done and to which file.
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StorageError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

impl From<StorageError> for io::Error {
    fn from(e: StorageError) -> Self {
        let kind = match &e {
            StorageError::FetchTimeout { .. } => io::ErrorKind::TimedOut,
            StorageError::OutOfRange { .. } => io::ErrorKind::InvalidInput,
            StorageError::SourceMissing { .. } => io::ErrorKind::NotFound,
            StorageError::Io { source, .. } => source.kind(),
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}
