//! The contract between the VMM shim (host side) and the test guest
//! (`no_std`, built for the host target): guest-physical memory layout,
//! device MMIO windows, I/O ports, the control-port report format and the
//! boot-parameter block. Both sides depend on this crate so the numbers
//! cannot drift apart.
//!
//! Execution environment: the guest starts at `_start` in 64-bit mode at
//! CPL 3 with IOPL 3 (port I/O allowed), interrupts disabled, no IDT, SSE
//! enabled (CR4.OSFXSR), identity-mapped memory with user-accessible pages.
//! Ring 3 matters on nested KVM (kvm-pvm): there ring-0 guest code is run
//! by KVM's instruction emulator (slow, no SSE), ring-3 code natively, so
//! ordinary compiled code including `core::fmt` works at full speed.
#![no_std]

pub mod memory_workload;
pub mod virtio;

/// Size of a guest page (the unit of dirty tracking and migration).
pub const PAGE_SIZE: u64 = 4096;

// ---- guest-physical memory layout -------------------------------------

/// Boot GDT (null, 64-bit code, data) written by the VMM.
pub const GDT_GPA: u64 = 0x1000;
/// PML4 of the identity page tables written by the VMM.
pub const PML4_GPA: u64 = 0x2000;
/// PDPT of the identity map (4 entries, one per GiB).
pub const PDPT_GPA: u64 = 0x3000;
/// Four page directories of 2 MiB pages identity-mapping the first 4 GiB
/// (this covers RAM and the MMIO windows below 4 GiB).
pub const PD_GPA: u64 = 0x4000;
/// Number of GiB the boot page tables identity-map.
pub const IDENTITY_MAPPED_GIB: u64 = 4;
/// The 64-bit TSS, followed by its I/O permission bitmap (all ports the
/// guest uses allowed: the CPU, or an emulating hypervisor, may consult it
/// for `in`/`out` at CPL 3).
pub const TSS_GPA: u64 = 0x8000;
/// The [`BootParams`] block.
pub const BOOT_PARAMS_GPA: u64 = 0x9000;
/// Lowest address of the boot stack (grows down from [`STACK_TOP`]).
pub const STACK_BOTTOM: u64 = 0x1_0000;
/// Initial stack pointer.
pub const STACK_TOP: u64 = 0x10_0000;
/// Where the guest image is linked and loaded (1 MiB).
pub const IMAGE_BASE: u64 = 0x10_0000;
/// Upper bound of the guest image (text, data, bss).
pub const IMAGE_END: u64 = 0x40_0000;
/// Guest heap (for drivers and the TCP stack), 4 MiB .. 8 MiB.
pub const HEAP_BASE: u64 = 0x40_0000;
/// Size of the guest heap.
pub const HEAP_SIZE: u64 = 0x40_0000;
/// First byte of memory the memory workload may dirty.
pub const WORKLOAD_BASE: u64 = 0x80_0000;
/// Smallest guest memory the guest can run in (layout + 8 MiB workload).
pub const MIN_MEM_SIZE: u64 = 16 << 20;
/// Guest memory must end at or below this address (start of MMIO space).
pub const MAX_MEM_SIZE: u64 = 0xc000_0000;

// ---- I/O ports ----------------------------------------------------------

/// COM1 (16550 UART): the guest writes its console here.
pub const SERIAL_PORT: u16 = 0x3f8;
/// 16550 line status register offset (bit 5: transmitter empty).
pub const SERIAL_LSR_OFFSET: u16 = 5;

/// Control port: a 32-bit `out` of the guest-physical address of a
/// [`Report`] asks the VMM to record it.
pub const CONTROL_PORT_REPORT: u16 = 0x600;
/// Control port: a 32-bit `out` of the guest-physical address of a `u64`
/// cell asks the VMM to store its guest clock (nanoseconds, monotonic and
/// continued across migration) there.
pub const CONTROL_PORT_CLOCK: u16 = 0x604;
/// Control port: a 32-bit `out` of an exit code ends the VM's run.
pub const CONTROL_PORT_EXIT: u16 = 0x608;
/// Control port: a 32-bit `out` of a number of microseconds parks the vCPU
/// for that long (at most 100 ms per call): the guest's way to idle or
/// pace itself without interrupts.
pub const CONTROL_PORT_SLEEP_US: u16 = 0x60c;
/// Longest sleep the VMM grants per [`CONTROL_PORT_SLEEP_US`] write.
pub const MAX_SLEEP_US: u32 = 100_000;

/// Exit code the guest uses when it finished its configured work.
pub const EXIT_OK: u32 = 0;
/// Exit code the guest uses after a panic.
pub const EXIT_PANIC: u32 = 0xdead;
/// Exit code the guest uses when the boot parameters are invalid.
pub const EXIT_BAD_PARAMS: u32 = 0xbad;

// ---- reports --------------------------------------------------------------

/// Report kind: the memory workload finished an iteration.
/// `values = [iteration, digest, pages_written_total, 0]`.
pub const REPORT_MEM_ITERATION: u32 = 1;
/// Report kind: the disk workload finished an iteration.
/// `values = [iteration, digest, blocks_verified_total, errors]`.
pub const REPORT_DISK_ITERATION: u32 = 2;
/// Report kind: the network service status.
/// `values = [connections_accepted, bytes_served, counter, 0]`.
pub const REPORT_NET_STATUS: u32 = 3;
/// Report kind: the guest reached its main loop (`values[0]` = workloads).
pub const REPORT_BOOTED: u32 = 4;

