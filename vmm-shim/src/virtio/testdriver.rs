//! Test-only stand-in for a guest driver: programs a device through its
//! virtio-mmio registers and lays split virtqueues out in a real
//! `GuestMemoryMmap`, as the wanmig guest does.

use std::sync::Arc;

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use wanmig_guest_abi::virtio::{self as abi, reg, status, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};

use super::MmioDevice;

pub type Mem = GuestMemoryMmap<AtomicBitmap>;

/// 1 MiB of guest memory at guest-physical 0.
pub fn guest_memory() -> Arc<Mem> {
    Arc::new(Mem::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap())
}

pub fn read32(dev: &mut dyn MmioDevice, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.mmio_read(offset, &mut b);
    u32::from_le_bytes(b)
}

pub fn write32(dev: &mut dyn MmioDevice, offset: u64, value: u32) {
    dev.mmio_write(offset, &value.to_le_bytes());
}

/// Run the status/feature handshake up to FEATURES_OK; returns the status read back.
pub fn negotiate(dev: &mut dyn MmioDevice, features: u64) -> u32 {
    write32(dev, reg::STATUS, 0);
    write32(dev, reg::STATUS, status::ACKNOWLEDGE);
    write32(dev, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    write32(dev, reg::DRIVER_FEATURES_SEL, 0);
    write32(dev, reg::DRIVER_FEATURES, features as u32);
    write32(dev, reg::DRIVER_FEATURES_SEL, 1);
    write32(dev, reg::DRIVER_FEATURES, (features >> 32) as u32);
    write32(
        dev,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    read32(dev, reg::STATUS)
}

/// Set DRIVER_OK after the queues are set up.
pub fn driver_ok(dev: &mut dyn MmioDevice) {
    let s = read32(dev, reg::STATUS);
    write32(dev, reg::STATUS, s | status::DRIVER_OK);
    assert_ne!(
        read32(dev, reg::STATUS) & status::DRIVER_OK,
        0,
        "device refused DRIVER_OK"
    );
}

/// A buffer in a descriptor chain: (guest address, length, device-writable).
pub type Buf = (u64, u32, bool);

/// The driver's view of one split virtqueue.
pub struct DriverQueue {
    pub index: u16,
    desc: u64,
    avail: u64,
    used: u64,
    size: u16,
    next_desc: u16,
    avail_idx: u16,
    last_used: u16,
}

impl DriverQueue {
    /// Lay the queue out at `base` (4 KiB used) and program it into the device.
    pub fn setup(dev: &mut dyn MmioDevice, index: u16, base: u64) -> Self {
        let size = abi::QUEUE_SIZE;
        let q = DriverQueue {
            index,
            desc: base,
            avail: base + 16 * u64::from(size),
            used: base + 0x800,
            size,
            next_desc: 0,
            avail_idx: 0,
            last_used: 0,
        };
        write32(dev, reg::QUEUE_SEL, u32::from(index));
        assert_eq!(read32(dev, reg::QUEUE_NUM_MAX), u32::from(size));
        write32(dev, reg::QUEUE_NUM, u32::from(size));
        write32(dev, reg::QUEUE_DESC_LOW, q.desc as u32);
        write32(dev, reg::QUEUE_DESC_HIGH, (q.desc >> 32) as u32);
        write32(dev, reg::QUEUE_AVAIL_LOW, q.avail as u32);
        write32(dev, reg::QUEUE_AVAIL_HIGH, (q.avail >> 32) as u32);
        write32(dev, reg::QUEUE_USED_LOW, q.used as u32);
        write32(dev, reg::QUEUE_USED_HIGH, (q.used >> 32) as u32);
        write32(dev, reg::QUEUE_READY, 1);
        assert_eq!(
            read32(dev, reg::QUEUE_READY),
            1,
            "queue {index} not accepted"
        );
        q
    }

    /// Publish a chain made of `bufs`; returns its head descriptor index.
    pub fn push(&mut self, mem: &Mem, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let idx = self.next_desc;
            self.next_desc = (self.next_desc + 1) % self.size;
            let mut flags = if writable { VIRTQ_DESC_F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= VIRTQ_DESC_F_NEXT;
            }
            self.write_desc(mem, idx, addr, len, flags, self.next_desc);
        }
        self.publish(mem, head);
        head
    }

    /// Write raw descriptor `idx` (for building malformed chains).
    pub fn write_desc(&self, mem: &Mem, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(self.desc + 16 * u64::from(idx));
        mem.write_obj(addr, at).unwrap();
        mem.write_obj(len, GuestAddress(at.0 + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(at.0 + 12)).unwrap();
        mem.write_obj(next, GuestAddress(at.0 + 14)).unwrap();
    }

    /// Put descriptor `head` into the available ring.
    pub fn publish(&mut self, mem: &Mem, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// Next used element: (descriptor id, bytes written).
    pub fn pop_used(&mut self, mem: &Mem) -> Option<(u32, u32)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        if idx == self.last_used {
            return None;
        }
        let elem = self.used + 4 + 8 * u64::from(self.last_used % self.size);
        let id: u32 = mem.read_obj(GuestAddress(elem)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(elem + 4)).unwrap();
        self.last_used = self.last_used.wrapping_add(1);
        Some((id, len))
    }

    /// Tell the device about new buffers.
    pub fn notify(&self, dev: &mut dyn MmioDevice) {
        write32(dev, reg::QUEUE_NOTIFY, u32::from(self.index));
    }
}
