//! Helpers shared by the KVM integration tests (included with `mod common`).
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;
use wanmig_guest_abi::memory_workload::{MemoryWorkload, WorkingSet, WORDS_PER_PAGE};
use wanmig_vmm::{MemoryWorkloadConfig, VmConfig};

/// A serial sink collecting lines, and the lines.
pub fn capture() -> (Arc<Mutex<Vec<String>>>, wanmig_vmm::serial::SerialSink) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    (
        lines,
        Box::new(move |s: &str| l.lock().unwrap().push(s.to_string())),
    )
}

/// The workload's working set as a plain host-side model.
pub struct Model(pub Vec<u64>);
impl WorkingSet for Model {
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
/// 1..=n: the (iteration, digest) sequence.
pub fn reference_digests(w: &MemoryWorkloadConfig, n: u64) -> Vec<(u64, u64)> {
    let mut model = Model(vec![0; (w.working_set_pages * WORDS_PER_PAGE) as usize]);
    let mut work = MemoryWorkload::new(w.seed, w.pages_per_iteration);
    (0..n).map(|_| work.step(&mut model)).collect()
}

/// A small VM running the memory workload forever.
pub fn dirtying_config(mem_mib: u64, pages_per_iteration: u64, period: Duration) -> VmConfig {
    VmConfig {
        mem_size: mem_mib << 20,
        memory_workload: Some(MemoryWorkloadConfig {
            seed: 0x5eed,
            working_set_pages: 1024,
            pages_per_iteration,
            iterations: 0,
            iteration_period: period,
        }),
        ..Default::default()
    }
}
