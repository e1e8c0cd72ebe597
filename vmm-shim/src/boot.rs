//! The 64-bit boot environment the VMM builds before the first instruction:
//! identity page tables (2 MiB pages over the first 4 GiB), a GDT with
//! 64-bit code/data and a TSS, the boot-parameter block, and the initial
//! registers (long mode, paging, SSE enabled via CR4.OSFXSR/OSXMMEXCPT).

use crate::memory::GuestMem;
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};
use wanmig_guest_abi::{
    BootParams, BOOT_PARAMS_GPA, BOOT_PARAMS_SIZE, GDT_GPA, IDENTITY_MAPPED_GIB, PAGE_SIZE,
    PDPT_GPA, PD_GPA, PML4_GPA, STACK_TOP, TSS_GPA,
};

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// GDT entries: null, kernel code64 (0x08), kernel data (0x10), user
/// code64 (0x18), user data (0x20), and the 16-byte TSS descriptor (0x28).
const GDT: [u64; 7] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0xa0fb, 0, 0xfffff),
    gdt_entry(0xc0f3, 0, 0xfffff),
    gdt_entry(0x008b, TSS_GPA as u32, TSS_LIMIT),
    0, // upper half of the TSS descriptor: base bits 63..32
];
const USER_CODE: u16 = 3;
const USER_DATA: u16 = 4;
const TSS: u16 = 5;
/// Offset of the I/O permission bitmap in the TSS (right after it).
const IOMAP_OFFSET: u64 = 0x68;
/// Ports the bitmap covers (all the guest uses, see the ABI's ports).
const IOMAP_PORTS: u64 = 0x800;
/// TSS limit: the TSS, the bitmap and its terminating 0xff byte.
const TSS_LIMIT: u32 = (IOMAP_OFFSET + IOMAP_PORTS / 8) as u32;
/// RFLAGS: reserved bit 1, IOPL 3 (port I/O allowed at CPL 3), IF clear.
const RFLAGS_BOOT: u64 = 0x2 | (3 << 12);

const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (flags as u64, base as u64, limit as u64);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

fn segment(index: u16) -> kvm_segment {
    let e = GDT[index as usize];
    let g = ((e >> 55) & 1) as u8;
    let raw_limit = ((e >> 32) & 0xf_0000) | (e & 0xffff);
    let present = ((e >> 47) & 1) as u8;
    kvm_segment {
        base: ((e >> 32) & 0xff00_0000) | ((e >> 16) & 0xff_ffff),
        limit: if g == 1 {
            ((raw_limit << 12) | 0xfff) as u32
        } else {
            raw_limit as u32
        },
        // RPL = DPL, so user segments load at CPL 3.
        selector: (index * 8) | (((e >> 45) & 3) as u16),
        type_: ((e >> 40) & 0xf) as u8,
        present,
        dpl: ((e >> 45) & 3) as u8,
        db: ((e >> 54) & 1) as u8,
        s: ((e >> 44) & 1) as u8,
        l: ((e >> 53) & 1) as u8,
        g,
        avl: ((e >> 52) & 1) as u8,
        unusable: if present == 1 { 0 } else { 1 },
        padding: 0,
    }
}

/// Writes page tables, GDT and boot parameters into guest memory.
pub fn write_boot_structures(
    mem: &GuestMem,
    params: &BootParams,
) -> Result<(), vm_memory::GuestMemoryError> {
    for (i, e) in GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_GPA + i as u64 * 8))?;
    }
    // TSS: zeroed, I/O bitmap right after it with every covered port
    // allowed (0 bits), terminated by 0xff.
    mem.write_slice(&[0u8; 0x1000], GuestAddress(TSS_GPA))?;
    mem.write_obj(IOMAP_OFFSET as u16, GuestAddress(TSS_GPA + 0x66))?;
    mem.write_obj(
        0xffu8,
        GuestAddress(TSS_GPA + IOMAP_OFFSET + IOMAP_PORTS / 8),
    )?;
    // present | writable | user at every level: the guest runs at CPL 3.
    mem.write_obj(PDPT_GPA | 0x7, GuestAddress(PML4_GPA))?;
    for gib in 0..IDENTITY_MAPPED_GIB {
        let pd = PD_GPA + gib * PAGE_SIZE;
        mem.write_obj(pd | 0x7, GuestAddress(PDPT_GPA + gib * 8))?;
        for i in 0..512u64 {
            let addr = (gib << 30) | (i << 21);
            // present | writable | user | 2 MiB page
            mem.write_obj(addr | 0x87, GuestAddress(pd + i * 8))?;
        }
    }
    mem.write_slice(&boot_params_bytes(params), GuestAddress(BOOT_PARAMS_GPA))?;
    Ok(())
}

