//! Page-sized slots in 2 MiB chunks that the kernel may back with huge
//! pages: the storage behind [`crate::page_cache::PageCache`].
//!
//! Why not a `Box` per page: the encoder copies every page it sends into its
//! cache, so during a migration's first round each page lands in memory the
//! process never touched. On this (virtualised) machine a 4 KiB page fault
//! costs ~3–5 µs — about as long as encoding the page — and touching 10 MiB
//! of fresh 4 KiB pages took 11–15 ms against 1–4 ms for the same memory in
//! 2 MiB chunks advised as huge pages (MADV_HUGEPAGE; THP is commonly in
//! "madvise" mode). Slots are never freed individually: the cache reuses
//! them, and the whole slab is freed when the cache is dropped.
//!
//! The only unsafe code of the crate's allocation path lives here.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

use crate::page::{PageBytes, PAGE_SIZE};

/// Bytes per chunk: one x86-64 huge page.
const CHUNK_BYTES: usize = 2 << 20;
/// Pages per chunk.
const CHUNK_PAGES: usize = CHUNK_BYTES / PAGE_SIZE;

/// One chunk: `CHUNK_PAGES` page slots, of which the slab's `len` (for the
/// last chunk: the rest) are initialised.
struct Chunk(NonNull<PageBytes>);

impl Chunk {
    fn layout() -> Layout {
        Layout::from_size_align(CHUNK_BYTES, CHUNK_BYTES).expect("2 MiB layout")
    }

    fn new() -> Chunk {
        let layout = Self::layout();
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { alloc::alloc(layout) };
        let Some(p) = NonNull::new(p) else {
            alloc::handle_alloc_error(layout)
        };
        // SAFETY: `p` is the start of a live allocation of CHUNK_BYTES bytes
        // (2 MiB-aligned, so it is exactly one huge page). madvise only
        // changes how the kernel backs untouched memory; failure (no THP)
        // is harmless, so its result is ignored.
        unsafe {
            libc::madvise(p.as_ptr().cast(), CHUNK_BYTES, libc::MADV_HUGEPAGE);
        }
        Chunk(p.cast())
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // SAFETY: allocated in `Chunk::new` with the same layout, freed once.
        unsafe { alloc::dealloc(self.0.as_ptr().cast(), Self::layout()) }
    }
}

/// A growable array of pages, addressed by index.
#[derive(Default)]
pub struct PageSlab {
    chunks: Vec<Chunk>,
    len: usize,
}

// SAFETY: the slab owns its chunks exclusively (no aliasing pointers escape
// except through borrows of the slab), like a Vec<PageBytes>.
unsafe impl Send for PageSlab {}
// SAFETY: shared access only reads, like &Vec<PageBytes>.
unsafe impl Sync for PageSlab {}

impl PageSlab {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a copy of `page`; returns its index.
    pub fn push(&mut self, page: &PageBytes) -> usize {
        let i = self.len;
        if i % CHUNK_PAGES == 0 && i / CHUNK_PAGES == self.chunks.len() {
            self.chunks.push(Chunk::new());
        }
        let chunk = &self.chunks[i / CHUNK_PAGES];
        // SAFETY: slot i % CHUNK_PAGES lies inside the chunk; it is not yet
        // initialised and nothing borrows it; writing a whole page
        // initialises it.
        unsafe {
            chunk.0.as_ptr().add(i % CHUNK_PAGES).write(*page);
        }
        self.len += 1;
        i
    }

    /// The page at `i`. Panics if `i >= len` (a bug in the caller).
    pub fn get(&self, i: usize) -> &PageBytes {
        assert!(i < self.len, "slab index {i} out of bounds ({})", self.len);
        // SAFETY: i < len, so the slot is initialised; the borrow of `self`
        // keeps it alive and unaliased by writers.
        unsafe { &*self.chunks[i / CHUNK_PAGES].0.as_ptr().add(i % CHUNK_PAGES) }
    }

    /// The page at `i`, writable. Panics if `i >= len`.
    pub fn get_mut(&mut self, i: usize) -> &mut PageBytes {
        assert!(i < self.len, "slab index {i} out of bounds ({})", self.len);
        // SAFETY: as in `get`, with exclusive access through `&mut self`.
        unsafe { &mut *self.chunks[i / CHUNK_PAGES].0.as_ptr().add(i % CHUNK_PAGES) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_stay_where_they_were_put_across_chunks() {
        let mut s = PageSlab::new();
        let n = CHUNK_PAGES * 2 + 5;
        for i in 0..n {
            let mut p = [0u8; PAGE_SIZE];
            p[..8].copy_from_slice(&(i as u64).to_le_bytes());
            p[PAGE_SIZE - 1] = i as u8;
            assert_eq!(s.push(&p), i);
        }
        assert_eq!(s.len, n);
        assert_eq!(s.chunks.len(), 3);
        for i in [0, 1, CHUNK_PAGES - 1, CHUNK_PAGES, n - 1] {
            let p = s.get(i);
            assert_eq!(u64::from_le_bytes(p[..8].try_into().unwrap()), i as u64);
            assert_eq!(p[PAGE_SIZE - 1], i as u8);
        }
        s.get_mut(7)[100] = 42;
        assert_eq!(s.get(7)[100], 42);
        assert_eq!(s.get(8)[100], 0);
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn reading_past_the_end_panics_instead_of_reading_garbage() {
        let mut s = PageSlab::new();
        s.push(&[1; PAGE_SIZE]);
        s.get(1);
    }
}
