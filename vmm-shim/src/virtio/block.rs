//! The virtio-block device model: parses requests (IN, OUT, FLUSH, GET_ID)
//! from descriptor chains, bounds-checks them against the disk and runs them
//! on a [`BlockBackend`]. A request the device can answer gets a status byte
//! (OK / IOERR / UNSUPP); a chain without a place for that byte is a device
//! error (DEVICE_NEEDS_RESET).

use tracing::debug;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};
use wanmig_guest_abi::virtio::{
    self as abi, blk_req, blk_status, BLK_ID_LEN, BLK_REQ_HDR_LEN, SECTOR_SIZE,
};

use super::block_backend::BlockBackend;
use super::device::{read_config_bytes, DeviceError, VirtioDevice};
use super::state::{BlockState, DeviceState, StateError};

/// Bounce-buffer size between guest memory and the backend; requests are
/// split into chunks of at most this many bytes.
const CHUNK: usize = 64 * 1024;

/// Counters of what the device did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Completed IN requests.
    pub reads: u64,
    /// Completed OUT requests.
    pub writes: u64,
    /// Completed FLUSH requests.
    pub flushes: u64,
    /// Requests answered with IOERR or UNSUPP.
    pub errors: u64,
}

/// A virtio-block device over a [`BlockBackend`].
pub struct VirtioBlock<B> {
    backend: B,
    id: [u8; BLK_ID_LEN],
    buf: Vec<u8>,
    descs: Vec<Descriptor>,
    stats: BlockStats,
}

/// A contiguous piece of request data in guest memory.
#[derive(Clone, Copy)]
struct Segment {
    addr: GuestAddress,
    len: u64,
    writable: bool,
}

