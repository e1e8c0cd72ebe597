//! `wanmig-fuzz-seeds`: writes the seed inputs of the fuzz targets into
//! their corpus directories (`fuzz/corpus/<target>/seed-<hash>`), replacing
//! the seeds written before and leaving other inputs (minimised crashes)
//! alone.
//!
//! Most seeds come from each target's `seeds()`; two kinds need more of
//! this machine: `vm_state` seeds from real KVM VMs running the test guest
//! (paused mid-run, state saved, their virtqueue rings copied out of guest
//! memory), and `qemu_stream` seeds from captured QEMU channels
//! (`--qemu-captures`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use vm_memory::{Bytes as _, GuestAddress};
use wanmig_fuzz_harness::{qemu_stream, vm_state, TARGETS};
use wanmig_migration::machine::{DiskConfig, NetConfig, VmConfig};
use wanmig_vmm::virtio::VirtioState;
use wanmig_vmm::vm::Vm;

#[derive(Parser)]
#[command(about = "Write the wanmig fuzz targets' seed corpora")]
struct Args {
    /// The corpus root: one directory per target.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../corpus"))]
    out: PathBuf,
    /// Only these targets (default: all).
    #[arg(long = "target")]
    targets: Vec<String>,
    /// A directory of captured QEMU channels (`*.bin`, e.g. the qemu-stream
    /// capture test's `qemu-stream-captures-<version>` under the target
    /// directory) to cut `qemu_stream` seeds from.
    #[arg(long)]
    qemu_captures: Option<PathBuf>,
    /// Skip the `vm_state` seeds that boot KVM VMs.
    #[arg(long)]
    no_kvm: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    for t in TARGETS {
        if !args.targets.is_empty() && !args.targets.iter().any(|n| n == t.name) {
            continue;
        }
        let mut seeds = (t.seeds)();
        match t.name {
            "qemu_stream" => {
                if let Some(dir) = &args.qemu_captures {
                    seeds.extend(
                        qemu_stream::capture_seeds(dir)
                            .with_context(|| format!("reading captures in {}", dir.display()))?,
                    );
                }
            }
            "vm_state" if !args.no_kvm => seeds.extend(kvm_vm_states()?),
            _ => {}
        }
        for s in &seeds {
            (t.run)(s);
        }
        let n = write(&args.out.join(t.name), &seeds)?;
        println!("{}: {n} seeds", t.name);
    }
    Ok(())
}

/// Replaces the `seed-*` files in `dir` with `seeds`.
fn write(dir: &Path, seeds: &[Vec<u8>]) -> Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
        {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for s in seeds {
        let name = format!("seed-{}", &blake3::hash(s).to_hex()[..16]);
        std::fs::write(dir.join(&name), s).with_context(|| format!("writing {name}"))?;
        names.insert(name);
    }
    Ok(names.len())
}

/// State blobs of real VMs running the test guest: with both devices and
/// the disk workload running, with the network card only, and without
/// devices; each paused a few moments after boot, its rings copied from
/// guest memory into the input as patches.
fn kvm_vm_states() -> Result<Vec<Vec<u8>>> {
    if !Path::new("/dev/kvm").exists() {
        bail!("/dev/kvm is missing: run with --no-kvm to skip the vm_state seeds that need it");
    }
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk)?.set_len(vm_state::DISK_LEN)?;
    let net = NetConfig {
        mac: [2, 0, 0, 0, 0, 0x42],
        ip: "198.18.0.2".parse()?,
        prefix_len: 24,
        port: 7,
        tap: None,
        segment: None,
    };
    let disk_cfg = DiskConfig {
        path: disk.clone(),
        seed: 5,
        blocks_per_iteration: 16,
        iterations: 0,
    };
    let configs = [
        (3u8, Some(net.clone()), Some(disk_cfg.clone())),
        (1, Some(net), None),
        (0, None, None),
    ];
    let mut out = Vec::new();
    for (devices, net, disk) in configs {
        let config = VmConfig {
            mem_size: 16 << 20,
            net,
            disk,
            ..Default::default()
        };
        let vm = Vm::create(config, Box::new(|_| {}))?;
        vm.start()?;
        let start = Instant::now();
        for pause_after in [Duration::from_millis(300), Duration::from_millis(900)] {
            while start.elapsed() < pause_after {
                std::thread::sleep(Duration::from_millis(20));
            }
            vm.pause()?;
            let state = vm.save_state()?;
            let rings = ring_patches(vm.memory(), state.devices.as_ref())?;
            let blob = state.encode();
            out.push(vm_state::input(devices, 0, &rings, &blob));
            out.push(vm_state::input(devices, 0, &[], &blob));
            vm.resume()?;
        }
        vm.release();
    }
    Ok(out)
}

/// The descriptor tables, available and used rings of every queue in
/// `devices`, read from guest memory, as (address, bytes) patches.
fn ring_patches(
    mem: &wanmig_vmm::memory::GuestMem,
    devices: Option<&serde_json::Value>,
) -> Result<Vec<(u32, Vec<u8>)>> {
    let Some(v) = devices else {
        return Ok(Vec::new());
    };
    let states: Vec<VirtioState> = serde_json::from_value(v.clone())?;
    let mut patches = Vec::new();
    for q in states.iter().flat_map(|s| &s.queues).filter(|q| q.ready) {
        let n = u64::from(q.size);
        for (addr, len) in [
            (q.desc_table, 16 * n),
            (q.avail_ring, 6 + 2 * n),
            (q.used_ring, 6 + 8 * n),
        ] {
            if addr + len > vm_state::MEM_SIZE {
                bail!("a ring at {addr:#x} lies beyond the fuzz target's guest memory");
            }
            let mut b = vec![0u8; len as usize];
            mem.read_slice(&mut b, GuestAddress(addr))?;
            patches.push((addr as u32, b));
        }
    }
    Ok(patches)
}
