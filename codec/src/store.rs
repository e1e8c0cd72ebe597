//! The destination site's bounded, persistent, content-addressed page store
//! (one per dedup scope), and the [`ContentStore`] trait the decoder reads
//! and fills it through.
//!
//! On disk, a directory per scope with two files of fixed-size slots:
//! `data` (slot i at byte i × 4096) and `index` (a 32-byte header, then slot
//! i's 256-bit fingerprint at 32 + i × 32; all-zero = empty). The slot count
//! is the byte cap ÷ 4096, so the store can never outgrow its cap; a full
//! store evicts with CLOCK. Writes go data first, index second; every read
//! re-hashes the page and compares it with the fingerprint, so a torn write,
//! a crash between the two writes or bit rot is detected, counted, dropped
//! from the index and reported as a miss — which the decoder turns into a
//! NACK and a resend. Nothing read from the files is trusted. One process
//! at a time holds a store (an exclusive `flock` on its index).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::CodecError;
use crate::fingerprint::{Fingerprint, FINGERPRINT_LEN};
use crate::inventory::Inventory;
use crate::page::{PageBytes, PAGE_SIZE};

/// A place the decoder resolves references from and records content into.
pub trait ContentStore {
    /// Copies the content with fingerprint `fp` into `out` and returns true,
    /// only if it is held and hashes to `fp`.
    fn get(&mut self, fp: &Fingerprint, out: &mut PageBytes) -> Result<bool, CodecError>;
    /// Records `page`, whose fingerprint the caller has computed as `fp`.
    fn put(&mut self, fp: &Fingerprint, page: &PageBytes) -> Result<(), CodecError>;
}

/// A store that holds nothing (a destination without dedup).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoStore;

impl ContentStore for NoStore {
    fn get(&mut self, _: &Fingerprint, _: &mut PageBytes) -> Result<bool, CodecError> {
        Ok(false)
    }
    fn put(&mut self, _: &Fingerprint, _: &PageBytes) -> Result<(), CodecError> {
        Ok(())
    }
}

impl<T: ContentStore + ?Sized> ContentStore for &mut T {
    fn get(&mut self, fp: &Fingerprint, out: &mut PageBytes) -> Result<bool, CodecError> {
        (**self).get(fp, out)
    }
    fn put(&mut self, fp: &Fingerprint, page: &PageBytes) -> Result<(), CodecError> {
        (**self).put(fp, page)
    }
}

/// Shared by several concurrent sessions into the same scope.
impl<T: ContentStore> ContentStore for Arc<Mutex<T>> {
    fn get(&mut self, fp: &Fingerprint, out: &mut PageBytes) -> Result<bool, CodecError> {
        let mut g = self.lock().unwrap_or_else(|p| p.into_inner());
        g.get(fp, out)
    }
    fn put(&mut self, fp: &Fingerprint, page: &PageBytes) -> Result<(), CodecError> {
        let mut g = self.lock().unwrap_or_else(|p| p.into_inner());
        g.put(fp, page)
    }
}

const INDEX_MAGIC: [u8; 4] = *b"WMPS";
const INDEX_VERSION: u8 = 1;
const INDEX_HEADER: u64 = 32;
const EMPTY: [u8; FINGERPRINT_LEN] = [0; FINGERPRINT_LEN];
/// Most slots (2^28 pages = 1 TiB).
pub const MAX_SLOTS: u64 = 1 << 28;

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Pages held.
    pub entries: u64,
    /// Slots (the cap in pages).
    pub slots: u64,
    pub hits: u64,
    pub misses: u64,
    /// Reads whose content did not match its fingerprint.
    pub corrupt: u64,
    pub evictions: u64,
    pub inserts: u64,
}

impl StoreStats {
    /// Bytes of page content held.
    pub fn bytes(&self) -> u64 {
        self.entries * PAGE_SIZE as u64
    }
    /// Fraction of lookups that found verified content.
    pub fn hit_rate(&self) -> f64 {
        let n = self.hits + self.misses;
        if n == 0 {
            0.0
        } else {
            self.hits as f64 / n as f64
        }
    }
}

/// The file-backed page store of one dedup scope.
pub struct PageStore {
    dir: PathBuf,
    data: File,
    index: File,
    /// Fingerprint held in each slot (None = free).
    slots: Vec<Option<Fingerprint>>,
    referenced: Vec<bool>,
    map: HashMap<Fingerprint, u32>,
    free: Vec<u32>,
    hand: usize,
    stats: StoreStats,
}

