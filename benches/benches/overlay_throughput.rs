//! Overlay benchmark, printed as a table:
//!
//! 1. kernel TCP throughput TAP-to-TAP across two gateways on loopback (no
//!    emulated delay, 1500-byte MTU), side by side with the kernel's VXLAN
//!    between the same kind of namespaces (over a veth), and their ratio;
//! 2. round-trip latency of 1-byte TCP ping-pongs at light load through
//!    the gateways and through kernel VXLAN, p50/p99, and the added one-way
//!    latency per gateway hop ((overlay − vxlan) / 4: a round trip crosses
//!    four gateway hops);
//! 3. over a 50 ms RTT emulated link: the time from a RARP at the new site
//!    to the old site forwarding a moved MAC's frames there (in-process
//!    ports; goal ≤ one RTT).
//!
//! Parts 1–2 need root (namespaces, TAP) and are skipped with a message
//! otherwise. Run: `cargo bench -p wanmig-benches --bench overlay_throughput`.
//! `WANMIG_BENCH_SECS` sets the transfer length (default 4 s).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wanmig_e2e::{Link, Mesh, MeshBuilder};
use wanmig_gateway::overlay_service::TapOptions;
use wanmig_gateway::GatewayHandle;
use wanmig_testenv::{netns_status, sh, unique_name, LinkGuard, Netns};

const SEGMENT: &str = "lan";

/// `path_mtu`: the peers' `mtu` hint (the QUIC MTU discovery bound).
async fn two_sites(link: Option<Link>, path_mtu: u32) -> Mesh {
    let mut b = MeshBuilder::new(2).hints(10_000.0, Duration::from_millis(1));
    if let Some(l) = link {
        b = b.link(l).hints(1000.0, Duration::from_millis(50));
    }
    let prepared = b.prepare().await.expect("mesh prepared");
    for site in ["site-a", "site-b"] {
        let path = prepared.config_path(site).to_path_buf();
        let mut text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("[[peers]]\n", &format!("[[peers]]\nmtu = {path_mtu}\n"));
        text.push_str("\n[overlay]\n[[overlay.segment]]\nname = \"lan\"\nvni = 4242\n");
        std::fs::write(&path, text).unwrap();
    }
    let mesh = prepared.start().await.expect("gateways started");
    assert!(mesh.wait_all_up(Duration::from_secs(10)).await, "peers up");
    for site in ["site-a", "site-b"] {
        while mesh
            .gw(site)
            .overlay()
            .state()
            .await
            .unwrap()
            .peers
            .is_empty()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    mesh
}

fn host_ns(prefix: &str) -> Netns {
    let ns = Netns::create(prefix).expect("namespace");
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
    ns
}

async fn tap_into(gw: &GatewayHandle, ns: &Netns, ip: &str) {
    let (_, name) = gw
        .overlay()
        .attach_tap(
            SEGMENT,
            TapOptions {
                name: Some(unique_name("wmbt")),
                mtu: Some(1500),
                ..Default::default()
            },
        )
        .await
        .expect("TAP attached");
    sh(&["ip", "link", "set", &name, "netns", ns.name()]);
    ns.exec(&["ip", "addr", "add", ip, "dev", &name]);
    ns.exec(&["ip", "link", "set", &name, "up"]);
}

fn in_netns<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let path = format!("/run/netns/{}", ns.name());
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("namespace file");
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// Server in `server_ns` on `addr`: sinks a stream (mode 0) or echoes
/// 1-byte pings (mode 1).
fn server(server_ns: &Netns, addr: SocketAddr, echo: bool) -> JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = in_netns(server_ns, move || {
        let l = TcpListener::bind(addr).expect("bind");
        tx.send(()).unwrap();
        let (mut s, _) = l.accept().expect("accept");
        s.set_nodelay(true).ok();
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if echo && s.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    });
    rx.recv().unwrap();
    h
}

/// Bits per second of a `secs`-long bulk TCP transfer.
fn throughput(client_ns: &Netns, server_ns: &Netns, addr: SocketAddr, secs: f64) -> f64 {
    let srv = server(server_ns, addr, false);
    let bps = in_netns(client_ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        let buf = vec![0x5au8; 256 << 10];
        // Warm up (slow start, MTU discovery), then measure.
        let warm = Instant::now();
        while warm.elapsed() < Duration::from_millis(500) {
            s.write_all(&buf).unwrap();
        }
        let (t0, mut sent) = (Instant::now(), 0u64);
        while t0.elapsed().as_secs_f64() < secs {
            s.write_all(&buf).unwrap();
            sent += buf.len() as u64;
        }
        sent as f64 * 8.0 / t0.elapsed().as_secs_f64()
    })
    .join()
    .unwrap();
    srv.join().unwrap();
    bps
}

