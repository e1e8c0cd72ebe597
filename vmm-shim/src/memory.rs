//! Guest memory: one anonymous mapping from guest-physical 0 with vm-memory's
//! `AtomicBitmap`, which records every write the VMM and its devices make
//! through vm-memory (KVM's dirty log only sees the vCPU's writes). Page
//! access for migration and the memory digest (BLAKE3 over a table of BLAKE3
//! hashes of 64 KiB blocks, kept current incrementally at both ends of a
//! migration) live here too.

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use wanmig_guest_abi::{MAX_MEM_SIZE, MIN_MEM_SIZE, PAGE_SIZE};

/// The guest memory type used throughout the shim.
pub type GuestMem = GuestMemoryMmap<AtomicBitmap>;

/// One guest page.
pub type Page = [u8; PAGE_SIZE as usize];

/// Errors creating or accessing guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory size {0} bytes is invalid: it must be a multiple of 4 KiB between {MIN_MEM_SIZE} and {MAX_MEM_SIZE} bytes")]
    BadSize(u64),
    #[error("cannot map {size} bytes of guest memory: {source}")]
    Map {
        size: u64,
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("guest page {gfn} is outside guest memory ({pages} pages)")]
    OutOfRange { gfn: u64, pages: u64 },
    #[error("guest memory access at {addr:#x} failed: {source}")]
    Access {
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
}

/// Maps `size` bytes of zeroed guest memory at guest-physical 0.
pub fn create(size: u64) -> Result<GuestMem, MemoryError> {
    if size % PAGE_SIZE != 0 || !(MIN_MEM_SIZE..=MAX_MEM_SIZE).contains(&size) {
        return Err(MemoryError::BadSize(size));
    }
    GuestMem::from_ranges(&[(GuestAddress(0), size as usize)])
        .map_err(|source| MemoryError::Map { size, source })
}

/// Guest memory size in bytes.
pub fn size(mem: &GuestMem) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

/// Number of 4 KiB pages of guest memory.
pub fn page_count(mem: &GuestMem) -> u64 {
    size(mem) / PAGE_SIZE
}

/// Copies page `gfn` into `out`.
pub fn read_page(mem: &GuestMem, gfn: u64, out: &mut Page) -> Result<(), MemoryError> {
    let pages = page_count(mem);
    if gfn >= pages {
        return Err(MemoryError::OutOfRange { gfn, pages });
    }
    let addr = gfn * PAGE_SIZE;
    mem.read_slice(out, GuestAddress(addr))
        .map_err(|source| MemoryError::Access { addr, source })
}

/// Overwrites page `gfn` with `data`.
pub fn write_page(mem: &GuestMem, gfn: u64, data: &[u8]) -> Result<(), MemoryError> {
    let pages = page_count(mem);
    if gfn >= pages || data.len() != PAGE_SIZE as usize {
        return Err(MemoryError::OutOfRange { gfn, pages });
    }
    let addr = gfn * PAGE_SIZE;
    mem.write_slice(data, GuestAddress(addr))
        .map_err(|source| MemoryError::Access { addr, source })
}

/// Takes and clears the bitmap of pages the VMM and devices wrote
/// (bit `i` of word `i / 64` = page `i`).
pub fn take_vmm_dirty(mem: &GuestMem) -> Vec<u64> {
    let mut out = Vec::new();
    for region in mem.iter() {
        // A single region starting at 0 (see `create`), so words line up.
        out.extend(region.get_mmap().bitmap().get_and_reset());
    }
    out
}

/// Clears the VMM-side dirty bitmap.
pub fn clear_vmm_dirty(mem: &GuestMem) {
    for region in mem.iter() {
        region.get_mmap().bitmap().reset();
    }
}

/// Guest pages per entry of the digest table: 64 KiB blocks hash as fast
/// as one long input (BLAKE3 hashes a block's 1 KiB chunks in parallel
/// SIMD lanes; a lone 4 KiB page fills too few lanes and hashes ~1.7x
/// slower), and the table stays small (32 bytes per 64 KiB).
pub const DIGEST_BLOCK_PAGES: u64 = 16;
const BLOCK_BYTES: u64 = DIGEST_BLOCK_PAGES * PAGE_SIZE;
/// Stale blocks a [`BlockDigests`] lets pile up before it rehashes them
/// (16 MiB: a few milliseconds, which is what is left for the pause).
const STALE_LIMIT: usize = 256;