/// The boot-parameter block as the guest sees it (`#[repr(C)]`, LE).
pub fn boot_params_bytes(p: &BootParams) -> [u8; BOOT_PARAMS_SIZE] {
    let mut out = [0u8; BOOT_PARAMS_SIZE];
    let mut w = Writer {
        buf: &mut out,
        pos: 0,
    };
    w.u64(p.magic);
    w.u32(p.version);
    w.u32(p.workloads);
    w.u64(p.mem_size);
    w.u64(p.mem_seed);
    w.u64(p.mem_working_set_pages);
    w.u64(p.mem_pages_per_iteration);
    w.u64(p.mem_iterations);
    w.u64(p.mem_iteration_period_ns);
    w.bytes(&p.net_mac);
    w.bytes(&[p.net_prefix_len, p.net_reserved]);
    w.bytes(&p.net_ip);
    w.bytes(&p.net_port.to_le_bytes());
    w.bytes(&p.net_reserved2.to_le_bytes());
    w.u64(p.disk_seed);
    w.u64(p.disk_sectors);
    w.u64(p.disk_blocks_per_iteration);
    w.u64(p.disk_iterations);
    w.u64(p.mem_page_writes);
    for r in p.reserved {
        w.u64(r);
    }
    debug_assert_eq!(w.pos, BOOT_PARAMS_SIZE);
    out
}

struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}
impl Writer<'_> {
    fn bytes(&mut self, b: &[u8]) {
        self.buf[self.pos..self.pos + b.len()].copy_from_slice(b);
        self.pos += b.len();
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
}

/// Initial general-purpose registers: RIP at the entry, RSP at the stack.
pub fn initial_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        // SysV: at function entry RSP + 8 is 16-byte aligned.
        rsp: STACK_TOP - 8,
        rflags: RFLAGS_BOOT,
        ..Default::default()
    }
}

/// Turns the vCPU's reset sregs into long mode with paging, at CPL 3.
///
/// The guest runs in ring 3 with IOPL 3 (port I/O still works, and with no
/// interrupts enabled it never needs ring 0): on nested KVM (kvm-pvm) ring-0
/// guest code goes through KVM's instruction emulator, ~1 µs per
/// instruction and without most SSE instructions, while ring-3 code runs
/// natively. On VMX/SVM hosts it makes no difference.
pub fn long_mode_sregs(mut s: kvm_sregs) -> kvm_sregs {
    s.cs = segment(USER_CODE);
    let data = segment(USER_DATA);
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = segment(TSS);
    s.gdt.base = GDT_GPA;
    s.gdt.limit = (GDT.len() * 8 - 1) as u16;
    s.idt.base = 0;
    s.idt.limit = 0;
    s.cr3 = PML4_GPA;
    s.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    s.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    s.efer = EFER_LME | EFER_LMA;
    s
}

/// The x87/SSE control state a freshly reset CPU has (FCW 0x37f, MXCSR
/// 0x1f80: all exceptions masked).
pub fn initial_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_64_bit() {
        let cs = segment(1);
        assert_eq!((cs.l, cs.db, cs.present, cs.s, cs.type_), (1, 0, 1, 1, 0xb));
        assert_eq!(cs.selector, 8);
        let ucs = segment(USER_CODE);
        assert_eq!((ucs.l, ucs.dpl, ucs.selector), (1, 3, 0x1b));
        assert_eq!(segment(USER_DATA).selector, 0x23);
        let tr = segment(TSS);
        assert_eq!(
            (tr.type_, tr.s, tr.base, tr.limit),
            (0xb, 0, TSS_GPA, TSS_LIMIT)
        );
    }

    #[test]
    fn identity_map_covers_workload_and_mmio() {
        let mem = crate::memory::create(16 << 20).unwrap();
        write_boot_structures(&mem, &BootParams::default()).unwrap();
        // Walk the tables for a few addresses.
        for addr in [0u64, 0x80_0000, 0xd000_0000, 0xffff_f000] {
            let pml4e: u64 = mem
                .read_obj(GuestAddress(PML4_GPA + ((addr >> 39) & 511) * 8))
                .unwrap();
            let pdpte: u64 = mem
                .read_obj(GuestAddress((pml4e & !0xfff) + ((addr >> 30) & 511) * 8))
                .unwrap();
            let pde: u64 = mem
                .read_obj(GuestAddress((pdpte & !0xfff) + ((addr >> 21) & 511) * 8))
                .unwrap();
            assert_eq!(pde & 0x87, 0x87);
            assert_eq!((pde & !0x1f_ffff) | (addr & 0x1f_ffff), addr);
        }
    }

    #[test]
    fn boot_params_layout_matches_repr_c() {
        let p = BootParams {
            magic: 1,
            net_port: 0x1234,
            disk_iterations: 9,
            ..Default::default()
        };
        let b = boot_params_bytes(&p);
        assert_eq!(b.len(), core::mem::size_of::<BootParams>());
        let port = core::mem::offset_of!(BootParams, net_port);
        assert_eq!(&b[port..port + 2], &[0x34, 0x12]);
        let off = core::mem::offset_of!(BootParams, disk_iterations);
        assert_eq!(b[off], 9);
    }
}
