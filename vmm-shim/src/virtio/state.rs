//! Serialisable snapshots of a virtio-mmio device (transport registers,
//! virtqueues, device-specific state) for live migration, and the errors a
//! restore reports when a snapshot does not fit the device it is applied to.

use serde::{Deserialize, Serialize};
use virtio_queue::Queue;

/// Everything a virtio-mmio device needs to resume on another host: the
/// transport registers, each virtqueue and the device model's own state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioState {
    /// The device id (1 = net, 2 = block) the state was saved from.
    pub device_id: u32,
    /// Device status register.
    pub status: u32,
    /// DeviceFeaturesSel register.
    pub device_features_sel: u32,
    /// DriverFeaturesSel register.
    pub driver_features_sel: u32,
    /// Features the driver acknowledged.
    pub driver_features: u64,
    /// QueueSel register.
    pub queue_sel: u32,
    /// InterruptStatus register.
    pub interrupt_status: u32,
    /// ConfigGeneration register.
    pub config_generation: u32,
    /// One entry per virtqueue, in queue-index order.
    pub queues: Vec<QueueSnapshot>,
    /// The device model's own state.
    pub device: DeviceState,
}

/// A virtqueue's configuration and ring positions.
///
/// Mirrors `virtio_queue::QueueState`, which does not implement serde.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// Largest size the device offers.
    pub max_size: u16,
    /// Size the driver chose.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Guest-physical address of the descriptor table.
    pub desc_table: u64,
    /// Guest-physical address of the available ring.
    pub avail_ring: u64,
    /// Guest-physical address of the used ring.
    pub used_ring: u64,
    /// Next available-ring slot the device will read.
    pub next_avail: u16,
    /// Next used-ring slot the device will write.
    pub next_used: u16,
    /// VIRTIO_F_RING_EVENT_IDX negotiated.
    pub event_idx_enabled: bool,
}

impl From<&Queue> for QueueSnapshot {
    fn from(q: &Queue) -> Self {
        let s = q.state();
        QueueSnapshot {
            max_size: s.max_size,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
        }
    }
}

impl QueueSnapshot {
    /// Rebuild a queue, validating sizes and alignments (the snapshot may come
    /// from the wire).
    pub fn to_queue(&self, index: usize) -> Result<Queue, StateError> {
        let state = virtio_queue::QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx_enabled,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        };
        Queue::try_from(state).map_err(|e| StateError::InvalidQueue {
            index,
            reason: e.to_string(),
        })
    }
}

/// Device-model state, by device type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    /// A virtio-block device.
    Block(BlockState),
    /// A virtio-net device.
    Net(NetState),
}

/// virtio-block state: the identity of the disk the guest saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    /// Capacity in 512-byte sectors; the destination's backend must match.
    pub capacity_sectors: u64,
    /// The 20-byte id GET_ID returns.
    pub id: [u8; 20],
}

/// virtio-net state: the MAC and a received frame not yet delivered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// MAC address in the config space.
    pub mac: [u8; 6],
    /// A frame taken from the backend while the guest had no receive buffer.
    pub pending_rx: Option<Vec<u8>>,
}

/// Why a snapshot could not be restored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    /// The snapshot belongs to another kind of device.
    #[error("device state is for device id {found}, but this device has id {expected}; restore each device from its own snapshot")]
    WrongDevice {
        /// Id of the device being restored.
        expected: u32,
        /// Id in the snapshot.
        found: u32,
    },
    /// The snapshot has a different number of queues.
    #[error("device state has {found} queues, this device has {expected}; the snapshot is from an incompatible VMM")]
    QueueCount {
        /// Queues of the device being restored.
        expected: usize,
        /// Queues in the snapshot.
        found: usize,
    },
    /// A queue in the snapshot is invalid.
    #[error("queue {index} in the device state is invalid: {reason}")]
    InvalidQueue {
        /// Queue index.
        index: usize,
        /// What virtio-queue rejected.
        reason: String,
    },
    /// The block backend at the destination has a different size.
    #[error("disk capacity differs: snapshot has {snapshot} sectors, the backend has {backend}; attach the same disk image")]
    CapacityMismatch {
        /// Capacity in the snapshot.
        snapshot: u64,
        /// Capacity of the local backend.
        backend: u64,
    },
    /// A bus snapshot has a different number of devices.
    #[error("device states for {found} devices, but this VM has {expected}; both sides must configure the same devices")]
    DeviceCount {
        /// Devices on this bus.
        expected: usize,
        /// States in the snapshot.
        found: usize,
    },
    /// A pending frame is larger than any frame the device carries.
    #[error(
        "pending receive frame of {0} bytes exceeds the device maximum; the snapshot is corrupt"
    )]
    FrameTooLarge(usize),
}
