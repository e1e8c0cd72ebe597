//! The storage relay: carries a follow-on storage migration between two
//! gateways over the peering connection (stream kind
//! [`StreamKind::Storage`]).
//!
//! - Source side ([`source`]): serves disks the operator (or the migration)
//!   exported with [`StorageRelay::export`], each to one destination site:
//!   a stream from any other peer (identified by its mTLS certificate) is
//!   told the disk is not exported, and an export is withdrawn
//!   ([`StorageRelay::withdraw`]) when its migration fails before the
//!   handover. It answers each `Open` with the
//!   disk's hole blocks (after validating the file: missing, truncated or
//!   wrong size is an error before anything moves), then serves block
//!   requests with [`wanmig_storage::SourceDisk`] and zstd
//!   ([`wanmig_storage::wire::BlockEncoder`]); on `Done` releases the source
//!   copy by policy, once the end-of-copy check passed and covered enough
//!   of the disk ([`wanmig_storage::verify::check_coverage`]). The block
//!   size the destination picks is bounded
//!   ([`wanmig_storage::Geometry::for_transfer`]).
//! - Destination side ([`dest`]): refuses a disk larger than its
//!   `[storage] max_disk_mib`; [`StorageRelay::import`] opens a
//!   [`wanmig_storage::RemoteDisk`] whose [`wanmig_storage::Fetcher`] sends
//!   requests over two streams — on-demand and background — so on-demand
//!   fetches never queue behind background data (the source also gives the
//!   on-demand stream a higher send priority). A lost connection is reported
//!   as link down; the session reconnects and the copy resumes where it
//!   stopped. After `Done` the source checks the copy
//!   ([`wanmig_storage::verify`]) before it releases its own; a lost
//!   `Released` is asked for again on reconnect, with the same `Done`
//!   (saved before it was first sent, [`wanmig_storage::done`]), so guest
//!   writes since — even ones a crash kept out of the saved written set —
//!   are not mistaken for a bad copy.
//! - [`dedup`]: page references against the destination's page store (the
//!   scope named after the source site:
//!   [`wanmig_migration::scopes::ScopeGrants::own_scope`]).
//! - [`metrics`]: the `wanmig_storage_*` Prometheus metrics.

pub mod dedup;
pub mod dest;
pub mod metrics;
pub mod source;
pub mod stream;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use wanmig_storage::{ReleasePolicy, RemoteDiskConfig, SourceDisk, StorageError};

use crate::peering::{Peering, PeeringError, StreamKind};
use wanmig_migration::storage::{Frame, STORAGE};

pub use dest::{ImportReport, StorageImport};
pub use metrics::{CopyOutcome, RelayMetrics};
pub use stream::StreamError;

/// Why a storage relay operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageRelayError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Peering(#[from] PeeringError),
    #[error("storage export name '{0}' is invalid: use letters, digits, '.', '-', '_' only")]
    BadName(String),
    #[error("source site '{peer}' refused disk '{name}': {message}")]
    Refused {
        peer: String,
        name: String,
        message: String,
    },
    #[error("storage stream to '{peer}': {source} (the copy resumes when the link returns)")]
    Link {
        peer: String,
        // Boxed: QUIC's errors are large, and this error travels inside
        // the VM host's and the migration's errors.
        #[source]
        source: Box<StreamError>,
    },
    /// Not a link problem (a task of the relay failed): retrying the same
    /// way will not help.
    #[error("storage relay: {what} failed: {source} (a wanmig bug; the source keeps its copy: see the gateway log, then retry with `wanmig storage migrate`)")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("storage relay: creating the storage metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("storage relay: the import already finished (a wanmig bug)")]
    Finished,
    #[error("source site '{peer}' exports disk '{name}' of {len} bytes, larger than this site accepts ({max} bytes); raise [storage] max_disk_mib in this gateway's config to take it")]
    TooLarge {
        peer: String,
        name: String,
        len: u64,
        max: u64,
    },
}

