//! virtio-block driver: one request in flight at a time, three descriptors
//! per request (header, data, status). The VMM completes a request while
//! handling the notify, so a request normally costs one exit.

use wanmig_guest_abi::virtio::{
    self as abi, blk_req, blk_status, BLK_REQ_HDR_LEN, SECTOR_SIZE, VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
};

use super::arena;
use super::error::VirtioError;
use super::queue::Virtqueue;
use super::transport::Transport;

/// How often a request is re-notified before the driver gives up.
const MAX_POLLS: u32 = 1000;

/// The block device.
pub struct BlkDriver {
    t: Transport,
    q: Virtqueue,
    header: &'static mut [u8],
    status: &'static mut [u8],
    capacity: u64,
    /// A request timed out and may still be in the ring: refuse new ones.
    stuck: bool,
}

impl BlkDriver {
    /// Probe the block window and set the device up.
    pub fn new() -> Result<Self, VirtioError> {
        let t = Transport::probe(abi::BLK_MMIO_BASE, abi::DEVICE_ID_BLOCK)?;
        t.negotiate(abi::BLK_F_FLUSH)?;
        let q = Virtqueue::new(abi::BLK_REQUEST_QUEUE)?;
        t.setup_queue(&q)?;
        t.driver_ok()?;
        let capacity = u64::from(t.config_u32(abi::BLK_CONFIG_CAPACITY))
            | (u64::from(t.config_u32(abi::BLK_CONFIG_CAPACITY + 4)) << 32);
        Ok(BlkDriver {
            t,
            q,
            header: arena::bytes(BLK_REQ_HDR_LEN, 16).ok_or(VirtioError::OutOfMemory)?,
            status: arena::bytes(1, 1).ok_or(VirtioError::OutOfMemory)?,
            capacity,
            stuck: false,
        })
    }

    /// Disk size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity
    }

    /// Read whole sectors starting at `sector` into `buf`.
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), VirtioError> {
        self.request(
            blk_req::IN,
            sector,
            buf.as_mut_ptr() as u64,
            buf.len(),
            true,
        )
    }

    /// Write whole sectors from `buf` starting at `sector`.
    pub fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), VirtioError> {
        self.request(blk_req::OUT, sector, buf.as_ptr() as u64, buf.len(), false)
    }

    /// Make earlier writes durable.
    pub fn flush(&mut self) -> Result<(), VirtioError> {
        self.request(blk_req::FLUSH, 0, 0, 0, false)
    }

    fn request(
        &mut self,
        kind: u32,
        sector: u64,
        data: u64,
        len: usize,
        device_writes: bool,
    ) -> Result<(), VirtioError> {
        if self.stuck {
            return Err(VirtioError::Timeout);
        }
        if (len as u64) & (SECTOR_SIZE - 1) != 0 || len > u32::MAX as usize {
            return Err(VirtioError::BadRequest);
        }
        self.header[..4].copy_from_slice(&kind.to_le_bytes());
        self.header[4..8].fill(0);
        self.header[8..16].copy_from_slice(&sector.to_le_bytes());
        self.status[0] = 0xff;
        let status_addr = self.status.as_ptr() as u64;
        self.q.set_desc(
            0,
            self.header.as_ptr() as u64,
            BLK_REQ_HDR_LEN as u32,
            VIRTQ_DESC_F_NEXT,
            1,
        );
        if len > 0 {
            let flags = VIRTQ_DESC_F_NEXT | if device_writes { VIRTQ_DESC_F_WRITE } else { 0 };
            self.q.set_desc(1, data, len as u32, flags, 2);
            self.q.set_desc(2, status_addr, 1, VIRTQ_DESC_F_WRITE, 0);
        } else {
            self.q.set_desc(1, status_addr, 1, VIRTQ_DESC_F_WRITE, 0);
        }
        self.q.publish(0);
        for _ in 0..MAX_POLLS {
            self.t.notify(self.q.index());
            if self.q.pop_used().is_some() {
                // SAFETY: the status byte is ours; the device wrote it
                // before publishing the used entry, read it fresh.
                let st = unsafe { core::ptr::read_volatile(self.status.as_ptr()) };
                return match st {
                    blk_status::OK => Ok(()),
                    other => Err(VirtioError::Io(other)),
                };
            }
            if self.t.needs_reset() {
                return Err(VirtioError::NeedsReset);
            }
        }
        self.stuck = true;
        Err(VirtioError::Timeout)
    }
}
