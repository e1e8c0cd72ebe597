//! The memory workload's deterministic algorithm, shared by the guest (which
//! runs it on real guest memory) and host-side tests (which run it on a
//! plain model of memory to know what the guest must report).
//!
//! Each iteration writes `pages_per_iteration` pseudo-randomly chosen pages
//! of the working set: it reads one 64-bit word of the page, folds it into
//! the running digest, derives a new value from the old one and the
//! generator, and folds that in too. So the digest at iteration N depends
//! on the memory contents being exactly right, never on timing.
//!
//! How the new value lands is the [`PageWriteMode`]: [`PageWriteMode::Word`]
//! stores it in the word it read (a re-dirtied page differs from its last
//! sent version in 8 bytes, so a migration's delta of it is tiny);
//! [`PageWriteMode::Full`] folds every old word of the page into the digest
//! and overwrites the whole page with 512 fresh pseudo-random words
//! expanded from the new value (a re-dirtied page shares nothing with its
//! last sent version and does not compress, so it costs a full page on the
//! wire every time).

use crate::{digest_step, splitmix64};

/// 64-bit words per page.
pub const WORDS_PER_PAGE: u64 = crate::PAGE_SIZE / 8;

/// How one page write changes the page (see the module comment). The
/// host passes it to the guest as [`PageWriteMode::code`] in
/// `BootParams::mem_page_writes`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PageWriteMode {
    /// Change one 64-bit word of the page.
    #[default]
    Word,
    /// Fill the whole page with fresh pseudo-random words.
    Full,
}

impl PageWriteMode {
    /// The mode's boot-parameter code (`Word` is 0, so a zeroed block
    /// selects it).
    pub const fn code(self) -> u64 {
        match self {
            PageWriteMode::Word => 0,
            PageWriteMode::Full => 1,
        }
    }

    /// The mode with boot-parameter code `code`; `None` for an unknown code.
    pub const fn from_code(code: u64) -> Option<Self> {
        match code {
            0 => Some(PageWriteMode::Word),
            1 => Some(PageWriteMode::Full),
            _ => None,
        }
    }
}

/// Word `word` of a page that a [`PageWriteMode::Full`] write filled from
/// `key`: SplitMix64 over the key advanced `word + 1` times. Distinct words
/// and distinct keys give unrelated values (incompressible pages).
pub fn full_page_word(key: u64, word: u64) -> u64 {
    let mut state = key.wrapping_add(word.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    splitmix64(&mut state)
}

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
    mode: PageWriteMode,
}

impl MemoryWorkload {
    /// A workload seeded with `seed` writing `pages_per_iteration` pages per
    /// iteration, one word per page write ([`PageWriteMode::Word`]).
    pub fn new(seed: u64, pages_per_iteration: u64) -> Self {
        Self::with_mode(seed, pages_per_iteration, PageWriteMode::Word)
    }

