//! The wanmig test guest: a `no_std`, `no_main` program the VMM shim boots
//! in 64-bit mode. It reads its boot parameters, runs the selected workloads
//! (memory, and the virtio-based disk and TCP service) in a cooperative main
//! loop, and reports results to the VMM through the control ports.
#![no_std]
#![no_main]

mod clib;
mod console;
mod control;
mod memory_workload;
mod port;
mod virtio;

use wanmig_guest_abi as abi;

/// Entry point: the VMM sets RSP to `STACK_TOP - 8` and RIP here.
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start() -> ! {
    // SAFETY: the VMM wrote a BootParams block at BOOT_PARAMS_GPA before
    // boot; the address is identity-mapped and the block is plain data.
    let params: abi::BootParams =
        unsafe { core::ptr::read_volatile(abi::BOOT_PARAMS_GPA as *const abi::BootParams) };
    if params.magic != abi::BOOT_PARAMS_MAGIC || params.version != abi::BOOT_PARAMS_VERSION {
        println!(
            "wanmig-guest: bad boot parameters (magic {:#x})",
            params.magic
        );
        control::exit(abi::EXIT_BAD_PARAMS);
    }
    println!(
        "wanmig-guest: booted, {} MiB, workloads {:#x}",
        params.mem_size >> 20,
        params.workloads
    );
    control::report(abi::REPORT_BOOTED, [params.workloads as u64, 0, 0, 0]);

    let mut mem = if params.workloads & abi::WORKLOAD_MEMORY != 0 {
        Some(memory_workload::Runner::new(&params))
    } else {
        None
    };

    let devices = abi::WORKLOAD_NET | abi::WORKLOAD_DISK;
    let mut virtio_work = if params.workloads & devices != 0 {
        Some(virtio::Workloads::start(
            &params,
            control::clock_ns() / 1_000_000,
        ))
    } else {
        None
    };

    loop {
        let mut busy = false;
        if let Some(w) = virtio_work.as_mut() {
            busy |= w.step(control::clock_ns() / 1_000_000);
        }
        if let Some(m) = mem.as_mut() {
            if m.step() {
                busy = true;
            } else {
                println!(
                    "wanmig-guest: memory workload done at iteration {}",
                    m.iteration()
                );
                mem = None;
            }
        }
        if !busy {
            if params.workloads == abi::WORKLOAD_MEMORY {
                // Only the memory workload was asked for and it has finished.
                control::exit(abi::EXIT_OK);
            }
            // Idle: give the host CPU back until there is work again.
            control::sleep_us(10_000);
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("wanmig-guest: PANIC: {}", info);
    control::exit(abi::EXIT_PANIC)
}

/// The host target's precompiled `core` references the unwinding
/// personality routine; this guest aborts on panic and never unwinds, so the
/// routine only has to exist.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}
