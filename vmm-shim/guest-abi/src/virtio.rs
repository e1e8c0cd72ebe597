//! Virtio-mmio contract shared by the VMM's device models and the guest's
//! drivers: MMIO windows, register offsets (virtio 1.2 §4.2.2, version 2
//! "modern" layout), status and feature bits, device ids, queue sizes and the
//! request/header formats of virtio-net and virtio-block — plus the host
//! models of what the guest's virtio workloads compute (echo stream digest,
//! disk block contents and digest), so host tests can check the guest.

/// Size of one virtio-mmio register window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Guest-physical base of the virtio-net device's register window.
pub const NET_MMIO_BASE: u64 = 0xd000_0000;
/// Guest-physical base of the virtio-block device's register window.
pub const BLK_MMIO_BASE: u64 = 0xd000_1000;

/// "virt" in little endian: the value of the MagicValue register.
pub const MAGIC: u32 = 0x7472_6976;
/// The modern (non-legacy) virtio-mmio transport version.
pub const VERSION: u32 = 2;
/// Vendor id the VMM reports ("WMIG" is not registered anywhere; any value is allowed).
pub const VENDOR_ID: u32 = 0x574d_4947;

/// Device id of a network card.
pub const DEVICE_ID_NET: u32 = 1;
/// Device id of a block device.
pub const DEVICE_ID_BLOCK: u32 = 2;

