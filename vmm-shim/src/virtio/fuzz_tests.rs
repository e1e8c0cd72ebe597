//! Robustness of the device models against arbitrary driver input: random
//! descriptor tables and ring indices (deterministic seeds, no extra
//! dependency) must never panic a device, never write past the disk, and
//! either complete requests or put the device into DEVICE_NEEDS_RESET.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};
use wanmig_guest_abi::splitmix64;
use wanmig_guest_abi::virtio::{self as abi, reg, status};

use super::testdriver::{driver_ok, guest_memory, negotiate, read32, DriverQueue, Mem};
use super::{channel_pair, MmioDevice, RawFileBackend, VirtioBlock, VirtioMmio, VirtioNet};

const QUEUE_BASE: [u64; 2] = [0x1000, 0x3000];
const DISK_LEN: u64 = 64 * 1024;

/// Scribble a random descriptor table and available ring for the queue at
/// `base`, biased towards addresses inside the 1 MiB of guest memory.
fn scribble(mem: &Mem, base: u64, rng: &mut u64, avail_idx: &mut u16) {
    for i in 0..u64::from(abi::QUEUE_SIZE) {
        let r = splitmix64(rng);
        let addr = match r % 8 {
            0 => splitmix64(rng),                       // anywhere at all
            _ => 0x10000 + (splitmix64(rng) % 0xe0000), // inside RAM
        };
        let len = match (r >> 8) % 4 {
            0 => splitmix64(rng) as u32,
            _ => (splitmix64(rng) % 4096) as u32,
        };
        let flags = (splitmix64(rng) % 8) as u16; // NEXT, WRITE, INDIRECT
        let next = (splitmix64(rng) % 20) as u16;
        let at = GuestAddress(base + 16 * i);
        mem.write_obj(addr, at).unwrap();
        mem.write_obj(len, GuestAddress(at.0 + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(at.0 + 12)).unwrap();
        mem.write_obj(next, GuestAddress(at.0 + 14)).unwrap();
    }
    // Sometimes a plausible request header at a descriptor's address.
    let hdr_at = 0x10000 + (splitmix64(rng) % 0xe0000);
    let mut hdr = [0u8; 16];
    hdr[..4].copy_from_slice(&((splitmix64(rng) % 10) as u32).to_le_bytes());
    hdr[8..].copy_from_slice(&(splitmix64(rng) % 200).to_le_bytes());
    mem.write_slice(&hdr, GuestAddress(hdr_at)).unwrap();
    mem.write_obj(hdr_at, GuestAddress(base)).unwrap();

    let avail = base + 16 * u64::from(abi::QUEUE_SIZE);
    // A third of the rounds make descriptors 0..2 a well-formed request
    // (header, one sector of data, status) so the happy paths run too.
    if splitmix64(rng) % 3 == 0 {
        let data = 0x10000 + (splitmix64(rng) % 0xe0) * 0x1000;
        let write = splitmix64(rng) % 2 == 0;
        let descs: [(u64, u32, u16, u16); 3] = [
            (hdr_at, 16, abi::VIRTQ_DESC_F_NEXT, 1),
            (
                data,
                512,
                abi::VIRTQ_DESC_F_NEXT | if write { 0 } else { abi::VIRTQ_DESC_F_WRITE },
                2,
            ),
            (data + 0x800, 1, abi::VIRTQ_DESC_F_WRITE, 0),
        ];
        hdr[..4].copy_from_slice(&u32::from(write).to_le_bytes());
        mem.write_slice(&hdr, GuestAddress(hdr_at)).unwrap();
        for (i, (addr, len, flags, next)) in descs.into_iter().enumerate() {
            let at = GuestAddress(base + 16 * i as u64);
            mem.write_obj(addr, at).unwrap();
            mem.write_obj(len, GuestAddress(at.0 + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(at.0 + 12)).unwrap();
            mem.write_obj(next, GuestAddress(at.0 + 14)).unwrap();
        }
        let slot = avail + 4 + 2 * u64::from(*avail_idx % abi::QUEUE_SIZE);
        mem.write_obj(0u16, GuestAddress(slot)).unwrap();
        *avail_idx = avail_idx.wrapping_add(1);
        mem.write_obj(*avail_idx, GuestAddress(avail + 2)).unwrap();
        return;
    }

    let n = (splitmix64(rng) % 4) as u16;
    for _ in 0..n {
        let slot = avail + 4 + 2 * u64::from(*avail_idx % abi::QUEUE_SIZE);
        mem.write_obj((splitmix64(rng) % 18) as u16, GuestAddress(slot))
            .unwrap();
        *avail_idx = avail_idx.wrapping_add(1);
    }
    // Now and then an avail index that runs far ahead of the ring.
    let idx = if splitmix64(rng) % 16 == 0 {
        avail_idx.wrapping_add(1000)
    } else {
        *avail_idx
    };
    mem.write_obj(idx, GuestAddress(avail + 2)).unwrap();
}

/// Run `rounds` random rounds against `dev`; re-initialise when it asks.
fn hammer(
    dev: &mut dyn MmioDevice,
    mem: &Arc<Mem>,
    queues: u16,
    features: u64,
    seed: u64,
) -> (u32, u32) {
    let mut rng = seed;
    let mut resets = 0;
    let mut completions = 0;
    let setup = |dev: &mut dyn MmioDevice| -> Vec<DriverQueue> {
        // Fresh, zeroed rings, as a driver allocates them after a reset.
        mem.write_slice(&[0u8; 0x4000], GuestAddress(QUEUE_BASE[0]))
            .unwrap();
        assert_ne!(negotiate(dev, features) & status::FEATURES_OK, 0);
        let qs = (0..queues)
            .map(|i| DriverQueue::setup(dev, i, QUEUE_BASE[i as usize]))
            .collect();
        driver_ok(dev);
        qs
    };
    let mut qs = setup(dev);
    let mut avail = vec![0u16; usize::from(queues)];
    for _ in 0..400 {
        let q = (splitmix64(&mut rng) % u64::from(queues)) as usize;
        scribble(mem, QUEUE_BASE[q], &mut rng, &mut avail[q]);
        qs[q].notify(dev);
        dev.process();
        while let Some((id, _)) = qs[q].pop_used(mem) {
            assert!(id < u32::from(abi::QUEUE_SIZE), "used id {id} out of range");
            completions += 1;
        }
        if read32(dev, reg::STATUS) & status::DEVICE_NEEDS_RESET != 0 {
            resets += 1;
            qs = setup(dev);
            avail.iter_mut().for_each(|a| *a = 0);
        }
    }
    (completions, resets)
}

#[test]
fn random_block_requests_never_panic_or_grow_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fuzz.raw");
    let backend = RawFileBackend::create(&path, DISK_LEN).unwrap();
    let mem = guest_memory();
    let mut dev = VirtioMmio::new(VirtioBlock::new(backend, "fuzz"), mem.clone()).unwrap();
    let (done, resets) = hammer(&mut dev, &mem, 1, abi::F_VERSION_1 | abi::BLK_F_FLUSH, 1);
    assert!(done > 0, "some random requests complete");
    assert!(resets > 0, "some random chains are malformed");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), DISK_LEN);
    let s = dev.device().stats();
    assert!(
        s.reads + s.writes + s.flushes > 0,
        "some random requests succeed: {s:?}"
    );
}

#[test]
fn random_net_chains_never_panic() {
    let mem = guest_memory();
    let (backend, port) = channel_pair(64);
    let mut dev =
        VirtioMmio::new(VirtioNet::new(backend, [2, 0, 0, 0, 0, 1]), mem.clone()).unwrap();
    // Keep frames flowing towards the guest while it scribbles.
    for i in 0..32u8 {
        port.try_send(vec![i; 60 + usize::from(i) * 40]).unwrap();
    }
    let (done, resets) = hammer(&mut dev, &mem, 2, abi::F_VERSION_1 | abi::NET_F_MAC, 2);
    assert!(
        done > 0 && resets > 0,
        "completions {done}, resets {resets}"
    );
}
