//! The memory workload's deterministic algorithm, shared by the guest (which
//! runs it on real guest memory) and host-side tests (which run it on a
//! plain model of memory to know what the guest must report).
//!
//! Each iteration writes `pages_per_iteration` pseudo-randomly chosen pages
//! of the working set: it reads one 64-bit word of the page, folds it into
//! the running digest, writes a new value derived from the old one and the
//! generator, and folds that in too. So the digest at iteration N depends
//! on the memory contents being exactly right, never on timing.

use crate::{digest_step, splitmix64};

/// 64-bit words per page.
pub const WORDS_PER_PAGE: u64 = crate::PAGE_SIZE / 8;

/// Word-granular access to the workload's working set.
pub trait WorkingSet {
    /// Number of pages in the working set (at least 1).
    fn pages(&self) -> u64;
    /// Reads word `word` (< [`WORDS_PER_PAGE`]) of page `page`.
    fn read(&self, page: u64, word: u64) -> u64;
    /// Writes word `word` of page `page`.
    fn write(&mut self, page: u64, word: u64, value: u64);
}

/// The workload's state: generator, running digest and iteration count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryWorkload {
    rng: u64,
    digest: u64,
    iteration: u64,
    pages_written: u64,
    pages_per_iteration: u64,
}

impl MemoryWorkload {
    /// A workload seeded with `seed` writing `pages_per_iteration` pages per
    /// iteration.
    pub fn new(seed: u64, pages_per_iteration: u64) -> Self {
        MemoryWorkload {
            rng: seed,
            digest: seed ^ 0x6a09_e667_f3bc_c908,
            iteration: 0,
            pages_written: 0,
            pages_per_iteration,
        }
    }

    /// Runs one iteration over `mem` and returns `(iteration, digest)`
    /// after it (iterations count from 1).
    pub fn step<M: WorkingSet>(&mut self, mem: &mut M) -> (u64, u64) {
        let pages = mem.pages().max(1);
        for _ in 0..self.pages_per_iteration {
            let r = splitmix64(&mut self.rng);
            let page = r % pages;
            let word = (r >> 40) % WORDS_PER_PAGE;
            let old = mem.read(page, word);
            self.digest = digest_step(self.digest, old);
            let new = splitmix64(&mut self.rng) ^ old.rotate_left(7);
            mem.write(page, word, new);
            self.digest = digest_step(self.digest, new);
            self.pages_written += 1;
        }
        self.iteration += 1;
        (self.iteration, self.digest)
    }

    /// Iterations completed so far.
    pub fn iteration(&self) -> u64 {
        self.iteration
    }

    /// The running digest.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Page writes performed so far.
    pub fn pages_written(&self) -> u64 {
        self.pages_written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Model([[u64; WORDS_PER_PAGE as usize]; 8]);
    impl WorkingSet for Model {
        fn pages(&self) -> u64 {
            8
        }
        fn read(&self, page: u64, word: u64) -> u64 {
            self.0[page as usize][word as usize]
        }
        fn write(&mut self, page: u64, word: u64, value: u64) {
            self.0[page as usize][word as usize] = value;
        }
    }

    #[test]
    fn same_seed_same_digests_and_memory_matters() {
        let mut a = Model([[0; 512]; 8]);
        let mut b = Model([[0; 512]; 8]);
        let mut wa = MemoryWorkload::new(1, 5);
        let mut wb = MemoryWorkload::new(1, 5);
        for _ in 0..10 {
            assert_eq!(wa.step(&mut a), wb.step(&mut b));
        }
        // Corrupt one word the workload has written: the digests diverge
        // once it is read again.
        let (p, w) = (0..8u64)
            .flat_map(|p| (0..512u64).map(move |w| (p, w)))
            .find(|&(p, w)| a.read(p, w) != 0)
            .unwrap();
        b.write(p, w, b.read(p, w) ^ 1);
        let diverged = (0..2000).any(|_| wa.step(&mut a) != wb.step(&mut b));
        assert!(diverged);
        assert_eq!(wa.pages_written(), wa.iteration() * 5);
    }
}
