//! The emulator's own accuracy on real loopback sockets: measured RTT vs
//! the setting, delivered rate vs the setting (250 Mbit/s at 100 ms RTT),
//! and loss (random and Gilbert-Elliott) vs the setting.
//!
//! Run: `cargo bench -p wanmig-netem --bench accuracy`

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::{four_sigma, loopback, send_paced, Echo, Sink};
use wanmig_netem::{LinkParams, LossModel, RelayConfig, RelayHandle, UdpRelay};

const RTT: Duration = Duration::from_millis(100);
const RATE: u64 = 250_000_000;

async fn relay(upstream: std::net::SocketAddr, fwd: LinkParams, rev: LinkParams) -> RelayHandle {
    UdpRelay::start(RelayConfig {
        listen: loopback(),
        upstream,
        forward: fwd,
        reverse: rev,
        seed: 7,
    })
    .await
    .expect("relay starts")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Pings every `gap` from one thread and receives in another, so the
/// measurement does not wait a full RTT per sample.
fn pipelined_pings(to: std::net::SocketAddr, n: u64, gap: Duration) -> Vec<Duration> {
    let sock = UdpSocket::bind(loopback()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let rx = sock.try_clone().unwrap();
    let start = Instant::now();
    let receiver = std::thread::spawn(move || {
        let mut rtts = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok(16) = rx.recv(&mut buf) {
            let sent = u64::from_be_bytes(buf[8..16].try_into().unwrap());
            let rtt = start.elapsed() - Duration::from_nanos(sent);
            rtts.push(rtt);
            if rtts.len() as u64 == n {
                break;
            }
        }
        rtts
    });
    for i in 0..n {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&i.to_be_bytes());
        b[8..].copy_from_slice(&(start.elapsed().as_nanos() as u64).to_be_bytes());
        sock.send_to(&b, to).unwrap();
        std::thread::sleep(gap);
    }
    receiver.join().unwrap()
}

async fn rtt() {
    let echo = Echo::start();
    let p = LinkParams::wan(RTT, RATE);
    let r = relay(echo.addr, p.clone(), p).await;
    let addr = r.local_addr();
    let mut rtts =
        tokio::task::spawn_blocking(move || pipelined_pings(addr, 400, Duration::from_millis(5)))
            .await
            .unwrap();
    rtts.sort();
    let mean = rtts.iter().sum::<Duration>() / rtts.len() as u32;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "RTT   setting {:>7.3} ms | measured over {} pings: mean {:.3} ms, median {:.3} ms, p1 {:.3} ms, p99 {:.3} ms, min {:.3} ms, max {:.3} ms | median error {:+.3} ms",
        ms(RTT),
        rtts.len(),
        ms(mean),
        ms(percentile(&rtts, 0.5)),
        ms(percentile(&rtts, 0.01)),
        ms(percentile(&rtts, 0.99)),
        ms(rtts[0]),
        ms(*rtts.last().unwrap()),
        ms(percentile(&rtts, 0.5)) - ms(RTT),
    );
    r.shutdown().await;
}

async fn rate(offered: f64, seconds: f64) {
    let sink = Sink::start(Duration::from_millis(500));
    let r = relay(
        sink.addr,
        LinkParams::wan(RTT, RATE),
        LinkParams::wan(RTT, RATE),
    )
    .await;
    let addr = r.local_addr();
    let size = 1200usize;
    let pps = RATE as f64 * offered / (size as f64 * 8.0);
    let t = Instant::now();
    tokio::task::spawn_blocking(move || drop(send_paced(addr, (pps * seconds) as u64, size, pps)))
        .await
        .unwrap();
    let send_time = t.elapsed();
    let got = tokio::task::spawn_blocking(move || sink.finish())
        .await
        .unwrap();
    let (first, last) = (got[0].2, got.last().unwrap().2);
    let bytes: usize = got[1..].iter().map(|g| g.1).sum();
    let measured = bytes as f64 * 8.0 / (last - first).as_secs_f64();
    let st = r.stats();
    let expect = (RATE as f64).min(RATE as f64 * offered);
    println!(
        "RATE  setting {:.1} Mbit/s, offered {:.0}% ({:.1} Mbit/s for {:.2} s, {size}-byte datagrams) | delivered {:.2} Mbit/s = {:+.2}% vs {:.1} Mbit/s expected | {} arrived, {} tail-dropped, {} send errors",
        RATE as f64 / 1e6,
        offered * 100.0,
        RATE as f64 * offered / 1e6,
        send_time.as_secs_f64(),
        measured / 1e6,
        (measured / expect - 1.0) * 100.0,
        expect / 1e6,
        got.len(),
        st.forward.dropped_queue,
        st.send_errors,
    );
    r.shutdown().await;
}