impl<B: BlockBackend> VirtioBlock<B> {
    /// A block device over `backend`; `id` (at most 20 bytes used) is what
    /// GET_ID returns.
    pub fn new(backend: B, id: &str) -> Self {
        let mut raw = [0u8; BLK_ID_LEN];
        let n = id.len().min(BLK_ID_LEN);
        raw[..n].copy_from_slice(&id.as_bytes()[..n]);
        VirtioBlock {
            backend,
            id: raw,
            buf: Vec::new(),
            descs: Vec::new(),
            stats: BlockStats::default(),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Disk size in 512-byte sectors (a partial last sector is not exposed).
    pub fn capacity_sectors(&self) -> u64 {
        self.backend.len() / SECTOR_SIZE
    }

    /// What the device has done so far.
    pub fn stats(&self) -> BlockStats {
        self.stats
    }

    /// Handle one chain; returns the number of bytes written to
    /// device-writable buffers (data + status byte).
    fn handle_chain<M: GuestMemory>(&mut self, mem: &M, head: u16) -> Result<u32, DeviceError> {
        let malformed = |reason| DeviceError::MalformedChain { head, reason };
        let Some(last) = self.descs.last().copied() else {
            return Err(malformed("empty chain"));
        };
        if !last.is_write_only() || last.len() == 0 {
            return Err(malformed(
                "the last descriptor must hold a device-writable status byte",
            ));
        }
        let status_addr = last
            .addr()
            .checked_add(u64::from(last.len()) - 1)
            .ok_or(malformed("status byte address overflows"))?;
        let (status, written) = match self.execute(mem) {
            Ok(written) => (blk_status::OK, written),
            Err(status) => {
                self.stats.errors += 1;
                (status, 0)
            }
        };
        mem.write_obj(status, status_addr)?;
        // `written` is bounded by the chain length, which virtio-queue caps below 2^32.
        Ok(u32::try_from(written).unwrap_or(u32::MAX).saturating_add(1))
    }

    /// Run the request in `self.descs`; Ok(bytes written to the guest) or
    /// Err(status byte).
    fn execute<M: GuestMemory>(&mut self, mem: &M) -> Result<u64, u8> {
        let first = self.descs[0];
        if first.is_write_only() || (first.len() as usize) < BLK_REQ_HDR_LEN || self.descs.len() < 2
        {
            debug!("block request header missing or device-writable");
            return Err(blk_status::IOERR);
        }
        let mut hdr = [0u8; BLK_REQ_HDR_LEN];
        mem.read_slice(&mut hdr, first.addr())
            .map_err(|_| blk_status::IOERR)?;
        let req_type = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let mut sector_bytes = [0u8; 8];
        sector_bytes.copy_from_slice(&hdr[8..16]);
        let sector = u64::from_le_bytes(sector_bytes);

        let segments = self.data_segments();
        let total: u64 = segments.iter().map(|s| s.len).sum();
        match req_type {
            blk_req::IN | blk_req::OUT => {
                let want_writable = req_type == blk_req::IN;
                if segments.iter().any(|s| s.writable != want_writable) {
                    debug!(req_type, "data buffer has the wrong direction");
                    return Err(blk_status::IOERR);
                }
                if total % SECTOR_SIZE != 0 {
                    debug!(total, "data length is not a whole number of sectors");
                    return Err(blk_status::IOERR);
                }
                let start = sector.checked_mul(SECTOR_SIZE).ok_or(blk_status::IOERR)?;
                let end = start.checked_add(total).ok_or(blk_status::IOERR)?;
                if end > self.capacity_sectors() * SECTOR_SIZE {
                    debug!(sector, total, "request past the end of the disk");
                    return Err(blk_status::IOERR);
                }
                if want_writable {
                    self.read_into_guest(mem, &segments, start)?;
                    self.stats.reads += 1;
                    Ok(total)
                } else {
                    self.write_from_guest(mem, &segments, start)?;
                    self.stats.writes += 1;
                    Ok(0)
                }
            }
            blk_req::FLUSH => {
                self.backend.flush().map_err(|e| {
                    debug!(error = %e, "flush failed");
                    blk_status::IOERR
                })?;
                self.stats.flushes += 1;
                Ok(0)
            }
            blk_req::GET_ID => {
                if segments.iter().any(|s| !s.writable) {
                    return Err(blk_status::IOERR);
                }
                let mut id: &[u8] = &self.id;
                let mut written = 0;
                for s in &segments {
                    let n = id.len().min(s.len as usize);
                    mem.write_slice(&id[..n], s.addr)
                        .map_err(|_| blk_status::IOERR)?;
                    id = &id[n..];
                    written += n as u64;
                }
                Ok(written)
            }
            other => {
                debug!(other, "unsupported block request type");
                Err(blk_status::UNSUPP)
            }
        }
    }

    /// The data part of the chain: after the 16-byte header, before the status byte.
    fn data_segments(&self) -> Vec<Segment> {
        let n = self.descs.len();
        let mut segs = Vec::with_capacity(n);
        let first = self.descs[0];
        if first.len() as usize > BLK_REQ_HDR_LEN {
            if let Some(addr) = first.addr().checked_add(BLK_REQ_HDR_LEN as u64) {
                segs.push(Segment {
                    addr,
                    len: u64::from(first.len()) - BLK_REQ_HDR_LEN as u64,
                    writable: false,
                });
            }
        }
        for d in &self.descs[1..n - 1] {
            segs.push(Segment {
                addr: d.addr(),
                len: u64::from(d.len()),
                writable: d.is_write_only(),
            });
        }
        let last = self.descs[n - 1];
        if last.len() > 1 {
            segs.push(Segment {
                addr: last.addr(),
                len: u64::from(last.len()) - 1,
                writable: true,
            });
        }
        segs
    }

    fn read_into_guest<M: GuestMemory>(
        &mut self,
        mem: &M,
        segments: &[Segment],
        mut offset: u64,
    ) -> Result<(), u8> {
        for s in segments {
            let mut done = 0u64;
            while done < s.len {
                let n = (s.len - done).min(CHUNK as u64) as usize;
                self.buf.resize(n, 0);
                self.backend
                    .read_at(offset, &mut self.buf[..n])
                    .map_err(|e| {
                        debug!(error = %e, offset, "backend read failed");
                        blk_status::IOERR
                    })?;
                let addr = s.addr.checked_add(done).ok_or(blk_status::IOERR)?;
                mem.write_slice(&self.buf[..n], addr)
                    .map_err(|_| blk_status::IOERR)?;
                done += n as u64;
                offset += n as u64;
            }
        }
        Ok(())
    }

    fn write_from_guest<M: GuestMemory>(
        &mut self,
        mem: &M,
        segments: &[Segment],
        mut offset: u64,
    ) -> Result<(), u8> {
        for s in segments {
            let mut done = 0u64;
            while done < s.len {
                let n = (s.len - done).min(CHUNK as u64) as usize;
                self.buf.resize(n, 0);
                let addr = s.addr.checked_add(done).ok_or(blk_status::IOERR)?;
                mem.read_slice(&mut self.buf[..n], addr)
                    .map_err(|_| blk_status::IOERR)?;
                self.backend.write_at(offset, &self.buf[..n]).map_err(|e| {
                    debug!(error = %e, offset, "backend write failed");
                    blk_status::IOERR
                })?;
                done += n as u64;
                offset += n as u64;
            }
        }
        Ok(())
    }
}

impl<B: BlockBackend> VirtioDevice for VirtioBlock<B> {
    fn device_id(&self) -> u32 {
        abi::DEVICE_ID_BLOCK
    }

    fn device_features(&self) -> u64 {
        abi::F_VERSION_1 | abi::BLK_F_FLUSH
    }

    fn queue_count(&self) -> usize {
        abi::BLK_NUM_QUEUES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_blk_config starts with `le64 capacity`; nothing else is offered.
        read_config_bytes(&self.capacity_sectors().to_le_bytes(), offset, data);
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
        let mut used = false;
        // At most one ring's worth per call, so a busy guest cannot pin the VMM.
        for _ in 0..queue.size() {
            let Some(chain) = queue.iter(mem)?.next() else {
                break;
            };
            let head = chain.head_index();
            self.descs.clear();
            self.descs.extend(chain);
            let len = self.handle_chain(mem, head)?;
            queue.add_used(mem, head, len)?;
            used = true;
        }
        Ok(used)
    }

    fn reset(&mut self) {}

    fn save(&self) -> DeviceState {
        DeviceState::Block(BlockState {
            capacity_sectors: self.capacity_sectors(),
            id: self.id,
        })
    }

    fn restore(&mut self, state: &DeviceState) -> Result<(), StateError> {
        let DeviceState::Block(s) = state else {
            return Err(StateError::WrongDevice {
                expected: abi::DEVICE_ID_BLOCK,
                found: abi::DEVICE_ID_NET,
            });
        };
        if s.capacity_sectors != self.capacity_sectors() {
            return Err(StateError::CapacityMismatch {
                snapshot: s.capacity_sectors,
                backend: self.capacity_sectors(),
            });
        }
        self.id = s.id;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testdriver::{
        driver_ok, guest_memory, negotiate, read32, write32, DriverQueue, Mem,
    };
    use crate::virtio::{MmioDevice, RawFileBackend, VirtioMmio};
    use std::sync::Arc;
    use vm_memory::bitmap::Bitmap;
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    use wanmig_guest_abi::virtio::{reg, status};

    const DISK_SECTORS: u64 = 128;
    const HDR: u64 = 0x20000;
    const DATA: u64 = 0x30000;
    const STATUS: u64 = 0x50000;

    struct Rig {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        mem: Arc<Mem>,
        dev: VirtioMmio<VirtioBlock<RawFileBackend>, Arc<Mem>>,
        q: DriverQueue,
    }

    fn rig() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        let backend = RawFileBackend::create(&path, DISK_SECTORS * SECTOR_SIZE).unwrap();
        let mem = guest_memory();
        let mut dev =
            VirtioMmio::new(VirtioBlock::new(backend, "wanmig-test-disk"), mem.clone()).unwrap();
        let s = negotiate(&mut dev, abi::F_VERSION_1 | abi::BLK_F_FLUSH);
        assert_ne!(s & status::FEATURES_OK, 0);
        let q = DriverQueue::setup(&mut dev, 0, 0x1000);
        driver_ok(&mut dev);
        Rig {
            _dir: dir,
            path,
            mem,
            dev,
            q,
        }
    }

    fn header(mem: &Mem, req: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&req.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        mem.write_obj(0xaau8, GuestAddress(STATUS)).unwrap();
    }

    /// Submit a chain, notify, and return (used len, status byte).
    fn submit(r: &mut Rig, bufs: &[(u64, u32, bool)]) -> (u32, u8) {
        let head = r.q.push(&r.mem, bufs);
        r.q.notify(&mut r.dev);
        let (id, len) = r.q.pop_used(&r.mem).expect("request completed");
        assert_eq!(id, u32::from(head));
        (len, r.mem.read_obj(GuestAddress(STATUS)).unwrap())
    }

    fn pattern(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn write_then_read_round_trips_through_the_file_and_dirties_guest_pages() {
        let mut r = rig();
        let mut cap = [0u8; 8];
        r.dev.mmio_read(reg::CONFIG, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), DISK_SECTORS);

        let data = pattern(5, 1024);
        r.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
        header(&r.mem, blk_req::OUT, 3);
        let (len, st) = submit(
            &mut r,
            &[(HDR, 16, false), (DATA, 1024, false), (STATUS, 1, true)],
        );
        assert_eq!((len, st), (1, blk_status::OK));
        assert!(r.dev.interrupt_pending());
        let pending = read32(&mut r.dev, reg::INTERRUPT_STATUS);
        assert_eq!(pending, abi::INT_USED_RING);
        write32(&mut r.dev, reg::INTERRUPT_ACK, pending);
        assert!(!r.dev.interrupt_pending());
        let on_disk = std::fs::read(&r.path).unwrap();
        assert_eq!(&on_disk[3 * 512..5 * 512], &data[..]);

        // Read it back into two separate 512-byte buffers in a fresh page.
        let dst = 0x70000u64;
        let mem = r.mem.clone();
        let region = mem.find_region(GuestAddress(dst)).unwrap();
        assert!(!region.bitmap().dirty_at(dst as usize));
        header(&r.mem, blk_req::IN, 3);
        let (len, st) = submit(
            &mut r,
            &[
                (HDR, 16, false),
                (dst, 512, true),
                (dst + 4096, 512, true),
                (STATUS, 1, true),
            ],
        );
        assert_eq!((len, st), (1025, blk_status::OK));
        let mut back = vec![0u8; 1024];
        r.mem
            .read_slice(&mut back[..512], GuestAddress(dst))
            .unwrap();
        r.mem
            .read_slice(&mut back[512..], GuestAddress(dst + 4096))
            .unwrap();
        assert_eq!(back, data);
        // Device writes into guest memory must show up in the dirty bitmap (migration).
        assert!(region.bitmap().dirty_at(dst as usize));
        assert!(region.bitmap().dirty_at(dst as usize + 4096));
        let stats = r.dev.device().stats();
        assert_eq!((stats.reads, stats.writes, stats.errors), (1, 1, 0));
    }

    #[test]
    fn flush_and_get_id() {
        let mut r = rig();
        header(&r.mem, blk_req::FLUSH, 0);
        let (len, st) = submit(&mut r, &[(HDR, 16, false), (STATUS, 1, true)]);
        assert_eq!((len, st), (1, blk_status::OK));
        assert_eq!(r.dev.device().stats().flushes, 1);

        header(&r.mem, blk_req::GET_ID, 0);
        let (len, st) = submit(
            &mut r,
            &[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)],
        );
        assert_eq!((len, st), (21, blk_status::OK));
        let mut id = [0u8; 20];
        r.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id[..16], b"wanmig-test-disk");
        assert_eq!(&id[16..], &[0; 4]);
    }

