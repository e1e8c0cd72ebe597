//! A QEMU guest firmware for tests and the QEMU baseline: a 64 KiB image
//! given to QEMU with `-bios` (no SeaBIOS, so guest RAM keeps exactly what
//! was preloaded) that dirties pages of a working set at a set rate, or
//! idles.
//!
//! The program is `testenv/qemu-guest/dirty.asm`; its bytes are carried
//! here with the source line of each instruction beside them, so building
//! the tests needs no assembler. `guest_matches_nasm` assembles the
//! source with `nasm` (when installed) and checks the two agree byte for
//! byte. The host only patches the parameter block ([`DirtyParams`]).

/// Size of the firmware image (QEMU wants a multiple of 64 KiB).
pub const IMAGE_SIZE: usize = 0x1_0000;
/// The image sits at the top of the 4 GiB space: offset 0 is this address.
const BASE: u32 = 0xFFFF_0000;
/// Offset of the parameter block (`pages_per_sec`, `ws_base`, `ws_pages`,
/// `seed`, four little-endian u32s).
const PARAMS: usize = 0xF000;
/// Offset of [`CODE`] (the GDT, descriptors and program).
const CODE_AT: usize = 0xF010;
/// Offset of `irq` (the interrupt handler) and of the IDT that follows.
const IRQ_AT: usize = 0xF101;
const IDT_AT: usize = 0xF108;
const IDT_ENTRIES: usize = 48;
/// The reset vector (physical 0xFFFFFFF0) and its `jmp start16` (E9 rel16:
/// start16 at 0xF034, relative to the next instruction at 0xFFF3).
const RESET_AT: usize = 0xFFF0;
const RESET_JMP: [u8; 3] = [0xE9, 0x41, 0xF0];
/// Interrupts per second of the guest's PIT (`HZ` in the source).
pub const HZ: u32 = 1000;
/// The page holding the guest's stack (interrupt frames are pushed just
/// below `STACK` = 0x7000); the only page outside the working set the guest
/// writes.
pub const STACK_PAGE: u64 = 6;
/// Where the working set starts: 8 MiB, as wanmig's test guest's
/// `WORKLOAD_BASE`.
pub const WORKING_SET_BASE: u64 = 0x80_0000;