/// Checks a dedup scope name: it becomes a directory name.
pub fn validate_scope(scope: &str) -> Result<(), CodecError> {
    let ok = !scope.is_empty()
        && scope.len() <= 64
        && !scope.starts_with('.')
        && scope
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(CodecError::BadScope(scope.to_string()))
    }
}

impl PageStore {
    /// Opens (creating if needed) the store of `scope` under `root`, capped
    /// at `cap_bytes` (rounded down to whole pages, at least one page).
    pub fn open_scope(root: &Path, scope: &str, cap_bytes: u64) -> Result<Self, CodecError> {
        validate_scope(scope)?;
        Self::open(&root.join(scope), cap_bytes)
    }

    /// Opens (creating if needed) the store in directory `dir`. A store
    /// created with a different cap is resized: shrinking drops the pages in
    /// slots beyond the new cap.
    pub fn open(dir: &Path, cap_bytes: u64) -> Result<Self, CodecError> {
        let io = |op: &'static str| {
            let path = dir.to_path_buf();
            move |source| CodecError::StoreIo { path, op, source }
        };
        let n_slots = (cap_bytes / PAGE_SIZE as u64).clamp(1, MAX_SLOTS);
        std::fs::create_dir_all(dir).map_err(io("create directory"))?;
        let open = |name: &str| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(dir.join(name))
        };
        let data = open("data").map_err(io("open data file"))?;
        let index = open("index").map_err(io("open index file"))?;
        // Two writers would overwrite each other's slots and indexes: the
        // lock (held as long as `index` is open, released by the kernel if
        // the process dies) makes a second opener fail instead.
        match rustix::fs::flock(&index, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(CodecError::StoreBusy {
                    path: dir.to_path_buf(),
                })
            }
            Err(e) => return Err(io("lock index file")(e.into())),
        }
        let index_len = index.metadata().map_err(io("stat index file"))?.len();

        let mut old_slots = 0u64;
        if index_len > 0 && index_len < INDEX_HEADER {
            return Err(CodecError::StoreFormat {
                path: dir.to_path_buf(),
                why: format!("index file is {index_len} bytes, shorter than its header"),
            });
        }
        if index_len > 0 {
            let mut hdr = [0u8; INDEX_HEADER as usize];
            index
                .read_exact_at(&mut hdr, 0)
                .map_err(io("read index header"))?;
            let fmt = |why: String| CodecError::StoreFormat {
                path: dir.to_path_buf(),
                why,
            };
            if hdr[..4] != INDEX_MAGIC {
                return Err(fmt("index file has no WMPS magic".into()));
            }
            if hdr[4] != INDEX_VERSION {
                return Err(fmt(format!("index format version {} unsupported", hdr[4])));
            }
            old_slots = u64::from_le_bytes(hdr[8..16].try_into().expect("8 bytes"));
            if old_slots > MAX_SLOTS {
                return Err(fmt(format!("index claims {old_slots} slots")));
            }
            // A short index (crash while growing) just means fewer entries.
            old_slots =
                old_slots.min(index_len.saturating_sub(INDEX_HEADER) / FINGERPRINT_LEN as u64);
        }
        let keep = old_slots.min(n_slots);
        let mut raw = vec![0u8; keep as usize * FINGERPRINT_LEN];
        index
            .read_exact_at(&mut raw, INDEX_HEADER)
            .map_err(io("read index"))?;

        // Resize both files to exactly n_slots.
        let mut hdr = [0u8; INDEX_HEADER as usize];
        hdr[..4].copy_from_slice(&INDEX_MAGIC);
        hdr[4] = INDEX_VERSION;
        hdr[8..16].copy_from_slice(&n_slots.to_le_bytes());
        index
            .set_len(INDEX_HEADER + n_slots * FINGERPRINT_LEN as u64)
            .map_err(io("resize index"))?;
        index
            .write_all_at(&hdr, 0)
            .map_err(io("write index header"))?;
        data.set_len(n_slots * PAGE_SIZE as u64)
            .map_err(io("resize data file"))?;

        let mut store = PageStore {
            dir: dir.to_path_buf(),
            data,
            index,
            slots: vec![None; n_slots as usize],
            referenced: vec![false; n_slots as usize],
            map: HashMap::new(),
            free: Vec::new(),
            hand: 0,
            stats: StoreStats {
                slots: n_slots,
                ..StoreStats::default()
            },
        };
        for (i, e) in raw.chunks_exact(FINGERPRINT_LEN).enumerate() {
            if e == EMPTY {
                continue;
            }
            let fp = Fingerprint(e.try_into().expect("32 bytes"));
            if store.map.contains_key(&fp) {
                // A duplicate entry (crash during a move): keep the first.
                store.clear_slot(i as u32)?;
                continue;
            }
            store.map.insert(fp, i as u32);
            store.slots[i] = Some(fp);
        }
        store.free = (0..n_slots as u32)
            .rev()
            .filter(|&i| store.slots[i as usize].is_none())
            .collect();
        store.stats.entries = store.map.len() as u64;
        tracing::debug!(dir = %dir.display(), entries = store.map.len(), slots = n_slots, "opened page store");
        Ok(store)
    }

    fn io_err(&self, op: &'static str) -> impl FnOnce(std::io::Error) -> CodecError {
        let path = self.dir.clone();
        move |source| CodecError::StoreIo { path, op, source }
    }

    fn write_index(&self, slot: u32, fp: &[u8; FINGERPRINT_LEN]) -> Result<(), CodecError> {
        self.index
            .write_all_at(fp, INDEX_HEADER + slot as u64 * FINGERPRINT_LEN as u64)
            .map_err(self.io_err("write index entry"))
    }

    fn clear_slot(&mut self, slot: u32) -> Result<(), CodecError> {
        self.write_index(slot, &EMPTY)
    }

    /// The directory holding this store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn stats(&self) -> StoreStats {
        self.stats
    }

    /// Whether the index lists `fp` (content not yet verified).
    pub fn contains(&self, fp: &Fingerprint) -> bool {
        self.map.contains_key(fp)
    }

    /// What this store holds, to send to a source at session start.
    pub fn inventory(&self) -> Inventory {
        Inventory::from_fingerprints(self.map.keys())
    }

    /// Fingerprints of every page held (unverified until read).
    pub fn inventory_fps(&self) -> Vec<Fingerprint> {
        self.map.keys().copied().collect()
    }

    /// Flushes both files to stable storage.
    pub fn sync(&self) -> Result<(), CodecError> {
        self.data
            .sync_data()
            .map_err(self.io_err("sync data file"))?;
        self.index
            .sync_data()
            .map_err(self.io_err("sync index file"))
    }

    /// CLOCK victim among occupied slots (the store is full when called).
    fn victim(&mut self) -> u32 {
        let n = self.slots.len();
        loop {
            let i = self.hand;
            self.hand = (self.hand + 1) % n;
            if self.referenced[i] {
                self.referenced[i] = false;
                continue;
            }
            if let Some(fp) = self.slots[i].take() {
                self.map.remove(&fp);
                self.stats.evictions += 1;
                self.stats.entries -= 1;
            }
            return i as u32;
        }
    }

    fn drop_entry(&mut self, fp: &Fingerprint, slot: u32) -> Result<(), CodecError> {
        self.map.remove(fp);
        self.slots[slot as usize] = None;
        self.free.push(slot);
        self.stats.entries -= 1;
        self.clear_slot(slot)
    }
}