/// A disk the source side may serve.
#[derive(Debug, Clone)]
pub(crate) struct Export {
    /// Tells this export apart from an earlier or later one of the same
    /// name: a stream serves the export it opened, and stops when that
    /// one is withdrawn or replaced.
    pub id: u64,
    /// The one site that may read and release it.
    pub to: String,
    pub path: PathBuf,
    pub disk_len: u64,
    pub policy: ReleasePolicy,
    pub released: bool,
    /// Held while a `Done` is checked and the copy released, so two
    /// sessions' `Done`s (one sent again after a reconnect while the first
    /// was still being checked) release the disk once, not twice.
    pub release_gate: Arc<tokio::sync::Mutex<()>>,
    /// When a destination first opened it.
    pub started: Option<std::time::Instant>,
    pub status: ExportStatus,
}

/// Where a disk this site exports stands (the source's view of a copy).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExportStatus {
    /// The export's name (the VM's name for a migrating VM).
    pub name: String,
    pub path: PathBuf,
    pub disk_bytes: u64,
    /// The destination site it is exported to (the only one that may read
    /// it).
    pub to: Option<String>,
    /// Whether the destination runs the background copy at once (`false`
    /// after `wanmig migrate --no-storage`).
    pub background: bool,
    /// Blocks local at the destination, as it last reported.
    pub local_blocks: u64,
    pub total_blocks: u64,
    /// Block payload bytes sent (after zero elision and zstd).
    pub wire_bytes: u64,
    /// From the first open to the release, once released.
    pub total_ms: Option<u64>,
    /// The destination's copy passed the end-of-copy check
    /// ([`wanmig_storage::verify`]) and the source copy was released.
    pub released: bool,
    pub verified: bool,
    /// Why the copy cannot finish (e.g. the check failed; the source copy
    /// is kept).
    pub error: Option<String>,
}

pub(crate) struct Inner {
    pub peering: Peering,
    pub exports: Mutex<HashMap<String, Export>>,
    /// The id of the next export.
    pub next_export: std::sync::atomic::AtomicU64,
    /// The largest disk this site imports (`[storage] max_disk_mib`).
    pub max_disk_len: std::sync::atomic::AtomicU64,
    /// Names whose destination should not start the background copy.
    pub deferred: Mutex<HashSet<String>>,
    pub zstd_level: i32,
    pub metrics: RelayMetrics,
    /// The site's page stores (an import dedups against the scope named
    /// after its source site).
    pub pages: Mutex<Option<crate::migration::stores::SiteStores>>,
}

/// A disk as a peer exports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportedDisk {
    pub len: u64,
    /// Whether to run the background copy at once.
    pub background: bool,
}

/// The gateway's storage relay (both sides). Cheap to clone.
#[derive(Clone)]
pub struct StorageRelay {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StorageRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageRelay").finish_non_exhaustive()
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

impl StorageRelay {
    /// Registers the `STORAGE` stream handler on `peering` and starts
    /// serving exported disks. Must be called inside a tokio runtime.
    pub fn start(peering: Peering, zstd_level: i32) -> Result<Self, StorageRelayError> {
        let streams = peering.subscribe_streams(StreamKind::Storage, 16)?;
        let metrics = RelayMetrics::new()?;
        let inner = Arc::new(Inner {
            peering,
            exports: Mutex::new(HashMap::new()),
            next_export: Default::default(),
            max_disk_len: std::sync::atomic::AtomicU64::new(crate::config::DEFAULT_MAX_DISK_BYTES),
            deferred: Mutex::new(HashSet::new()),
            zstd_level,
            metrics,
            pages: Mutex::new(None),
        });
        tokio::spawn(source::accept_loop(Arc::clone(&inner), streams));
        Ok(StorageRelay { inner })
    }

