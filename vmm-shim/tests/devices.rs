//! The guest's virtio workloads on real KVM: the disk workload writes and
//! verifies blocks of a sparse raw file, and the TCP service answers over a
//! TAP device moved into a test namespace — also after the VM has been
//! live-migrated, on the same TCP connection.

mod common;

use common::capture;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use wanmig_migration::machine::{DiskConfig, NetConfig, VmConfig};
use wanmig_testenv::{unique_name, Netns};
use wanmig_vmm::{migrate_to, receive_from, MigrateOptions, ReceiveOptions, Vm};

#[test]
fn disk_workload_writes_and_verifies_blocks() {
    if !wanmig_testenv::require_kvm("disk_workload_writes_and_verifies_blocks") {
        return;
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len(4 << 20).unwrap();
    let config = VmConfig {
        mem_size: 16 << 20,
        disk: Some(DiskConfig {
            path: file.path().into(),
            seed: 5,
            blocks_per_iteration: 16,
            iterations: 4,
        }),
        ..Default::default()
    };
    let (lines, sink) = capture();
    let vm = Vm::create(config, sink).unwrap();
    vm.start().unwrap();
    let start = Instant::now();
    let report = loop {
        if let Some(r) = vm.reports().latest(wanmig_guest_abi::REPORT_DISK_ITERATION) {
            if r.values[0] >= 3 {
                break r;
            }
        }
        assert!(
            vm.exit_status().is_none(),
            "{:?} {:?}",
            vm.exit_status(),
            lines.lock().unwrap()
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no disk progress: {:?}",
            lines.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let [_, _, verified, errors] = report.values;
    assert_eq!(errors, 0, "disk errors: {:?}", lines.lock().unwrap());
    assert!(verified >= 3 * 16, "verified {verified} blocks");
    let written = std::fs::read(file.path()).unwrap();
    assert!(
        written.iter().any(|&b| b != 0),
        "nothing reached the disk file"
    );
}

/// Runs `f` on a thread that has entered network namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap();
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

fn attach_tap(ns: &Netns, tap: &str, host_ip: &str) {
    wanmig_testenv::sh(&["ip", "link", "set", tap, "netns", ns.name()]);
    ns.exec(&["ip", "addr", "add", host_ip, "dev", tap]);
    ns.exec(&["ip", "link", "set", tap, "up"]);
}

fn connect_with_retry(addr: SocketAddr) -> TcpStream {
    let start = Instant::now();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => return s,
            Err(e) if start.elapsed() > Duration::from_secs(30) => {
                panic!("cannot reach the guest at {addr}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn echo(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

#[test]
fn tcp_service_answers_and_keeps_its_session_across_migration() {
    if !wanmig_testenv::require_kvm("tcp_service_answers_and_keeps_its_session_across_migration")
        || !wanmig_testenv::require_netns(
            "tcp_service_answers_and_keeps_its_session_across_migration",
        )
    {
        return;
    }
    let ns = Netns::create("wvm").unwrap();
    let subnet = (std::process::id() % 200) as u8 + 10;
    let guest_ip = Ipv4Addr::new(198, 18, subnet, 2);
    let host_ip = format!("198.18.{subnet}.1/24");
    let tap_a = unique_name("wvta");
    let tap_b = unique_name("wvtb");
    let net = |tap: &str| NetConfig {
        mac: [0x02, 0x77, 0x6d, 0x00, 0x00, subnet],
        ip: guest_ip,
        prefix_len: 24,
        port: 7000,
        tap: Some(tap.to_string()),
        segment: None,
    };
    let config = VmConfig {
        mem_size: 32 << 20,
        net: Some(net(&tap_a)),
        ..Default::default()
    };
    let (lines, sink) = capture();
    let mut src = Vm::create(config.clone(), sink).unwrap();
    attach_tap(&ns, &tap_a, &host_ip);
    src.start().unwrap();

    let addr = SocketAddr::from((guest_ip, 7000));
    let mut session = in_netns(ns.name(), move || {
        let mut s = connect_with_retry(addr);
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        echo(&mut s, b"hello from the test host");
        s
    });
    let status_addr = SocketAddr::from((guest_ip, 7001));
    let status = in_netns(ns.name(), move || {
        let mut s = connect_with_retry(status_addr);
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut line = String::new();
        let _ = s.read_to_string(&mut line);
        line
    });
    assert!(
        status.contains("conns="),
        "status line: {status:?}; serial {:?}",
        lines.lock().unwrap()
    );

    // Migrate to a VM whose card is backed by a second TAP.
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let dest_config = VmConfig {
        net: Some(net(&tap_b)),
        ..config
    };
    let dest = std::thread::spawn(move || {
        let (_l, sink) = capture();
        receive_from(&mut b, dest_config, sink, &ReceiveOptions::default())
    });
    let report = migrate_to(&mut src, &mut a, &MigrateOptions::default()).unwrap();
    let (dst, _) = dest.join().unwrap().unwrap();
    drop(src); // closes the first TAP
    attach_tap(&ns, &tap_b, &host_ip);
    eprintln!("migrated with {} ms downtime", report.downtime.as_millis());

    // The same TCP connection still works: the guest's TCP state moved.
    in_netns(ns.name(), move || {
        echo(&mut session, b"still there after the move")
    });
    assert_eq!(dst.exit_status(), None);
}

#[test]
fn disk_workload_continues_without_errors_after_migration() {
    if !wanmig_testenv::require_kvm("disk_workload_continues_without_errors_after_migration") {
        return;
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len(8 << 20).unwrap();
    // Both shims on this host use the same disk file, as with shared
    // storage; the source stops using it when it hands the VM over.
    let config = VmConfig {
        mem_size: 16 << 20,
        disk: Some(DiskConfig {
            path: file.path().into(),
            seed: 11,
            blocks_per_iteration: 32,
            iterations: 0,
        }),
        ..Default::default()
    };
    let disk_iteration = |vm: &Vm| {
        vm.reports()
            .latest(wanmig_guest_abi::REPORT_DISK_ITERATION)
            .map(|r| r.values)
    };
    let (_l, sink) = capture();
    let mut src = Vm::create(config.clone(), sink).unwrap();
    src.start().unwrap();
    let start = Instant::now();
    while disk_iteration(&src).is_none_or(|v| v[0] < 3) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no disk progress"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let dest_config = config.clone();
    let dest = std::thread::spawn(move || {
        let (_l, sink) = capture();
        receive_from(&mut b, dest_config, sink, &ReceiveOptions::default())
    });
    migrate_to(&mut src, &mut a, &MigrateOptions::default()).unwrap();
    let (dst, _) = dest.join().unwrap().unwrap();
    let handed_over_at = disk_iteration(&src).unwrap()[0];
    let start = Instant::now();
    let after = loop {
        if let Some(v) = disk_iteration(&dst) {
            if v[0] >= handed_over_at + 3 {
                break v;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "disk workload stalled after migration"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(after[3], 0, "disk verify errors after migration");
}
