//! Soak and load: real KVM guests, each with a disk, migrate back and forth
//! between two gateways (QUIC + mutual TLS over the WAN emulator) while
//! overlay frames cross the stretched segment and the disks follow their
//! VMs (follow-on storage copies). Every migration is checked: the memory
//! digest both shims agreed on equals the source's memory when it let the
//! VM go and the destination's incoming record; the guest's memory-workload
//! results equal an unmigrated run's; its disk workload sees no error;
//! each disk copy is verified by the source; the VM runs at exactly one
//! site. At the end every guest is paused and its disk file compared with
//! what the guest-abi model says it wrote.
//!
//! Both gateways and their VMs run in this process (the lab's in-process
//! mesh: the VMs' guest memory and the overlay ports live with the
//! gateways), so RSS, open fds and threads are this process's, read from
//! `/proc/self` after every migration and printed as a series. After a
//! warm-up, RSS may grow by at most [`RSS_GROWTH_LIMIT`] and fds and
//! threads must come back to within a small margin of their warm-up level.
//! It is its own test binary, so nothing else runs in the process.
//!
//! `WANMIG_SOAK_MIGRATIONS` (total migrations, default 100) and
//! `WANMIG_SOAK_VMS` (VMs migrating concurrently, default 2) size the run:
//! `WANMIG_SOAK_VMS=4 WANMIG_SOAK_MIGRATIONS=200` is the load run.

#[path = "migration_support.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::*;
use wanmig_e2e::{init_logging, Link, Mesh, MeshBuilder};
use wanmig_gateway::migration::{Direction, Outcome};
use wanmig_gateway::vms::{DiskState, VmHost, VmState};
use wanmig_gateway::GatewayHandle;
use wanmig_guest_abi::virtio::{disk_block_fill, disk_block_last_iteration, DISK_BLOCK_WORDS};
use wanmig_migration::machine::{DiskConfig, VmConfig};

const SITES: [&str; 2] = ["site-a", "site-b"];
const SEGMENT: &str = "soak";
const MEM_MIB: u64 = 16;
const DISK_LEN: u64 = 2 << 20;
const DISK_PER_ITERATION: u64 = 16;
/// Page store cap per scope: small, so the stores reach their bound within
/// the run and the RSS check sees a full store, not one still filling.
const STORE_CAP_MIB: u64 = 16;
/// How far this process's RSS may rise above its warm-up peak afterwards.
const RSS_GROWTH_LIMIT: u64 = 64 << 20;
/// How many more fds / threads than at their warm-up peak the process may
/// hold after the last migration.
const FD_MARGIN: u64 = 8;
const THREAD_MARGIN: u64 = 4;
const LONG: Duration = Duration::from_secs(180);

fn env_u64(key: &str, default: u64) -> u64 {
    match std::env::var(key) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v} is not a number")),
        Err(_) => default,
    }
}

/// This process's resident memory (bytes), open fds and threads.
#[derive(Debug, Clone, Copy)]
struct Usage {
    rss: u64,
    fds: u64,
    threads: u64,
}

fn usage() -> Usage {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/self/status"))
    };
    Usage {
        rss: field("VmRSS:") << 10,
        fds: std::fs::read_dir("/proc/self/fd").unwrap().count() as u64,
        threads: field("Threads:"),
    }
}

