//! This site's content-addressed page stores, one per dedup scope, shared by
//! the migrations into the site: the destination tells the source what it
//! holds (the inventory) and resolves references from it. Without a store
//! directory configured, dedup works within each session only. A peer
//! opens only the scopes it may use ([`SiteStores::open_for`], the rule in
//! [`wanmig_migration::scopes`]), so no peer learns another tenant's
//! inventory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use wanmig_codec::store::{validate_scope, StoreStats};
use wanmig_codec::{CodecError, ContentStore, Fingerprint, Inventory, PageBytes, PageStore};
use wanmig_migration::scopes::{ScopeGrants, ScopeRefused};

/// Why a peer's page store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreOpenError {
    #[error(transparent)]
    Refused(#[from] ScopeRefused),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The page store of one scope, or none (session-only dedup).
#[derive(Clone)]
pub enum ScopeStore {
    None,
    Persistent(Arc<Mutex<PageStore>>),
}

impl ScopeStore {
    /// What this site holds, serialized for the source.
    pub fn inventory_bytes(&self) -> Vec<u8> {
        match self {
            ScopeStore::None => Inventory::new().to_bytes(),
            ScopeStore::Persistent(s) => lock(s).inventory().to_bytes(),
        }
    }

    /// Flushes the store's index (best effort: a lost index only costs
    /// dedup hits later).
    pub fn sync(&self) {
        if let ScopeStore::Persistent(s) = self {
            if let Err(e) = lock(s).sync() {
                tracing::warn!("saving the page store index: {e}");
            }
        }
    }

    pub fn stats(&self) -> Option<StoreStats> {
        match self {
            ScopeStore::None => None,
            ScopeStore::Persistent(s) => Some(lock(s).stats()),
        }
    }
}

impl ContentStore for ScopeStore {
    fn get(&mut self, fp: &Fingerprint, out: &mut PageBytes) -> Result<bool, CodecError> {
        match self {
            ScopeStore::None => Ok(false),
            ScopeStore::Persistent(s) => lock(s).get(fp, out),
        }
    }
    fn put(&mut self, fp: &Fingerprint, page: &PageBytes) -> Result<(), CodecError> {
        match self {
            ScopeStore::None => Ok(()),
            ScopeStore::Persistent(s) => lock(s).put(fp, page),
        }
    }
}

/// The stores of every scope, opened on first use.
#[derive(Clone)]
pub struct SiteStores {
    root: Option<PathBuf>,
    cap_bytes: u64,
    grants: ScopeGrants,
    open: Arc<Mutex<HashMap<String, ScopeStore>>>,
}

/// Why a store root cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("not a directory the gateway can write: {0}")]
    Unusable(#[from] std::io::Error),
    #[error("in use by another running gateway")]
    InUse,
}

/// Makes sure `root` can hold page stores, and takes it for this process:
/// creates it if missing, writes and removes a probe file in it, and locks
/// it (an exclusive `flock` on `root/.lock`, held while the returned file
/// is open). An unusable directory, or one another gateway holds, fails the
/// gateway's start-up rather than the first migration that needs it.
pub fn prepare_root(root: &Path) -> Result<std::fs::File, RootError> {
    std::fs::create_dir_all(root)?;
    if !std::fs::metadata(root)?.is_dir() {
        return Err(
            std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory").into(),
        );
    }
    let probe = root.join(format!(".wanmig-probe-{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"probe"));
    let removed = std::fs::remove_file(&probe);
    written?;
    removed?;
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(root.join(".lock"))?;
    match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(lock),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(RootError::InUse),
        Err(e) => Err(std::io::Error::from(e).into()),
    }
}

impl SiteStores {
    /// Stores under `root` (none: session-only dedup), each capped at
    /// `cap_bytes`.
    pub fn new(root: Option<PathBuf>, cap_bytes: u64) -> Self {
        SiteStores {
            root,
            cap_bytes,
            grants: ScopeGrants::default(),
            open: Arc::default(),
        }
    }

    /// The same stores, with the shared scopes each peer may use besides
    /// its own.
    pub fn with_grants(mut self, grants: ScopeGrants) -> Self {
        self.grants = grants;
        self
    }

    /// The store of `scope` for peer `peer`: refused unless `peer` may use
    /// `scope` (before anything is created).
    pub fn open_for(&self, peer: &str, scope: &str) -> Result<ScopeStore, StoreOpenError> {
        self.grants.check(peer, scope)?;
        Ok(self.open(scope)?)
    }

    /// The store of `scope`, for this site's own use (see
    /// [`SiteStores::open_for`] for a peer's).
    pub fn open(&self, scope: &str) -> Result<ScopeStore, CodecError> {
        validate_scope(scope)?;
        let Some(root) = &self.root else {
            return Ok(ScopeStore::None);
        };
        let mut open = lock(&self.open);
        if let Some(s) = open.get(scope) {
            return Ok(s.clone());
        }
        let s = ScopeStore::Persistent(Arc::new(Mutex::new(PageStore::open_scope(
            root,
            scope,
            self.cap_bytes,
        )?)));
        open.insert(scope.to_string(), s.clone());
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_root_is_created_and_must_be_a_writable_directory() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("a/b");
        let held = prepare_root(&root).unwrap();
        assert!(root.is_dir());
        let left: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [".lock"], "probe left behind");
        assert!(matches!(prepare_root(&root), Err(RootError::InUse)));
        drop(held);
        prepare_root(&root).expect("free once the holder closed it");
        let file = d.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(prepare_root(&file).is_err());
        assert!(prepare_root(&file.join("below")).is_err());
    }

    #[test]
    fn scopes_share_one_store_and_persist_content() {
        let d = tempfile::tempdir().unwrap();
        let stores = SiteStores::new(Some(d.path().to_path_buf()), 1 << 20);
        let mut a = stores.open("tenant-1").unwrap();
        let page = [7u8; 4096];
        let fp = Fingerprint::of(&page);
        a.put(&fp, &page).unwrap();
        let mut b = stores.open("tenant-1").unwrap();
        let mut out = [0u8; 4096];
        assert!(b.get(&fp, &mut out).unwrap());
        assert_eq!(out, page);
        let inv = Inventory::from_bytes(&b.inventory_bytes()).unwrap();
        assert!(inv.contains(&fp));
        let mut other = stores.open("tenant-2").unwrap();
        assert!(!other.get(&fp, &mut out).unwrap(), "scopes are separate");
        assert!(stores.open("../etc").is_err());

        let mut grants = ScopeGrants::new();
        grants.grant("site-b", ["tenant-1".to_string()]);
        let stores = stores.with_grants(grants);
        assert!(stores.open_for("site-b", "tenant-1").is_ok());
        assert!(stores.open_for("site-c", "site-c").is_ok());
        let e = stores.open_for("site-c", "tenant-1").err().unwrap();
        assert!(matches!(e, StoreOpenError::Refused(_)), "{e}");

        let none = SiteStores::new(None, 1 << 20).open("x").unwrap();
        assert!(Inventory::from_bytes(&none.inventory_bytes())
            .unwrap()
            .is_empty());
    }
}
