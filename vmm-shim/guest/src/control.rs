//! The VMM's guest control ports: reports, the host-provided clock, sleep
//! and exit.

use crate::port::outl;
use wanmig_guest_abi as abi;

/// Hands a report to the VMM. The report lives on the stack; the port write
/// carries its (identity-mapped, below 4 GiB) address.
pub fn report(kind: u32, values: [u64; 4]) {
    let r = abi::Report {
        kind,
        reserved: 0,
        values,
    };
    let addr = &r as *const abi::Report as u64;
    outl(abi::CONTROL_PORT_REPORT, addr as u32);
    // Keep `r` alive and written until after the port write.
    core::hint::black_box(&r);
}

/// The VMM's guest clock in nanoseconds (monotonic, continued across
/// migration).
pub fn clock_ns() -> u64 {
    let cell: u64 = 0;
    let addr = &cell as *const u64 as u64;
    outl(abi::CONTROL_PORT_CLOCK, addr as u32);
    // SAFETY: `cell` is a live local the VMM wrote through its address.
    unsafe { core::ptr::read_volatile(&cell) }
}

/// Parks the vCPU for up to `us` microseconds.
pub fn sleep_us(us: u32) {
    outl(abi::CONTROL_PORT_SLEEP_US, us.min(abi::MAX_SLEEP_US));
}

/// Ends the VM's run with `code`.
pub fn exit(code: u32) -> ! {
    loop {
        outl(abi::CONTROL_PORT_EXIT, code);
    }
}
