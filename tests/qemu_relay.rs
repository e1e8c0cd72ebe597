//! Real QEMU 7.2 migrations (TCG) through two in-process gateways joined
//! by the WAN emulator: the source QEMU migrates to site A's gateway, which
//! relays over mTLS QUIC to site B's, which feeds the destination QEMU
//! (`-incoming defer`). A stopped guest arrives with memory identical to
//! the source's (`pmemsave`, SHA-256) on one channel and on multifd; a
//! guest dirtying memory completes (with QEMU's return path relayed) and
//! runs at B; a link cut in the middle leaves the source running and the
//! destination not running; the gateways drive both QEMUs over QMP through
//! the control API, and a second VM from the same image is warm.
//!
//! Skips with a printed reason without `qemu-system-x86_64`, unless
//! `WANMIG_REQUIRE_QEMU=1` is set (then it fails).

use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wanmig_e2e::{init_logging, Mesh, MeshBuilder};
use wanmig_gateway::qemu::{MoveRequest, MoveState};
use wanmig_testenv::qemu::guest::{self, DirtyParams};
use wanmig_testenv::qemu::qmp::Qmp;

const MEM_MIB: u64 = 64;
const PAGE: usize = 4096;

/// The guest RAM image: zero, random, text and repeated pages.
fn write_image(path: &Path) {
    let mut f = std::io::BufWriter::new(File::create(path).unwrap());
    let mut page = vec![0u8; PAGE];
    for i in 0..(MEM_MIB << 20) as usize / PAGE {
        let h = (i as u64)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
        match h % 10 {
            0..=3 => page.fill(0),
            4 | 5 => {
                let mut x = h | 1;
                for w in page.chunks_exact_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    w.copy_from_slice(&x.to_le_bytes());
                }
            }
            k => {
                // Text, a quarter of it repeating 97 distinct pages.
                let n = if k == 9 { i % 97 } else { i };
                let line = format!("page {n:08} of the wanmig qemu relay test image\n");
                for (d, s) in page.iter_mut().zip(line.bytes().cycle()) {
                    *d = s;
                }
            }
        }
        f.write_all(&page).unwrap();
    }
    f.flush().unwrap();
}

/// One QEMU process, killed by its pid on drop.
struct Vm {
    child: Child,
    qmp: Qmp,
    name: String,
    log: PathBuf,
    dir: PathBuf,
}

