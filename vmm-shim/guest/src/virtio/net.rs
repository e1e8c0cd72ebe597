//! virtio-net driver as a smoltcp `phy::Device`: a receive queue with one
//! fixed 2 KiB buffer per descriptor (always all posted) and a transmit
//! queue with one fixed buffer per descriptor, reclaimed from the used ring.
//! No interrupts: `receive` kicks the receive queue when it finds nothing,
//! which lets the VMM move waiting frames in during that exit.

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use wanmig_guest_abi::virtio::{
    self as abi, NET_HDR_LEN, NET_MAX_FRAME, QUEUE_SIZE, VIRTQ_DESC_F_WRITE,
};

use super::arena;
use super::error::VirtioError;
use super::queue::Virtqueue;
use super::transport::Transport;

/// Bytes per packet buffer (header + the largest frame, rounded up).
const BUF_SIZE: usize = 2048;
const _: () = assert!(NET_HDR_LEN + NET_MAX_FRAME <= BUF_SIZE);

/// Counters of the driver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames handed to smoltcp.
    pub rx_frames: u64,
    /// Frames sent.
    pub tx_frames: u64,
    /// Used receive buffers with an impossible length.
    pub rx_bad: u64,
    /// Frames dropped because no transmit buffer was free.
    pub tx_dropped: u64,
}

struct RxRing {
    t: Transport,
    q: Virtqueue,
    bufs: &'static mut [u8],
    /// A used buffer taken off the ring but not yet handed to smoltcp.
    pending: Option<(u16, usize)>,
    frames: u64,
    bad: u64,
}

struct TxRing {
    t: Transport,
    q: Virtqueue,
    bufs: &'static mut [u8],
    /// Where a frame goes when no transmit buffer is free (it is dropped).
    scratch: &'static mut [u8],
    /// Bit i set: transmit buffer/descriptor i is free.
    free: u32,
    frames: u64,
    dropped: u64,
}

/// The network card.
pub struct NetDriver {
    rx: RxRing,
    tx: TxRing,
}

impl NetDriver {
    /// Probe the net window, set the device up and post every receive buffer.
    pub fn new() -> Result<Self, VirtioError> {
        let t = Transport::probe(abi::NET_MMIO_BASE, abi::DEVICE_ID_NET)?;
        t.negotiate(abi::NET_F_MAC)?;
        let n = usize::from(QUEUE_SIZE);
        let oom = VirtioError::OutOfMemory;
        let mut rx = RxRing {
            t,
            q: Virtqueue::new(abi::NET_RX_QUEUE)?,
            bufs: arena::bytes(n * BUF_SIZE, 4096).ok_or(oom)?,
            pending: None,
            frames: 0,
            bad: 0,
        };
        let tx = TxRing {
            t,
            q: Virtqueue::new(abi::NET_TX_QUEUE)?,
            bufs: arena::bytes(n * BUF_SIZE, 4096).ok_or(oom)?,
            scratch: arena::bytes(BUF_SIZE, 16).ok_or(oom)?,
            free: (1u32 << n) - 1,
            frames: 0,
            dropped: 0,
        };
        t.setup_queue(&rx.q)?;
        t.setup_queue(&tx.q)?;
        t.driver_ok()?;
        let base = rx.bufs.as_ptr() as u64;
        for i in 0..QUEUE_SIZE {
            let addr = base + u64::from(i) * BUF_SIZE as u64;
            rx.q.set_desc(i, addr, BUF_SIZE as u32, VIRTQ_DESC_F_WRITE, 0);
            rx.q.publish(i);
        }
        t.notify(abi::NET_RX_QUEUE);
        Ok(NetDriver { rx, tx })
    }

    /// What the driver has done.
    pub fn counters(&self) -> NetCounters {
        NetCounters {
            rx_frames: self.rx.frames,
            tx_frames: self.tx.frames,
            rx_bad: self.rx.bad,
            tx_dropped: self.tx.dropped,
        }
    }
}

impl RxRing {
    /// The next used buffer with a plausible length, kicking the device once
    /// when the ring is empty.
    fn next_frame(&mut self) -> Option<(u16, usize)> {
        if let Some(p) = self.pending.take() {
            return Some(p);
        }
        let mut kicked = false;
        loop {
            let Some((id, len)) = self.q.pop_used() else {
                if kicked {
                    return None;
                }
                // Nothing yet: let the VMM deliver waiting frames now.
                self.t.notify(abi::NET_RX_QUEUE);
                kicked = true;
                continue;
            };
            let len = len as usize;
            if (NET_HDR_LEN..=BUF_SIZE).contains(&len) {
                return Some((id, len));
            }
            self.bad += 1;
            self.q.publish(id);
        }
    }
}

impl TxRing {
    fn has_room(&mut self) -> bool {
        if self.free == 0 {
            while let Some((id, _)) = self.q.pop_used() {
                self.free |= 1 << id;
            }
        }
        self.free != 0
    }
}

/// A received frame (owned by the driver until consumed).
pub struct RxToken<'a> {
    ring: &'a mut RxRing,
    id: u16,
    len: usize,
}

/// Permission to send one frame.
pub struct TxToken<'a> {
    ring: &'a mut TxRing,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let start = usize::from(self.id) * BUF_SIZE;
        let r = f(&self.ring.bufs[start + NET_HDR_LEN..start + self.len]);
        self.ring.frames += 1;
        // Hand the buffer back to the device.
        self.ring.q.publish(self.id);
        r
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let len = len.min(BUF_SIZE - NET_HDR_LEN);
        let ring = self.ring;
        if !ring.has_room() {
            ring.dropped += 1;
            return f(&mut ring.scratch[..len]);
        }
        let id = ring.free.trailing_zeros() as u16;
        ring.free &= !(1 << id);
        let start = usize::from(id) * BUF_SIZE;
        let buf = &mut ring.bufs[start..start + NET_HDR_LEN + len];
        buf[..NET_HDR_LEN].fill(0);
        let r = f(&mut buf[NET_HDR_LEN..]);
        let addr = ring.bufs.as_ptr() as u64 + start as u64;
        ring.q.set_desc(id, addr, (NET_HDR_LEN + len) as u32, 0, 0);
        ring.q.publish(id);
        ring.t.notify(abi::NET_TX_QUEUE);
        ring.frames += 1;
        r
    }
}

impl phy::Device for NetDriver {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let (id, len) = self.rx.next_frame()?;
        if !self.tx.has_room() {
            // No buffer to answer with: keep the frame for the next poll.
            self.rx.pending = Some((id, len));
            return None;
        }
        Some((
            RxToken {
                ring: &mut self.rx,
                id,
                len,
            },
            TxToken { ring: &mut self.tx },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        if !self.tx.has_room() {
            return None;
        }
        Some(TxToken { ring: &mut self.tx })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = NET_MAX_FRAME;
        caps.max_burst_size = Some(usize::from(QUEUE_SIZE));
        caps
    }
}
