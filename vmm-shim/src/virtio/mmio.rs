//! The virtio-mmio (version 2) transport: the register file a guest driver
//! programs (identity, feature negotiation, status, queue setup, notify,
//! interrupt status/ack, config space), wrapped around a [`VirtioDevice`]
//! and the guest's memory.
//!
//! Interrupts: the transport keeps InterruptStatus up to date and
//! [`MmioDevice::interrupt_pending`] reports it, so a VMM can inject an IRQ;
//! the wanmig guest drivers poll the used rings instead and never need one.

use tracing::{debug, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddressSpace;
use wanmig_guest_abi::virtio::{self as abi, reg, status};

use super::device::{DeviceError, VirtioDevice};
use super::state::{QueueSnapshot, StateError, VirtioState};
use super::MmioDevice;

/// A virtio device behind a virtio-mmio register window.
pub struct VirtioMmio<D, M> {
    device: D,
    mem: M,
    queues: Vec<Queue>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    interrupt_status: u32,
    config_generation: u32,
}

impl<D: VirtioDevice, M: GuestAddressSpace> VirtioMmio<D, M> {
    /// Put `device` behind a register window; `mem` is the guest memory its
    /// queues and buffers live in.
    pub fn new(device: D, mem: M) -> Result<Self, DeviceError> {
        let queues = (0..device.queue_count())
            .map(|_| Queue::new(abi::QUEUE_SIZE))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VirtioMmio {
            device,
            mem,
            queues,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
        })
    }

    /// The device model.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device model, mutably (e.g. to swap a block backend).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The Status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Features the driver acknowledged.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn active(&self) -> bool {
        self.status & status::DRIVER_OK != 0 && self.status & status::DEVICE_NEEDS_RESET == 0
    }

    fn reset(&mut self) {
        for q in &mut self.queues {
            q.reset();
        }
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.status = 0;
        self.interrupt_status = 0;
        self.device.reset();
    }

    fn fail(&mut self, err: DeviceError) {
        warn!(device_id = self.device.device_id(), error = %err, "virtio device needs reset");
        self.status |= status::DEVICE_NEEDS_RESET;
        self.interrupt_status |= abi::INT_CONFIG_CHANGE;
    }

    fn after_processing(&mut self, result: Result<bool, DeviceError>) {
        match result {
            Ok(true) => self.interrupt_status |= abi::INT_USED_RING,
            Ok(false) => {}
            Err(e) => self.fail(e),
        }
    }

    fn notify(&mut self, index: u32) {
        if !self.active() {
            debug!(index, "queue notify before DRIVER_OK ignored");
            return;
        }
        let index = index as usize;
        if index >= self.queues.len() || !self.queues[index].ready() {
            debug!(index, "notify for a missing or unready queue ignored");
            return;
        }
        let mem = self.mem.memory();
        let result = self.device.process_queue(&*mem, &mut self.queues, index);
        self.after_processing(result);
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            reg::MAGIC => abi::MAGIC,
            reg::VERSION => abi::VERSION,
            reg::DEVICE_ID => self.device.device_id(),
            reg::VENDOR_ID => abi::VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.device_features() as u32,
                1 => (self.device.device_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                debug!(
                    offset,
                    "read of a write-only or unknown virtio-mmio register"
                );
                0
            }
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let mut value = value;
        let newly = value & !self.status;
        if newly & status::FEATURES_OK != 0 {
            let offered = self.device.device_features();
            let ok = self.driver_features & !offered == 0
                && self.driver_features & abi::F_VERSION_1 != 0;
            if !ok {
                warn!(
                    driver = self.driver_features,
                    offered, "driver features rejected (must be a subset including VERSION_1)"
                );
                value &= !status::FEATURES_OK;
            }
        }
        if newly & status::DRIVER_OK != 0 && value & status::FEATURES_OK == 0 {
            warn!("DRIVER_OK without FEATURES_OK; the driver must negotiate features first");
            value &= !status::DRIVER_OK;
        }
        self.status = value | (self.status & status::DEVICE_NEEDS_RESET);
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        let negotiating =
            self.status & status::DRIVER != 0 && self.status & status::FEATURES_OK == 0;
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES if negotiating => match self.driver_features_sel {
                0 => {
                    self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value)
                }
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                }
                _ => {}
            },
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM => self.with_unready_queue(|q| {
                // Sizes must be a power of two no larger than max; virtio-queue checks.
                if q.try_set_size(value.min(u32::from(u16::MAX)) as u16)
                    .is_err()
                {
                    warn!(value, "invalid queue size ignored");
                }
            }),
            reg::QUEUE_READY => self.write_queue_ready(value),
            reg::QUEUE_NOTIFY => self.notify(value),
            reg::INTERRUPT_ACK => self.interrupt_status &= !value,
            reg::STATUS => self.write_status(value),
            reg::QUEUE_DESC_LOW => {
                self.with_unready_queue(|q| q.set_desc_table_address(Some(value), None))
            }
            reg::QUEUE_DESC_HIGH => {
                self.with_unready_queue(|q| q.set_desc_table_address(None, Some(value)))
            }
            reg::QUEUE_AVAIL_LOW => {
                self.with_unready_queue(|q| q.set_avail_ring_address(Some(value), None))
            }
            reg::QUEUE_AVAIL_HIGH => {
                self.with_unready_queue(|q| q.set_avail_ring_address(None, Some(value)))
            }
            reg::QUEUE_USED_LOW => {
                self.with_unready_queue(|q| q.set_used_ring_address(Some(value), None))
            }
            reg::QUEUE_USED_HIGH => {
                self.with_unready_queue(|q| q.set_used_ring_address(None, Some(value)))
            }
            _ => debug!(
                offset,
                value, "write to a read-only or unknown virtio-mmio register ignored"
            ),
        }
    }

    fn with_unready_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        match self.selected_queue() {
            Some(q) if !q.ready() => f(q),
            Some(_) => warn!("queue configuration changed while the queue is ready; ignored"),
            None => debug!("queue configuration for a missing queue ignored"),
        }
    }

    fn write_queue_ready(&mut self, value: u32) {
        let mem = self.mem.memory();
        let Some(q) = self.queues.get_mut(self.queue_sel as usize) else {
            return;
        };
        if value == 0 {
            q.set_ready(false);
            return;
        }
        q.set_ready(true);
        if !q.is_valid(&*mem) {
            warn!("queue rings are misaligned or outside guest memory; queue stays not ready");
            q.set_ready(false);
        }
    }
}

