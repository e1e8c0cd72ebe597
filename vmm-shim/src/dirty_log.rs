//! Guest memory's KVM slot and its dirty log: registers the mapping with
//! KVM (slot 0), switches `KVM_MEM_LOG_DIRTY_PAGES` on and off, and fetches
//! the vCPU-side dirty bitmap, OR'ed with the VMM-side `AtomicBitmap`.
//!
//! `KVM_GET_DIRTY_LOG` (without manual protect) returns and clears the log
//! and re-protects the pages in one call; kvm-ioctls 0.25 has no
//! `KVM_CLEAR_DIRTY_LOG`, and the single call is enough for one vCPU.

use crate::memory::{self, GuestMem};
use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

/// The memory slot guest RAM occupies.
pub const RAM_SLOT: u32 = 0;

/// Errors of the KVM memory slot.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("KVM_SET_USER_MEMORY_REGION (dirty logging {logging}) failed: {source}")]
    SetRegion {
        logging: bool,
        source: kvm_ioctls::Error,
    },
    #[error("KVM_GET_DIRTY_LOG failed: {0}")]
    GetLog(kvm_ioctls::Error),
    #[error("guest memory has no host mapping")]
    NoMapping,
}

/// Registers guest RAM as slot 0, with or without dirty logging.
pub fn register(vm: &VmFd, mem: &GuestMem, logging: bool) -> Result<(), SlotError> {
    let region = mem.iter().next().ok_or(SlotError::NoMapping)?;
    let host = region
        .get_host_address(MemoryRegionAddress(0))
        .map_err(|_| SlotError::NoMapping)?;
    let desc = kvm_userspace_memory_region {
        slot: RAM_SLOT,
        flags: if logging { KVM_MEM_LOG_DIRTY_PAGES } else { 0 },
        guest_phys_addr: region.start_addr().0,
        memory_size: region.len(),
        userspace_addr: host as u64,
    };
    // SAFETY: the mapping [host, host + len) is owned by `mem`, which the
    // caller's Vm keeps alive for as long as the VM fd exists (the Vm owns
    // both and drops the VM fd first); the slot covers exactly that range.
    unsafe { vm.set_user_memory_region(desc) }
        .map_err(|source| SlotError::SetRegion { logging, source })
}

/// Takes the pages dirtied since the last call: KVM's log for vCPU writes
/// OR'ed with the VMM-side bitmap for device/VMM writes. Bit `i` of word
/// `i / 64` is page `i`.
pub fn take_dirty(vm: &VmFd, mem: &GuestMem) -> Result<Vec<u64>, SlotError> {
    let len = memory::size(mem) as usize;
    let mut kvm_log = vm.get_dirty_log(RAM_SLOT, len).map_err(SlotError::GetLog)?;
    let vmm = memory::take_vmm_dirty(mem);
    for (k, v) in kvm_log.iter_mut().zip(vmm) {
        *k |= v;
    }
    Ok(kvm_log)
}

/// Expands a dirty bitmap into page numbers.
pub fn pages_of(bitmap: &[u64]) -> Vec<u64> {
    let mut out = Vec::new();
    for (w, &word) in bitmap.iter().enumerate() {
        let mut bits = word;
        while bits != 0 {
            let b = bits.trailing_zeros() as u64;
            out.push(w as u64 * 64 + b);
            bits &= bits - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn expands_bitmaps() {
        assert_eq!(super::pages_of(&[0b101, 0, 1 << 63]), [0, 2, 191]);
        assert!(super::pages_of(&[0, 0]).is_empty());
    }
}
