//! Migration between two real `wanmig-vmm` processes over a unix socket,
//! driven through their control sockets; and the failure cases where one
//! side is killed mid-migration.

mod common;

use common::reference_digests;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use wanmig_migration::admin::Status;
use wanmig_migration::machine::MemoryWorkloadConfig;
use wanmig_vmm::admin::{self, AdminRequest, AdminResponse};

/// A child process killed (by pid) and reaped on drop.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const SEED: u64 = 99;
const WS: u64 = 1024;
const PPI: u64 = 32;

fn workload() -> MemoryWorkloadConfig {
    MemoryWorkloadConfig {
        seed: SEED,
        working_set_pages: WS,
        pages_per_iteration: PPI,
        iterations: 0,
        iteration_period: Duration::from_micros(500),
        page_writes: Default::default(),
    }
}

fn shim(dir: &Path, name: &str, mem: &str, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wanmig-vmm"));
    cmd.args(["run", "--mem", mem, "--workload", "memory"])
        .args([
            "--mem-seed",
            &SEED.to_string(),
            "--working-set-pages",
            &WS.to_string(),
        ])
        .args([
            "--pages-per-iteration",
            &PPI.to_string(),
            "--iteration-period-us",
            "500",
        ])
        .arg("--control")
        .arg(dir.join(format!("{name}.ctl")))
        .arg("--serial-log")
        .arg(dir.join(format!("{name}.log")))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    Proc(cmd.spawn().expect("spawn wanmig-vmm"))
}

/// Waits for a shim to create `p` (a minute: deadlines here are for a
/// hung shim, not a slow one on a loaded machine).
fn wait_for_path(p: &Path) {
    let start = Instant::now();
    while !p.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} never appeared",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn status(ctl: &Path) -> Status {
    match admin::request(ctl, &AdminRequest::Status).expect("status request") {
        AdminResponse::Status(s) => s,
        other => panic!("unexpected answer {other:?}"),
    }
}

fn wait_iteration(ctl: &Path, n: u64) -> Status {
    let start = Instant::now();
    loop {
        let s = status(ctl);
        if s.mem_iteration >= n {
            return s;
        }
        assert!(s.exit.is_none(), "VM ended: {s:?}");
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "iteration {n} not reached: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_exit(p: &mut Proc, within: Duration) -> (std::process::ExitStatus, String) {
    let start = Instant::now();
    loop {
        if let Some(st) = p.0.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = p.0.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (st, err);
        }
        assert!(
            start.elapsed() < within,
            "process {} did not exit",
            p.0.id()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn two_processes_migrate_over_a_unix_socket() {
    if !wanmig_testenv::require_kvm("two_processes_migrate_over_a_unix_socket") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mig = dir.path().join("mig.sock");
    let mig_arg = format!("unix:{}", mig.display());
    let _dst = shim(dir.path(), "dst", "32M", &["--incoming", &mig_arg]);
    wait_for_path(&mig);
    let mut src = shim(dir.path(), "src", "32M", &[]);
    let src_ctl = dir.path().join("src.ctl");
    let dst_ctl = dir.path().join("dst.ctl");
    wait_for_path(&src_ctl);
    wait_iteration(&src_ctl, 20);

    let answer = admin::request(
        &src_ctl,
        &AdminRequest::Migrate {
            to: mig_arg.clone(),
            planner: None,
        },
    )
    .unwrap();
    let report = match answer {
        AdminResponse::Migrated(r) => r,
        other => panic!("migration failed: {other:?}"),
    };
    eprintln!(
        "pages per round: {:?}, final {}, downtime {:?}",
        report.rounds.iter().map(|r| r.pages).collect::<Vec<_>>(),
        report.final_pages,
        report.downtime
    );
    let (st, _) = wait_exit(&mut src, Duration::from_secs(60));
    assert!(
        st.success(),
        "the source shim exits cleanly after handing over"
    );

    wait_for_path(&dst_ctl);
    let s0 = status(&dst_ctl);
    let s = wait_iteration(&dst_ctl, s0.mem_iteration + 20);
    let reference = reference_digests(&workload(), s.mem_iteration);
    let samples = match admin::request(&dst_ctl, &AdminRequest::Samples).unwrap() {
        AdminResponse::Samples { samples } => samples,
        other => panic!("{other:?}"),
    };
    assert!(samples.len() >= 20);
    for smp in samples.iter().filter(|x| x.iteration <= s.mem_iteration) {
        assert_eq!(
            (smp.iteration, smp.digest),
            reference[smp.iteration as usize - 1]
        );
    }
    let log = std::fs::read_to_string(dir.path().join("src.log")).unwrap();
    assert!(log.contains("wanmig-guest: booted"), "{log}");
}

/// Accepts the source's connection on `relay`, connects to `dest`, and
/// copies source→destination; once `kill_after` bytes have passed it kills
/// `victim` and drops both connections.
fn killing_relay(
    relay: PathBuf,
    dest: PathBuf,
    kill_after: u64,
    mut victim: Proc,
) -> std::thread::JoinHandle<u64> {
    let listener = UnixListener::bind(&relay).unwrap();
    std::thread::spawn(move || {
        let (mut from_src, _) = listener.accept().unwrap();
        let mut to_dst = UnixStream::connect(&dest).unwrap();
        let mut back = to_dst.try_clone().unwrap();
        let mut src_w = from_src.try_clone().unwrap();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut back, &mut src_w);
        });
        let mut buf = vec![0u8; 65536];
        let mut passed = 0u64;
        while passed < kill_after {
            let n = match from_src.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if to_dst.write_all(&buf[..n]).is_err() {
                break;
            }
            passed += n as u64;
        }
        let _ = victim.0.kill();
        let _ = victim.0.wait();
        drop(victim);
        let _ = from_src.shutdown(std::net::Shutdown::Both);
        let _ = to_dst.shutdown(std::net::Shutdown::Both);
        passed
    })
}