/// How much the relay moves with no rate limit (headroom above 250 Mbit/s;
/// the sender and sink share the same 2 cores, so this is a lower bound).
async fn headroom(offered_bps: f64, seconds: f64) {
    let sink = Sink::start(Duration::from_millis(500));
    let delay = LinkParams::ideal().with_delay(RTT / 2);
    let r = relay(sink.addr, delay.clone(), delay).await;
    let addr = r.local_addr();
    let size = 1200usize;
    let pps = offered_bps / (size as f64 * 8.0);
    tokio::task::spawn_blocking(move || drop(send_paced(addr, (pps * seconds) as u64, size, pps)))
        .await
        .unwrap();
    let got = tokio::task::spawn_blocking(move || sink.finish())
        .await
        .unwrap();
    let (first, last) = (got[0].2, got.last().unwrap().2);
    let bytes: usize = got[1..].iter().map(|g| g.1).sum();
    let measured = bytes as f64 * 8.0 / (last - first).as_secs_f64();
    let st = r.stats();
    println!(
        "HEADROOM no rate limit, {:?} delay, offered {:.0} Mbit/s | delivered {:.1} Mbit/s, {} of {} datagrams arrived ({} relay send errors)",
        RTT / 2,
        offered_bps / 1e6,
        measured / 1e6,
        got.len(),
        (pps * seconds) as u64,
        st.send_errors,
    );
    r.shutdown().await;
}

async fn loss(model: LossModel, label: &str) {
    let n = 100_000u64;
    let sink = Sink::start(Duration::from_millis(500));
    let r = relay(
        sink.addr,
        LinkParams::ideal().with_loss(model),
        LinkParams::ideal(),
    )
    .await;
    let addr = r.local_addr();
    tokio::task::spawn_blocking(move || drop(send_paced(addr, n, 64, 50_000.0)))
        .await
        .unwrap();
    let got = tokio::task::spawn_blocking(move || sink.finish())
        .await
        .unwrap();
    let seqs: HashSet<u64> = got.iter().map(|g| g.0).collect();
    let lost: Vec<bool> = (0..n).map(|s| !seqs.contains(&s)).collect();
    let losses = lost.iter().filter(|&&l| l).count() as f64;
    let bursts = lost.windows(2).filter(|w| !w[0] && w[1]).count().max(1) as f64;
    let p = model.mean_loss();
    let bound = four_sigma(n as f64, p);
    print!(
        "LOSS  {label}: setting {:.3}% | measured {:.3}% ({losses} of {n}; expected {:.0} ± {:.0} binomial 4σ: {}) | mean burst {:.2} packets",
        p * 100.0,
        losses / n as f64 * 100.0,
        n as f64 * p,
        bound,
        if (losses - n as f64 * p).abs() <= bound { "within" } else { "OUTSIDE" },
        losses / bursts,
    );
    if let LossModel::GilbertElliott { r: rr, .. } = model {
        // Bursty loss is correlated, so its real spread is wider than the
        // binomial bound printed above.
        print!(
            " (expected 1/r = {:.2}; losses are correlated, the binomial bound is only indicative)",
            1.0 / rr
        );
    }
    println!();
    r.shutdown().await;
}

fn main() {
    // `cargo bench` passes --bench; ignore arguments.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        println!(
            "wanmig-netem accuracy (UDP relay on loopback; RTT {RTT:?}, rate {} Mbit/s)",
            RATE / 1_000_000
        );
        rtt().await;
        rate(1.2, 3.0).await;
        rate(0.9, 3.0).await;
        headroom(500e6, 2.0).await;
        headroom(1000e6, 2.0).await;
        loss(LossModel::Random { p: 0.01 }, "random 1%").await;
        loss(
            LossModel::gemodel(0.01, Some(0.25), None, None),
            "gemodel p=1% r=25%",
        )
        .await;
    });
}
