//! Boots the real test guest on KVM: serial output, control-port reports,
//! clean exit, and the memory workload's digests against the host model.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wanmig_guest_abi::memory_workload::WORDS_PER_PAGE;
use wanmig_migration::admin::RunExit;
use wanmig_migration::machine::{MemoryWorkloadConfig, VmConfig};
use wanmig_vmm::workload_model::{reference_digests, reference_digests_from, HostWorkingSet};
use wanmig_vmm::Vm;

fn capture() -> (Arc<Mutex<Vec<String>>>, wanmig_vmm::serial::SerialSink) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    (
        lines,
        Box::new(move |s: &str| l.lock().unwrap().push(s.to_string())),
    )
}

#[test]
fn guest_boots_prints_reports_and_exits() {
    if !wanmig_testenv::require_kvm("guest_boots_prints_reports_and_exits") {
        return;
    }
    let w = MemoryWorkloadConfig {
        seed: 42,
        working_set_pages: 256,
        pages_per_iteration: 100,
        iterations: 20,
        iteration_period: Duration::ZERO,
        page_writes: Default::default(),
    };
    let config = VmConfig {
        mem_size: 16 << 20,
        memory_workload: Some(w.clone()),
        ..Default::default()
    };
    let (lines, sink) = capture();
    let vm = Vm::create(config, sink).unwrap();
    let started = Instant::now();
    vm.start().unwrap();
    let exit = vm.wait_exit(Duration::from_secs(60));
    let took = started.elapsed();
    let lines = lines.lock().unwrap().clone();
    assert_eq!(exit, Some(RunExit::Guest(0)), "serial: {lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("wanmig-guest: booted, 16 MiB")),
        "serial: {lines:#?}"
    );

    let expected = reference_digests(&w, 20);
    let got: Vec<(u64, u64)> = vm
        .reports()
        .mem_samples()
        .iter()
        .map(|s| (s.iteration, s.digest))
        .collect();
    assert_eq!(got, expected);
    eprintln!("boot + 20 iterations x 100 pages took {took:?}");
}

#[test]
fn mem_image_preloads_memory_the_workload_reads() {
    if !wanmig_testenv::require_kvm("mem_image_preloads_memory_the_workload_reads") {
        return;
    }
    use std::io::Write;
    // 12 MiB of 0xab: covers the first 4 MiB of the workload area (the
    // image and boot structures are written over the low part).
    let mut image = tempfile::NamedTempFile::new().unwrap();
    image.write_all(&vec![0xab; 12 << 20]).unwrap();
    let w = MemoryWorkloadConfig {
        seed: 9,
        working_set_pages: 1024,
        pages_per_iteration: 50,
        iterations: 10,
        iteration_period: Duration::ZERO,
        page_writes: Default::default(),
    };
    let config = VmConfig {
        mem_size: 16 << 20,
        memory_workload: Some(w.clone()),
        mem_image: Some(image.path().into()),
        ..Default::default()
    };
    let (_lines, sink) = capture();
    let vm = Vm::create(config, sink).unwrap();
    vm.start().unwrap();
    let exit = vm.wait_exit(Duration::from_secs(60));
    if exit != Some(RunExit::Guest(0)) {
        let s = vm.save_state().unwrap();
        panic!(
            "{exit:?} rip {:#x} rsp {:#x} serial {:?}",
            s.vcpu.regs.rip,
            s.vcpu.regs.rsp,
            _lines.lock().unwrap()
        );
    }

    let initial = HostWorkingSet(vec![
        0xabab_abab_abab_abab;
        (1024 * WORDS_PER_PAGE) as usize
    ]);
    let expected = reference_digests_from(&w, initial, 10);
    let got: Vec<(u64, u64)> = vm
        .reports()
        .mem_samples()
        .iter()
        .map(|s| (s.iteration, s.digest))
        .collect();
    assert_eq!(got, expected, "the guest read the preloaded bytes");
}
