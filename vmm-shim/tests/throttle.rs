//! The auto-converge throttle on the real guest under KVM: a throttled vCPU
//! is held off its share of wall-clock time even when the guest spends most
//! of it in the sleep port, so a guest that paces itself (like the
//! write-heavy-pages guest) does proportionally fewer iterations; and a
//! throttled vCPU still obeys pause, resume and un-throttling at once.

mod common;

use std::time::{Duration, Instant};
use wanmig_migration::machine::PageWrites;
use wanmig_vmm::throttle::CYCLE;
use wanmig_vmm::Vm;

/// The guest's pacing period: 32 full pages every 5 ms (~25 MB/s, the
/// write-heavy-pages guest at 100 Mbit/s), a few % of the vCPU's time.
const PERIOD: Duration = Duration::from_millis(5);

fn paced_vm() -> Vm {
    let mut config = common::dirtying_config(32, 32, PERIOD);
    if let Some(w) = config.memory_workload.as_mut() {
        w.page_writes = PageWrites::Full;
    }
    let (_, sink) = common::capture();
    let vm = Vm::create(config, sink).unwrap();
    vm.start().unwrap();
    assert!(
        vm.wait_mem_iteration(1, Duration::from_secs(60)).is_some(),
        "the guest never ran an iteration (exit: {:?})",
        vm.exit_status()
    );
    vm
}

fn latest_iteration(vm: &Vm) -> u64 {
    vm.reports()
        .latest(wanmig_guest_abi::REPORT_MEM_ITERATION)
        .map(|r| r.values[0])
        .unwrap_or(0)
}

/// Iterations the guest ran during `window` of wall time, and how long
/// the window really was.
fn iterations_during(vm: &Vm, window: Duration) -> (u64, Duration) {
    let t0 = Instant::now();
    let i0 = latest_iteration(vm);
    std::thread::sleep(window);
    (latest_iteration(vm) - i0, t0.elapsed())
}

#[test]
fn a_throttled_paced_guest_runs_only_in_its_share_of_wall_time() {
    if !wanmig_testenv::require_kvm("a_throttled_paced_guest_runs_only_in_its_share_of_wall_time") {
        return;
    }
    let vm = paced_vm();
    let (free, free_window) = iterations_during(&vm, Duration::from_secs(2));

    let percent = 80u64;
    vm.set_throttle(percent as u8).unwrap();
    let (throttled, window) = iterations_during(&vm, Duration::from_secs(2));
    // Each 100 ms cycle leaves the vCPU a 20 ms run window: an iteration
    // due at its start (the guest fell behind while held off) and one per
    // 5 ms period after it, so at most 6 per cycle, over every cycle the
    // window touches. Holds however slow the machine is (the guest can only
    // do less); the KVM_RUN-time throttle let this guest, which runs a few
    // % of the time, do ~400 iterations in 2 s here.
    let run_window = CYCLE * (100 - percent as u32) / 100;
    let per_cycle = (run_window.as_micros() / PERIOD.as_micros()) as u64 + 2;
    let cycles = (window.as_micros() / CYCLE.as_micros()) as u64 + 2;
    println!(
        "unthrottled: {free} iterations in {free_window:?}; throttled {percent}%: \
         {throttled} in {window:?} (at most {} allowed)",
        per_cycle * cycles
    );
    assert!(
        throttled <= per_cycle * cycles,
        "throttled to {percent}% the guest still ran {throttled} iterations in {window:?} \
         (at most {per_cycle} per {CYCLE:?} cycle allowed; {free} unthrottled in {free_window:?})"
    );
    // Throttled is not stopped: the guest keeps going.
    let now = latest_iteration(&vm);
    assert!(
        vm.wait_mem_iteration(now + 3, Duration::from_secs(60))
            .is_some(),
        "the throttled guest stopped at iteration {now}"
    );
}

#[test]
fn a_held_off_vcpu_obeys_pause_resume_and_unthrottling() {
    if !wanmig_testenv::require_kvm("a_held_off_vcpu_obeys_pause_resume_and_unthrottling") {
        return;
    }
    let vm = paced_vm();
    // Held off 99 ms of every 100: commands must still be handled at once.
    vm.set_throttle(99).unwrap();
    std::thread::sleep(Duration::from_millis(150));
    vm.pause().unwrap();
    let paused_at = latest_iteration(&vm);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        latest_iteration(&vm),
        paused_at,
        "the guest ran while paused"
    );
    // Un-throttled while paused, it runs again once resumed.
    vm.set_throttle(0).unwrap();
    vm.resume().unwrap();
    let t = Instant::now();
    assert!(
        vm.wait_mem_iteration(paused_at + 200, Duration::from_secs(60))
            .is_some(),
        "the guest did not get going again after un-throttling (iteration {}, exit {:?})",
        latest_iteration(&vm),
        vm.exit_status()
    );
    println!("200 iterations after un-throttling took {:?}", t.elapsed());
}
