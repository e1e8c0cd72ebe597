//! The virtio-net device model: moves frames between the guest's transmit
//! and receive virtqueues and a [`NetBackend`], adding and stripping the
//! 12-byte `virtio_net_hdr` (VIRTIO_F_VERSION_1 layout, no offloads), and
//! shows the MAC in its config space.

use tracing::debug;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemory};
use wanmig_guest_abi::virtio::{self as abi, NET_HDR_LEN, NET_RX_QUEUE, NET_TX_QUEUE};

use super::device::{read_config_bytes, DeviceError, VirtioDevice};
use super::net_backend::NetBackend;
use super::state::{DeviceState, NetState, StateError};

/// Largest frame the device accepts from either side (a full 64 KiB
/// datagram); real traffic stays at or below [`abi::NET_MAX_FRAME`].
pub const MAX_BACKEND_FRAME: usize = 65_535;

/// A RARP "reverse request" from `mac` to everyone, padded to the 60-byte
/// Ethernet minimum: what a VMM broadcasts after a migration (as QEMU's
/// self-announce does) so switches and the overlay learn the MAC's new
/// location. It needs no IP address, which the VMM does not know.
pub fn rarp_announcement(mac: [u8; 6]) -> [u8; 60] {
    let mut f = [0u8; 60];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&[0x80, 0x35]); // ethertype RARP
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 3]); // Ethernet/IPv4, op 3
    f[22..28].copy_from_slice(&mac); // sender hardware address
    f[32..38].copy_from_slice(&mac); // target hardware address
    f
}

/// Counters of what the device did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames the guest sent to the backend.
    pub tx_frames: u64,
    /// Guest frames dropped (shorter than the header, or too large).
    pub tx_dropped: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Backend frames dropped because the guest's buffer was too small.
    pub rx_dropped: u64,
}

/// A virtio-net device over a [`NetBackend`].
pub struct VirtioNet<N> {
    backend: N,
    mac: [u8; 6],
    pending_rx: Option<Vec<u8>>,
    buf: Vec<u8>,
    scratch: Vec<u8>,
    descs: Vec<Descriptor>,
    stats: NetStats,
}

impl<N: NetBackend> VirtioNet<N> {
    /// A network card with address `mac` over `backend`.
    pub fn new(backend: N, mac: [u8; 6]) -> Self {
        VirtioNet {
            backend,
            mac,
            pending_rx: None,
            buf: Vec::new(),
            scratch: Vec::new(),
            descs: Vec::new(),
            stats: NetStats::default(),
        }
    }

    /// The MAC address in the config space.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The backend.
    pub fn backend(&self) -> &N {
        &self.backend
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut N {
        &mut self.backend
    }

    /// What the device has done so far.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    fn transmit<M: GuestMemory>(
        &mut self,
        mem: &M,
        queue: &mut Queue,
    ) -> Result<bool, DeviceError> {
        let mut used = false;
        for _ in 0..queue.size() {
            let Some(chain) = queue.iter(mem)?.next() else {
                break;
            };
            let head = chain.head_index();
            self.descs.clear();
            self.descs.extend(chain);
            if self.descs.is_empty() {
                return Err(DeviceError::MalformedChain {
                    head,
                    reason: "empty transmit chain",
                });
            }
            if self.descs.iter().any(|d| d.is_write_only()) {
                return Err(DeviceError::MalformedChain {
                    head,
                    reason: "transmit chain has a device-writable descriptor",
                });
            }
            let total: u64 = self.descs.iter().map(|d| u64::from(d.len())).sum();
            if total < NET_HDR_LEN as u64 || total > (NET_HDR_LEN + MAX_BACKEND_FRAME) as u64 {
                debug!(total, "transmit chain dropped: length out of range");
                self.stats.tx_dropped += 1;
            } else {
                self.buf.clear();
                self.buf.resize(total as usize, 0);
                let mut at = 0usize;
                for d in &self.descs {
                    let len = d.len() as usize;
                    mem.read_slice(&mut self.buf[at..at + len], d.addr())?;
                    at += len;
                }
                self.backend.send(&self.buf[NET_HDR_LEN..]);
                self.stats.tx_frames += 1;
            }
            queue.add_used(mem, head, 0)?;
            used = true;
        }
        Ok(used)
    }