impl ContentStore for PageStore {
    fn get(&mut self, fp: &Fingerprint, out: &mut PageBytes) -> Result<bool, CodecError> {
        let Some(&slot) = self.map.get(fp) else {
            self.stats.misses += 1;
            return Ok(false);
        };
        self.data
            .read_exact_at(out, slot as u64 * PAGE_SIZE as u64)
            .map_err(self.io_err("read data file"))?;
        if Fingerprint::of(out) != *fp {
            self.stats.corrupt += 1;
            self.stats.misses += 1;
            tracing::warn!(dir = %self.dir.display(), %fp, slot, "page store content does not match its fingerprint; dropping the entry");
            self.drop_entry(fp, slot)?;
            return Ok(false);
        }
        self.referenced[slot as usize] = true;
        self.stats.hits += 1;
        Ok(true)
    }

    fn put(&mut self, fp: &Fingerprint, page: &PageBytes) -> Result<(), CodecError> {
        if let Some(&slot) = self.map.get(fp) {
            self.referenced[slot as usize] = true;
            return Ok(());
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => self.victim(),
        };
        let written = self
            .data
            .write_all_at(page, slot as u64 * PAGE_SIZE as u64)
            .map_err(self.io_err("write data file"))
            .and_then(|()| self.write_index(slot, fp.as_bytes()));
        if let Err(e) = written {
            // The slot may hold a torn page; reads verify, so just reuse it.
            self.free.push(slot);
            return Err(e);
        }
        self.slots[slot as usize] = Some(*fp);
        // New pages start unreferenced: only a hit earns a second chance, so
        // a stream of one-off pages cannot push out the pages in use.
        self.referenced[slot as usize] = false;
        self.map.insert(*fp, slot);
        self.stats.entries += 1;
        self.stats.inserts += 1;
        Ok(())
    }
}
