//! Runs the shared deterministic memory workload
//! ([`wanmig_guest_abi::memory_workload`]) on real guest memory from
//! `WORKLOAD_BASE`, reports each iteration and paces by the guest clock.

use crate::control;
use wanmig_guest_abi as abi;
use wanmig_guest_abi::memory_workload::{MemoryWorkload, PageWriteMode, WorkingSet};

/// The working set: identity-mapped guest-physical pages from
/// `WORKLOAD_BASE`.
struct GuestPages {
    pages: u64,
}

impl WorkingSet for GuestPages {
    fn pages(&self) -> u64 {
        self.pages
    }
    fn read(&self, page: u64, word: u64) -> u64 {
        let addr = abi::WORKLOAD_BASE + page * abi::PAGE_SIZE + word * 8;
        // SAFETY: page < pages, which `Runner::new` bounded by the memory
        // size, so the address is inside RAM owned by this workload.
        unsafe { core::ptr::read_volatile(addr as *const u64) }
    }
    fn write(&mut self, page: u64, word: u64, value: u64) {
        let addr = abi::WORKLOAD_BASE + page * abi::PAGE_SIZE + word * 8;
        // SAFETY: as for `read`.
        unsafe { core::ptr::write_volatile(addr as *mut u64, value) }
    }
}

/// The memory workload with its pacing.
pub struct Runner {
    work: MemoryWorkload,
    mem: GuestPages,
    iterations: u64,
    period_ns: u64,
    next_deadline: u64,
}

impl Runner {
    /// Sets the workload up from the boot parameters.
    pub fn new(p: &abi::BootParams) -> Self {
        let available = p.mem_size.saturating_sub(abi::WORKLOAD_BASE) / abi::PAGE_SIZE;
        let pages = p.mem_working_set_pages.clamp(1, available.max(1));
        let Some(mode) = PageWriteMode::from_code(p.mem_page_writes) else {
            crate::println!(
                "wanmig-guest: unknown page-write mode {} in the boot parameters (0 = word, 1 = full page)",
                p.mem_page_writes
            );
            control::exit(abi::EXIT_BAD_PARAMS);
        };
        crate::println!(
            "wanmig-guest: memory workload: {} pages working set, {} pages/iteration, {:?} page writes, seed {:#x}",
            pages,
            p.mem_pages_per_iteration,
            mode,
            p.mem_seed
        );
        Runner {
            work: MemoryWorkload::with_mode(p.mem_seed, p.mem_pages_per_iteration, mode),
            mem: GuestPages { pages },
            iterations: p.mem_iterations,
            period_ns: p.mem_iteration_period_ns,
            next_deadline: 0,
        }
    }

    /// Runs one iteration when it is due; false once all iterations ran.
    pub fn step(&mut self) -> bool {
        if self.iterations != 0 && self.work.iteration() >= self.iterations {
            return false;
        }
        if self.period_ns != 0 {
            let now = control::clock_ns();
            if self.next_deadline == 0 {
                self.next_deadline = now;
            }
            if now < self.next_deadline {
                let wait_us = ((self.next_deadline - now) / 1000).max(1);
                control::sleep_us(wait_us.min(abi::MAX_SLEEP_US as u64) as u32);
                return true;
            }
            self.next_deadline += self.period_ns;
            if self.next_deadline < now {
                // Fell behind (e.g. paused for migration): do not burst.
                self.next_deadline = now + self.period_ns;
            }
        }
        let (iteration, digest) = self.work.step(&mut self.mem);
        control::report(
            abi::REPORT_MEM_ITERATION,
            [iteration, digest, self.work.pages_written(), 0],
        );
        true
    }

    /// Iterations completed.
    pub fn iteration(&self) -> u64 {
        self.work.iteration()
    }
}