    fn receive<M: GuestMemory>(&mut self, mem: &M, queue: &mut Queue) -> Result<bool, DeviceError> {
        let mut used = false;
        for _ in 0..queue.size() {
            let frame = match self.pending_rx.take() {
                Some(f) => f,
                None => {
                    self.scratch.resize(MAX_BACKEND_FRAME, 0);
                    match self.backend.recv(&mut self.scratch) {
                        Some(n) => self.scratch[..n.min(MAX_BACKEND_FRAME)].to_vec(),
                        None => break,
                    }
                }
            };
            let Some(chain) = queue.iter(mem)?.next() else {
                // No receive buffer posted: keep the frame for the next round.
                self.pending_rx = Some(frame);
                break;
            };
            let head = chain.head_index();
            self.descs.clear();
            self.descs.extend(chain);
            if self.descs.is_empty() || self.descs.iter().any(|d| !d.is_write_only()) {
                return Err(DeviceError::MalformedChain {
                    head,
                    reason: "receive chain must consist of device-writable descriptors",
                });
            }
            let room: u64 = self.descs.iter().map(|d| u64::from(d.len())).sum();
            let need = (NET_HDR_LEN + frame.len()) as u64;
            if room < need {
                debug!(room, need, "receive buffer too small; frame dropped");
                self.stats.rx_dropped += 1;
                queue.go_to_previous_position();
                continue;
            }
            // virtio_net_hdr: no offloads; num_buffers (the last le16) = 1.
            let mut hdr = [0u8; NET_HDR_LEN];
            hdr[NET_HDR_LEN - 2] = 1;
            let mut src = hdr.iter().chain(frame.iter()).copied();
            let mut left = need as usize;
            for d in &self.descs {
                if left == 0 {
                    break;
                }
                let n = (d.len() as usize).min(left);
                self.buf.clear();
                self.buf.extend(src.by_ref().take(n));
                mem.write_slice(&self.buf, d.addr())?;
                left -= n;
            }
            // `need` is at most 12 + 65535 bytes.
            queue.add_used(mem, head, need as u32)?;
            self.stats.rx_frames += 1;
            used = true;
        }
        Ok(used)
    }
}

impl<N: NetBackend> VirtioDevice for VirtioNet<N> {
    fn device_id(&self) -> u32 {
        abi::DEVICE_ID_NET
    }

    fn device_features(&self) -> u64 {
        abi::F_VERSION_1 | abi::NET_F_MAC
    }

    fn queue_count(&self) -> usize {
        abi::NET_NUM_QUEUES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config: mac[6] first; status/MTU fields are not offered.
        read_config_bytes(&self.mac, offset, data);
    }

    fn process_queue<M: GuestMemory>(
        &mut self,
        mem: &M,
        queues: &mut [Queue],
        index: usize,
    ) -> Result<bool, DeviceError> {
        let Some(queue) = queues.get_mut(index) else {
            return Ok(false);
        };
        if !queue.ready() {
            return Ok(false);
        }
        if index == usize::from(NET_TX_QUEUE) {
            self.transmit(mem, queue)
        } else if index == usize::from(NET_RX_QUEUE) {
            self.receive(mem, queue)
        } else {
            Ok(false)
        }
    }

    fn poll<M: GuestMemory>(&mut self, mem: &M, queues: &mut [Queue]) -> Result<bool, DeviceError> {
        // Transmit first so replies the backend produces can come back in the same poll.
        let tx = self.process_queue(mem, queues, usize::from(NET_TX_QUEUE))?;
        let rx = self.process_queue(mem, queues, usize::from(NET_RX_QUEUE))?;
        Ok(tx || rx)
    }

    fn reset(&mut self) {
        self.pending_rx = None;
    }

