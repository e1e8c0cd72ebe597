//! The TUN link between two real network namespaces: UDP round trips see
//! the configured delay, kernel TCP runs at about the configured rate, and
//! cut/restore stop and resume traffic. Needs root (gated).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use wanmig_netem::{LinkParams, TunLink, TunLinkConfig, TunLinkHandle};
use wanmig_testenv::{require_netns, Netns};

const A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Runs `f` on a thread that has entered namespace `ns`; sockets it
/// creates stay in that namespace.
fn in_ns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{}", ns.name());
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(&path).expect("namespace file");
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .unwrap()
    })
}

/// These tests measure time; one at a time on a 2-core machine.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

async fn link(fwd: LinkParams, rev: LinkParams) -> (Netns, Netns, TunLinkHandle) {
    let a = Netns::create("wnta").unwrap();
    let b = Netns::create("wntb").unwrap();
    let h = TunLink::start(TunLinkConfig {
        ns_a: a.name().into(),
        ns_b: b.name().into(),
        addr_a: A,
        addr_b: B,
        mtu: 1500,
        forward: fwd,
        reverse: rev,
        seed: 1,
    })
    .await
    .unwrap();
    (a, b, h)
}

/// An echo socket in namespace B; returns its address.
fn echo_in(b: &Netns) -> SocketAddr {
    let sock = in_ns(b, || UdpSocket::bind((B, 0)).unwrap());
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    });
    addr
}

fn round_trip(sock: &UdpSocket, to: SocketAddr, i: u64) -> Option<Duration> {
    let t = Instant::now();
    sock.send_to(&i.to_be_bytes(), to).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match sock.recv(&mut buf) {
            Ok(8) if buf[..8] == i.to_be_bytes() => return Some(t.elapsed()),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_round_trip_sees_the_delay_and_cut_stops_it() {
    if !require_netns("udp_round_trip_sees_the_delay_and_cut_stops_it") {
        return;
    }
    let _g = serial().await;
    let (a, b, h) = link(
        LinkParams::ideal().with_delay(ms(10)),
        LinkParams::ideal().with_delay(ms(10)),
    )
    .await;
    let echo = echo_in(&b);
    let client = in_ns(&a, || UdpSocket::bind((A, 0)).unwrap());
    // Long enough for an echo on a loaded machine; also how long the test
    // listens for an echo through the cut link.
    client.set_read_timeout(Some(ms(2000))).unwrap();
    let h2 = h.clone();
    let (rtts, silent, after) = tokio::task::spawn_blocking(move || {
        let mut rtts: Vec<Duration> = (0..20)
            .map(|i| round_trip(&client, echo, i).expect("no echo over the TUN link"))
            .collect();
        rtts.sort();
        h2.cut();
        let silent = round_trip(&client, echo, 100).is_none();
        h2.restore();
        let after = round_trip(&client, echo, 101);
        (rtts, silent, after)
    })
    .await
    .unwrap();
    let median = rtts[rtts.len() / 2];
    eprintln!("TUN RTT setting 20 ms: median {median:?} all {rtts:?}");
    // Never early; late only by what a loaded machine's wake-ups add (the
    // accuracy figure is the `accuracy` benchmark's).
    assert!(
        rtts[0] > ms(18),
        "an RTT of {:?} beat the 20 ms setting",
        rtts[0]
    );
    assert!(median < ms(40), "median RTT {median:?} for a 20 ms setting");
    assert!(silent, "an echo came back over a cut link");
    assert!(after.is_some(), "no echo after restore");
    let st = h.stats();
    assert!(st.forward.dropped_cut >= 1, "{st:?}");
    assert_eq!(st.send_errors, 0, "{st:?}");
    h.shutdown().await;
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_tcp_runs_at_about_the_rate() {
    if !require_netns("kernel_tcp_runs_at_about_the_rate") {
        return;
    }
    let _g = serial().await;
    let rate = 40_000_000u64;
    let p = LinkParams::wan(ms(20), rate);
    let (a, b, h) = link(p.clone(), p).await;
    let listener = in_ns(&b, || TcpListener::bind((B, 0)).unwrap());
    let to = listener.local_addr().unwrap();
    let conn = in_ns(&a, || {
        TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap()
    });
    let received = tokio::task::spawn_blocking(move || {
        let sender = std::thread::spawn(move || {
            let mut conn = conn;
            let chunk = vec![7u8; 64 * 1024];
            let end = Instant::now() + Duration::from_secs(3);
            while Instant::now() < end {
                if conn.write_all(&chunk).is_err() {
                    break;
                }
            }
        });
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        // Skip the first second (slow start), then measure two seconds.
        let start = Instant::now();
        let mut bytes = 0usize;
        let mut t_begin: Option<Instant> = None;
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            if start.elapsed() >= Duration::from_secs(1) {
                // The window opens after the first read past one second,
                // and that read's bytes (which arrived before it, however
                // long the machine kept this thread from reading) are not
                // counted.
                let Some(t0) = t_begin else {
                    t_begin = Some(Instant::now());
                    continue;
                };
                bytes += n;
                if t0.elapsed() >= Duration::from_secs(2) {
                    break;
                }
            }
        }
        let secs = t_begin.map(|t| t.elapsed().as_secs_f64()).unwrap_or(1.0);
        drop(s);
        let _ = sender.join();
        bytes as f64 * 8.0 / secs
    })
    .await
    .unwrap();
    eprintln!(
        "kernel TCP over the TUN link at {rate} bit/s: {received:.0} bit/s, {:?}",
        h.stats()
    );
    // The behaviour checked: the link never carries more than its rate
    // (IP+TCP headers use ~3% of it), and a kernel TCP flow runs over it
    // at a rate of that order. How close TCP gets is a figure, printed by
    // the `accuracy` bench: congestion control after tail drops can leave
    // half the rate unused on a shared 2-core machine, so the lower bound
    // only rules out a stalled link.
    assert!(
        received < rate as f64 * 1.02,
        "TCP got {received:.0} bit/s on a {rate} bit/s link"
    );
    assert!(
        received > rate as f64 * 0.2,
        "TCP got only {received:.0} bit/s on a {rate} bit/s link"
    );
    h.shutdown().await;
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_disappear_on_shutdown() {
    if !require_netns("devices_disappear_on_shutdown") {
        return;
    }
    let _g = serial().await;
    let (a, b, h) = link(LinkParams::ideal(), LinkParams::ideal()).await;
    let (da, _) = h.devices();
    let da = da.to_string();
    assert!(a.run(&["ip", "link", "show", &da]).status.success());
    h.shutdown().await;
    assert!(
        !a.run(&["ip", "link", "show", &da]).status.success(),
        "{da} still exists after shutdown"
    );
    drop(b);
}

#[tokio::test]
async fn missing_namespace_is_a_clear_error() {
    if !require_netns("missing_namespace_is_a_clear_error") {
        return;
    }
    let e = TunLink::start(TunLinkConfig {
        ns_a: "wanmig-no-such-ns".into(),
        ns_b: "wanmig-no-such-ns2".into(),
        addr_a: A,
        addr_b: B,
        mtu: 1500,
        forward: LinkParams::ideal(),
        reverse: LinkParams::ideal(),
        seed: 0,
    })
    .await
    .unwrap_err();
    assert!(e.to_string().contains("netns"), "{e}");
}