/// What the guest hands to the VMM through [`CONTROL_PORT_REPORT`]. It lives
/// in guest memory; the port write carries only its address, so a report is
/// a single atomic exit and never half-written across a migration.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// One of the `REPORT_*` kinds.
    pub kind: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// Kind-specific values.
    pub values: [u64; 4],
}

/// Size in bytes of [`Report`].
pub const REPORT_SIZE: usize = core::mem::size_of::<Report>();

// ---- boot parameters --------------------------------------------------------

/// Magic value at the start of [`BootParams`] ("WANMIGBP").
pub const BOOT_PARAMS_MAGIC: u64 = 0x5042_4749_4d4e_4157;
/// Version of the [`BootParams`] layout.
pub const BOOT_PARAMS_VERSION: u32 = 1;

/// Workload bit: run the memory workload.
pub const WORKLOAD_MEMORY: u32 = 1 << 0;
/// Workload bit: run the TCP service on virtio-net.
pub const WORKLOAD_NET: u32 = 1 << 1;
/// Workload bit: run the disk workload on virtio-blk.
pub const WORKLOAD_DISK: u32 = 1 << 2;

/// Parameters the VMM writes at [`BOOT_PARAMS_GPA`] before the first
/// instruction; the guest reads them once at boot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootParams {
    /// [`BOOT_PARAMS_MAGIC`].
    pub magic: u64,
    /// [`BOOT_PARAMS_VERSION`].
    pub version: u32,
    /// Bitmask of `WORKLOAD_*`.
    pub workloads: u32,
    /// Guest memory size in bytes.
    pub mem_size: u64,

    /// Memory workload: seed of the deterministic page/value sequence.
    pub mem_seed: u64,
    /// Memory workload: size of the working set in pages (from
    /// [`WORKLOAD_BASE`]; clamped by the guest to the memory it has).
    pub mem_working_set_pages: u64,
    /// Memory workload: pages written per iteration.
    pub mem_pages_per_iteration: u64,
    /// Memory workload: iterations to run, 0 = forever.
    pub mem_iterations: u64,
    /// Memory workload: minimum guest-clock nanoseconds per iteration
    /// (pacing only; the digest never depends on timing), 0 = flat out.
    pub mem_iteration_period_ns: u64,

    /// Network service: MAC address.
    pub net_mac: [u8; 6],
    /// Network service: IPv4 prefix length.
    pub net_prefix_len: u8,
    /// Reserved, zero.
    pub net_reserved: u8,
    /// Network service: IPv4 address.
    pub net_ip: [u8; 4],
    /// Network service: TCP port.
    pub net_port: u16,
    /// Reserved, zero.
    pub net_reserved2: u16,

    /// Disk workload: seed of the deterministic block contents.
    pub disk_seed: u64,
    /// Disk workload: disk capacity in 512-byte sectors.
    pub disk_sectors: u64,
    /// Disk workload: blocks written and verified per iteration.
    pub disk_blocks_per_iteration: u64,
    /// Disk workload: iterations to run, 0 = forever.
    pub disk_iterations: u64,

    /// Memory workload: how a page write changes the page, a
    /// [`memory_workload::PageWriteMode::code`] (0 = one word, the
    /// behaviour before this field existed; 1 = the whole page).
    pub mem_page_writes: u64,

    /// Reserved for future fields, zero.
    pub reserved: [u64; 15],
}

/// Size in bytes of [`BootParams`].
pub const BOOT_PARAMS_SIZE: usize = core::mem::size_of::<BootParams>();

/// One step of the deterministic generator both sides use (SplitMix64):
/// advances `state` and returns the next value. Shared so host-side tests
/// can recompute what the guest must report.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Folds `value` into a running digest (FNV-1a style over 64-bit words,
/// followed by a SplitMix64 finaliser step).
pub fn digest_step(digest: u64, value: u64) -> u64 {
    let mut d = (digest ^ value).wrapping_mul(0x0000_0100_0000_01b3);
    d ^= d >> 29;
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    // The layout's regions must not overlap; checked at compile time.
    const _: () = {
        assert!(PD_GPA + IDENTITY_MAPPED_GIB * PAGE_SIZE <= TSS_GPA);
        assert!(TSS_GPA + PAGE_SIZE <= BOOT_PARAMS_GPA);
        assert!(BOOT_PARAMS_GPA + BOOT_PARAMS_SIZE as u64 <= STACK_BOTTOM);
        assert!(STACK_TOP <= IMAGE_BASE);
        assert!(IMAGE_END <= HEAP_BASE);
        assert!(HEAP_BASE + HEAP_SIZE <= WORKLOAD_BASE);
        assert!(WORKLOAD_BASE < MIN_MEM_SIZE);
        assert!(MAX_MEM_SIZE <= virtio::NET_MMIO_BASE);
    };

    #[test]
    fn splitmix_is_deterministic_and_varies() {
        let mut a = 7;
        let mut b = 7;
        let x = splitmix64(&mut a);
        assert_eq!(x, splitmix64(&mut b));
        assert_ne!(x, splitmix64(&mut a));
    }

    #[test]
    fn digest_depends_on_order() {
        let ab = digest_step(digest_step(0, 1), 2);
        let ba = digest_step(digest_step(0, 2), 1);
        assert_ne!(ab, ba);
    }
}