    fn announce(&mut self) {
        self.backend.send(&rarp_announcement(self.mac));
    }

    fn save(&self) -> DeviceState {
        DeviceState::Net(NetState {
            mac: self.mac,
            pending_rx: self.pending_rx.clone(),
        })
    }

    fn restore(&mut self, state: &DeviceState) -> Result<(), StateError> {
        let DeviceState::Net(s) = state else {
            return Err(StateError::WrongDevice {
                expected: abi::DEVICE_ID_NET,
                found: abi::DEVICE_ID_BLOCK,
            });
        };
        if let Some(f) = &s.pending_rx {
            if f.len() > MAX_BACKEND_FRAME {
                return Err(StateError::FrameTooLarge(f.len()));
            }
        }
        self.mac = s.mac;
        self.pending_rx = s.pending_rx.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testdriver::{driver_ok, guest_memory, negotiate, DriverQueue, Mem};
    use crate::virtio::{channel_pair, ChannelBackend, ChannelPort, MmioDevice, VirtioMmio};
    use std::sync::Arc;
    use vm_memory::GuestAddress;
    use wanmig_guest_abi::virtio::status;

    const MAC: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x05];
    const TX_BUF: u64 = 0x20000;
    const RX_BUF: u64 = 0x30000;

    type Dev = VirtioMmio<VirtioNet<ChannelBackend>, Arc<Mem>>;

    struct Rig {
        mem: Arc<Mem>,
        dev: Dev,
        port: ChannelPort,
        rx: DriverQueue,
        tx: DriverQueue,
    }

    fn rig() -> Rig {
        let mem = guest_memory();
        let (backend, port) = channel_pair(16);
        let mut dev = VirtioMmio::new(VirtioNet::new(backend, MAC), mem.clone()).unwrap();
        assert_ne!(
            negotiate(&mut dev, abi::F_VERSION_1 | abi::NET_F_MAC) & status::FEATURES_OK,
            0
        );
        let rx = DriverQueue::setup(&mut dev, NET_RX_QUEUE, 0x1000);
        let tx = DriverQueue::setup(&mut dev, NET_TX_QUEUE, 0x2000);
        driver_ok(&mut dev);
        Rig {
            mem,
            dev,
            port,
            rx,
            tx,
        }
    }

    fn frame(n: usize, seed: u8) -> Vec<u8> {
        let mut f: Vec<u8> = (0..n).map(|i| (i as u8) ^ seed).collect();
        f[..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&MAC);
        f
    }

    /// Put a frame with a zeroed virtio header in guest memory, split over two descriptors.
    fn send(r: &mut Rig, f: &[u8], at: u64) {
        r.mem
            .write_slice(&[0u8; NET_HDR_LEN], GuestAddress(at))
            .unwrap();
        r.mem.write_slice(f, GuestAddress(at + 0x100)).unwrap();
        r.tx.push(
            &r.mem,
            &[
                (at, NET_HDR_LEN as u32, false),
                (at + 0x100, f.len() as u32, false),
            ],
        );
    }