    /// Lets site `to` (and no other peer) fetch the disk at `path` under
    /// `name`, replacing an earlier export of `name`. The file is validated
    /// now (missing, truncated or wrong size is an error here). After `to`
    /// confirms the copy is durable and the check passes, the file is
    /// released by `policy`.
    pub fn export(
        &self,
        name: &str,
        path: &Path,
        disk_len: u64,
        policy: ReleasePolicy,
        to: &str,
    ) -> Result<(), StorageRelayError> {
        if !valid_name(name) {
            return Err(StorageRelayError::BadName(name.to_string()));
        }
        SourceDisk::open(path, disk_len, wanmig_storage::DEFAULT_BLOCK_SIZE)?;
        let background = !lock(&self.inner.deferred).contains(name);
        let id = self
            .inner
            .next_export
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        lock(&self.inner.exports).insert(
            name.to_string(),
            Export {
                id,
                to: to.to_string(),
                path: path.to_owned(),
                disk_len,
                policy,
                released: false,
                release_gate: Arc::default(),
                started: None,
                status: ExportStatus {
                    name: name.to_string(),
                    path: path.to_owned(),
                    disk_bytes: disk_len,
                    to: Some(to.to_string()),
                    background,
                    local_blocks: 0,
                    total_blocks: 0,
                    wire_bytes: 0,
                    total_ms: None,
                    released: false,
                    verified: false,
                    error: None,
                },
            },
        );
        Ok(())
    }

    /// Withdraws the export `name` to `to` (its migration failed before
    /// the handover: the VM still runs here on that disk), unless its copy
    /// was already released. Streams serving it stop at their next
    /// request. Returns whether an export was withdrawn.
    pub fn withdraw(&self, name: &str, to: &str) -> bool {
        let mut exports = lock(&self.inner.exports);
        let withdrawn = exports.get(name).is_some_and(|e| e.to == to && !e.released);
        if withdrawn {
            exports.remove(name);
            tracing::info!(disk = name, to, "storage export withdrawn");
        }
        withdrawn
    }

