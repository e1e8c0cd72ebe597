//! A minimal ELF64 loader for the test guest: copies the PT_LOAD segments to
//! their physical addresses and returns the entry point. Hand-written rather
//! than rust-vmm's linux-loader because it is ~60 lines, needs only PT_LOAD,
//! and linux-loader pins its own vm-memory version; every field read from
//! the file is bounds-checked.

use crate::memory::GuestMem;
use vm_memory::{Bytes, GuestAddress};
use wanmig_guest_abi::{IMAGE_BASE, IMAGE_END};

/// Errors loading a guest image.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("guest image is not a little-endian x86-64 ELF64 executable: {0}")]
    NotElf(&'static str),
    #[error("guest image is truncated: {0}")]
    Truncated(&'static str),
    #[error("guest image segment at {addr:#x} (+{len:#x}) lies outside the image area {IMAGE_BASE:#x}..{IMAGE_END:#x}")]
    SegmentOutOfRange { addr: u64, len: u64 },
    #[error("cannot write the guest image into guest memory: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Loads `image` into `mem` and returns its entry point.
pub fn load(mem: &GuestMem, image: &[u8]) -> Result<u64, ElfError> {
    if image.get(0..4) != Some(b"\x7fELF") {
        return Err(ElfError::NotElf("bad magic"));
    }
    if image.get(4) != Some(&2) || image.get(5) != Some(&1) {
        return Err(ElfError::NotElf("not ELF64 little-endian"));
    }
    if u16_at(image, 18) != Some(62) {
        return Err(ElfError::NotElf("machine is not x86-64"));
    }
    let t = ElfError::Truncated;
    let entry = u64_at(image, 24).ok_or(t("header"))?;
    let phoff = u64_at(image, 32).ok_or(t("header"))? as usize;
    let phentsize = u16_at(image, 54).ok_or(t("header"))? as usize;
    let phnum = u16_at(image, 56).ok_or(t("header"))? as usize;
    if phentsize < 56 {
        return Err(ElfError::NotElf("program header entries too small"));
    }
    for i in 0..phnum {
        let ph = phoff
            .checked_add(i.checked_mul(phentsize).ok_or(t("program headers"))?)
            .ok_or(t("program headers"))?;
        let p_type = u32_at(image, ph).ok_or(t("program header"))?;
        if p_type != 1 {
            continue; // only PT_LOAD
        }
        let offset = u64_at(image, ph + 8).ok_or(t("program header"))? as usize;
        let paddr = u64_at(image, ph + 24).ok_or(t("program header"))?;
        let filesz = u64_at(image, ph + 32).ok_or(t("program header"))? as usize;
        let memsz = u64_at(image, ph + 40).ok_or(t("program header"))?;
        let end = paddr.checked_add(memsz);
        if paddr < IMAGE_BASE || end.is_none_or(|e| e > IMAGE_END) || (filesz as u64) > memsz {
            return Err(ElfError::SegmentOutOfRange {
                addr: paddr,
                len: memsz,
            });
        }
        let data = image
            .get(offset..offset.checked_add(filesz).ok_or(t("segment"))?)
            .ok_or(t("segment data"))?;
        mem.write_slice(data, GuestAddress(paddr))?;
        let zeros = vec![0u8; (memsz - filesz as u64) as usize];
        mem.write_slice(&zeros, GuestAddress(paddr + filesz as u64))?;
    }
    if !(IMAGE_BASE..IMAGE_END).contains(&entry) {
        return Err(ElfError::SegmentOutOfRange {
            addr: entry,
            len: 0,
        });
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_the_guest_and_rejects_garbage() {
        let mem = crate::memory::create(16 << 20).unwrap();
        let entry = load(&mem, crate::GUEST_IMAGE).unwrap();
        assert_eq!(entry, IMAGE_BASE);
        assert!(matches!(load(&mem, b"hello"), Err(ElfError::NotElf(_))));
        assert!(load(&mem, &crate::GUEST_IMAGE[..100]).is_err());
        let mut bad = crate::GUEST_IMAGE.to_vec();
        bad[18] = 3; // machine = i386
        assert!(matches!(load(&mem, &bad), Err(ElfError::NotElf(_))));
    }
}
