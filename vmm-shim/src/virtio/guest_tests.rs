//! The guest's virtio drivers and workloads on real KVM, checked against
//! the host models in `wanmig_guest_abi::virtio`: the disk workload's
//! digest and the exact bytes it leaves on the image, and the TCP service's
//! echo and per-session digest over a TAP device in a test namespace.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use wanmig_guest_abi::virtio::{
    disk_block_fill, disk_block_last_iteration, disk_expected_digest, stream_digest,
    DISK_BLOCK_WORDS,
};
use wanmig_guest_abi::{splitmix64, REPORT_DISK_ITERATION};
use wanmig_testenv::{require_kvm, require_netns, sh, unique_name, Netns};

use crate::Vm;
use wanmig_migration::machine::{DiskConfig, NetConfig, VmConfig};

fn quiet_serial() -> crate::serial::SerialSink {
    Box::new(|_line: &str| {})
}

#[test]
fn disk_workload_matches_the_host_model_block_for_block() {
    if !require_kvm("disk_workload_matches_the_host_model_block_for_block") {
        return;
    }
    const SECTORS: u64 = 128;
    const PER: u64 = 24; // does not divide SECTORS: iterations wrap mid-run
    const ITERS: u64 = 7;
    const SEED: u64 = 0x5eed;
    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len(SECTORS * 512).unwrap();
    let config = VmConfig {
        mem_size: 16 << 20,
        disk: Some(DiskConfig {
            path: file.path().into(),
            seed: SEED,
            blocks_per_iteration: PER,
            iterations: ITERS,
        }),
        ..Default::default()
    };
    let vm = Vm::create(config, quiet_serial()).unwrap();
    vm.start().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let report = loop {
        if let Some(r) = vm.reports().latest(REPORT_DISK_ITERATION) {
            if r.values[0] == ITERS - 1 {
                break r;
            }
        }
        assert!(
            vm.exit_status().is_none(),
            "guest stopped: {:?}",
            vm.exit_status()
        );
        assert!(Instant::now() < deadline, "disk workload made no progress");
        std::thread::sleep(Duration::from_millis(10));
    };
    let [_, digest, verified, errors] = report.values;
    assert_eq!(errors, 0);
    assert_eq!(verified, PER * ITERS);
    assert_eq!(digest, disk_expected_digest(SEED, PER, SECTORS, ITERS));

    let image = std::fs::read(file.path()).unwrap();
    let mut words = [0u64; DISK_BLOCK_WORDS];
    for block in 0..SECTORS {
        let got = &image[block as usize * 512..][..512];
        match disk_block_last_iteration(block, PER, SECTORS, ITERS) {
            Some(i) => {
                disk_block_fill(SEED, i, block, &mut words);
                let want: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
                assert_eq!(
                    got,
                    &want[..],
                    "block {block} (last written in iteration {i})"
                );
            }
            None => assert!(
                got.iter().all(|&b| b == 0),
                "block {block} was never written"
            ),
        }
    }
}

/// Run `f` on a thread inside network namespace `ns`.
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

fn connect(addr: SocketAddr) -> TcpStream {
    let start = Instant::now();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                return s;
            }
            Err(e) if start.elapsed() > Duration::from_secs(30) => {
                panic!("cannot reach {addr}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Echo `data` in 4 KiB pieces (so the guest's buffers never fill up).
fn echo_all(s: &mut TcpStream, data: &[u8]) {
    for piece in data.chunks(4096) {
        s.write_all(piece).unwrap();
        let mut back = vec![0u8; piece.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, piece);
    }
}

fn status_field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("{key} missing in status line {line:?}"))
        .to_string()
}

#[test]
fn tcp_service_echoes_in_order_and_reports_the_stream_digest() {
    let name = "tcp_service_echoes_in_order_and_reports_the_stream_digest";
    if !require_kvm(name) || !require_netns(name) {
        return;
    }
    let ns = Netns::create("wvx").unwrap();
    let tap = unique_name("wvxt");
    let subnet = (std::process::id() % 200) as u8 + 30;
    let guest_ip = Ipv4Addr::new(198, 18, subnet, 2);
    let config = VmConfig {
        mem_size: 16 << 20,
        net: Some(NetConfig {
            mac: [0x02, 0x76, 0x69, 0, 0, subnet],
            ip: guest_ip,
            prefix_len: 24,
            port: 7100,
            tap: Some(tap.clone()),
            segment: None,
        }),
        ..Default::default()
    };
    let vm = Vm::create(config, quiet_serial()).unwrap();
    sh(&["ip", "link", "set", &tap, "netns", ns.name()]);
    ns.exec(&[
        "ip",
        "addr",
        "add",
        &format!("198.18.{subnet}.1/24"),
        "dev",
        &tap,
    ]);
    ns.exec(&["ip", "link", "set", &tap, "up"]);
    vm.start().unwrap();

    let mut rng = 99u64;
    let first: Vec<u8> = (0..50_000).map(|_| splitmix64(&mut rng) as u8).collect();
    let second: Vec<u8> = (0..7_000).map(|_| splitmix64(&mut rng) as u8).collect();
    let (a, b) = (first.clone(), second.clone());
    let lines = in_netns(ns.name(), move || {
        let echo_addr = SocketAddr::from((guest_ip, 7100));
        let status_addr = SocketAddr::from((guest_ip, 7101));
        let status = || {
            let mut line = String::new();
            connect(status_addr).read_to_string(&mut line).unwrap();
            line
        };
        let mut s = connect(echo_addr);
        echo_all(&mut s, &a);
        let during = status();
        drop(s);
        // The guest relistens after the first session closes.
        let start = Instant::now();
        let mut s = loop {
            let mut s = connect(echo_addr);
            if s.write_all(&b[..1]).is_ok() {
                let mut one = [0u8; 1];
                if s.read_exact(&mut one).is_ok() {
                    break s;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no second session"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        echo_all(&mut s, &b[1..]);
        (during, status())
    });
    let (during, after) = lines;
    assert_eq!(status_field(&during, "conns"), "1");
    assert_eq!(
        status_field(&during, "session_bytes"),
        first.len().to_string()
    );
    assert_eq!(
        status_field(&during, "session_digest"),
        format!("{:016x}", stream_digest(0, &first))
    );
    assert_eq!(status_field(&after, "conns"), "2");
    assert_eq!(
        status_field(&after, "bytes"),
        (first.len() + second.len()).to_string()
    );
    assert_eq!(
        status_field(&after, "session_digest"),
        format!("{:016x}", stream_digest(0, &second))
    );
    assert_eq!(
        status_field(&after, "digest"),
        format!("{:016x}", stream_digest(stream_digest(0, &first), &second))
    );
    assert_eq!(status_field(&after, "rx_bad"), "0");
}