#[test]
fn destination_killed_mid_migration_leaves_the_vm_at_the_source() {
    if !wanmig_testenv::require_kvm("destination_killed_mid_migration_leaves_the_vm_at_the_source")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mig = dir.path().join("mig.sock");
    let relay = dir.path().join("relay.sock");
    let dst = shim(
        dir.path(),
        "dst",
        "64M",
        &["--incoming", &format!("unix:{}", mig.display())],
    );
    wait_for_path(&mig);
    let src = shim(dir.path(), "src", "64M", &[]);
    let src_ctl = dir.path().join("src.ctl");
    wait_for_path(&src_ctl);
    wait_iteration(&src_ctl, 10);
    let relay_thread = killing_relay(relay.clone(), mig, 8 << 20, dst);
    let answer = admin::request(
        &src_ctl,
        &AdminRequest::Migrate {
            to: format!("unix:{}", relay.display()),
            planner: None,
        },
    )
    .unwrap();
    let passed = relay_thread.join().unwrap();
    assert!(
        passed >= 8 << 20,
        "the destination was killed mid-stream ({passed} bytes in)"
    );
    match answer {
        AdminResponse::Error {
            message,
            vm_running_here,
        } => {
            eprintln!("source reports: {message}");
            assert!(vm_running_here);
        }
        other => panic!("the migration must fail: {other:?}"),
    }
    let before = status(&src_ctl);
    assert_eq!(before.exit, None);
    wait_iteration(&src_ctl, before.mem_iteration + 20);
    drop(src);
}

#[test]
fn source_killed_mid_migration_leaves_no_vm_at_the_destination() {
    if !wanmig_testenv::require_kvm("source_killed_mid_migration_leaves_no_vm_at_the_destination") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mig = dir.path().join("mig.sock");
    let relay = dir.path().join("relay.sock");
    let mut dst = shim(
        dir.path(),
        "dst",
        "64M",
        &["--incoming", &format!("unix:{}", mig.display())],
    );
    wait_for_path(&mig);
    let src = shim(dir.path(), "src", "64M", &[]);
    let src_ctl = dir.path().join("src.ctl");
    wait_for_path(&src_ctl);
    wait_iteration(&src_ctl, 5);
    let relay_thread = killing_relay(relay.clone(), mig, 4 << 20, src);
    // The source dies while answering, so the request itself fails.
    let _ = admin::request(
        &src_ctl,
        &AdminRequest::Migrate {
            to: format!("unix:{}", relay.display()),
            planner: None,
        },
    );
    relay_thread.join().unwrap();
    let (st, stderr) = wait_exit(&mut dst, Duration::from_secs(60));
    assert!(
        !st.success(),
        "the destination must not run a half-received VM"
    );
    assert!(
        stderr.contains("incoming migration failed; no VM runs here"),
        "{stderr}"
    );
    assert!(!dir.path().join("dst.ctl").exists());
}
