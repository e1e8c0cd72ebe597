//! The memory workload's full-page write mode on the real guest under KVM:
//! the guest fills whole pages exactly as the shared model says (digests and
//! final memory), and how fast it can do so while dirty logging re-arms the
//! write protection the way migration rounds do (printed, not asserted).

mod common;

use std::time::{Duration, Instant};
use wanmig_guest_abi::memory_workload::WORDS_PER_PAGE;
use wanmig_guest_abi::{PAGE_SIZE, WORKLOAD_BASE};
use wanmig_migration::admin::RunExit;
use wanmig_migration::machine::{MemoryWorkloadConfig, PageWrites, VmConfig};
use wanmig_vmm::memory::{self, Page};
use wanmig_vmm::workload_model::{reference_digests, HostWorkingSet};
use wanmig_vmm::Vm;

fn full_pages(working_set_pages: u64, pages_per_iteration: u64, iterations: u64) -> VmConfig {
    VmConfig {
        mem_size: 32 << 20,
        memory_workload: Some(MemoryWorkloadConfig {
            seed: 0xf111_0001,
            working_set_pages,
            pages_per_iteration,
            iterations,
            iteration_period: Duration::ZERO,
            page_writes: PageWrites::Full,
        }),
        ..Default::default()
    }
}

#[test]
fn full_page_writes_match_the_model_in_digests_and_in_memory() {
    if !wanmig_testenv::require_kvm("full_page_writes_match_the_model_in_digests_and_in_memory") {
        return;
    }
    let config = full_pages(256, 8, 40);
    let w = config.memory_workload.clone().unwrap();
    let (lines, sink) = common::capture();
    let vm = Vm::create(config, sink).unwrap();
    vm.start().unwrap();
    let exit = vm.wait_exit(Duration::from_secs(60));
    let serial = lines.lock().unwrap().clone();
    assert_eq!(exit, Some(RunExit::Guest(0)), "serial: {serial:#?}");
    assert!(
        serial.iter().any(|l| l.contains("Full page writes")),
        "the guest did not take the mode from its boot parameters: {serial:#?}"
    );

    let got: Vec<(u64, u64)> = vm
        .reports()
        .mem_samples()
        .iter()
        .map(|s| (s.iteration, s.digest))
        .collect();
    assert_eq!(got, reference_digests(&w, 40));

    // Replay the model and compare every page of the working set with the
    // guest's memory: the guest wrote whole pages, the same ones.
    let mut model = HostWorkingSet::zeroed(w.working_set_pages);
    let mut work = wanmig_guest_abi::memory_workload::MemoryWorkload::with_mode(
        w.seed,
        w.pages_per_iteration,
        w.page_writes.mode(),
    );
    for _ in 0..40 {
        work.step(&mut model);
    }
    let mut page: Page = [0; PAGE_SIZE as usize];
    let mut full = 0;
    for p in 0..w.working_set_pages {
        memory::read_page(vm.memory(), WORKLOAD_BASE / PAGE_SIZE + p, &mut page).unwrap();
        let words = &model.0[(p * WORDS_PER_PAGE) as usize..((p + 1) * WORDS_PER_PAGE) as usize];
        for (i, chunk) in page.chunks_exact(8).enumerate() {
            let got = u64::from_le_bytes(chunk.try_into().unwrap());
            assert_eq!(got, words[i], "page {p} word {i}");
        }
        if words.iter().all(|&x| x != 0) {
            full += 1;
        }
    }
    // 320 writes into 256 pages touch most of them, each in full.
    assert!(full > 128, "only {full} pages were filled");
}

/// The rate the guest reaches with full-page writes flat out while the
/// host harvests the dirty log every 50 ms (as migration rounds re-arm
/// write protection, so each harvested page costs a first-write fault
/// again). A figure for the demo's calibration, printed.
#[test]
fn full_page_write_rate_under_dirty_logging_is_printed() {
    if !wanmig_testenv::require_kvm("full_page_write_rate_under_dirty_logging_is_printed") {
        return;
    }
    const PAGES_PER_ITERATION: u64 = 32;
    const ITERATIONS: u64 = 600;
    let config = full_pages(4096, PAGES_PER_ITERATION, ITERATIONS);
    let (lines, sink) = common::capture();
    let mut vm = Vm::create(config, sink).unwrap();
    vm.set_dirty_logging(true).unwrap();
    vm.start().unwrap();
    let first = vm
        .wait_mem_iteration(1, Duration::from_secs(60))
        .expect("the guest reports its first iteration");
    let started = Instant::now();
    let mut harvested = 0usize;
    while vm.exit_status().is_none() && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(50));
        harvested += vm.take_dirty_pages().unwrap().len();
    }
    let took = started.elapsed();
    let exit = vm.wait_exit(Duration::from_secs(10));
    assert_eq!(
        exit,
        Some(RunExit::Guest(0)),
        "serial: {:#?}",
        lines.lock().unwrap()
    );
    assert!(harvested > 0, "dirty logging saw no writes");
    let pages = (ITERATIONS - first.iteration) * PAGES_PER_ITERATION;
    let rate = pages as f64 / took.as_secs_f64();
    eprintln!(
        "full-page writes under dirty logging: {pages} pages in {took:?}: {rate:.0} pages/s = {:.1} MiB/s ({harvested} dirty pages harvested)",
        rate * PAGE_SIZE as f64 / (1 << 20) as f64
    );
}
