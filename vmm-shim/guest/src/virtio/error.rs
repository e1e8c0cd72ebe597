//! Why a virtio driver or workload could not do its job.

use core::fmt;

/// A driver-level failure; the workloads report it and stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtioError {
    /// No virtio-mmio device (wrong magic or version) at the window.
    NoDevice {
        /// Window base address.
        base: u64,
        /// What the MagicValue register read.
        magic: u32,
    },
    /// A device is there but of another type.
    WrongDevice {
        /// Expected device id.
        expected: u32,
        /// Device id found.
        found: u32,
    },
    /// The device did not accept the features the driver needs.
    FeaturesRejected,
    /// The device has no queue of the needed index or size.
    QueueUnavailable(u16),
    /// The guest heap is exhausted.
    OutOfMemory,
    /// The device marked itself DEVICE_NEEDS_RESET.
    NeedsReset,
    /// A block request failed with this virtio status byte.
    Io(u8),
    /// The device did not complete a request in time.
    Timeout,
    /// A request does not fit the device (buffer size, sector range).
    BadRequest,
}

impl fmt::Display for VirtioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VirtioError::NoDevice { base, magic } => {
                write!(f, "no virtio-mmio device at {base:#x} (magic {magic:#x})")
            }
            VirtioError::WrongDevice { expected, found } => {
                write!(f, "virtio device id {found}, expected {expected}")
            }
            VirtioError::FeaturesRejected => write!(f, "device rejected VIRTIO_F_VERSION_1"),
            VirtioError::QueueUnavailable(q) => write!(f, "virtqueue {q} unavailable or too small"),
            VirtioError::OutOfMemory => write!(f, "guest heap exhausted"),
            VirtioError::NeedsReset => write!(f, "device needs reset"),
            VirtioError::Io(s) => write!(f, "block request failed with status {s}"),
            VirtioError::Timeout => write!(f, "device did not complete the request"),
            VirtioError::BadRequest => write!(f, "request does not fit the device"),
        }
    }
}