impl<D: VirtioDevice, M: GuestAddressSpace + Send> MmioDevice for VirtioMmio<D, M> {
    fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            debug!(
                offset,
                len = data.len(),
                "non-32-bit register read returns 0"
            );
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn mmio_write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            self.device.write_config(offset - reg::CONFIG, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            debug!(
                offset,
                len = data.len(),
                "non-32-bit register write ignored"
            );
            return;
        };
        if offset % 4 != 0 {
            debug!(offset, "misaligned register write ignored");
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }

    fn process(&mut self) {
        if !self.active() {
            return;
        }
        let mem = self.mem.memory();
        let result = self.device.poll(&*mem, &mut self.queues);
        self.after_processing(result);
    }

    fn interrupt_pending(&self) -> bool {
        self.interrupt_status != 0
    }

    fn announce(&mut self) {
        self.device.announce();
    }

    fn save_state(&self) -> VirtioState {
        VirtioState {
            device_id: self.device.device_id(),
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            interrupt_status: self.interrupt_status,
            config_generation: self.config_generation,
            queues: self.queues.iter().map(QueueSnapshot::from).collect(),
            device: self.device.save(),
        }
    }

    fn restore_state(&mut self, state: &VirtioState) -> Result<(), StateError> {
        let expected = self.device.device_id();
        if state.device_id != expected {
            return Err(StateError::WrongDevice {
                expected,
                found: state.device_id,
            });
        }
        if state.queues.len() != self.queues.len() {
            return Err(StateError::QueueCount {
                expected: self.queues.len(),
                found: state.queues.len(),
            });
        }
        let queues = state
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| q.to_queue(i))
            .collect::<Result<Vec<_>, _>>()?;
        self.device.restore(&state.device)?;
        self.queues = queues;
        self.status = state.status;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.driver_features = state.driver_features;
        self.queue_sel = state.queue_sel;
        self.interrupt_status = state.interrupt_status;
        self.config_generation = state.config_generation;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testdriver::{guest_memory, negotiate, read32, write32, DriverQueue};
    use crate::virtio::{channel_pair, VirtioNet};

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