    #[test]
    fn out_of_range_and_bad_requests_get_error_status_without_reset() {
        let mut r = rig();
        let cases: &[(u32, u64, u32, u8)] = &[
            (blk_req::IN, DISK_SECTORS - 1, 1024, blk_status::IOERR), // crosses the end
            (blk_req::OUT, DISK_SECTORS, 512, blk_status::IOERR),     // starts at the end
            (blk_req::IN, u64::MAX / 256, 512, blk_status::IOERR),    // offset overflows
            (blk_req::IN, 0, 100, blk_status::IOERR),                 // not whole sectors
            (99, 0, 512, blk_status::UNSUPP),                         // unknown type
        ];
        for &(req, sector, len, want) in cases {
            header(&r.mem, req, sector);
            let writable = req == blk_req::IN;
            let (_, st) = submit(
                &mut r,
                &[(HDR, 16, false), (DATA, len, writable), (STATUS, 1, true)],
            );
            assert_eq!(st, want, "request type {req} sector {sector} len {len}");
        }
        // Wrong data direction (OUT with a device-writable buffer), and a data
        // buffer outside guest memory.
        header(&r.mem, blk_req::OUT, 0);
        let (_, st) = submit(
            &mut r,
            &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
        );
        assert_eq!(st, blk_status::IOERR);
        header(&r.mem, blk_req::IN, 0);
        let (_, st) = submit(
            &mut r,
            &[
                (HDR, 16, false),
                (0x4000_0000, 512, true),
                (STATUS, 1, true),
            ],
        );
        assert_eq!(st, blk_status::IOERR);
        assert_eq!(r.dev.status() & status::DEVICE_NEEDS_RESET, 0);
        assert_eq!(r.dev.device().stats().errors, 7);
        // The device still serves a good request, including the last sector.
        header(&r.mem, blk_req::IN, DISK_SECTORS - 1);
        let (len, st) = submit(
            &mut r,
            &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
        );
        assert_eq!((len, st), (513, blk_status::OK));

        // A backend failure (the image shrank under the device, so the read
        // hits end of file) is an IOERR for that request only.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&r.path)
            .unwrap()
            .set_len(DISK_SECTORS * SECTOR_SIZE / 2)
            .unwrap();
        header(&r.mem, blk_req::IN, DISK_SECTORS - 1);
        let (_, st) = submit(
            &mut r,
            &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
        );
        assert_eq!(st, blk_status::IOERR);
        header(&r.mem, blk_req::IN, 0);
        let (_, st) = submit(
            &mut r,
            &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
        );
        assert_eq!(st, blk_status::OK);
    }

