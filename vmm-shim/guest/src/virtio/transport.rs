//! The guest side of the virtio-mmio (version 2) transport: probing a
//! window, the status/feature handshake, handing queue addresses to the
//! device and notifying it. Every register access is a volatile 32-bit
//! load or store that traps to the VMM.

use wanmig_guest_abi::virtio::{self as abi, reg, status};

use super::error::VirtioError;
use super::queue::Virtqueue;

/// A probed virtio-mmio register window.
#[derive(Clone, Copy, Debug)]
pub struct Transport {
    base: u64,
}

impl Transport {
    /// Check that a virtio-mmio v2 device of `device_id` sits at `base`.
    pub fn probe(base: u64, device_id: u32) -> Result<Self, VirtioError> {
        let t = Transport { base };
        let magic = t.read(reg::MAGIC);
        if magic != abi::MAGIC || t.read(reg::VERSION) != abi::VERSION {
            return Err(VirtioError::NoDevice { base, magic });
        }
        let found = t.read(reg::DEVICE_ID);
        if found != device_id {
            return Err(VirtioError::WrongDevice {
                expected: device_id,
                found,
            });
        }
        Ok(t)
    }

    fn read(&self, offset: u64) -> u32 {
        // SAFETY: `base + offset` is inside a virtio-mmio window below 4 GiB,
        // identity-mapped and backed by no RAM: the access traps to the VMM
        // and has no effect on guest memory. Registers are 4-byte aligned.
        unsafe { core::ptr::read_volatile((self.base + offset) as *const u32) }
    }

    fn write(&self, offset: u64, value: u32) {
        // SAFETY: as for `read`.
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut u32, value) }
    }

    /// Reset the device and negotiate `VERSION_1 | wanted` (only the bits
    /// the device offers); returns the negotiated features.
    pub fn negotiate(&self, wanted: u64) -> Result<u64, VirtioError> {
        self.write(reg::STATUS, 0);
        self.write(reg::STATUS, status::ACKNOWLEDGE);
        self.write(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.write(reg::DEVICE_FEATURES_SEL, 0);
        let low = u64::from(self.read(reg::DEVICE_FEATURES));
        self.write(reg::DEVICE_FEATURES_SEL, 1);
        let high = u64::from(self.read(reg::DEVICE_FEATURES));
        let offered = low | (high << 32);
        if offered & abi::F_VERSION_1 == 0 {
            self.write(reg::STATUS, status::FAILED);
            return Err(VirtioError::FeaturesRejected);
        }
        let features = offered & (wanted | abi::F_VERSION_1);
        self.write(reg::DRIVER_FEATURES_SEL, 0);
        self.write(reg::DRIVER_FEATURES, features as u32);
        self.write(reg::DRIVER_FEATURES_SEL, 1);
        self.write(reg::DRIVER_FEATURES, (features >> 32) as u32);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.write(reg::STATUS, s);
        if self.read(reg::STATUS) & status::FEATURES_OK == 0 {
            self.write(reg::STATUS, status::FAILED);
            return Err(VirtioError::FeaturesRejected);
        }
        Ok(features)
    }

    /// Give the device the rings of `q` and mark the queue ready.
    pub fn setup_queue(&self, q: &Virtqueue) -> Result<(), VirtioError> {
        self.write(reg::QUEUE_SEL, u32::from(q.index()));
        if self.read(reg::QUEUE_NUM_MAX) < u32::from(q.size()) {
            return Err(VirtioError::QueueUnavailable(q.index()));
        }
        self.write(reg::QUEUE_NUM, u32::from(q.size()));
        let (desc, avail, used) = q.addresses();
        self.write(reg::QUEUE_DESC_LOW, desc as u32);
        self.write(reg::QUEUE_DESC_HIGH, (desc >> 32) as u32);
        self.write(reg::QUEUE_AVAIL_LOW, avail as u32);
        self.write(reg::QUEUE_AVAIL_HIGH, (avail >> 32) as u32);
        self.write(reg::QUEUE_USED_LOW, used as u32);
        self.write(reg::QUEUE_USED_HIGH, (used >> 32) as u32);
        self.write(reg::QUEUE_READY, 1);
        if self.read(reg::QUEUE_READY) != 1 {
            return Err(VirtioError::QueueUnavailable(q.index()));
        }
        Ok(())
    }

    /// Finish initialisation (DRIVER_OK).
    pub fn driver_ok(&self) -> Result<(), VirtioError> {
        let s = self.read(reg::STATUS) | status::DRIVER_OK;
        self.write(reg::STATUS, s);
        if self.read(reg::STATUS) & status::DRIVER_OK == 0 {
            return Err(VirtioError::FeaturesRejected);
        }
        Ok(())
    }

    /// Tell the device that queue `index` has new buffers.
    pub fn notify(&self, index: u16) {
        self.write(reg::QUEUE_NOTIFY, u32::from(index));
    }

    /// Whether the device has given up (DEVICE_NEEDS_RESET).
    pub fn needs_reset(&self) -> bool {
        self.read(reg::STATUS) & status::DEVICE_NEEDS_RESET != 0
    }

    /// Read a 32-bit little-endian word of the config space.
    pub fn config_u32(&self, offset: u64) -> u32 {
        self.read(reg::CONFIG + offset)
    }
}
