//! The L2 overlay end to end: two gateways in-process with a WAN
//! emulator between them (50 ms RTT), a Linux network namespace per host
//! behind a TAP port of a gateway, kernel TCP at full 1500-byte MTU across
//! the stretched segment (frames are larger than the QUIC datagrams, so
//! they are fragmented), ARP suppression, and a TCP connection that keeps
//! running while its server moves from site A to site B.
//!
//! Needs root (namespaces, TAP); skipped with a reason otherwise.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wanmig_e2e::{init_logging, Mesh, MeshBuilder};
use wanmig_gateway::overlay_service::OverlayState;
use wanmig_gateway::GatewayHandle;
use wanmig_overlay::frame::{ArpInfo, ArpOp};
use wanmig_overlay::port::TapOptions;
use wanmig_overlay::{MacAddr, PortId};
use wanmig_testenv::{require_netns, sh, unique_name, Netns};

const SEGMENT: &str = "lan";
const VNI_LABEL: &str = "4242";
const RTT: Duration = Duration::from_millis(50);

/// Two gateways (site-a, site-b) with one overlay segment, through the WAN
/// emulator, with the overlay up on both.
async fn two_sites() -> Mesh {
    init_logging();
    let prepared = MeshBuilder::new(2)
        .wan(RTT, 1_000_000_000)
        .prepare()
        .await
        .expect("mesh prepared");
    for site in ["site-a", "site-b"] {
        let path = prepared.config_path(site).to_path_buf();
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("\n[overlay]\n[[overlay.segment]]\nname = \"lan\"\nvni = 4242\n");
        std::fs::write(&path, text).unwrap();
    }
    let mesh = prepared.start().await.expect("gateways started");
    assert!(mesh.wait_all_up(Duration::from_secs(30)).await, "peers up");
    for site in ["site-a", "site-b"] {
        let gw = mesh.gw(site);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = gw.overlay().state().await.unwrap();
            if s.peers.len() == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "{site}: overlay peer never up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    mesh
}

/// A namespace with IPv6 off (so only the traffic a test makes crosses).
fn host_ns(prefix: &str) -> Netns {
    let ns = Netns::create(prefix).expect("namespace");
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
    ns
}

/// Creates a TAP on `gw`'s segment and moves it into `ns`, up.
async fn tap_into(gw: &GatewayHandle, ns: &Netns, mac: Option<MacAddr>) -> (PortId, String) {
    let name = unique_name("wmov");
    let (port, name) = gw
        .overlay()
        .attach_tap(
            SEGMENT,
            TapOptions {
                name: Some(name),
                mtu: Some(1500),
                mac,
                bridge: None,
            },
        )
        .await
        .expect("TAP attached");
    sh(&["ip", "link", "set", &name, "netns", ns.name()]);
    ns.exec(&["ip", "link", "set", &name, "up"]);
    (port, name)
}

/// Runs `f` on a thread inside namespace `ns`.
fn in_netns<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let path = format!("/run/netns/{}", ns.name());
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("namespace file");
        // SAFETY: setns with a valid namespace fd; CLONE_NEWNET moves only
        // this thread, which exists solely to run `f`.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
}

fn pattern(offset: u64) -> u8 {
    (offset % 251) as u8
}

/// Server: accepts one connection, checks that every byte follows the
/// pattern in order, counts them into `received`, answers the count.
fn serve_checked(listener: TcpListener, received: Arc<AtomicU64>) -> Result<u64, String> {
    let (mut s, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        for (i, b) in buf[..n].iter().enumerate() {
            if *b != pattern(total + i as u64) {
                return Err(format!("byte {} is wrong", total + i as u64));
            }
        }
        total += n as u64;
        received.store(total, Ordering::Relaxed);
    }
    s.write_all(&total.to_be_bytes())
        .map_err(|e| format!("answer: {e}"))?;
    Ok(total)
}

/// Client: sends the pattern (`bytes` of it, or until `stop` when paced),
/// then half-closes and reads the server's count.
fn send_pattern(
    to: SocketAddr,
    bytes: Option<u64>,
    stop: Arc<AtomicBool>,
) -> Result<(u64, u64), String> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let chunk = 16 << 10;
    let mut sent = 0u64;
    loop {
        let n = match bytes {
            Some(total) if sent >= total => break,
            Some(total) => (total - sent).min(chunk),
            None if stop.load(Ordering::Relaxed) => break,
            None => {
                std::thread::sleep(Duration::from_millis(5));
                chunk
            }
        };
        let data: Vec<u8> = (0..n).map(|i| pattern(sent + i)).collect();
        s.write_all(&data).map_err(|e| format!("write: {e}"))?;
        sent += n;
    }
    s.shutdown(std::net::Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut answer = [0u8; 8];
    s.read_exact(&mut answer)
        .map_err(|e| format!("reading the count: {e}"))?;
    Ok((sent, u64::from_be_bytes(answer)))
}