/// The memory digest: BLAKE3 over a table of BLAKE3 hashes of 64 KiB
/// blocks of guest memory, in guest-physical order. Both ends of a
/// migration keep the table current as pages go out or come in
/// ([`BlockDigests`]), so at the pause they have only the last blocks
/// written left to hash; this function hashes all of memory at once (for a
/// VM's memory outside a migration, and to check the running tables).
/// All hash the memory itself, so they agree exactly when the memories do.
pub fn digest(mem: &GuestMem) -> [u8; 32] {
    let blocks = block_count(mem);
    let mut table = vec![[0u8; 32]; blocks];
    // Up to two threads: the shim's hosts have few cores, and the rest of
    // a paused migration (sending the last pages) is light.
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 2);
    let per = blocks.div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let mut parts = table.chunks_mut(per).enumerate();
        let first = parts.next();
        for (i, part) in parts {
            scope.spawn(move || hash_blocks(mem, i * per, part));
        }
        if let Some((_, part)) = first {
            hash_blocks(mem, 0, part);
        }
    });
    digest_table(&table)
}

fn block_count(mem: &GuestMem) -> usize {
    size(mem).div_ceil(BLOCK_BYTES) as usize
}

fn digest_table(table: &[[u8; 32]]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    for h in table {
        hasher.update(h);
    }
    *hasher.finalize().as_bytes()
}

/// Hashes block `first + i` of `mem` into `out[i]`.
fn hash_blocks(mem: &GuestMem, first: usize, out: &mut [[u8; 32]]) {
    let total = size(mem);
    let mut buf = vec![0u8; BLOCK_BYTES as usize];
    for (i, h) in out.iter_mut().enumerate() {
        *h = hash_block(mem, total, (first + i) as u64, &mut buf);
    }
}

fn hash_block(mem: &GuestMem, total: u64, block: u64, buf: &mut [u8]) -> [u8; 32] {
    let addr = block * BLOCK_BYTES;
    let len = total.saturating_sub(addr).min(BLOCK_BYTES) as usize;
    let bytes = &mut buf[..len];
    // The block is mapped and in range, so this cannot fail; if it ever
    // did, hash a marker so the digests cannot match by accident.
    if mem.read_slice(bytes, GuestAddress(addr)).is_err() {
        return *blake3::hash(b"unreadable").as_bytes();
    }
    *blake3::hash(bytes).as_bytes()
}

/// A running memory digest: the block table of [`digest`], with the
/// blocks that may have changed since their last hash marked stale and
/// rehashed later, so the digest costs in proportion to what changed
/// rather than to the size of memory. Both ends of a migration keep one:
///
/// - a destination starts from [`BlockDigests::zeroed`] (its memory is
///   freshly created) and [`BlockDigests::mark`]s each page it writes;
///   stale blocks are rehashed in bulk once enough pile up;
/// - a source starts from [`BlockDigests::unhashed`], hashes each block as
///   it sends pages from it ([`BlockDigests::hash_now`]) and
///   [`BlockDigests::invalidate`]s the blocks of every page its dirty log
///   reports, so at the pause only the final dirty set's blocks are left.
///
/// [`BlockDigests::digest`] rehashes what is stale and equals [`digest`]
/// of the same memory as long as every write since a block was hashed was
/// marked or invalidated.
pub struct BlockDigests {
    table: Vec<[u8; 32]>,
    stale: Vec<bool>,
    stale_list: Vec<usize>,
    buf: Vec<u8>,
    /// Time spent hashing blocks, and how many (for the pause estimate).
    hashing: std::time::Duration,
    hashed: u64,
}

impl BlockDigests {
    /// The table of freshly created (all-zero) guest memory.
    pub fn zeroed(mem: &GuestMem) -> BlockDigests {
        let blocks = block_count(mem);
        let total = size(mem);
        let zero = vec![0u8; BLOCK_BYTES as usize];
        let full = *blake3::hash(&zero).as_bytes();
        let mut table = vec![full; blocks];
        let tail = (total % BLOCK_BYTES) as usize;
        if let (true, Some(last)) = (tail != 0, table.last_mut()) {
            *last = *blake3::hash(&zero[..tail]).as_bytes();
        }
        BlockDigests {
            table,
            stale: vec![false; blocks],
            stale_list: Vec::new(),
            buf: zero,
            hashing: std::time::Duration::ZERO,
            hashed: 0,
        }
    }

    /// A table with every block stale: nothing is known of `mem` yet.
    pub fn unhashed(mem: &GuestMem) -> BlockDigests {
        let blocks = block_count(mem);
        BlockDigests {
            table: vec![[0u8; 32]; blocks],
            stale: vec![true; blocks],
            stale_list: (0..blocks).collect(),
            buf: vec![0u8; BLOCK_BYTES as usize],
            hashing: std::time::Duration::ZERO,
            hashed: 0,
        }
    }