fn hex(d: &[u8; 32]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn vm_config(mesh: &Mesh, name: &str, seed: u64) -> VmConfig {
    let disks = mesh.dir().join("disks");
    std::fs::create_dir_all(&disks).unwrap();
    let path = disks.join(format!("{name}-origin.disk"));
    std::fs::File::create(&path)
        .unwrap()
        .set_len(DISK_LEN)
        .unwrap();
    let mut config = dirtying_vm(MEM_MIB, 16, Duration::from_millis(2));
    config.disk = Some(DiskConfig {
        path,
        seed,
        blocks_per_iteration: DISK_PER_ITERATION,
        iterations: 0,
    });
    config
}

/// The guest's latest disk report: [iteration, digest, verified, errors].
fn disk_report(host: &VmHost, vm: &str) -> Option<[u64; 4]> {
    host.reports(vm)?
        .latest(wanmig_guest_abi::REPORT_DISK_ITERATION)
        .map(|r| [r.values[0], r.values[1], r.values[2], r.values[3]])
}

async fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + LONG;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the VM's disk at `gw` is local and verified (when it came
/// with a copy), and its guest made memory and disk progress there.
async fn settled_and_running(gw: &GatewayHandle, vm: &str, copies: &AtomicU64) {
    let host = gw.vm_host();
    match host.disk_state(vm) {
        None => {}
        Some(_) => {
            let (bytes, verified) =
                poll(&format!("{vm}'s disk copy"), || match host.disk_state(vm) {
                    Some(DiskState::Local {
                        disk_bytes,
                        verified,
                        ..
                    }) => Some((disk_bytes, verified)),
                    Some(DiskState::Failed { reason, .. }) => {
                        panic!("{vm}: disk copy failed: {reason}")
                    }
                    _ => None,
                })
                .await;
            assert_eq!(bytes, DISK_LEN, "{vm}");
            assert!(verified, "{vm}: the source checked the copy");
            copies.fetch_add(1, Ordering::Relaxed);
        }
    }
    let mem = iteration(host, vm);
    let disk = disk_report(host, vm).map_or(0, |r| r[0]);
    poll(&format!("{vm} to make progress"), || {
        let r = disk_report(host, vm)?;
        assert_eq!(r[3], 0, "{vm}: the guest saw disk errors: {r:?}");
        (iteration(host, vm) >= mem + 3 && r[0] > disk).then_some(())
    })
    .await;
}

/// Migrates `vm` from `from` to `to` and checks the move.
async fn migrate_once(mesh: &Mesh, config: &VmConfig, vm: &str, from: &str, to: &str) {
    let (src, dst) = (mesh.gw(from), mesh.gw(to));
    let rec = migrate_ok(src, vm, to, &format!("{vm} {from} -> {to}")).await;
    // The digest both shims checked is the source's memory as it let go,
    // and the destination's record agrees.
    let released = src.vm_host().released(vm).expect("the source's record");
    let digest = rec.memory_digest.clone().expect("a memory digest");
    assert_eq!(digest, hex(&released.memory_digest), "{vm} {from} -> {to}");
    // The destination ends its record just after the source heard it
    // resumed.
    let incoming = poll("the destination's record to end", || {
        dst.migration()
            .records()
            .into_iter()
            .find(|r| r.id == rec.id && r.direction == Direction::Incoming && r.finished())
    })
    .await;
    assert_eq!(incoming.outcome, Some(Outcome::Succeeded), "{vm}");
    assert_eq!(incoming.memory_digest, Some(digest));
    // Exactly one place.
    assert_eq!(dst.vm_host().state(vm), Some(VmState::Running), "{vm}");
    assert_eq!(
        src.vm_host().state(vm),
        Some(VmState::MigratedAway { to: to.into() }),
        "{vm}"
    );
    // The guest's results go on matching an unmigrated run.
    let last = iteration(src.vm_host(), vm);
    assert!(wait_iteration(dst.vm_host(), vm, last + 3).await, "{vm}");
    assert_matches_reference(config, &samples(dst.vm_host(), vm), vm);
}

/// Freezes the guest and compares its disk file with the guest-abi model.
fn check_disk_against_model(host: &VmHost, vm: &str, seed: u64) {
    host.with_vm(vm, |v| v.pause().unwrap()).unwrap();
    let done = disk_report(host, vm).unwrap();
    assert_eq!(done[3], 0, "{vm}: no disk errors: {done:?}");
    let path = match host.disk_state(vm) {
        Some(DiskState::Local { path, .. }) => path,
        other => panic!("{vm}: disk not local at the end: {other:?}"),
    };
    let image = std::fs::read(&path).unwrap();
    assert_eq!(image.len() as u64, DISK_LEN);
    let total = DISK_LEN / 512;
    let mut words = [0u64; DISK_BLOCK_WORDS];
    for block in 0..total {
        let got = &image[(block * 512) as usize..((block + 1) * 512) as usize];
        let candidates = [
            disk_block_last_iteration(block, DISK_PER_ITERATION, total, done[0] + 1),
            disk_block_last_iteration(block, DISK_PER_ITERATION, total, done[0] + 2),
        ];
        let ok = candidates.iter().any(|c| match c {
            None => got.iter().all(|&b| b == 0),
            Some(i) => {
                disk_block_fill(seed, *i, block, &mut words);
                let want: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
                got == want.as_slice()
            }
        });
        assert!(ok, "{vm}: block {block} differs from the model");
    }
}

/// Overlay traffic for the whole run: a port at each site; A's sends
/// frames to B's, B's echoes them back. Returns the echoes A received.
fn overlay_traffic(mesh: &Mesh, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    const MAC_A: [u8; 6] = [0x02, 0x50, 0x4b, 0, 0, 0x0a];
    const MAC_B: [u8; 6] = [0x02, 0x50, 0x4b, 0, 0, 0x0b];
    let (oa, ob) = (
        mesh.gw("site-a").overlay().clone(),
        mesh.gw("site-b").overlay().clone(),
    );
    tokio::spawn(async move {
        let (_, mut pa) = oa.attach_port(SEGMENT).await.unwrap();
        let (_, mut pb) = ob.attach_port(SEGMENT).await.unwrap();
        let frame = |dst: [u8; 6], src: [u8; 6], seq: u64| {
            let mut f = Vec::with_capacity(1200);
            f.extend_from_slice(&dst);
            f.extend_from_slice(&src);
            f.extend_from_slice(&[0x88, 0xb5]);
            f.extend_from_slice(&seq.to_le_bytes());
            f.resize(1200, (seq % 251) as u8);
            Bytes::from(f)
        };
        let echo = tokio::spawn(async move {
            while let Some(f) = pb.rx.recv().await {
                if f.len() >= 22 && f[..6] == MAC_B {
                    let seq = u64::from_le_bytes(f[14..22].try_into().unwrap());
                    let _ = pb.tx.send(frame(MAC_A, MAC_B, seq)).await;
                }
            }
        });
        // A's first frames are flooded (B's MAC is unknown); B's echoes
        // teach the switches where it is.
        let mut echoed = 0;
        let mut seq = 0u64;
        while !stop.load(Ordering::Relaxed) {
            seq += 1;
            pa.tx.send(frame(MAC_B, MAC_A, seq)).await.unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
            while let Ok(Some(f)) = tokio::time::timeout_at(deadline, pa.rx.recv()).await {
                if f[..6] == MAC_A && f[14..22] == seq.to_le_bytes() {
                    assert_eq!(f[f.len() - 1], (seq % 251) as u8, "an intact echo");
                    echoed += 1;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        echo.abort();
        echoed
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vms_migrate_back_and_forth_with_bounded_resources() {
    if !wanmig_testenv::require_kvm("vms_migrate_back_and_forth_with_bounded_resources") {
        return;
    }
    init_logging();
    let total = env_u64("WANMIG_SOAK_MIGRATIONS", 100).max(4);
    let vms = env_u64("WANMIG_SOAK_VMS", 2).clamp(1, 16);
    let per_vm = total.div_ceil(vms);
    let total = per_vm * vms;
    let warmup = (total / 5).max(vms * 2).min(total - 1);
    let rtt = Duration::from_millis(10);
    let mesh = MeshBuilder::new(2)
        .link(Link::wan(rtt, 400_000_000))
        .hints(400.0, rtt)
        .extra_config(&format!(
            "[overlay]\n[[overlay.segment]]\nname = \"{SEGMENT}\"\nvni = 77\n\n\
             [migration]\nstore_cap_mib = {STORE_CAP_MIB}\n"
        ))
        .start()
        .await
        .unwrap();
    assert!(mesh.wait_all_up(Duration::from_secs(30)).await);
    let mesh = Arc::new(mesh);
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = overlay_traffic(&mesh, stop.clone());

    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let copies = Arc::new(AtomicU64::new(0));
    // (migrations done, seconds, usage) after every migration.
    let series = Arc::new(Mutex::new(vec![(0, 0.0, usage())]));
    let mut tasks = Vec::new();
    for k in 0..vms {
        let name = format!("soak{k}");
        let seed = 0x50a6_0000 + k;
        let config = vm_config(&mesh, &name, seed);
        start_vm(mesh.gw(SITES[0]).vm_host(), &name, config.clone()).await;
        let (mesh, done, copies, series) =
            (mesh.clone(), done.clone(), copies.clone(), series.clone());
        tasks.push(tokio::spawn(async move {
            let mut at = 0;
            for _ in 0..per_vm {
                let (from, to) = (SITES[at], SITES[1 - at]);
                settled_and_running(mesh.gw(from), &name, &copies).await;
                migrate_once(&mesh, &config, &name, from, to).await;
                at = 1 - at;
                let n = done.fetch_add(1, Ordering::SeqCst) + 1;
                let u = usage();
                series
                    .lock()
                    .unwrap()
                    .push((n, started.elapsed().as_secs_f64(), u));
            }
            settled_and_running(mesh.gw(SITES[at]), &name, &copies).await;
            (name, seed, SITES[at])
        }));
    }
    let mut finals = Vec::new();
    for t in tasks {
        finals.push(t.await.expect("a VM's migrations"));
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let echoed = traffic.await.unwrap();
    let end = usage();

    // Every VM runs at exactly one site, with its disk as the model says.
    for (name, seed, at) in &finals {
        for site in SITES {
            let state = mesh.gw(site).vm_host().state(name);
            if site == *at {
                assert_eq!(state, Some(VmState::Running), "{name} at {site}");
            } else {
                assert_ne!(state, Some(VmState::Running), "{name} at {site}");
            }
        }
        check_disk_against_model(mesh.gw(at).vm_host(), name, *seed);
    }

    let series = series.lock().unwrap().clone();
    eprintln!(
        "soak: {total} migrations of {vms} VM(s) ({MEM_MIB} MiB, {} MiB disk each) in {:.1} s; \
         {} disk copies verified; {echoed} overlay echoes",
        DISK_LEN >> 20,
        elapsed.as_secs_f64(),
        copies.load(Ordering::Relaxed)
    );
    eprintln!("migrations  seconds  rss_mib  fds  threads");
    for (n, secs, u) in &series {
        eprintln!(
            "{n:>10}  {secs:>7.1}  {:>7.1}  {:>3}  {:>7}",
            u.rss as f64 / (1 << 20) as f64,
            u.fds,
            u.threads
        );
    }
    eprintln!(
        "       end  {:>7.1}  {:>7.1}  {:>3}  {:>7}",
        elapsed.as_secs_f64(),
        end.rss as f64 / (1 << 20) as f64,
        end.fds,
        end.threads
    );

    assert_eq!(done.load(Ordering::SeqCst), total);
    assert!(echoed > 0, "overlay frames crossed during the run");
    // Warm-up peaks: the first `warmup` migrations fill the page stores,
    // the allocator's arenas and the runtime's thread pools.
    let warm = &series[1..=warmup as usize];
    let peak = |f: fn(&Usage) -> u64, s: &[(u64, f64, Usage)]| {
        s.iter().map(|(_, _, u)| f(u)).max().unwrap()
    };
    let (warm_rss, warm_fds, warm_threads) = (
        peak(|u| u.rss, warm),
        peak(|u| u.fds, warm),
        peak(|u| u.threads, warm),
    );
    let later = peak(|u| u.rss, &series[warmup as usize + 1..]);
    eprintln!(
        "warm-up peak ({warmup} migrations): {:.1} MiB, {warm_fds} fds, {warm_threads} threads; \
         later peak {:.1} MiB",
        warm_rss as f64 / (1 << 20) as f64,
        later as f64 / (1 << 20) as f64
    );
    assert!(
        later <= warm_rss + RSS_GROWTH_LIMIT,
        "RSS rose from a warm-up peak of {} MiB to {} MiB (limit +{} MiB)",
        warm_rss >> 20,
        later >> 20,
        RSS_GROWTH_LIMIT >> 20
    );
    assert!(
        end.fds <= warm_fds + FD_MARGIN,
        "fds: warm-up peak {warm_fds}, {} at the end",
        end.fds
    );
    assert!(
        end.threads <= warm_threads + THREAD_MARGIN,
        "threads: warm-up peak {warm_threads}, {} at the end",
        end.threads
    );
    match Arc::try_unwrap(mesh) {
        Ok(mesh) => mesh.shutdown().await,
        Err(_) => panic!("the mesh is still shared"),
    }
}