/// Bytes from offset 0xF010 to 0xF108 of `dirty.asm`'s output.
#[rustfmt::skip]
const CODE: &[u8] = &[
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // f010: gdt: dq 0
    0xFF, 0xFF, 0x00, 0x00, 0x00, 0x9A, 0xCF, 0x00, // f018: dq 0x00CF9A000000FFFF
    0xFF, 0xFF, 0x00, 0x00, 0x00, 0x92, 0xCF, 0x00, // f020: dq 0x00CF92000000FFFF
    // gdt_desc:
    0x17, 0x00, // f028: dw 3 * 8 - 1
    0x10, 0xF0, 0xFF, 0xFF, // f02a: dd gdt
    // idt_desc:
    0x7F, 0x01, // f02e: dw 48 * 8 - 1
    0x08, 0xF1, 0xFF, 0xFF, // f030: dd idt
    // start16:
    0xFA, // f034: cli
    0xFC, // f035: cld
    0x2E, 0x66, 0x0F, 0x01, 0x16, 0x28, 0xF0, // f036: o32 lgdt [cs:gdt_desc - $$]
    0x0F, 0x20, 0xC0, // f03d: mov eax, cr0
    0x0C, 0x01, // f040: or al, 1
    0x0F, 0x22, 0xC0, // f042: mov cr0, eax
    0x66, 0xEA, 0x4D, 0xF0, 0xFF, 0xFF, 0x08, 0x00, // f045: jmp dword 0x08:start32
    // start32:
    0x66, 0xB8, 0x10, 0x00, // f04d: mov ax, 0x10
    0x8E, 0xD8, // f051: mov ds, ax
    0x8E, 0xC0, // f053: mov es, ax
    0x8E, 0xD0, // f055: mov ss, ax
    0xBC, 0x00, 0x70, 0x00, 0x00, // f057: mov esp, STACK
    0x0F, 0x01, 0x1D, 0x2E, 0xF0, 0xFF, 0xFF, // f05c: lidt [idt_desc]
    0x8B, 0x1D, 0x00, 0xF0, 0xFF, 0xFF, // f063: mov ebx, [pages_per_sec]
    0x85, 0xDB, // f069: test ebx, ebx
    0x0F, 0x84, 0x8D, 0x00, 0x00, 0x00, // f06b: jz idle
    0xB0, 0x11, // f071: mov al, 0x11
    0xE6, 0x20, // f073: out 0x20, al
    0xE6, 0xA0, // f075: out 0xA0, al
    0xB0, 0x20, // f077: mov al, 0x20
    0xE6, 0x21, // f079: out 0x21, al
    0xB0, 0x28, // f07b: mov al, 0x28
    0xE6, 0xA1, // f07d: out 0xA1, al
    0xB0, 0x04, // f07f: mov al, 4
    0xE6, 0x21, // f081: out 0x21, al
    0xB0, 0x02, // f083: mov al, 2
    0xE6, 0xA1, // f085: out 0xA1, al
    0xB0, 0x01, // f087: mov al, 1
    0xE6, 0x21, // f089: out 0x21, al
    0xE6, 0xA1, // f08b: out 0xA1, al
    0xB0, 0xFE, // f08d: mov al, 0xFE
    0xE6, 0x21, // f08f: out 0x21, al
    0xB0, 0xFF, // f091: mov al, 0xFF
    0xE6, 0xA1, // f093: out 0xA1, al
    0xB0, 0x34, // f095: mov al, 0x34
    0xE6, 0x43, // f097: out 0x43, al
    0x66, 0xB8, 0xA9, 0x04, // f099: mov ax, (PIT_HZ + HZ / 2) / HZ
    0xE6, 0x40, // f09d: out 0x40, al
    0x88, 0xE0, // f09f: mov al, ah
    0xE6, 0x40, // f0a1: out 0x40, al
    0xC7, 0x05, 0xF0, 0x00, 0xE0, 0xFE, 0x2F, 0x01, 0x00, 0x00, // f0a3: mov dword [0xFEE000F0], 0x12F
    0xC7, 0x05, 0x50, 0x03, 0xE0, 0xFE, 0x00, 0x07, 0x00, 0x00, // f0ad: mov dword [0xFEE00350], 0x700
    0x31, 0xF6, // f0b7: xor esi, esi
    0x8B, 0x0D, 0x0C, 0xF0, 0xFF, 0xFF, // f0b9: mov ecx, [seed]
    // tick:
    0xFB, // f0bf: sti
    0xF4, // f0c0: hlt
    0xFA, // f0c1: cli
    0x01, 0xDE, // f0c2: add esi, ebx
    // dirty:
    0x81, 0xFE, 0xE8, 0x03, 0x00, 0x00, // f0c4: cmp esi, HZ
    0x72, 0xF3, // f0ca: jb tick
    0x81, 0xEE, 0xE8, 0x03, 0x00, 0x00, // f0cc: sub esi, HZ
    0x69, 0xC9, 0x0D, 0x66, 0x19, 0x00, // f0d2: imul ecx, ecx, 1664525
    0x81, 0xC1, 0x5F, 0xF3, 0x6E, 0x3C, // f0d8: add ecx, 1013904223
    0x89, 0xC8, // f0de: mov eax, ecx
    0xF7, 0x25, 0x08, 0xF0, 0xFF, 0xFF, // f0e0: mul dword [ws_pages]
    0xC1, 0xE2, 0x0C, // f0e6: shl edx, 12
    0x03, 0x15, 0x04, 0xF0, 0xFF, 0xFF, // f0e9: add edx, [ws_base]
    0x89, 0xC8, // f0ef: mov eax, ecx
    0xC1, 0xE8, 0x08, // f0f1: shr eax, 8
    0x25, 0xFC, 0x0F, 0x00, 0x00, // f0f4: and eax, 0xFFC
    0x89, 0x0C, 0x02, // f0f9: mov [edx + eax], ecx
    0xEB, 0xC6, // f0fc: jmp dirty
    // idle:
    0xF4, // f0fe: hlt
    0xEB, 0xFD, // f0ff: jmp idle
    // irq:
    0x50, // f101: push eax
    0xB0, 0x20, // f102: mov al, 0x20
    0xE6, 0x20, // f104: out 0x20, al
    0x58, // f106: pop eax
    0xCF, // f107: iret

];

const _: () = assert!(CODE_AT + CODE.len() == IDT_AT && IRQ_AT < IDT_AT);

/// What the guest does; written into the image's parameter block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirtyParams {
    /// Pages dirtied per second; 0 = an idle guest (halts for good).
    pub pages_per_sec: u32,
    /// Physical address of the working set (page-aligned, below 4 GiB).
    pub ws_base: u32,
    /// Pages in the working set.
    pub ws_pages: u32,
    /// Seed of the guest's page/offset generator.
    pub seed: u32,
}

impl DirtyParams {
    /// An idle guest.
    pub fn idle() -> Self {
        DirtyParams {
            pages_per_sec: 0,
            ws_base: 0,
            ws_pages: 0,
            seed: 0,
        }
    }
}

