//! The host-side model of the guest's memory workload: what an unmigrated
//! run reports, computed without a VM. Tests, the demo and the benchmarks
//! compare a (migrated) guest's reported digests against it.

use wanmig_guest_abi::memory_workload::{MemoryWorkload, WorkingSet, WORDS_PER_PAGE};
use wanmig_migration::machine::MemoryWorkloadConfig;

/// The workload's working set as plain host memory.
pub struct HostWorkingSet(pub Vec<u64>);

impl HostWorkingSet {
    /// A zeroed working set of `pages` pages (as the guest starts).
    pub fn zeroed(pages: u64) -> Self {
        HostWorkingSet(vec![0; (pages * WORDS_PER_PAGE) as usize])
    }

    /// The working set as the guest finds it when its memory was preloaded
    /// with `bytes` (the image's bytes from `WORKLOAD_BASE` on, little
    /// endian words; shorter than the working set = zeros after it).
    pub fn from_bytes(pages: u64, bytes: &[u8]) -> Self {
        let mut ws = Self::zeroed(pages);
        for (w, chunk) in ws.0.iter_mut().zip(bytes.chunks_exact(8)) {
            *w = u64::from_le_bytes(chunk.try_into().expect("chunks of 8"));
        }
        ws
    }
}

impl WorkingSet for HostWorkingSet {
    fn pages(&self) -> u64 {
        self.0.len() as u64 / WORDS_PER_PAGE
    }
    fn read(&self, page: u64, word: u64) -> u64 {
        self.0[(page * WORDS_PER_PAGE + word) as usize]
    }
    fn write(&mut self, page: u64, word: u64, value: u64) {
        self.0[(page * WORDS_PER_PAGE + word) as usize] = value;
    }
}

/// What an unmigrated run of the memory workload reports for iterations
/// 1..=n: the `(iteration, digest)` sequence.
pub fn reference_digests(w: &MemoryWorkloadConfig, n: u64) -> Vec<(u64, u64)> {
    reference_digests_from(w, HostWorkingSet::zeroed(w.working_set_pages), n)
}

/// Like [`reference_digests`], for a guest whose working set started as
/// `initial` (a preloaded memory image).
pub fn reference_digests_from(
    w: &MemoryWorkloadConfig,
    mut model: HostWorkingSet,
    n: u64,
) -> Vec<(u64, u64)> {
    let mut work = MemoryWorkload::with_mode(w.seed, w.pages_per_iteration, w.page_writes.mode());
    (0..n).map(|_| work.step(&mut model)).collect()
}

/// Checks reported `(iteration, digest)` samples against the unmigrated
/// reference of a guest whose working set started as `initial`; returns the
/// first mismatch as `(iteration, reported, expected)`.
pub fn first_mismatch(
    w: &MemoryWorkloadConfig,
    initial: HostWorkingSet,
    samples: impl IntoIterator<Item = (u64, u64)>,
) -> Option<(u64, u64, u64)> {
    let samples: Vec<(u64, u64)> = samples.into_iter().collect();
    let max = samples.iter().map(|s| s.0).max()?;
    let reference = reference_digests_from(w, initial, max);
    samples.into_iter().find_map(|(it, digest)| {
        let expected = it
            .checked_sub(1)
            .and_then(|i| reference.get(i as usize))
            .map_or(0, |r| r.1);
        (it == 0 || digest != expected).then_some((it, digest, expected))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> MemoryWorkloadConfig {
        MemoryWorkloadConfig {
            seed: 7,
            working_set_pages: 16,
            pages_per_iteration: 4,
            ..Default::default()
        }
    }

    #[test]
    fn reference_is_deterministic_and_changes_every_iteration() {
        let a = reference_digests(&cfg(), 20);
        assert_eq!(a, reference_digests(&cfg(), 20));
        assert_eq!(a.len(), 20);
        assert_eq!(a[0].0, 1);
        assert!(a.windows(2).all(|w| w[0].1 != w[1].1));
    }

    #[test]
    fn mismatches_are_found_and_matches_pass() {
        let r = reference_digests(&cfg(), 10);
        let zero = || HostWorkingSet::zeroed(16);
        assert_eq!(first_mismatch(&cfg(), zero(), r[4..].iter().copied()), None);
        let mut bad = r.clone();
        bad[6].1 ^= 1;
        assert_eq!(
            first_mismatch(&cfg(), zero(), bad),
            Some((7, r[6].1 ^ 1, r[6].1))
        );
    }

    #[test]
    fn a_preloaded_working_set_changes_the_reference() {
        let bytes: Vec<u8> = (0..16 * 4096).map(|i| (i % 251) as u8).collect();
        let pre = reference_digests_from(&cfg(), HostWorkingSet::from_bytes(16, &bytes), 5);
        assert_ne!(pre, reference_digests(&cfg(), 5));
        let zeros = HostWorkingSet::from_bytes(16, &[0u8; 100]);
        assert_eq!(
            reference_digests_from(&cfg(), zeros, 5),
            reference_digests(&cfg(), 5)
        );
    }
}
