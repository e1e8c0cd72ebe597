//! The contract between the virtio-mmio transport and a device model
//! (block, net): identity, features, config space, queue processing and
//! state, plus the error a device reports when the driver broke a rule.

use virtio_queue::Queue;
use vm_memory::GuestMemory;

use super::state::{DeviceState, StateError};

/// A device error that puts the device into DEVICE_NEEDS_RESET: the driver
/// handed the device something it cannot act on (and cannot even report a
/// per-request status for).
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A descriptor chain violates the device's request format.
    #[error("malformed descriptor chain (head {head}): {reason}; the guest driver must reset the device")]
    MalformedChain {
        /// Head descriptor index.
        head: u16,
        /// What was wrong.
        reason: &'static str,
    },
    /// Guest memory named by the driver is not accessible.
    #[error("guest memory access failed: {0}; the guest driver handed the device a bad address")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// The virtqueue itself is broken (bad ring index, bad addresses).
    #[error("virtqueue error: {0}")]
    Queue(String),
}

impl From<virtio_queue::Error> for DeviceError {
    fn from(e: virtio_queue::Error) -> Self {
        DeviceError::Queue(e.to_string())
    }
}

/// A device model behind the virtio-mmio transport.
pub trait VirtioDevice: Send {
    /// Virtio device id (1 = net, 2 = block).
    fn device_id(&self) -> u32;
    /// Feature bits the device offers (including VIRTIO_F_VERSION_1).
    fn device_features(&self) -> u64;
    /// Number of virtqueues.
    fn queue_count(&self) -> usize;
    /// Read from the device-specific config space; bytes past its end read 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write to the config space (both devices here have read-only config).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Handle buffers the driver made available in queue `index` (after a
    /// QueueNotify). Returns whether buffers were used (an interrupt is due).
    fn process_queue<M: GuestMemory>(
        &mut self,
        mem: &M,
        queues: &mut [Queue],
        index: usize,
    ) -> Result<bool, DeviceError>;
    /// Poll backends and every queue (a bounded amount of work).
    fn poll<M: GuestMemory>(&mut self, mem: &M, queues: &mut [Queue]) -> Result<bool, DeviceError> {
        let mut used = false;
        for index in 0..queues.len() {
            used |= self.process_queue(mem, queues, index)?;
        }
        Ok(used)
    }
    /// Forget per-session state (driver reset).
    fn reset(&mut self);
    /// Tell the network where the device now is (after a migration); only
    /// network devices have something to say.
    fn announce(&mut self) {}
    /// Snapshot of the device model.
    fn save(&self) -> DeviceState;
    /// Apply a snapshot taken by [`VirtioDevice::save`].
    fn restore(&mut self, state: &DeviceState) -> Result<(), StateError>;
}

/// Copy `config[offset..]` into `data`, zero-filling anything past the end.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}
