//! Guest memory: one anonymous mapping from guest-physical 0 with vm-memory's
//! `AtomicBitmap`, which records every write the VMM and its devices make
//! through vm-memory (KVM's dirty log only sees the vCPU's writes). Page
//! access for migration and the whole-memory BLAKE3 digest live here too.

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

/// BLAKE3 over all of guest memory, in guest-physical order.
pub fn digest(mem: &GuestMem) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    for region in mem.iter() {
        let base = region.start_addr().0;
        let len = region.len();
        let mut off = 0;
        while off < len {
            let n = (len - off).min(buf.len() as u64) as usize;
            // The region is mapped and in range, so this cannot fail; if it
            // ever did, hash a marker so the digests cannot match by accident.
            if mem
                .read_slice(&mut buf[..n], GuestAddress(base + off))
                .is_err()
            {
                hasher.update(b"unreadable");
            } else {
                hasher.update(&buf[..n]);
            }
            off += n as u64;
        }
    }
    *hasher.finalize().as_bytes()
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
}