/// Round trips of 1-byte pings, in microseconds, sorted.
fn ping_pong(client_ns: &Netns, server_ns: &Netns, addr: SocketAddr, n: usize) -> Vec<f64> {
    let srv = server(server_ns, addr, true);
    let mut rtts = in_netns(client_ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.set_nodelay(true).unwrap();
        let mut out = Vec::with_capacity(n);
        let mut b = [0u8; 1];
        for i in 0..n + 50 {
            let t = Instant::now();
            s.write_all(&[7]).unwrap();
            s.read_exact(&mut b).unwrap();
            if i >= 50 {
                out.push(t.elapsed().as_secs_f64() * 1e6);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        out
    })
    .join()
    .unwrap();
    srv.join().unwrap();
    rtts.sort_by(f64::total_cmp);
    rtts
}

fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

/// Two namespaces joined by kernel VXLAN over a veth underlay.
struct Vxlan {
    a: Netns,
    b: Netns,
    _veth: LinkGuard,
}

fn kernel_vxlan() -> Vxlan {
    let (a, b) = (host_ns("wmxa"), host_ns("wmxb"));
    let (va, vb) = (unique_name("wmxv"), unique_name("wmxw"));
    sh(&[
        "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb,
    ]);
    let guard = LinkGuard(va.clone());
    sh(&["ip", "link", "set", &va, "netns", a.name()]);
    sh(&["ip", "link", "set", &vb, "netns", b.name()]);
    for (ns, dev, under, over, remote) in [
        (&a, &va, "198.19.50.1/24", "198.19.51.1/24", "198.19.50.2"),
        (&b, &vb, "198.19.50.2/24", "198.19.51.2/24", "198.19.50.1"),
    ] {
        ns.exec(&["ip", "link", "set", dev, "mtu", "1600", "up"]);
        ns.exec(&["ip", "addr", "add", under, "dev", dev]);
        ns.exec(&[
            "ip", "link", "add", "vx0", "type", "vxlan", "id", "4242", "remote", remote, "dstport",
            "4789", "dev", dev,
        ]);
        ns.exec(&["ip", "link", "set", "vx0", "mtu", "1500", "up"]);
        ns.exec(&["ip", "addr", "add", over, "dev", "vx0"]);
    }
    Vxlan { a, b, _veth: guard }
}

async fn rarp_move_time() -> Vec<f64> {
    let rtt = Duration::from_millis(50);
    let mesh = two_sites(Some(Link::wan(rtt, 1_000_000_000)), 1500).await;
    let (ga, gb) = (mesh.gw("site-a"), mesh.gw("site-b"));
    let mut out = Vec::new();
    for round in 0..5u8 {
        let moved = [0x02, 0x77, 0, 0, round, 1];
        let talker = [0x02, 0x77, 0, 0, round, 2];
        // The moving host starts at A; a talker at A sends it frames.
        let (pa_old, old) = ga.overlay().attach_port(SEGMENT).await.unwrap();
        let (_, talk) = ga.overlay().attach_port(SEGMENT).await.unwrap();
        old.tx
            .send(eth(&[0xff; 6], &moved, 0x0806, &[0; 28]).into())
            .await
            .unwrap();
        talk.tx
            .send(eth(&[0xff; 6], &talker, 0x0806, &[0; 28]).into())
            .await
            .unwrap();
        tokio::time::sleep(rtt * 4).await;
        let (_, mut new) = gb.overlay().attach_port(SEGMENT).await.unwrap();
        let t0 = Instant::now();
        new.tx.send(rarp(&moved).into()).await.unwrap();
        let mut got = None;
        while t0.elapsed() < Duration::from_secs(3) {
            talk.tx
                .send(eth(&moved, &talker, 0x0800, &[0; 46]).into())
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
            while let Ok(f) = new.rx.try_recv() {
                if f[..6] == moved && f[6..12] == talker {
                    got.get_or_insert(t0.elapsed());
                }
            }
            if got.is_some() {
                break;
            }
        }
        // A frame takes half an RTT from A to B: subtract it to get the
        // moment A started forwarding.
        if let Some(g) = got {
            out.push((g.saturating_sub(rtt / 2)).as_secs_f64() * 1e3);
        }
        ga.overlay().detach(pa_old).await.unwrap();
    }
    mesh.shutdown().await;
    out
}

fn eth(dst: &[u8; 6], src: &[u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(dst);
    f.extend_from_slice(src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A RARP "request reverse" announcing `mac` (what hypervisors send).
fn rarp(mac: &[u8; 6]) -> Vec<u8> {
    let mut p = Vec::with_capacity(28);
    p.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 3]);
    p.extend_from_slice(mac);
    p.extend_from_slice(&[0; 4]);
    p.extend_from_slice(mac);
    p.extend_from_slice(&[0; 4]);
    eth(&[0xff; 6], mac, 0x8035, &p)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs with no
    // such flag and only wants the target to build and start.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let secs: f64 = std::env::var("WANMIG_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4.0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        println!("overlay benchmark (2 gateways on loopback, MTU 1500)");
        match netns_status() {
            Err(why) => println!("  throughput/latency: skipped ({why})"),
            Ok(()) => {
                let mut rows = Vec::new();
                for path_mtu in [1500u32, 9000] {
                    let mesh = two_sites(None, path_mtu).await;
                    let (a, b) = (host_ns("wmba"), host_ns("wmbb"));
                    tap_into(mesh.gw("site-a"), &a, "198.18.60.1/24").await;
                    tap_into(mesh.gw("site-b"), &b, "198.18.60.2/24").await;
                    let (bps, rtt) = tokio::task::spawn_blocking(move || {
                        let bps = throughput(&a, &b, "198.18.60.2:7200".parse().unwrap(), secs);
                        let rtt = ping_pong(&a, &b, "198.18.60.2:7201".parse().unwrap(), 500);
                        (bps, rtt)
                    })
                    .await
                    .unwrap();
                    let frag = mesh
                        .gw("site-a")
                        .overlay()
                        .metrics()
                        .fragments
                        .with_label_values(&["tx"])
                        .get();
                    mesh.shutdown().await;
                    rows.push((path_mtu, bps, rtt, frag));
                }
                let vx = kernel_vxlan();
                let bps_vx = throughput(&vx.a, &vx.b, "198.19.51.2:7200".parse().unwrap(), secs);
                let rtt_vx = ping_pong(&vx.a, &vx.b, "198.19.51.2:7201".parse().unwrap(), 500);
                println!(
                    "  {:<44} {:>8} {:>9} {:>9} {:>10}",
                    "path", "Gbit/s", "RTT p50", "RTT p99", "fragments"
                );
                let row = |name: String, bps: f64, rtt: &[f64], frag: String| {
                    println!(
                        "  {:<44} {:>8.3} {:>7.0}us {:>7.0}us {:>10}",
                        name,
                        bps / 1e9,
                        pct(rtt, 0.5),
                        pct(rtt, 0.99),
                        frag
                    )
                };
                for (mtu, bps, rtt, frag) in &rows {
                    row(
                        format!("TAP->gw->gw->TAP, QUIC path MTU {mtu}"),
                        *bps,
                        rtt,
                        frag.to_string(),
                    );
                }
                row("kernel VXLAN over veth".into(), bps_vx, &rtt_vx, "-".into());
                for (mtu, bps, rtt, _) in &rows {
                    println!(
                        "  path MTU {mtu}: overlay/VXLAN throughput {:.3}, added one-way latency per gateway hop p50 {:.0}us p99 {:.0}us",
                        bps / bps_vx,
                        (pct(rtt, 0.5) - pct(&rtt_vx, 0.5)) / 4.0,
                        (pct(rtt, 0.99) - pct(&rtt_vx, 0.99)) / 4.0
                    );
                }
                println!("  goal: >= 1 Gbit/s through the gateways");
            }
        }
        let moves = rarp_move_time().await;
        if moves.is_empty() {
            println!("  RARP move: the old site never forwarded to the new one (BUG)");
        } else {
            let mut m = moves.clone();
            m.sort_by(f64::total_cmp);
            println!(
                "  RARP at new site -> old site forwards there (50 ms RTT link): min {:.1} ms, median {:.1} ms, max {:.1} ms over {} moves (goal <= 50 ms)",
                m[0],
                m[m.len() / 2],
                m[m.len() - 1],
                m.len()
            );
        }
    });
}
