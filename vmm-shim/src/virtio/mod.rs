//! Virtio-mmio devices of the VMM: the transport register model
//! ([`VirtioMmio`]), the virtio-block device over a [`BlockBackend`], the
//! virtio-net device over a [`NetBackend`] (TAP or in-process channel), and
//! serialisable device state for migration.
//!
//! [`VirtioBus`] holds a VM's devices by window and routes MMIO exits to
//! [`MmioDevice::mmio_read`]/[`MmioDevice::mmio_write`] (offset relative
//! to the window base); the VMM calls [`MmioDevice::process`] regularly so received
//! frames reach the guest. Queue notifications are handled synchronously
//! inside `mmio_write`.

mod block;
mod block_backend;
mod bus;
mod device;
mod mmio;
mod net;
mod net_backend;
mod state;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod guest_tests;
#[cfg(test)]
mod testdriver;

pub use block::{BlockStats, VirtioBlock};
pub use block_backend::{BlockBackend, RawFileBackend, RemoteBackend};
pub use bus::{VirtioBus, WindowOverlap};
pub use device::{DeviceError, VirtioDevice};
pub use mmio::VirtioMmio;
pub use net::{rarp_announcement, NetStats, VirtioNet, MAX_BACKEND_FRAME};
pub use net_backend::{
    channel_pair, ChannelBackend, ChannelPort, NetBackend, PortSendError, TapBackend,
};
pub use state::{BlockState, DeviceState, NetState, QueueSnapshot, StateError, VirtioState};

/// A device in an MMIO window, as the vCPU loop sees it.
pub trait MmioDevice: Send {
    /// A guest read of `data.len()` bytes at `offset` into the window.
    fn mmio_read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest write at `offset` into the window.
    fn mmio_write(&mut self, offset: u64, data: &[u8]);
    /// Poll backends and queues (a bounded amount of work).
    fn process(&mut self);
    /// Whether the device has raised an interrupt the guest has not acked.
    fn interrupt_pending(&self) -> bool;
    /// Announce the device's new location after a migration (virtio-net
    /// broadcasts a RARP for its MAC; other devices do nothing).
    fn announce(&mut self) {}
    /// Snapshot for migration.
    fn save_state(&self) -> VirtioState;
    /// Resume from a snapshot taken by `save_state` (possibly on another host).
    fn restore_state(&mut self, state: &VirtioState) -> Result<(), StateError>;
}