/// The firmware image for `p`.
pub fn firmware(p: &DirtyParams) -> Vec<u8> {
    let mut img = vec![0u8; IMAGE_SIZE];
    for (i, v) in [p.pages_per_sec, p.ws_base, p.ws_pages, p.seed]
        .into_iter()
        .enumerate()
    {
        img[PARAMS + 4 * i..PARAMS + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }
    img[CODE_AT..CODE_AT + CODE.len()].copy_from_slice(CODE);
    // 48 32-bit interrupt gates (selector 0x08, present, DPL 0) to `irq`.
    let irq = BASE + IRQ_AT as u32;
    for e in img[IDT_AT..IDT_AT + 8 * IDT_ENTRIES].chunks_exact_mut(8) {
        e[0..2].copy_from_slice(&(irq as u16).to_le_bytes());
        e[2..4].copy_from_slice(&0x08u16.to_le_bytes());
        e[4..6].copy_from_slice(&0x8E00u16.to_le_bytes());
        e[6..8].copy_from_slice(&((irq >> 16) as u16).to_le_bytes());
    }
    img[RESET_AT..RESET_AT + RESET_JMP.len()].copy_from_slice(&RESET_JMP);
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(img: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(img[off..off + 4].try_into().unwrap())
    }

    #[test]
    fn parameters_land_in_the_block_the_program_reads() {
        let p = DirtyParams {
            pages_per_sec: 1280,
            ws_base: 0x80_0000,
            ws_pages: 8192,
            seed: 7,
        };
        let img = firmware(&p);
        assert_eq!(img.len(), IMAGE_SIZE);
        assert_eq!(u32_at(&img, PARAMS), 1280);
        assert_eq!(u32_at(&img, PARAMS + 4), 0x80_0000);
        assert_eq!(u32_at(&img, PARAMS + 8), 8192);
        assert_eq!(u32_at(&img, PARAMS + 12), 7);
        // `mov ebx, [pages_per_sec]` (8B 1D disp32) reads the first word.
        let at = CODE_AT + 0x53;
        assert_eq!(&img[at..at + 2], &[0x8B, 0x1D]);
        assert_eq!(u32_at(&img, at + 2), BASE + PARAMS as u32);
    }

    #[test]
    fn reset_vector_reaches_start16_and_gates_reach_irq() {
        let img = firmware(&DirtyParams::idle());
        // E9 rel16 at 0xFFF0: target = 0xFFF3 + rel (mod 64 KiB).
        assert_eq!(img[RESET_AT], 0xE9);
        let rel = u16::from_le_bytes([img[RESET_AT + 1], img[RESET_AT + 2]]);
        let target = (RESET_AT as u16 + 3).wrapping_add(rel);
        assert_eq!(target, 0xF034);
        assert_eq!(img[target as usize], 0xFA, "start16 begins with cli");
        assert_eq!(img[IRQ_AT], 0x50, "irq begins with push eax");
        let gate = &img[IDT_AT + 0x20 * 8..IDT_AT + 0x21 * 8];
        let off = u16::from_le_bytes([gate[0], gate[1]]) as u32
            | (u16::from_le_bytes([gate[6], gate[7]]) as u32) << 16;
        assert_eq!(off, BASE + IRQ_AT as u32);
        // The IDT descriptor (at 0xF02E) covers the 48 gates at IDT_AT.
        assert_eq!(u16::from_le_bytes([img[0xF02E], img[0xF02F]]), 48 * 8 - 1);
        assert_eq!(u32_at(&img, 0xF030), BASE + IDT_AT as u32);
    }

    /// The carried bytes are what the checked-in source assembles to.
    #[test]
    fn guest_matches_nasm() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("qemu-guest/dirty.asm");
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("dirty.bin");
        let status = std::process::Command::new("nasm")
            .arg("-f")
            .arg("bin")
            .arg("-o")
            .arg(&out)
            .arg(&src)
            .status();
        match status {
            Err(e) => {
                eprintln!("SKIPPED guest_matches_nasm: cannot run nasm ({e}); install `nasm` to check the guest bytes");
                return;
            }
            Ok(s) => assert!(s.success(), "nasm failed on {}", src.display()),
        }
        let want = std::fs::read(&out).unwrap();
        let got = firmware(&DirtyParams::idle());
        assert_eq!(want.len(), got.len());
        if let Some(i) = (0..want.len()).find(|&i| want[i] != got[i]) {
            panic!(
                "guest bytes differ from nasm's at offset {i:#x}: carried {:#04x}, nasm {:#04x}; regenerate CODE from the listing",
                got[i], want[i]
            );
        }
    }
}