    fn received(r: &mut Rig, addr: u64) -> Option<Vec<u8>> {
        let (_, len) = r.rx.pop_used(&r.mem)?;
        let mut buf = vec![0u8; len as usize];
        r.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        let hdr = &buf[..NET_HDR_LEN];
        assert_eq!(hdr[..10], [0u8; 10], "no offloads are signalled");
        assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 1, "num_buffers");
        Some(buf[NET_HDR_LEN..].to_vec())
    }

    #[test]
    fn transmit_strips_the_header_and_reaches_the_port_in_order() {
        let mut r = rig();
        let frames: Vec<_> = (0..3).map(|i| frame(60 + i * 100, i as u8)).collect();
        for (i, f) in frames.iter().enumerate() {
            send(&mut r, f, TX_BUF + 0x1000 * i as u64);
        }
        r.tx.notify(&mut r.dev);
        for f in &frames {
            assert_eq!(r.port.try_recv().as_ref(), Some(f));
        }
        assert_eq!(r.port.try_recv(), None);
        for _ in 0..3 {
            assert_eq!(r.tx.pop_used(&r.mem).map(|u| u.1), Some(0));
        }
        assert!(r.dev.interrupt_pending());
        // A chain shorter than the header is dropped but still returned.
        r.tx.push(&r.mem, &[(TX_BUF, 4, false)]);
        r.tx.notify(&mut r.dev);
        assert!(r.tx.pop_used(&r.mem).is_some());
        assert_eq!(r.port.try_recv(), None);
        let stats = r.dev.device().stats();
        assert_eq!((stats.tx_frames, stats.tx_dropped), (3, 1));
    }

    #[test]
    fn receive_waits_for_buffers_and_drops_frames_that_do_not_fit() {
        let mut r = rig();
        let big = frame(1514, 1);
        r.port.try_send(big.clone()).unwrap();
        // No buffer yet: the frame waits in the device.
        r.dev.process();
        assert!(r.rx.pop_used(&r.mem).is_none());
        r.rx.push(&r.mem, &[(RX_BUF, 2048, true)]);
        r.dev.process();
        assert_eq!(received(&mut r, RX_BUF), Some(big));

        // A 26-byte buffer cannot take a 60-byte frame: that frame is dropped
        // and the buffer stays posted for the next (14-byte) frame.
        r.port.try_send(frame(60, 2)).unwrap();
        let small = frame(14, 3);
        r.port.try_send(small.clone()).unwrap();
        r.rx.push(&r.mem, &[(RX_BUF, 26, true)]);
        r.rx.notify(&mut r.dev);
        assert_eq!(received(&mut r, RX_BUF), Some(small));
        // A buffer split over two descriptors.
        let f = frame(300, 4);
        r.port.try_send(f.clone()).unwrap();
        r.rx.push(&r.mem, &[(RX_BUF, 100, true), (RX_BUF + 100, 1000, true)]);
        r.dev.process();
        assert_eq!(received(&mut r, RX_BUF), Some(f));
        let stats = r.dev.device().stats();
        assert_eq!((stats.rx_frames, stats.rx_dropped), (3, 1));
    }

    #[test]
    fn read_only_receive_buffer_is_a_device_error() {
        let mut r = rig();
        r.port.try_send(frame(60, 1)).unwrap();
        r.rx.push(&r.mem, &[(RX_BUF, 2048, false)]);
        r.dev.process();
        assert_ne!(r.dev.status() & status::DEVICE_NEEDS_RESET, 0);
        assert!(r.rx.pop_used(&r.mem).is_none());
    }

    #[test]
    fn state_round_trip_resumes_queues_and_keeps_a_pending_frame() {
        let mut r = rig();
        send(&mut r, &frame(60, 1), TX_BUF);
        r.tx.notify(&mut r.dev);
        r.tx.pop_used(&r.mem).unwrap();
        r.port.try_send(frame(70, 2)).unwrap();
        r.dev.process(); // no rx buffer: the frame becomes pending
        let saved = r.dev.save_state();
        assert!(
            matches!(&saved.device, DeviceState::Net(NetState { pending_rx: Some(f), .. }) if f.len() == 70)
        );
        let state: crate::virtio::VirtioState =
            serde_json::from_slice(&serde_json::to_vec(&saved).unwrap()).unwrap();

        // The destination has another backend and a zero MAC until restored.
        let (backend, mut port) = channel_pair(16);
        let mut dst = VirtioMmio::new(VirtioNet::new(backend, [0; 6]), r.mem.clone()).unwrap();
        dst.restore_state(&state).unwrap();
        assert_eq!(dst.device().mac(), MAC);
        assert_eq!(dst.save_state(), saved);
        // Transmit continues at the next ring position.
        let f = frame(90, 3);
        send(&mut r, &f, TX_BUF + 0x1000);
        r.tx.notify(&mut dst);
        assert_eq!(port.try_recv(), Some(f));
        assert!(r.tx.pop_used(&r.mem).is_some());
        // The pending frame is delivered once the guest posts a buffer.
        r.rx.push(&r.mem, &[(RX_BUF, 2048, true)]);
        dst.process();
        assert_eq!(received(&mut r, RX_BUF), Some(frame(70, 2)));

        // After the move the device announces the MAC from its new place.
        dst.announce();
        let rarp = port.try_recv().expect("announcement sent");
        assert_eq!(rarp.len(), 60);
        assert_eq!(&rarp[..6], &[0xff; 6]);
        assert_eq!(&rarp[6..12], &MAC);
        assert_eq!(&rarp[12..14], &[0x80, 0x35]);
        assert_eq!(&rarp[20..22], &[0, 3]);
        assert_eq!(&rarp[22..28], &MAC);

        // Block state does not fit a net device.
        let mut wrong = state.clone();
        wrong.device_id = abi::DEVICE_ID_BLOCK;
        assert!(matches!(
            dst.restore_state(&wrong),
            Err(StateError::WrongDevice { .. })
        ));
    }

    #[test]
    fn tap_backend_exchanges_arp_with_the_kernel_in_a_namespace() {
        if !wanmig_testenv::require_netns(
            "tap_backend_exchanges_arp_with_the_kernel_in_a_namespace",
        ) {
            return;
        }
        use crate::virtio::TapBackend;
        let ns = wanmig_testenv::Netns::create("wmvt").unwrap();
        let name = wanmig_testenv::unique_name("wmtap");
        let tap = TapBackend::create(&name).unwrap();
        wanmig_testenv::sh(&["ip", "link", "set", &name, "netns", ns.name()]);
        ns.exec(&["ip", "addr", "add", "198.18.7.1/24", "dev", &name]);
        let sysctl = format!("net.ipv6.conf.{name}.disable_ipv6=1");
        ns.exec(&["sysctl", "-qw", &sysctl]);
        ns.exec(&["ip", "link", "set", &name, "up"]);

        let mem = guest_memory();
        let mut dev = VirtioMmio::new(VirtioNet::new(tap, MAC), mem.clone()).unwrap();
        negotiate(&mut dev, abi::F_VERSION_1 | abi::NET_F_MAC);
        let mut rx = DriverQueue::setup(&mut dev, NET_RX_QUEUE, 0x1000);
        let mut tx = DriverQueue::setup(&mut dev, NET_TX_QUEUE, 0x2000);
        driver_ok(&mut dev);
        for i in 0..u64::from(abi::QUEUE_SIZE) {
            rx.push(&mem, &[(RX_BUF + i * 0x1000, 2048, true)]);
        }

        // ARP request: who has 198.18.7.1? tell 198.18.7.2 (our MAC).
        let mut arp = vec![0u8; NET_HDR_LEN];
        arp.extend_from_slice(&[0xff; 6]);
        arp.extend_from_slice(&MAC);
        arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&MAC);
        arp.extend_from_slice(&[198, 18, 7, 2]);
        arp.extend_from_slice(&[0; 6]);
        arp.extend_from_slice(&[198, 18, 7, 1]);
        mem.write_slice(&arp, GuestAddress(TX_BUF)).unwrap();
        tx.push(&mem, &[(TX_BUF, arp.len() as u32, false)]);
        tx.notify(&mut dev);

        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut reply = None;
        'wait: while std::time::Instant::now() < deadline {
            dev.process();
            while let Some((id, len)) = rx.pop_used(&mem) {
                let mut buf = vec![0u8; len as usize];
                mem.read_slice(&mut buf, GuestAddress(RX_BUF + u64::from(id) * 0x1000))
                    .unwrap();
                let f = &buf[NET_HDR_LEN..];
                // ARP reply (opcode 2) addressed to our MAC.
                if f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2] {
                    reply = Some(f.to_vec());
                    break 'wait;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let reply = reply.expect("the kernel answered our ARP request through the TAP device");
        assert_eq!(&reply[..6], &MAC);
        assert_eq!(&reply[28..32], &[198, 18, 7, 1]);
        assert_eq!(&reply[38..42], &[198, 18, 7, 2]);
    }
}
