//! The guest heap ([`abi::HEAP_BASE`], [`abi::HEAP_SIZE`]) as a bump
//! allocator for memory the virtio drivers and the TCP stack keep for the
//! whole run: virtqueue rings, packet and block buffers, socket buffers.
//! Nothing is ever freed; the guest is identity-mapped, so an address here
//! is also the guest-physical address the devices see.

use core::sync::atomic::{AtomicU64, Ordering};
use wanmig_guest_abi as abi;

/// Offset of the next free byte from `HEAP_BASE`.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// Reserve `size` bytes aligned to `align` (a power of two). The memory is
/// not necessarily zero: a VM started with a preloaded memory image has the
/// image's bytes here, so [`bytes`] clears what it hands out (virtqueue
/// rings must start zeroed, or the device reads a garbage ring index).
fn reserve(size: u64, align: u64) -> Option<u64> {
    let start = NEXT.load(Ordering::Relaxed);
    let base = (abi::HEAP_BASE + start).checked_add(align - 1)? & !(align - 1);
    let end = base.checked_add(size)?;
    if end > abi::HEAP_BASE + abi::HEAP_SIZE {
        return None;
    }
    NEXT.store(end - abi::HEAP_BASE, Ordering::Relaxed);
    Some(base)
}

/// A zeroed byte buffer that lives forever.
pub fn bytes(len: usize, align: u64) -> Option<&'static mut [u8]> {
    let addr = reserve(len as u64, align)?;
    // SAFETY: [addr, addr+len) lies in the heap, which is identity-mapped
    // RAM used by nothing else, and `reserve` hands each range out once, so
    // this is the only reference to it; it is zeroed before the slice is
    // made, and zeroed bytes are valid `u8`s.
    unsafe {
        core::ptr::write_bytes(addr as *mut u8, 0, len);
        Some(core::slice::from_raw_parts_mut(addr as *mut u8, len))
    }
}

/// Move `value` into the heap for the rest of the run.
pub fn leak<T>(value: T) -> Option<&'static mut T> {
    let addr = reserve(
        core::mem::size_of::<T>() as u64,
        core::mem::align_of::<T>() as u64,
    )?;
    let ptr = addr as *mut T;
    // SAFETY: the range is suitably aligned, in RAM, handed out once (so
    // unaliased), and initialised by the write before the reference exists.
    unsafe {
        ptr.write(value);
        Some(&mut *ptr)
    }
}