    /// Notes that page `gfn` was written; rehashes the stale blocks from
    /// `mem` once enough have piled up.
    pub fn mark(&mut self, mem: &GuestMem, gfn: u64) {
        self.invalidate(gfn);
        if self.stale_list.len() >= STALE_LIMIT {
            self.refresh(mem);
        }
    }

    /// Notes that page `gfn` may have changed since its block was hashed,
    /// without hashing anything now (a source's memory keeps changing
    /// until the pause; the block is hashed when it is sent next).
    pub fn invalidate(&mut self, gfn: u64) {
        let block = (gfn / DIGEST_BLOCK_PAGES) as usize;
        if let Some(s) = self.stale.get_mut(block) {
            if !*s {
                *s = true;
                self.stale_list.push(block);
            }
        }
        // Blocks hashed by `hash_now` stay listed; drop them once the list
        // outgrows the table, so it stays bounded over many rounds.
        if self.stale_list.len() > 2 * self.stale.len() {
            let stale = &self.stale;
            self.stale_list.retain(|&b| stale[b]);
        }
    }

    /// Hashes the block holding page `gfn` from `mem` now if it is stale.
    /// The stale list is left alone: [`BlockDigests::digest`] skips
    /// entries whose block is no longer stale.
    pub fn hash_now(&mut self, mem: &GuestMem, gfn: u64) {
        let block = (gfn / DIGEST_BLOCK_PAGES) as usize;
        if self.stale.get(block).copied().unwrap_or(false) {
            let t = std::time::Instant::now();
            self.table[block] = hash_block(mem, size(mem), block as u64, &mut self.buf);
            self.stale[block] = false;
            self.hashing += t.elapsed();
            self.hashed += 1;
        }
    }

    /// Blocks whose hash is stale.
    pub fn stale_blocks(&self) -> usize {
        self.stale.iter().filter(|&&s| s).count()
    }

    /// Average time to hash one block so far (`None` before any).
    pub fn block_cost(&self) -> Option<std::time::Duration> {
        u32::try_from(self.hashed)
            .ok()
            .filter(|&n| n > 0)
            .map(|n| self.hashing / n)
    }

    fn refresh(&mut self, mem: &GuestMem) {
        let total = size(mem);
        for block in self.stale_list.drain(..) {
            if self.stale[block] {
                self.table[block] = hash_block(mem, total, block as u64, &mut self.buf);
                self.stale[block] = false;
            }
        }
    }

    /// The digest of `mem` (the memory this table follows), equal to
    /// [`digest`] if every write since its block was hashed was marked or
    /// invalidated.
    pub fn digest(&mut self, mem: &GuestMem) -> [u8; 32] {
        self.refresh(mem);
        digest_table(&self.table)
    }
}

/// Fills guest memory from the start with `image` (for `--mem-image`).
pub fn preload(mem: &GuestMem, image: &[u8]) -> Result<(), MemoryError> {
    let len = image.len().min(size(mem) as usize);
    mem.write_slice(&image[..len], GuestAddress(0))
        .map_err(|source| MemoryError::Access { addr: 0, source })
}