    #[test]
    fn identity_registers_and_config_space() {
        let mem = guest_memory();
        let (backend, _port) = channel_pair(4);
        let mut dev = VirtioMmio::new(VirtioNet::new(backend, MAC), mem).unwrap();
        assert_eq!(read32(&mut dev, reg::MAGIC), abi::MAGIC);
        assert_eq!(read32(&mut dev, reg::VERSION), 2);
        assert_eq!(read32(&mut dev, reg::DEVICE_ID), abi::DEVICE_ID_NET);
        write32(&mut dev, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(
            read32(&mut dev, reg::DEVICE_FEATURES),
            1,
            "VERSION_1 is bit 32"
        );
        write32(&mut dev, reg::DEVICE_FEATURES_SEL, 0);
        assert_eq!(
            read32(&mut dev, reg::DEVICE_FEATURES),
            abi::NET_F_MAC as u32
        );
        let mut mac = [0u8; 6];
        dev.mmio_read(reg::CONFIG, &mut mac);
        assert_eq!(mac, MAC);
        // Byte-wide config read past the MAC reads zero; odd-width register reads read zero.
        let mut b = [0xffu8; 1];
        dev.mmio_read(reg::CONFIG + 100, &mut b);
        assert_eq!(b, [0]);
        let mut two = [0xffu8; 2];
        dev.mmio_read(reg::MAGIC, &mut two);
        assert_eq!(two, [0, 0]);
    }

    #[test]
    fn features_without_version_1_or_unknown_bits_are_refused() {
        let mem = guest_memory();
        let (backend, _port) = channel_pair(4);
        let mut dev = VirtioMmio::new(VirtioNet::new(backend, MAC), mem).unwrap();
        let s = negotiate(&mut dev, abi::NET_F_MAC);
        assert_eq!(
            s & status::FEATURES_OK,
            0,
            "legacy-only driver must be refused"
        );
        let s = negotiate(&mut dev, abi::F_VERSION_1 | (1 << 20));
        assert_eq!(
            s & status::FEATURES_OK,
            0,
            "unoffered feature must be refused"
        );
        let s = negotiate(&mut dev, abi::F_VERSION_1 | abi::NET_F_MAC);
        assert_ne!(s & status::FEATURES_OK, 0);
        assert_eq!(dev.driver_features(), abi::F_VERSION_1 | abi::NET_F_MAC);
        // DRIVER_OK is refused until features are accepted.
        write32(&mut dev, reg::STATUS, 0);
        write32(
            &mut dev,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
        );
        assert_eq!(read32(&mut dev, reg::STATUS) & status::DRIVER_OK, 0);
    }

    #[test]
    fn queue_outside_memory_is_not_made_ready_and_reset_clears_queues() {
        let mem = guest_memory();
        let (backend, _port) = channel_pair(4);
        let mut dev = VirtioMmio::new(VirtioNet::new(backend, MAC), mem).unwrap();
        negotiate(&mut dev, abi::F_VERSION_1);
        write32(&mut dev, reg::QUEUE_SEL, 0);
        write32(&mut dev, reg::QUEUE_NUM, 16);
        write32(&mut dev, reg::QUEUE_DESC_LOW, 0x4000_0000); // beyond the 1 MiB of RAM
        write32(&mut dev, reg::QUEUE_AVAIL_LOW, 0x1000);
        write32(&mut dev, reg::QUEUE_USED_LOW, 0x2000);
        write32(&mut dev, reg::QUEUE_READY, 1);
        assert_eq!(read32(&mut dev, reg::QUEUE_READY), 0);
        // Non-power-of-two sizes are ignored, the queue keeps its size.
        write32(&mut dev, reg::QUEUE_NUM, 5);
        write32(&mut dev, reg::QUEUE_DESC_LOW, 0x3000);
        write32(&mut dev, reg::QUEUE_READY, 1);
        assert_eq!(read32(&mut dev, reg::QUEUE_READY), 1);
        // A missing queue reads as absent.
        write32(&mut dev, reg::QUEUE_SEL, 7);
        assert_eq!(read32(&mut dev, reg::QUEUE_NUM_MAX), 0);
        write32(&mut dev, reg::STATUS, 0);
        write32(&mut dev, reg::QUEUE_SEL, 0);
        assert_eq!(read32(&mut dev, reg::QUEUE_READY), 0);
        assert_eq!(read32(&mut dev, reg::STATUS), 0);
        let _ = DriverQueue::setup(&mut dev, 0, 0x4000);
    }
}