/// Register offsets inside a window (all 32-bit wide).
pub mod reg {
    /// MagicValue (R).
    pub const MAGIC: u64 = 0x000;
    /// Version (R).
    pub const VERSION: u64 = 0x004;
    /// DeviceID (R).
    pub const DEVICE_ID: u64 = 0x008;
    /// VendorID (R).
    pub const VENDOR_ID: u64 = 0x00c;
    /// DeviceFeatures (R): 32 bits selected by DeviceFeaturesSel.
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// DeviceFeaturesSel (W).
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// DriverFeatures (W): 32 bits selected by DriverFeaturesSel.
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// DriverFeaturesSel (W).
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// QueueSel (W).
    pub const QUEUE_SEL: u64 = 0x030;
    /// QueueNumMax (R).
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// QueueNum (W).
    pub const QUEUE_NUM: u64 = 0x038;
    /// QueueReady (RW).
    pub const QUEUE_READY: u64 = 0x044;
    /// QueueNotify (W): the queue index.
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// InterruptStatus (R).
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// InterruptACK (W).
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// Status (RW); writing 0 resets the device.
    pub const STATUS: u64 = 0x070;
    /// QueueDescLow (W).
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// QueueDescHigh (W).
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// QueueDriverLow (W): the available ring.
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    /// QueueDriverHigh (W).
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    /// QueueDeviceLow (W): the used ring.
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    /// QueueDeviceHigh (W).
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    /// ConfigGeneration (R).
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Start of the device-specific configuration space.
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits (virtio 1.2 §2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest knows how to drive the device.
    pub const DRIVER: u32 = 2;
    /// The driver is set up and ready to drive the device.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from; the driver must reset it.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 128;
}

/// InterruptStatus bit: the device used a buffer in some queue.
pub const INT_USED_RING: u32 = 1;
/// InterruptStatus bit: the configuration (or the device status) changed.
pub const INT_CONFIG_CHANGE: u32 = 2;

/// Feature bit 32: the modern (virtio 1.x) interface; required by this VMM.
pub const F_VERSION_1: u64 = 1 << 32;
/// virtio-net feature: the device has a MAC address in its config space.
pub const NET_F_MAC: u64 = 1 << 5;
/// virtio-block feature: the device supports the FLUSH request.
pub const BLK_F_FLUSH: u64 = 1 << 9;

/// Maximum (and the guest's chosen) number of descriptors per virtqueue.
/// Small on purpose: the nested-KVM test machine emulates every guest
/// instruction, so short rings keep the guest drivers cheap.
pub const QUEUE_SIZE: u16 = 16;

/// virtio-net receive queue index.
pub const NET_RX_QUEUE: u16 = 0;
/// virtio-net transmit queue index.
pub const NET_TX_QUEUE: u16 = 1;
/// Number of virtio-net queues (one receive, one transmit).
pub const NET_NUM_QUEUES: usize = 2;
/// Length of `struct virtio_net_hdr` when VIRTIO_F_VERSION_1 is negotiated
/// (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers).
pub const NET_HDR_LEN: usize = 12;
/// Largest Ethernet frame (without FCS) the devices carry: 1500-byte MTU + 14-byte header.
pub const NET_MAX_FRAME: usize = 1514;
/// Offset of the 6-byte MAC address in the virtio-net config space.
pub const NET_CONFIG_MAC: u64 = 0;

/// Block queue index (the only one).
pub const BLK_REQUEST_QUEUE: u16 = 0;
/// Number of virtio-block queues.
pub const BLK_NUM_QUEUES: usize = 1;
/// The virtio-block sector size: capacity and request sectors count in 512 bytes.
pub const SECTOR_SIZE: u64 = 512;
/// Offset of the `capacity` (u64, sectors) field in the virtio-block config space.
pub const BLK_CONFIG_CAPACITY: u64 = 0;
/// Length of the virtio-block request header (type u32, reserved u32, sector u64).
pub const BLK_REQ_HDR_LEN: usize = 16;
/// Length of the device id a GET_ID request returns.
pub const BLK_ID_LEN: usize = 20;

/// virtio-block request types.
pub mod blk_req {
    /// Read sectors into device-writable buffers.
    pub const IN: u32 = 0;
    /// Write sectors from device-readable buffers.
    pub const OUT: u32 = 1;
    /// Make earlier writes durable.
    pub const FLUSH: u32 = 4;
    /// Return the 20-byte device id string.
    pub const GET_ID: u32 = 8;
}

/// virtio-block request status values (the last, device-writable byte of a request).
pub mod blk_status {
    /// Success.
    pub const OK: u8 = 0;
    /// The request failed (out of range, backend error, malformed).
    pub const IOERR: u8 = 1;
    /// Unknown request type.
    pub const UNSUPP: u8 = 2;
}

/// Split virtqueue descriptor flag: the buffer continues in `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Split virtqueue descriptor flag: the buffer is device-writable.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;

// ---- guest workloads on the virtio devices -------------------------------

/// The TCP service's status port is its echo port plus this offset.
pub const NET_STATUS_PORT_OFFSET: u16 = 1;

/// Folds a byte stream into a running digest, byte by byte, so the result
/// does not depend on how the stream was segmented. The TCP service keeps
/// this over every byte it echoed; a client recomputes it over what it sent.
pub fn stream_digest(mut digest: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        digest = crate::digest_step(digest, u64::from(b));
    }
    digest
}

/// 64-bit words in one disk-workload block (one 512-byte sector).
pub const DISK_BLOCK_WORDS: usize = 64;

/// The content the disk workload writes to `block` in `iteration`: a
/// SplitMix64 sequence seeded from (seed, iteration, block), little endian.
pub fn disk_block_fill(seed: u64, iteration: u64, block: u64, out: &mut [u64; DISK_BLOCK_WORDS]) {
    let mut state = seed ^ block.wrapping_mul(0xa076_1d64_78bd_642f) ^ iteration.rotate_left(32);
    for w in out.iter_mut() {
        *w = crate::splitmix64(&mut state);
    }
}

/// The block the disk workload touches as the `k`-th block of `iteration`:
/// iterations walk the disk in consecutive runs of `per_iteration` blocks,
/// wrapping at `total_blocks`.
pub fn disk_iteration_block(iteration: u64, k: u64, per_iteration: u64, total_blocks: u64) -> u64 {
    if total_blocks == 0 {
        return 0;
    }
    let total = u128::from(total_blocks);
    let start = u128::from(iteration) * u128::from(per_iteration) % total;
    // Both terms are below `total_blocks`, so the result fits in u64.
    ((start + u128::from(k) % total) % total) as u64
}