/// Hex form of a digest, for logs and reports.
pub fn hex(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_sizes() {
        assert!(matches!(create(1 << 20), Err(MemoryError::BadSize(_))));
        assert!(matches!(
            create((16 << 20) + 1),
            Err(MemoryError::BadSize(_))
        ));
    }

    #[test]
    fn pages_roundtrip_and_mark_vmm_dirty() {
        let mem = create(16 << 20).unwrap();
        assert_eq!(page_count(&mem), 4096);
        let d0 = digest(&mem);
        clear_vmm_dirty(&mem);
        let page = [0xabu8; 4096];
        write_page(&mem, 77, &page).unwrap();
        let mut back = [0u8; 4096];
        read_page(&mem, 77, &mut back).unwrap();
        assert_eq!(back, page);
        assert_ne!(digest(&mem), d0);
        let dirty = take_vmm_dirty(&mem);
        assert_eq!(dirty[1], 1 << (77 - 64));
        assert_eq!(dirty.iter().map(|w| w.count_ones()).sum::<u32>(), 1);
        assert!(take_vmm_dirty(&mem).iter().all(|&w| w == 0));
        assert!(matches!(
            write_page(&mem, 4096, &page),
            Err(MemoryError::OutOfRange { .. })
        ));
    }

    #[test]
    fn the_running_digest_agrees_with_hashing_memory() {
        // 16 MiB plus 3 pages: the last block is short.
        let mem = create((16 << 20) + 3 * 4096).unwrap();
        let pages = page_count(&mem);
        let mut running = BlockDigests::zeroed(&mem);
        assert_eq!(running.digest(&mem), digest(&mem), "fresh memory is zero");
        let before = digest(&mem);
        // Enough writes to trigger bulk rehashes on the way, including the
        // short last block and a page written back to zeros.
        let mut page = [0u8; 4096];
        for gfn in (0..pages).step_by(7).chain([pages - 1, 1]) {
            page[(gfn % 4096) as usize] ^= 0x5a;
            write_page(&mem, gfn, &page).unwrap();
            running.mark(&mem, gfn);
        }
        write_page(&mem, 1, &[0u8; 4096]).unwrap();
        running.mark(&mem, 1);
        let now = digest(&mem);
        assert_ne!(now, before);
        assert_eq!(running.digest(&mem), now);

        // A write the running digest was not told of goes unnoticed by it
        // (the source's digest of its memory is what catches it), and a
        // single flipped bit changes the source's digest.
        let mut p = [0u8; 4096];
        read_page(&mem, pages - 1, &mut p).unwrap();
        p[100] ^= 0x80;
        write_page(&mem, pages - 1, &p).unwrap();
        assert_ne!(digest(&mem), now);
        assert_eq!(running.digest(&mem), now);
        running.mark(&mem, pages - 1);
        assert_eq!(running.digest(&mem), digest(&mem));
    }

    #[test]
    fn a_block_written_after_it_was_sent_is_hashed_again() {
        let mem = create(16 << 20).unwrap();
        let pages = page_count(&mem);
        let mut source = BlockDigests::unhashed(&mem);
        assert_eq!(source.stale_blocks() as u64, pages / DIGEST_BLOCK_PAGES);
        for gfn in 0..pages {
            source.hash_now(&mem, gfn);
        }
        assert_eq!(source.stale_blocks(), 0);
        assert_eq!(source.digest(&mem), digest(&mem));

        // The guest writes a page of block 3 after it was sent; until the
        // dirty log reports it the table still holds the old hash.
        write_page(&mem, 3 * DIGEST_BLOCK_PAGES + 5, &[7u8; 4096]).unwrap();
        let sent = source.digest(&mem);
        assert_ne!(sent, digest(&mem));
        source.invalidate(3 * DIGEST_BLOCK_PAGES + 5);
        assert_eq!(source.stale_blocks(), 1, "only that block is stale");
        assert_eq!(source.digest(&mem), digest(&mem));
        assert_eq!(source.stale_blocks(), 0);
    }

    /// A source's running digest against a model of a migration: the guest
    /// writes pages (each lands in the dirty log), the source sends pending
    /// pages (hashing their blocks) and harvests the dirty log (whose pages
    /// become pending) in any order; at the pause, after a last harvest,
    /// the running digest equals hashing all of memory.
    mod source_model {
        use super::super::*;
        use proptest::prelude::*;
        use std::collections::BTreeSet;

        #[derive(Debug, Clone)]
        enum Step {
            Write { gfn: u64, byte: u8 },
            Send { pages: usize },
            Harvest,
        }

        // 16 MiB plus 3 pages: the last block is short.
        const PAGES: u64 = 4096 + 3;

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                4 => (0..PAGES, any::<u8>()).prop_map(|(gfn, byte)| Step::Write { gfn, byte }),
                2 => (1usize..2000).prop_map(|pages| Step::Send { pages }),
                1 => Just(Step::Harvest),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]
            #[test]
            fn equals_the_full_digest_after_any_sends_and_writes(
                steps in proptest::collection::vec(step(), 0..200)
            ) {
                let mem = create(PAGES * 4096).unwrap();
                let mut running = BlockDigests::unhashed(&mem);
                let mut pending: BTreeSet<u64> = (0..PAGES).collect();
                let mut dirty = BTreeSet::new();
                let mut page = [0u8; 4096];
                for s in steps {
                    match s {
                        Step::Write { gfn, byte } => {
                            read_page(&mem, gfn, &mut page).unwrap();
                            page[(gfn as usize * 31) % 4096] ^= byte | 1;
                            write_page(&mem, gfn, &page).unwrap();
                            dirty.insert(gfn);
                        }
                        Step::Send { pages } => {
                            for _ in 0..pages {
                                let Some(gfn) = pending.pop_first() else { break };
                                running.hash_now(&mem, gfn);
                            }
                        }
                        Step::Harvest => {
                            for &gfn in &dirty {
                                running.invalidate(gfn);
                            }
                            pending.append(&mut dirty);
                        }
                    }
                }
                for &gfn in &dirty {
                    running.invalidate(gfn);
                }
                prop_assert_eq!(running.digest(&mem), digest(&mem));
            }
        }
    }
}