    /// Like [`MemoryWorkload::new`], with page writes in `mode`. Both modes
    /// write the same pages in the same order; `Full` reads and writes all
    /// 512 words of each.
    pub fn with_mode(seed: u64, pages_per_iteration: u64, mode: PageWriteMode) -> Self {
        MemoryWorkload {
            rng: seed,
            digest: seed ^ 0x6a09_e667_f3bc_c908,
            iteration: 0,
            pages_written: 0,
            pages_per_iteration,
            mode,
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
            match self.mode {
                PageWriteMode::Word => mem.write(page, word, new),
                PageWriteMode::Full => {
                    // Read every old word before replacing it: a page that
                    // arrived wrong shows in the digest at its next write,
                    // whichever word was corrupted.
                    let mut old_page = 0;
                    for w in 0..WORDS_PER_PAGE {
                        old_page = digest_step(old_page, mem.read(page, w));
                        mem.write(page, w, full_page_word(new, w));
                    }
                    self.digest = digest_step(self.digest, old_page);
                }
            }
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

    /// How page writes change pages.
    pub fn mode(&self) -> PageWriteMode {
        self.mode
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

    fn zeroed() -> Model {
        Model([[0; 512]; 8])
    }

    /// Pages of `m` that are not all zero.
    fn touched(m: &Model) -> [bool; 8] {
        core::array::from_fn(|p| m.0[p].iter().any(|&w| w != 0))
    }

    #[test]
    fn a_full_write_replaces_every_word_of_the_page_with_distinct_values() {
        let mut m = zeroed();
        let mut w = MemoryWorkload::with_mode(3, 1, PageWriteMode::Full);
        w.step(&mut m);
        let page = touched(&m).iter().position(|&t| t).unwrap();
        assert_eq!(touched(&m).iter().filter(|&&t| t).count(), 1);
        let mut words = m.0[page];
        words.sort_unstable();
        assert!(words[0] != 0, "a word of the written page stayed zero");
        assert!(
            words.windows(2).all(|p| p[0] != p[1]),
            "repeated words in a filled page"
        );
        // Write the same page again (8 pages, so some step revisits it):
        // the new version shares no word with the old one, so a delta
        // against it saves nothing.
        let before = m.0[page];
        let mut rewritten = false;
        for _ in 0..64 {
            w.step(&mut m);
            if m.0[page] != before {
                rewritten = true;
                break;
            }
        }
        assert!(rewritten, "page {page} never written again");
        let same = before
            .iter()
            .zip(&m.0[page])
            .filter(|(a, b)| a == b)
            .count();
        assert_eq!(same, 0, "{same} words survived a full-page write");
        // Bytes look random: every byte value occurs in a 4 KiB page
        // (a page of repeated or counting words would not).
        let mut seen = [false; 256];
        for word in m.0[page] {
            for b in word.to_le_bytes() {
                seen[b as usize] = true;
            }
        }
        assert!(seen.iter().filter(|&&s| s).count() > 240);
    }

    #[test]
    fn both_modes_write_the_same_pages_and_word_mode_changes_one_word() {
        let (mut word, mut full) = (zeroed(), zeroed());
        let mut ww = MemoryWorkload::with_mode(11, 1, PageWriteMode::Word);
        let mut wf = MemoryWorkload::with_mode(11, 1, PageWriteMode::Full);
        assert_eq!(ww, MemoryWorkload::new(11, 1));
        for _ in 0..3 {
            ww.step(&mut word);
            wf.step(&mut full);
            assert_eq!(touched(&word), touched(&full));
        }
        // One page write changes one word, or all of them.
        let (mut a, mut b) = (zeroed(), zeroed());
        MemoryWorkload::new(5, 1).step(&mut a);
        MemoryWorkload::with_mode(5, 1, PageWriteMode::Full).step(&mut b);
        let nonzero = |m: &Model| m.0.iter().flatten().filter(|&&w| w != 0).count();
        assert_eq!(nonzero(&a), 1);
        assert_eq!(nonzero(&b), 512);
    }

    #[test]
    fn full_mode_digests_are_deterministic_and_catch_a_corrupted_word() {
        let (mut a, mut b) = (zeroed(), zeroed());
        let mut wa = MemoryWorkload::with_mode(9, 3, PageWriteMode::Full);
        let mut wb = MemoryWorkload::with_mode(9, 3, PageWriteMode::Full);
        for _ in 0..10 {
            assert_eq!(wa.step(&mut a), wb.step(&mut b));
        }
        assert_eq!(wa.mode(), PageWriteMode::Full);
        // The next write to a page reads all of it: corrupt one word of a
        // written page and the digests diverge once the page is written
        // again.
        let page = touched(&a).iter().position(|&t| t).unwrap();
        b.0[page][511] ^= 1 << 40;
        let diverged = (0..5000).any(|_| wa.step(&mut a) != wb.step(&mut b));
        assert!(diverged);
        // The word mode on the same seed reports other digests (it reads
        // back what it wrote differently).
        let mut c = zeroed();
        let mut wc = MemoryWorkload::new(9, 3);
        let mut d = zeroed();
        let mut wd = MemoryWorkload::with_mode(9, 3, PageWriteMode::Full);
        assert!((0..50).any(|_| wc.step(&mut c) != wd.step(&mut d)));
    }

    #[test]
    fn mode_codes_round_trip_and_unknown_codes_are_refused() {
        for m in [PageWriteMode::Word, PageWriteMode::Full] {
            assert_eq!(PageWriteMode::from_code(m.code()), Some(m));
        }
        assert_eq!(PageWriteMode::Word.code(), 0, "a zeroed block is Word");
        assert_eq!(PageWriteMode::from_code(2), None);
        assert_eq!(PageWriteMode::from_code(u64::MAX), None);
    }
}
