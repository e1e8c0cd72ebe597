//! The set of virtio-mmio devices a VM has, by guest-physical window: routes
//! MMIO exits to the device whose window contains the address, polls all
//! devices, and saves/restores them together for migration.

use super::state::{StateError, VirtioState};
use super::MmioDevice;
use wanmig_guest_abi::virtio::MMIO_WINDOW_SIZE;

/// Devices in non-overlapping [`MMIO_WINDOW_SIZE`] windows.
#[derive(Default)]
pub struct VirtioBus {
    devices: Vec<(u64, Box<dyn MmioDevice>)>,
}

/// Why a device could not be added to the bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("virtio-mmio window at {base:#x} overlaps the device at {existing:#x}; give each device its own window")]
pub struct WindowOverlap {
    /// Base of the rejected device.
    pub base: u64,
    /// Base of the device already there.
    pub existing: u64,
}

impl VirtioBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Place `device` at guest-physical `base`.
    pub fn add(&mut self, base: u64, device: Box<dyn MmioDevice>) -> Result<(), WindowOverlap> {
        if let Some((existing, _)) = self.devices.iter().find(|(b, _)| {
            base < b.saturating_add(MMIO_WINDOW_SIZE) && *b < base.saturating_add(MMIO_WINDOW_SIZE)
        }) {
            return Err(WindowOverlap {
                base,
                existing: *existing,
            });
        }
        self.devices.push((base, device));
        Ok(())
    }

    fn find(&mut self, addr: u64) -> Option<(u64, &mut Box<dyn MmioDevice>)> {
        self.devices
            .iter_mut()
            .find(|(b, _)| addr >= *b && addr - *b < MMIO_WINDOW_SIZE)
            .map(|(b, d)| (addr - *b, d))
    }

    /// A guest read at `addr`; false when no device lives there.
    pub fn read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                dev.mmio_read(offset, data);
                true
            }
            None => false,
        }
    }

    /// A guest write at `addr`; false when no device lives there.
    pub fn write(&mut self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                dev.mmio_write(offset, data);
                true
            }
            None => false,
        }
    }

    /// Poll every device's backends and queues.
    pub fn process(&mut self) {
        for (_, d) in &mut self.devices {
            d.process();
        }
    }

    /// Announce every device's new location (call once the VM runs at a
    /// migration's destination).
    pub fn announce(&mut self) {
        for (_, d) in &mut self.devices {
            d.announce();
        }
    }

    /// Whether any device has an interrupt pending.
    pub fn interrupt_pending(&self) -> bool {
        self.devices.iter().any(|(_, d)| d.interrupt_pending())
    }

    /// Every device's state, in the order the devices were added.
    pub fn save_state(&self) -> Vec<VirtioState> {
        self.devices.iter().map(|(_, d)| d.save_state()).collect()
    }

    /// Restore states saved by [`VirtioBus::save_state`] on a bus built
    /// with the same devices in the same order.
    pub fn restore_state(&mut self, states: &[VirtioState]) -> Result<(), StateError> {
        if states.len() != self.devices.len() {
            return Err(StateError::DeviceCount {
                expected: self.devices.len(),
                found: states.len(),
            });
        }
        for ((_, d), s) in self.devices.iter_mut().zip(states) {
            d.restore_state(s)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testdriver::{guest_memory, read32};
    use crate::virtio::{channel_pair, RawFileBackend, VirtioBlock, VirtioMmio, VirtioNet};
    use wanmig_guest_abi::virtio::{self as abi, reg};

    #[test]
    fn routes_by_window_and_round_trips_state() {
        let mem = guest_memory();
        let (backend, mut port) = channel_pair(4);
        let dir = tempfile::tempdir().unwrap();
        let disk = RawFileBackend::create(&dir.path().join("d"), 4096).unwrap();
        let mut bus = VirtioBus::new();
        let net =
            VirtioMmio::new(VirtioNet::new(backend, [2, 0, 0, 0, 0, 9]), mem.clone()).unwrap();
        let blk = VirtioMmio::new(VirtioBlock::new(disk, "d"), mem.clone()).unwrap();
        bus.add(abi::NET_MMIO_BASE, Box::new(net)).unwrap();
        bus.add(abi::BLK_MMIO_BASE, Box::new(blk)).unwrap();
        let (backend2, _port2) = channel_pair(4);
        let again = VirtioMmio::new(VirtioNet::new(backend2, [0; 6]), mem.clone()).unwrap();
        assert_eq!(
            bus.add(abi::NET_MMIO_BASE + 0x800, Box::new(again)),
            Err(WindowOverlap {
                base: abi::NET_MMIO_BASE + 0x800,
                existing: abi::NET_MMIO_BASE
            })
        );

        let mut id = [0u8; 4];
        assert!(bus.read(abi::NET_MMIO_BASE + reg::DEVICE_ID, &mut id));
        assert_eq!(u32::from_le_bytes(id), abi::DEVICE_ID_NET);
        assert!(bus.read(abi::BLK_MMIO_BASE + reg::DEVICE_ID, &mut id));
        assert_eq!(u32::from_le_bytes(id), abi::DEVICE_ID_BLOCK);
        let mut cap = [0u8; 8];
        assert!(bus.read(abi::BLK_MMIO_BASE + reg::CONFIG, &mut cap));
        assert_eq!(u64::from_le_bytes(cap), 8);
        assert!(!bus.read(abi::BLK_MMIO_BASE + MMIO_WINDOW_SIZE, &mut id));
        assert!(!bus.write(0x1000, &[0; 4]));
        assert!(bus.write(abi::NET_MMIO_BASE + reg::STATUS, &1u32.to_le_bytes()));

        bus.announce();
        assert_eq!(
            port.try_recv().map(|f| f[12..14].to_vec()),
            Some(vec![0x80, 0x35])
        );
        assert_eq!(port.try_recv(), None, "one announcement per net device");

        let states = bus.save_state();
        assert_eq!(states.len(), 2);
        assert_eq!(states[0].status, 1);
        let json = serde_json::to_string(&states).unwrap();
        let back: Vec<VirtioState> = serde_json::from_str(&json).unwrap();
        // Restoring onto a bus with the devices in another order fails cleanly.
        let (b3, _p3) = channel_pair(4);
        let disk2 = RawFileBackend::create(&dir.path().join("e"), 4096).unwrap();
        let mut swapped = VirtioBus::new();
        swapped
            .add(
                abi::BLK_MMIO_BASE,
                Box::new(VirtioMmio::new(VirtioBlock::new(disk2, "d"), mem.clone()).unwrap()),
            )
            .unwrap();
        swapped
            .add(
                abi::NET_MMIO_BASE,
                Box::new(VirtioMmio::new(VirtioNet::new(b3, [0; 6]), mem.clone()).unwrap()),
            )
            .unwrap();
        assert!(matches!(
            swapped.restore_state(&back),
            Err(StateError::WrongDevice { .. })
        ));
        assert!(matches!(
            swapped.restore_state(&back[..1]),
            Err(StateError::DeviceCount { .. })
        ));
        bus.restore_state(&back).unwrap();
        let mut dev =
            Box::new(VirtioMmio::new(VirtioNet::new(channel_pair(1).0, [0; 6]), mem).unwrap());
        dev.restore_state(&back[0]).unwrap();
        assert_eq!(read32(dev.as_mut(), reg::STATUS), 1);
    }
}