impl Vm {
    fn start(qemu: &Path, dir: &Path, name: &str, image: Option<&Path>, fw: &Path) -> Vm {
        let qmp_path = dir.join(format!("{name}.qmp"));
        let log = dir.join(format!("{name}.log"));
        let backend = match image {
            Some(img) => format!(
                "memory-backend-file,id=ram0,size={MEM_MIB}M,mem-path={},share=off",
                img.display()
            ),
            None => format!("memory-backend-ram,id=ram0,size={MEM_MIB}M"),
        };
        let mut cmd = Command::new(qemu);
        cmd.current_dir(dir)
            .args(["-name", &format!("wanmig-qemu-relay-{name}")])
            .args(["-machine", "pc,accel=tcg,memory-backend=ram0"])
            .args(["-object", &backend])
            .args(["-m", &format!("{MEM_MIB}M"), "-smp", "1"])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .arg("-bios")
            .arg(fw)
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
            // A second monitor for the gateway (a QMP socket serves one
            // client at a time).
            .arg("-qmp")
            .arg(format!(
                "unix:{},server=on,wait=off",
                dir.join(format!("{name}.gw.qmp")).display()
            ));
        if image.is_none() {
            cmd.args(["-S", "-incoming", "defer"]);
        }
        let out = File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting QEMU {}: {e}", qemu.display()));
        let qmp = Qmp::connect(&qmp_path, name, Duration::from_secs(30)).unwrap_or_else(|e| {
            panic!("{e}; {}", std::fs::read_to_string(&log).unwrap_or_default())
        });
        Vm {
            child,
            qmp,
            name: name.to_string(),
            log,
            dir: dir.to_path_buf(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The run state, or `exited` once the process is gone.
    fn status(&mut self) -> String {
        if let Ok(Some(_)) = self.child.try_wait() {
            return "exited".into();
        }
        match self.qmp.execute("query-status", json!({})) {
            Ok(v) => v["status"].as_str().unwrap_or("?").to_string(),
            Err(_) => "exited".into(),
        }
    }

    fn wait_status(&mut self, states: &[&str], within: Duration) -> String {
        let until = Instant::now() + within;
        loop {
            let s = self.status();
            if states.contains(&s.as_str()) || Instant::now() >= until {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_migration(&mut self, within: Duration) -> Value {
        let until = Instant::now() + within;
        loop {
            let v = self.qmp.execute("query-migrate", json!({})).unwrap();
            let done = matches!(
                v["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            );
            if done || Instant::now() >= until {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SHA-256 of guest RAM (`pmemsave`).
    fn memory_sha256(&mut self) -> String {
        let file = format!("{}.mem", self.name);
        self.qmp
            .execute(
                "pmemsave",
                json!({"val": 0, "size": MEM_MIB << 20, "filename": file}),
            )
            .unwrap();
        let out = Command::new("sha256sum")
            .arg(&file)
            .current_dir(&self.dir)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(self.dir.join(&file));
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Sets multifd (compression none) with `channels` channels on `q`.
fn multifd(q: &mut Qmp, channels: u8) {
    q.execute(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "multifd", "state": true}]}),
    )
    .unwrap();
    q.execute(
        "migrate-set-parameters",
        json!({"multifd-channels": channels, "multifd-compression": "none"}),
    )
    .unwrap();
}

struct Setup {
    mesh: Mesh,
    src: Vm,
    dst: Vm,
    _dir: tempfile::TempDir,
}

/// Two sites over `rate_bps` and 20 ms RTT, a source QEMU (stopped unless
/// `dirty` pages/s, idle-running with `Some(0)`) and a destination QEMU
/// waiting on an incoming port registered at site B as `name`.
async fn setup(
    qemu: &Path,
    name: &str,
    dirty: Option<u32>,
    channels: u8,
    rate_bps: u64,
    driven: bool,
) -> Setup {
    init_logging();
    let mesh = MeshBuilder::new(2)
        .wan(Duration::from_millis(20), rate_bps)
        .start()
        .await
        .unwrap();
    assert!(mesh.wait_all_up(Duration::from_secs(30)).await);
    let dir = tempfile::Builder::new()
        .prefix("wanmig-qemu-relay-")
        .tempdir()
        .unwrap();
    let image = dir.path().join("ram.img");
    write_image(&image);
    let params = match dirty {
        Some(n) if n > 0 => DirtyParams {
            pages_per_sec: n,
            ws_base: guest::WORKING_SET_BASE as u32,
            ws_pages: 2048,
            seed: 0x5eed_0002,
        },
        _ => DirtyParams::idle(),
    };
    let fw = dir.path().join("firmware.bin");
    std::fs::write(&fw, guest::firmware(&params)).unwrap();
    let mut src = Vm::start(qemu, dir.path(), "source", Some(&image), &fw);
    let mut dst = Vm::start(qemu, dir.path(), "destination", None, &fw);
    if channels > 0 {
        multifd(&mut src.qmp, channels);
        if !driven {
            multifd(&mut dst.qmp, channels);
        }
    }
    if matches!(dirty, Some(n) if n > 0) && !driven {
        // The live move also carries the return path (the destination's
        // PONG and SHUT, which the source waits for).
        for q in [&mut src.qmp, &mut dst.qmp] {
            q.execute(
                "migrate-set-capabilities",
                json!({"capabilities": [{"capability": "return-path", "state": true}]}),
            )
            .unwrap();
        }
    }
    if driven {
        // The gateways set the destination up and start both ends.
        if dirty.is_none() {
            src.qmp.execute("stop", json!({})).unwrap();
        }
        return Setup {
            mesh,
            src,
            dst,
            _dir: dir,
        };
    }
    src.qmp
        .execute(
            "migrate-set-parameters",
            json!({"max-bandwidth": 1u64 << 40, "downtime-limit": 300}),
        )
        .unwrap();
    let port = wanmig_testenv::free_tcp_port();
    dst.qmp
        .execute(
            "migrate-incoming",
            json!({"uri": format!("tcp:127.0.0.1:{port}")}),
        )
        .unwrap();
    let incoming: SocketAddr = ([127, 0, 0, 1], port).into();
    mesh.gw("site-b").qemu().accept(name, incoming);
    if dirty.is_none() {
        src.qmp.execute("stop", json!({})).unwrap();
    }
    Setup {
        mesh,
        src,
        dst,
        _dir: dir,
    }
}

/// Moves a guest A → B and checks the destination: memory identical for a
/// stopped guest, running after `cont` either way.
async fn moves(test: &str, dirty: Option<u32>, channels: u8) {
    let Some(qemu) = wanmig_testenv::qemu::require_qemu(test) else {
        return;
    };
    let Setup {
        mesh,
        mut src,
        mut dst,
        _dir,
    } = setup(&qemu, "vm1", dirty, channels, 250_000_000, false).await;
    let h = mesh
        .gw("site-a")
        .qemu()
        .listen("vm1", "site-b", None)
        .await
        .unwrap();
    if dirty.is_some() {
        std::thread::sleep(Duration::from_millis(500));
    }
    src.qmp
        .execute("migrate", json!({"uri": format!("tcp:{}", h.addr)}))
        .unwrap();
    let (mut src, query) = tokio::task::spawn_blocking(move || {
        let q = src.wait_migration(Duration::from_secs(300));
        (src, q)
    })
    .await
    .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(120), h.task)
        .await
        .expect("the relay ends after QEMU's migration")
        .unwrap();
    eprintln!("{test}: source QEMU: {query}");
    eprintln!("{test}: relay: {report:?}");
    assert_eq!(
        query["status"],
        "completed",
        "source: {}\ndestination: {}",
        src.log(),
        dst.log()
    );
    let report = report.unwrap();
    let (mut dst, dst_status) = tokio::task::spawn_blocking(move || {
        let s = dst.wait_status(&["paused", "running", "exited"], Duration::from_secs(60));
        (dst, s)
    })
    .await
    .unwrap();
    assert_eq!(dst_status, "paused", "destination: {}", dst.log());
    assert!(report.source.passthrough.is_empty(), "{report:?}");
    assert!(report.source.pages > 0 && report.source.zero_pages > 0);
    assert_eq!(report.destination.bytes, report.source.qemu_bytes);
    let qemu_ram = query["ram"]["transferred"].as_u64().unwrap_or(0);
    // The relay reduces: fewer bytes cross the WAN than QEMU sent.
    assert!(
        report.wire_bytes < report.source.qemu_bytes * 3 / 4,
        "{} wire bytes for {} QEMU bytes ({qemu_ram} RAM bytes by QEMU's count)",
        report.wire_bytes,
        report.source.qemu_bytes
    );
    if dirty.is_none() {
        assert_eq!(
            src.memory_sha256(),
            dst.memory_sha256(),
            "destination RAM differs from the source's"
        );
    }
    dst.qmp.execute("cont", json!({})).unwrap();
    assert_eq!(
        dst.wait_status(&["running"], Duration::from_secs(30)),
        "running"
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_guest_moves_on_one_channel_with_identical_memory() {
    moves(
        "a_stopped_guest_moves_on_one_channel_with_identical_memory",
        None,
        0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_guest_moves_on_multifd_with_identical_memory() {
    moves(
        "a_stopped_guest_moves_on_multifd_with_identical_memory",
        None,
        2,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_guest_dirtying_memory_moves_and_runs_at_the_destination() {
    moves(
        "a_guest_dirtying_memory_moves_and_runs_at_the_destination",
        Some(2000),
        0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_link_cut_mid_migration_leaves_the_source_running_and_the_destination_not() {
    let test = "a_link_cut_mid_migration_leaves_the_source_running_and_the_destination_not";
    let Some(qemu) = wanmig_testenv::qemu::require_qemu(test) else {
        return;
    };
    // A slow link, so the cut lands well inside the copy.
    let Setup {
        mesh,
        mut src,
        dst,
        _dir,
    } = setup(&qemu, "vm1", Some(0), 0, 20_000_000, false).await;
    let h = mesh
        .gw("site-a")
        .qemu()
        .listen("vm1", "site-b", None)
        .await
        .unwrap();
    src.qmp
        .execute("migrate", json!({"uri": format!("tcp:{}", h.addr)}))
        .unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    while h.progress.get().wire_bytes < 2 << 20 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        h.progress.get().wire_bytes >= 2 << 20,
        "the copy never got going"
    );
    mesh.relay("site-a", "site-b").cut();
    let (mut src, mut dst, query) = tokio::task::spawn_blocking(move || {
        let q = src.wait_migration(Duration::from_secs(120));
        (src, dst, q)
    })
    .await
    .unwrap();
    let relay = tokio::time::timeout(Duration::from_secs(60), h.task)
        .await
        .expect("the relay ends after the cut")
        .unwrap();
    eprintln!("{test}: source QEMU: {query}; relay: {relay:?}");
    assert!(relay.is_err(), "the relay reports the cut");
    assert_eq!(query["status"], "failed", "{}", src.log());
    assert_eq!(src.status(), "running", "the guest keeps running at A");
    let dst_status = dst.wait_status(&["exited", "running"], Duration::from_secs(30));
    assert_ne!(dst_status, "running", "the destination must not run");
    assert_eq!(dst.status(), dst_status);
    mesh.shutdown().await;
}

/// Moves the stopped source `src` to `dst` as `wanmig qemu accept` and
/// `wanmig qemu migrate` do, through the control API: site B's gateway sets
/// the destination up (multifd as the source) and starts it, site A's the
/// source. Checks the destination's memory and that it runs; returns the
/// final status.
async fn driven_move(
    mesh: &Mesh,
    dir: &Path,
    name: &str,
    mut src: Vm,
    dst: Vm,
) -> wanmig_gateway::qemu::MoveStatus {
    mesh.control("site-b")
        .qemu_accept(&wanmig_gateway::qemu::api::AcceptRequest {
            name: name.into(),
            qmp: dir.join(format!("{}.gw.qmp", dst.name)),
        })
        .await
        .unwrap();
    let a = mesh.control("site-a");
    let started = a
        .qemu_migrate(&MoveRequest {
            name: name.into(),
            qmp: dir.join(format!("{}.gw.qmp", src.name)),
            to: "site-b".into(),
            downtime: Duration::from_millis(300),
            scope: None,
        })
        .await
        .unwrap();
    assert_eq!(started.state, MoveState::Running);
    let until = Instant::now() + Duration::from_secs(300);
    let status = loop {
        let s = a.qemu_migration(name).await.unwrap();
        if s.state != MoveState::Running || Instant::now() > until {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("{name}: {}", serde_json::to_string(&status).unwrap());
    assert_eq!(status.state, MoveState::Completed, "{:?}", status.error);
    let r = status.report.as_ref().unwrap();
    assert!(r.unreduced.is_empty());
    assert!(r.pages_reduced > 0 && r.downtime_ms.is_some());
    let (mut dst, s) = tokio::task::spawn_blocking(move || {
        let mut dst = dst;
        let s = dst.wait_status(&["paused", "running", "exited"], Duration::from_secs(60));
        (dst, s)
    })
    .await
    .unwrap();
    assert_eq!(s, "paused", "destination: {}", dst.log());
    let caps = dst
        .qmp
        .execute("query-migrate-capabilities", json!({}))
        .unwrap();
    assert!(
        caps.as_array()
            .unwrap()
            .iter()
            .any(|c| c["capability"] == "multifd" && c["state"] == true),
        "the destination gateway set multifd as the source has it"
    );
    assert_eq!(src.memory_sha256(), dst.memory_sha256());
    dst.qmp.execute("cont", json!({})).unwrap();
    assert_eq!(
        dst.wait_status(&["running"], Duration::from_secs(30)),
        "running"
    );
    status
}

/// The whole move driven by the gateways over QMP through the control
/// API, twice: a second VM from the same image finds its pages in site
/// B's page store and costs a small fraction of the first on the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateways_drive_both_qemus_and_a_second_vm_from_the_image_is_warm() {
    let test = "the_gateways_drive_both_qemus_and_a_second_vm_from_the_image_is_warm";
    let Some(qemu) = wanmig_testenv::qemu::require_qemu(test) else {
        return;
    };
    let Setup {
        mesh,
        src,
        dst,
        _dir,
    } = setup(&qemu, "vm2", None, 2, 250_000_000, true).await;
    let dir = _dir.path();
    let cold = driven_move(&mesh, dir, "vm2", src, dst).await;
    let fw = dir.join("firmware.bin");
    let mut src = Vm::start(&qemu, dir, "source2", Some(&dir.join("ram.img")), &fw);
    let dst = Vm::start(&qemu, dir, "destination2", None, &fw);
    multifd(&mut src.qmp, 2);
    src.qmp.execute("stop", json!({})).unwrap();
    let warm = driven_move(&mesh, dir, "vm3", src, dst).await;
    let (c, w) = (
        cold.report.unwrap().wire_bytes,
        warm.report.unwrap().wire_bytes,
    );
    eprintln!("{test}: wire bytes cold {c}, warm {w}");
    assert!(w * 10 <= c, "warm {w} wire bytes, cold {c}");
    mesh.shutdown().await;
}