/// Which iteration last wrote `block` after `iterations_done` complete
/// iterations (None: never written, the block still holds what the image
/// held). Lets a host check a disk image against what the guest wrote.
pub fn disk_block_last_iteration(
    block: u64,
    per_iteration: u64,
    total_blocks: u64,
    iterations_done: u64,
) -> Option<u64> {
    if total_blocks == 0 || per_iteration == 0 || block >= total_blocks {
        return None;
    }
    let span = per_iteration.min(total_blocks);
    // A block is revisited at least every ceil(total / span) + 1 iterations.
    let lookback = total_blocks.div_ceil(span) + 1;
    let lowest = iterations_done.saturating_sub(lookback);
    let mut i = iterations_done;
    while i > lowest {
        i -= 1;
        let start = disk_iteration_block(i, 0, per_iteration, total_blocks);
        let offset = (block + total_blocks - start) % total_blocks;
        if offset < span {
            return Some(i);
        }
    }
    None
}

/// The digest the disk workload reports after `iterations` error-free
/// iterations: every word of every block it verified, in order, folded with
/// [`crate::digest_step`] (the guest folds the words it read back).
pub fn disk_expected_digest(
    seed: u64,
    per_iteration: u64,
    total_blocks: u64,
    iterations: u64,
) -> u64 {
    let per = per_iteration.min(total_blocks);
    let mut digest = 0;
    let mut words = [0u64; DISK_BLOCK_WORDS];
    for i in 0..iterations {
        for k in 0..per {
            disk_block_fill(
                seed,
                i,
                disk_iteration_block(i, k, per, total_blocks),
                &mut words,
            );
            for w in words {
                digest = crate::digest_step(digest, w);
            }
        }
    }
    digest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_digest_depends_on_every_parameter() {
        let d = disk_expected_digest(7, 16, 2048, 3);
        assert_ne!(d, disk_expected_digest(8, 16, 2048, 3));
        assert_ne!(d, disk_expected_digest(7, 15, 2048, 3));
        assert_ne!(d, disk_expected_digest(7, 16, 2048, 2));
        assert_eq!(disk_expected_digest(7, 16, 2048, 0), 0);
    }

    #[test]
    fn stream_digest_ignores_segmentation_but_not_order() {
        let whole = stream_digest(0, b"hello world");
        let split = stream_digest(stream_digest(0, b"hello "), b"world");
        assert_eq!(whole, split);
        assert_ne!(whole, stream_digest(0, b"world hello"));
    }

    #[test]
    fn disk_blocks_differ_by_block_iteration_and_seed() {
        let mut a = [0; DISK_BLOCK_WORDS];
        let mut b = [0; DISK_BLOCK_WORDS];
        disk_block_fill(1, 0, 5, &mut a);
        disk_block_fill(1, 0, 5, &mut b);
        assert_eq!(a, b);
        disk_block_fill(1, 1, 5, &mut b);
        assert_ne!(a, b);
        disk_block_fill(1, 0, 6, &mut b);
        assert_ne!(a, b);
        disk_block_fill(2, 0, 5, &mut b);
        assert_ne!(a, b);
    }

    #[test]
    fn last_iteration_matches_a_simulated_run() {
        for &(per, total) in &[(3u64, 10u64), (10, 10), (16, 10), (1, 7), (4, 4096)] {
            let mut last = [None; 64];
            for done in 0..25u64 {
                for b in 0..total.min(64) {
                    assert_eq!(
                        disk_block_last_iteration(b, per, total, done),
                        last[b as usize],
                        "per {per} total {total} block {b} after {done}"
                    );
                }
                for k in 0..per.min(total) {
                    let b = disk_iteration_block(done, k, per, total);
                    if b < 64 {
                        last[b as usize] = Some(done);
                    }
                }
            }
        }
    }
}