    /// Caps the disks this site imports (`[storage] max_disk_mib`): a
    /// larger disk is refused before anything is created.
    pub fn set_max_disk_len(&self, bytes: u64) {
        self.inner
            .max_disk_len
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    fn check_disk_len(&self, peer: &str, name: &str, len: u64) -> Result<(), StorageRelayError> {
        let max = self
            .inner
            .max_disk_len
            .load(std::sync::atomic::Ordering::Relaxed);
        if len > max {
            return Err(StorageRelayError::TooLarge {
                peer: peer.to_string(),
                name: name.to_string(),
                len,
                max,
            });
        }
        Ok(())
    }

    /// Whether the destination of `name`'s next export should start the
    /// background copy at once (`true`, the default) or read on demand only
    /// until `wanmig storage migrate` (`false`). Call before [`export`]; the
    /// setting holds for one migration (until the destination asks for the
    /// disk's size).
    ///
    /// [`export`]: StorageRelay::export
    pub fn set_background(&self, name: &str, background: bool) {
        let mut d = lock(&self.inner.deferred);
        if background {
            d.remove(name);
        } else {
            d.insert(name.to_string());
        }
        if let Some(e) = lock(&self.inner.exports).get_mut(name) {
            if !e.released {
                e.status.background = background;
            }
        }
    }

    /// The source's view of the export `name`.
    pub fn export_status(&self, name: &str) -> Option<ExportStatus> {
        lock(&self.inner.exports)
            .get(name)
            .map(|e| e.status.clone())
    }

    /// Every disk this site exports, by name.
    pub fn exports(&self) -> Vec<ExportStatus> {
        let mut v: Vec<_> = lock(&self.inner.exports)
            .values()
            .map(|e| e.status.clone())
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Dedups imports against `stores`: an import from site `peer` uses
    /// the page store of the scope named after `peer` (the one memory
    /// migrations from `peer` use by default), so one tenant's imports
    /// never learn what another's pages are. The source sends references
    /// for pages held there, and received pages are added to it. Without a
    /// persistent store (no `[migration] store_dir`) this does nothing.
    pub fn use_page_store(&self, stores: crate::migration::stores::SiteStores) {
        *lock(&self.inner.pages) = Some(stores);
    }

    /// The `wanmig_storage_*` metrics (register them with the gateway's
    /// registry).
    pub fn metrics(&self) -> &RelayMetrics {
        &self.inner.metrics
    }

    /// Whether the export `name` was released after a confirmed copy.
    pub fn is_released(&self, name: &str) -> bool {
        lock(&self.inner.exports)
            .get(name)
            .is_some_and(|e| e.released)
    }

    /// The size of the disk `peer` exports as `name`.
    pub async fn exported_len(&self, peer: &str, name: &str) -> Result<u64, StorageRelayError> {
        Ok(self.exported_disk(peer, name).await?.len)
    }

    /// The size of the disk `peer` exports as `name`, and whether to run
    /// the background copy at once.
    pub async fn exported_disk(
        &self,
        peer: &str,
        name: &str,
    ) -> Result<ExportedDisk, StorageRelayError> {
        if !valid_name(name) {
            return Err(StorageRelayError::BadName(name.to_string()));
        }
        let link = |source: StreamError| StorageRelayError::Link {
            peer: peer.to_string(),
            source: Box::new(source),
        };
        let (mut send, mut recv) = self
            .inner
            .peering
            .open_stream(peer, StreamKind::Storage)
            .await?;
        let query = Frame::QuerySize {
            version: STORAGE.current,
            name: name.to_string(),
        };
        stream::write_frame(&mut send, &query).await.map_err(link)?;
        match stream::read_frame(&mut recv).await {
            Ok(Frame::Size { len, background }) => {
                self.check_disk_len(peer, name, len)?;
                Ok(ExportedDisk { len, background })
            }
            Ok(Frame::Error(message)) => Err(StorageRelayError::Refused {
                peer: peer.to_string(),
                name: name.to_string(),
                message,
            }),
            Ok(other) => Err(link(StreamError::Unexpected(format!(
                "{other:?} in answer to a size query"
            )))),
            Err(e) => Err(link(e)),
        }
    }

    /// Starts (or resumes, from `<local_path>.presence`) fetching the disk
    /// `name` from `peer` into `local_path`. Returns once the source has
    /// validated the disk and the background copy runs; the returned
    /// [`StorageImport`] gives the [`wanmig_storage::RemoteDisk`] to put
    /// behind the VM's virtio-block device.
    pub async fn import(
        &self,
        peer: &str,
        name: &str,
        local_path: &Path,
        disk_len: u64,
        config: RemoteDiskConfig,
    ) -> Result<StorageImport, StorageRelayError> {
        if !valid_name(name) {
            return Err(StorageRelayError::BadName(name.to_string()));
        }
        self.import_with(peer, name, local_path, disk_len, config, true)
            .await
    }

    /// [`StorageRelay::import`], with the background copy on or off from
    /// the start (off: only blocks the guest reads are fetched, until
    /// [`wanmig_storage::RemoteDisk::set_background`] turns it on).
    pub async fn import_with(
        &self,
        peer: &str,
        name: &str,
        local_path: &Path,
        disk_len: u64,
        config: RemoteDiskConfig,
        background: bool,
    ) -> Result<StorageImport, StorageRelayError> {
        if !valid_name(name) {
            return Err(StorageRelayError::BadName(name.to_string()));
        }
        self.check_disk_len(peer, name, disk_len)?;
        let scope = wanmig_migration::scopes::ScopeGrants::own_scope(peer);
        let store = match lock(&self.inner.pages).as_ref() {
            Some(stores) => match stores.open_for(peer, scope) {
                Ok(s @ crate::migration::stores::ScopeStore::Persistent(_)) => Some(s),
                Ok(crate::migration::stores::ScopeStore::None) => None,
                Err(e) => {
                    tracing::warn!("page store of scope {scope}: {e}; importing without dedup");
                    None
                }
            },
            None => None,
        };
        dest::start_import(
            self.inner.peering.clone(),
            self.inner.metrics.clone(),
            store,
            dest::ImportTarget {
                peer,
                name,
                local_path,
                disk_len,
                config,
                background,
            },
        )
        .await
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
