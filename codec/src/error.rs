//! The codec's error type: everything that can be wrong with bytes from the
//! wire (batches, inventories) or with the page store on disk.

use std::path::PathBuf;

/// What went wrong while decoding wire bytes or using the page store.
///
/// Wire errors mean the peer sent something this version cannot trust; the
/// migration session should be aborted (the VM stays at the source) and
/// retried, and both gateways should run the same wanmig version.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("{what}: need {need} bytes but only {have} are present (truncated or corrupt stream; abort the session and retry)")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("bad magic {found:02x?} for {what} (not a wanmig codec stream, or the framing is off by some bytes)")]
    BadMagic { what: &'static str, found: [u8; 4] },
    #[error("{what} has format version {found}, this build speaks {supported} (run the same wanmig version on both gateways)")]
    UnsupportedVersion {
        what: &'static str,
        found: u8,
        supported: u8,
    },
    #[error(
        "{what} is {value}, above the limit {max} (corrupt or hostile peer; abort the session)"
    )]
    TooLarge {
        what: &'static str,
        value: u64,
        max: u64,
    },
    #[error("{what}: header declares {declared} but the content needs {actual} (corrupt stream; abort the session)")]
    LengthMismatch {
        what: &'static str,
        declared: u64,
        actual: u64,
    },
    #[error("unknown record kind {0} (peer runs a newer or incompatible wanmig version)")]
    UnknownRecordKind(u8),
    #[error("invalid field: {0} (corrupt stream; abort the session)")]
    Invalid(&'static str),
    #[error("malformed delta for {gfn}: {why} (corrupt stream; abort the session)")]
    BadDelta {
        gfn: crate::page::Gfn,
        why: &'static str,
    },
    #[error("resent content for {gfn} does not hash to the fingerprint it claims (corrupt or hostile peer; abort the session)")]
    FillMismatch { gfn: crate::page::Gfn },
    #[error("zstd failed on a batch: {0}")]
    Zstd(std::io::Error),
    #[error("LZ4 section does not decode: {0} (corrupt stream; abort the session)")]
    Lz4(String),
    #[error("the source's zstd stream needs a larger window than this side allows (max_window_log {max_window_log}): set the source's codec.long_distance.window_log to at most {max_window_log} and its codec.context_window_log to at most {max_window_log}, or raise the destination's limit")]
    WindowTooLarge { max_window_log: u32 },
    #[error("page store {path}: {op} failed: {source} (check the store directory's permissions and free space)")]
    StoreIo {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("page store {path} is in use by another process (give each gateway its own migration.store_dir)")]
    StoreBusy { path: PathBuf },
    #[error("page store {path}: {why} (move the directory aside to start with an empty store)")]
    StoreFormat { path: PathBuf, why: String },
    #[error("invalid dedup scope name {0:?}: use 1-64 characters from A-Z a-z 0-9 _ - . not starting with '.'")]
    BadScope(String),
    #[error("invalid codec config: {key} {why}")]
    Config { key: &'static str, why: String },
}