    #[test]
    fn malformed_chain_sets_needs_reset_and_the_driver_can_recover() {
        let mut r = rig();
        header(&r.mem, blk_req::IN, 0);
        // The status descriptor is not device-writable: nowhere to report.
        r.q.push(
            &r.mem,
            &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, false)],
        );
        r.q.notify(&mut r.dev);
        assert_ne!(r.dev.status() & status::DEVICE_NEEDS_RESET, 0);
        assert_ne!(
            read32(&mut r.dev, reg::INTERRUPT_STATUS) & abi::INT_CONFIG_CHANGE,
            0
        );
        assert_eq!(r.q.pop_used(&r.mem), None);
        // Further notifies are ignored until reset.
        r.q.push(
            &r.mem,
            &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
        );
        r.q.notify(&mut r.dev);
        assert_eq!(r.q.pop_used(&r.mem), None);

        // Reset and re-initialise; a chain whose `next` points past the table
        // ends early (no status byte) and is also a device error.
        negotiate(&mut r.dev, abi::F_VERSION_1);
        let mut q = DriverQueue::setup(&mut r.dev, 0, 0x8000);
        driver_ok(&mut r.dev);
        q.write_desc(&r.mem, 0, HDR, 16, abi::VIRTQ_DESC_F_NEXT, 200);
        q.publish(&r.mem, 0);
        q.notify(&mut r.dev);
        assert_ne!(r.dev.status() & status::DEVICE_NEEDS_RESET, 0);

        // A status byte outside guest memory, after another reset.
        negotiate(&mut r.dev, abi::F_VERSION_1);
        let mut q = DriverQueue::setup(&mut r.dev, 0, 0x8000);
        driver_ok(&mut r.dev);
        q.push(&r.mem, &[(HDR, 16, false), (0x4000_0000, 1, true)]);
        q.notify(&mut r.dev);
        assert_ne!(r.dev.status() & status::DEVICE_NEEDS_RESET, 0);

        // And after a final reset the device works again.
        negotiate(&mut r.dev, abi::F_VERSION_1);
        let mut q = DriverQueue::setup(&mut r.dev, 0, 0x8000);
        driver_ok(&mut r.dev);
        header(&r.mem, blk_req::IN, 0);
        q.push(
            &r.mem,
            &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
        );
        q.notify(&mut r.dev);
        assert_eq!(q.pop_used(&r.mem).map(|u| u.1), Some(513));
    }

    #[test]
    fn state_round_trip_keeps_queue_positions_and_rejects_a_different_disk() {
        let mut r = rig();
        for sector in 0..3 {
            header(&r.mem, blk_req::FLUSH, sector);
            submit(&mut r, &[(HDR, 16, false), (STATUS, 1, true)]);
        }
        let saved = r.dev.save_state();
        let json = serde_json::to_string(&saved).unwrap();
        let state: crate::virtio::VirtioState = serde_json::from_str(&json).unwrap();
        assert_eq!(state, saved);
        assert_eq!(state.queues[0].next_avail, 3);
        assert_eq!(state.queues[0].next_used, 3);

        // A destination with the same image resumes where the source stopped.
        let backend = RawFileBackend::open(&r.path).unwrap();
        let mut dst = VirtioMmio::new(VirtioBlock::new(backend, "other"), r.mem.clone()).unwrap();
        dst.restore_state(&state).unwrap();
        assert_eq!(dst.save_state(), saved);
        r.mem
            .write_slice(&pattern(9, 512), GuestAddress(DATA))
            .unwrap();
        header(&r.mem, blk_req::OUT, 7);
        let head = r.q.push(
            &r.mem,
            &[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)],
        );
        r.q.notify(&mut dst);
        assert_eq!(r.q.pop_used(&r.mem), Some((u32::from(head), 1)));
        assert_eq!(
            &std::fs::read(&r.path).unwrap()[7 * 512..8 * 512],
            &pattern(9, 512)[..]
        );
        // GET_ID reports the source's id, which the guest already saw.
        header(&r.mem, blk_req::GET_ID, 0);
        r.q.push(
            &r.mem,
            &[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)],
        );
        r.q.notify(&mut dst);
        let mut id = [0u8; 16];
        r.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"wanmig-test-disk");

        // A different-size disk, or a net device's state, is refused.
        let dir = tempfile::tempdir().unwrap();
        let small = RawFileBackend::create(&dir.path().join("s.raw"), 4096).unwrap();
        let mut wrong = VirtioMmio::new(VirtioBlock::new(small, "x"), r.mem.clone()).unwrap();
        assert!(matches!(
            wrong.restore_state(&state),
            Err(StateError::CapacityMismatch {
                snapshot: 128,
                backend: 8
            })
        ));
        let mut bad_queue = state.clone();
        bad_queue.queues[0].size = 3;
        assert!(matches!(
            dst.restore_state(&bad_queue),
            Err(StateError::InvalidQueue { index: 0, .. })
        ));
    }
}
