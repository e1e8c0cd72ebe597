//! Helpers shared by the KVM integration tests (included with `mod common`).
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;
use wanmig_migration::machine::{MemoryWorkloadConfig, VmConfig};

/// A serial sink collecting lines, and the lines.
pub fn capture() -> (Arc<Mutex<Vec<String>>>, wanmig_vmm::serial::SerialSink) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    (
        lines,
        Box::new(move |s: &str| l.lock().unwrap().push(s.to_string())),
    )
}

#[allow(unused_imports)]
pub use wanmig_vmm::workload_model::reference_digests;

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
            page_writes: Default::default(),
        }),
        ..Default::default()
    }
}
