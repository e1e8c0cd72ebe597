//! Helpers of the migration end-to-end tests (included with `#[path]`):
//! guest configurations, the unmigrated reference of the memory workload,
//! polling a hosted VM's progress without holding the host's lock, and a
//! migration that must succeed.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use wanmig_gateway::migration::{MigrateRequest, MigrationRecord, Outcome};
use wanmig_gateway::vms::{VmHost, VmHosting};
use wanmig_gateway::GatewayHandle;
use wanmig_migration::admin::MemSample;
use wanmig_migration::machine::{MemoryWorkloadConfig, VmConfig};
use wanmig_vmm::workload_model::reference_digests;

pub const WAIT: Duration = Duration::from_secs(90);

/// A small guest running the memory workload forever: 1024 working-set
/// pages, `pages_per_iteration` pages written per iteration, at most one
/// iteration per `period` (the shim keeps the last 65536 samples: a guest
/// that runs for seconds needs a period to keep its early ones).
pub fn dirtying_vm(mem_mib: u64, pages_per_iteration: u64, period: Duration) -> VmConfig {
    VmConfig {
        mem_size: mem_mib << 20,
        memory_workload: Some(MemoryWorkloadConfig {
            seed: 0x5eed_0005,
            working_set_pages: 1024,
            pages_per_iteration,
            iterations: 0,
            iteration_period: period,
            page_writes: Default::default(),
        }),
        ..Default::default()
    }
}

/// What an unmigrated run reports for iterations 1..=n.
pub fn reference(config: &VmConfig, n: u64) -> Vec<(u64, u64)> {
    let w = config.memory_workload.as_ref().expect("a memory workload");
    reference_digests(w, n)
}

/// Asserts every sample equals the unmigrated reference at its iteration.
pub fn assert_matches_reference(config: &VmConfig, samples: &[MemSample], what: &str) {
    let Some(max) = samples.iter().map(|s| s.iteration).max() else {
        panic!("{what}: no samples");
    };
    let r = reference(config, max);
    for s in samples {
        assert_eq!(
            (s.iteration, s.digest),
            r[(s.iteration - 1) as usize],
            "{what}: digest at iteration {} differs from the unmigrated run",
            s.iteration
        );
    }
}

/// The VM's latest memory-workload iteration at this host (0: none, or
/// not held here).
pub fn iteration(host: &VmHost, vm: &str) -> u64 {
    host.reports(vm)
        .and_then(|r| r.mem_samples().last().map(|s| s.iteration))
        .unwrap_or(0)
}

/// The VM's memory-workload samples at this host.
pub fn samples(host: &VmHost, vm: &str) -> Vec<MemSample> {
    host.reports(vm)
        .map(|r| r.mem_samples())
        .unwrap_or_default()
}

/// Waits until the VM reaches iteration `n` at this host.
pub async fn wait_iteration(host: &VmHost, vm: &str, n: u64) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if iteration(host, vm) >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Boots a VM at a site (off the async threads: booting blocks).
pub async fn start_vm(host: &Arc<VmHost>, name: &str, config: VmConfig) {
    let (h, n) = (host.clone(), name.to_string());
    tokio::task::spawn_blocking(move || h.start(&n, config))
        .await
        .expect("start thread")
        .expect("the VM starts");
}

/// Whether the VM's guest keeps making progress at this host.
pub async fn keeps_running(host: &VmHost, vm: &str) -> bool {
    let now = iteration(host, vm);
    now > 0 && wait_iteration(host, vm, now + 5).await
}

/// Migrates `vm` from `src` to site `to` with a 300 ms downtime goal and
/// asserts it succeeded; `what` names the move in a failure.
pub async fn migrate_ok(src: &GatewayHandle, vm: &str, to: &str, what: &str) -> MigrationRecord {
    let rec = src
        .migration()
        .migrate(MigrateRequest {
            vm: vm.into(),
            to: to.into(),
            downtime: Some(Duration::from_millis(300)),
            scope: None,
        })
        .await
        .expect("the migration starts");
    assert_eq!(
        rec.outcome,
        Some(Outcome::Succeeded),
        "{what}: {:?}",
        rec.error
    );
    rec
}
