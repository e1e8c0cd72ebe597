//! One split virtqueue in guest memory, driver side: the descriptor table,
//! the available ring the driver fills and the used ring the device fills.
//! Descriptors are managed by the caller (each driver has a fixed mapping
//! of descriptors to its buffers), which keeps this code tiny.

use core::sync::atomic::{compiler_fence, Ordering};
use wanmig_guest_abi::virtio::QUEUE_SIZE;

use super::arena;
use super::error::VirtioError;

/// Descriptor table at the start of the ring page (16 bytes per entry).
const DESC_OFFSET: u64 = 0;
/// Available ring (flags, idx, ring[size], used_event).
const AVAIL_OFFSET: u64 = 0x100;
/// Used ring (flags, idx, ring[size] of {id, len}, avail_event).
const USED_OFFSET: u64 = 0x200;

const _: () = assert!(16 * QUEUE_SIZE as u64 <= AVAIL_OFFSET);
const _: () = assert!(AVAIL_OFFSET + 6 + 2 * QUEUE_SIZE as u64 <= USED_OFFSET);
const _: () = assert!(USED_OFFSET + 6 + 8 * QUEUE_SIZE as u64 <= 4096);

/// A split virtqueue of [`QUEUE_SIZE`] entries in one heap page.
pub struct Virtqueue {
    index: u16,
    page: u64,
    avail_idx: u16,
    last_used: u16,
}

impl Virtqueue {
    /// Allocate the rings for queue `index`.
    pub fn new(index: u16) -> Result<Self, VirtioError> {
        let page = arena::bytes(4096, 4096).ok_or(VirtioError::OutOfMemory)?;
        Ok(Virtqueue {
            index,
            page: page.as_mut_ptr() as u64,
            avail_idx: 0,
            last_used: 0,
        })
    }

    /// The queue index in its device.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// Number of descriptors.
    pub fn size(&self) -> u16 {
        QUEUE_SIZE
    }

    /// Guest-physical addresses of (descriptor table, available ring, used ring).
    pub fn addresses(&self) -> (u64, u64, u64) {
        (
            self.page + DESC_OFFSET,
            self.page + AVAIL_OFFSET,
            self.page + USED_OFFSET,
        )
    }

    fn write<T>(&self, offset: u64, value: T) {
        // SAFETY: every offset used below lies inside the queue's own heap
        // page (checked by the const assertions) and is aligned for T; the
        // device reads this memory concurrently, hence volatile.
        unsafe { core::ptr::write_volatile((self.page + offset) as *mut T, value) }
    }

    fn read<T>(&self, offset: u64) -> T {
        // SAFETY: as for `write`; the device writes the used ring.
        unsafe { core::ptr::read_volatile((self.page + offset) as *const T) }
    }

    /// Fill descriptor `i` (taken modulo the queue size).
    pub fn set_desc(&mut self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = DESC_OFFSET + 16 * u64::from(i % QUEUE_SIZE);
        self.write(at, addr);
        self.write(at + 8, len);
        self.write(at + 12, flags);
        self.write(at + 14, next % QUEUE_SIZE);
    }

    /// Make the chain starting at descriptor `head` available to the device.
    pub fn publish(&mut self, head: u16) {
        let slot = AVAIL_OFFSET + 4 + 2 * u64::from(self.avail_idx % QUEUE_SIZE);
        self.write(slot, head % QUEUE_SIZE);
        // The ring entry (and the descriptors) must be visible before the
        // index; x86 keeps stores in order, the fence keeps the compiler too.
        compiler_fence(Ordering::Release);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.write(AVAIL_OFFSET + 2, self.avail_idx);
    }

    /// The next chain the device finished: (head descriptor, bytes written).
    pub fn pop_used(&mut self) -> Option<(u16, u32)> {
        let idx: u16 = self.read(USED_OFFSET + 2);
        if idx == self.last_used {
            return None;
        }
        compiler_fence(Ordering::Acquire);
        let elem = USED_OFFSET + 4 + 8 * u64::from(self.last_used % QUEUE_SIZE);
        let id: u32 = self.read(elem);
        let len: u32 = self.read(elem + 4);
        self.last_used = self.last_used.wrapping_add(1);
        Some(((id % u32::from(QUEUE_SIZE)) as u16, len))
    }
}