fn listen_in(
    ns: &Netns,
    addr: SocketAddr,
    received: Arc<AtomicU64>,
) -> JoinHandle<Result<u64, String>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = in_netns(ns, move || {
        let l = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"));
        let _ = ready_tx.send(l.is_ok());
        serve_checked(l?, received)
    });
    assert!(ready_rx.recv().unwrap(), "server could not bind");
    h
}

fn mac_entry<'a>(
    s: &'a OverlayState,
    mac: &str,
) -> Option<&'a wanmig_gateway::overlay_service::MacEntry> {
    s.segments
        .iter()
        .find(|g| g.name == SEGMENT)?
        .macs
        .iter()
        .find(|m| m.mac == mac)
}

async fn join<T: Send + 'static>(h: JoinHandle<T>) -> T {
    tokio::task::spawn_blocking(move || h.join().expect("thread panicked"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_tcp_at_1500_mtu_and_arp_suppression_across_two_sites() {
    if !require_netns("kernel_tcp_at_1500_mtu_and_arp_suppression_across_two_sites") {
        return;
    }
    let mesh = two_sites().await;
    let (ga, gb) = (mesh.gw("site-a"), mesh.gw("site-b"));
    let (na, nb) = (host_ns("wmoa"), host_ns("wmob"));
    let (_, ta) = tap_into(ga, &na, None).await;
    let (_, tb) = tap_into(gb, &nb, None).await;
    na.exec(&["ip", "addr", "add", "198.18.40.1/24", "dev", &ta]);
    nb.exec(&["ip", "addr", "add", "198.18.40.2/24", "dev", &tb]);

    // A 2 MiB transfer with full-size (1514-byte) frames.
    let server: SocketAddr = "198.18.40.2:7000".parse().unwrap();
    let srv = listen_in(&nb, server, Arc::new(AtomicU64::new(0)));
    let total = 2u64 << 20;
    let stop = Arc::new(AtomicBool::new(false));
    let cli = in_netns(&na, move || send_pattern(server, Some(total), stop));
    let (sent, counted) = join(cli).await.expect("client");
    assert_eq!(join(srv).await.expect("server"), total);
    assert_eq!((sent, counted), (total, total));

    // ping at full MTU: a 1500-byte IP packet with DF set crosses (no black
    // hole: the overlay fragments inside QUIC, never the inner packet).
    let ping = na.run(&[
        "ping",
        "-c",
        "3",
        "-W",
        "5",
        "-s",
        "1472",
        "-M",
        "do",
        "198.18.40.2",
    ]);
    let out = String::from_utf8_lossy(&ping.stdout);
    assert!(
        ping.status.success() && out.contains("3 received"),
        "ping at full MTU failed (is iputils-ping installed? .ci/run installs it): {out} {}",
        String::from_utf8_lossy(&ping.stderr)
    );

    // Full-size frames did not fit one datagram: fragmented and rebuilt.
    let (ma, mb) = (ga.overlay().metrics(), gb.overlay().metrics());
    let frag_tx = ma.fragments.with_label_values(&["tx"]).get();
    assert!(frag_tx > 0, "site-a sent no fragments");
    assert!(mb.reassembled.get() > 0, "site-b reassembled nothing");
    let st = ga.overlay().state().await.unwrap();
    let mds = st.peers[0].1;
    assert!(mds < 1514, "max datagram {mds} would carry whole frames");

    // ARP suppression: forget the neighbour at A and reconnect. The
    // binding is known, so A's gateway answers and no ARP reaches B.
    let suppressed = ma.arp_suppressed.with_label_values(&[VNI_LABEL]).get();
    let floods_at_b = mb.floods.with_label_values(&[VNI_LABEL, "remote"]).get();
    na.exec(&["ip", "neigh", "flush", "dev", &ta]);
    let srv = listen_in(
        &nb,
        "198.18.40.2:7001".parse().unwrap(),
        Arc::new(AtomicU64::new(0)),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let cli = in_netns(&na, move || {
        send_pattern("198.18.40.2:7001".parse().unwrap(), Some(1000), stop)
    });
    assert_eq!(join(cli).await.expect("client"), (1000, 1000));
    join(srv).await.expect("server");
    assert!(
        ma.arp_suppressed.with_label_values(&[VNI_LABEL]).get() > suppressed,
        "site-a answered no ARP request locally"
    );
    assert_eq!(
        mb.floods.with_label_values(&[VNI_LABEL, "remote"]).get(),
        floods_at_b,
        "a broadcast (the ARP request) crossed the WAN"
    );

    // The counters are on /metrics.
    let url = format!("http://{}/metrics", ga.metrics_addr().unwrap());
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    assert!(
        text.contains("wanmig_overlay_arp_suppressed_total{"),
        "/metrics lacks the overlay counters"
    );
    // And the MAC table on the control API names B's host as remote.
    let mac_b = nb.exec(&["cat", &format!("/sys/class/net/{tb}/address")]);
    let s = ga.overlay().state().await.unwrap();
    let e = mac_entry(&s, mac_b.trim()).expect("B's MAC known at A");
    assert_eq!((e.kind.as_str(), e.at.as_str()), ("remote", "site-b"));

    drop((na, nb));
    mesh.shutdown().await;
}

/// Sends a gratuitous ARP for `ip` from `mac` out of interface `dev` in the
/// calling thread's namespace (an AF_PACKET socket; no arping installed).
fn send_garp(dev: &str, mac: MacAddr, ip: Ipv4Addr) -> std::io::Result<()> {
    let frame = ArpInfo {
        op: ArpOp::Request,
        sender_mac: mac,
        sender_ip: ip,
        target_mac: MacAddr::ZERO,
        target_ip: ip,
    }
    .to_frame(MacAddr::BROADCAST, mac, None);
    let cname = std::ffi::CString::new(dev).unwrap();
    // SAFETY: cname is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: socket() has no memory preconditions; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: an all-zero sockaddr_ll is valid; the fields set below are
    // plain integers.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_ifindex = index as i32;
    sa.sll_halen = 6;
    sa.sll_addr[..6].copy_from_slice(&MacAddr::BROADCAST.0);
    // SAFETY: fd is our socket; frame and sa outlive the call and their
    // lengths are passed correctly.
    let rc = unsafe {
        libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&sa as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    let r = if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    };
    // SAFETY: fd is open and closed exactly once.
    unsafe { libc::close(fd) };
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_session_survives_its_server_moving_between_sites() {
    if !require_netns("tcp_session_survives_its_server_moving_between_sites") {
        return;
    }
    let mesh = two_sites().await;
    let (ga, gb) = (mesh.gw("site-a"), mesh.gw("site-b"));
    // The client lives at site B; the server starts at site A behind a
    // bridge (which keeps its MAC and IP while the TAP under it changes).
    let (nc, ns) = (host_ns("wmoc"), host_ns("wmos"));
    let (_, tc) = tap_into(gb, &nc, None).await;
    nc.exec(&["ip", "addr", "add", "198.18.41.1/24", "dev", &tc]);
    let server_mac = MacAddr([0x02, 0x18, 0x41, 0, 0, 0x02]);
    let server_ip = Ipv4Addr::new(198, 18, 41, 2);
    ns.exec(&["ip", "link", "add", "br0", "type", "bridge"]);
    ns.exec(&[
        "ip",
        "link",
        "set",
        "br0",
        "address",
        &server_mac.to_string(),
    ]);
    ns.exec(&["ip", "addr", "add", "198.18.41.2/24", "dev", "br0"]);
    ns.exec(&["ip", "link", "set", "br0", "up"]);
    let (old_port, old_tap) = tap_into(ga, &ns, None).await;
    ns.exec(&["ip", "link", "set", &old_tap, "master", "br0"]);

    let addr = SocketAddr::new(server_ip.into(), 7100);
    let received = Arc::new(AtomicU64::new(0));
    let srv = listen_in(&ns, addr, received.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let cli = {
        let stop = stop.clone();
        in_netns(&nc, move || send_pattern(addr, None, stop))
    };
    let wait_for = |target: u64| {
        let received = received.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while received.load(Ordering::Relaxed) < target {
                assert!(
                    Instant::now() < deadline,
                    "stream stalled below {target} bytes"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(256 << 10).await;

    // The move: the TAP at A goes away, one at B takes its place under the
    // same bridge, and the server announces itself with a gratuitous ARP.
    let before = received.load(Ordering::Relaxed);
    ga.overlay().detach(old_port).await.unwrap();
    let (_, new_tap) = tap_into(gb, &ns, None).await;
    ns.exec(&["ip", "link", "set", &new_tap, "master", "br0"]);
    in_netns(&ns, move || send_garp("br0", server_mac, server_ip))
        .join()
        .unwrap()
        .expect("GARP sent");
    wait_for(before + (512 << 10)).await;

    stop.store(true, Ordering::Relaxed);
    let (sent, counted) = join(cli).await.expect("client saw no reset");
    let got = join(srv)
        .await
        .expect("server saw the bytes complete and in order");
    assert_eq!(got, sent);
    assert_eq!(counted, sent);

    // Both sites place the server at B now.
    let mac = server_mac.to_string();
    let sb = gb.overlay().state().await.unwrap();
    assert_eq!(mac_entry(&sb, &mac).map(|e| e.kind.as_str()), Some("local"));
    let sa = ga.overlay().state().await.unwrap();
    let e = mac_entry(&sa, &mac).expect("A knows the server");
    assert_eq!((e.kind.as_str(), e.at.as_str()), ("remote", "site-b"));

    drop((nc, ns));
    mesh.shutdown().await;
}
