//! Goodput of one probe through the WAN emulator at 250 Mbit/s and 100 ms
//! RTT, with 0 % and 0.1 % random loss (both directions), for QUIC (the
//! gateway's probe, BBR and Cubic) and, side by side, kernel TCP (BBR and
//! Cubic) over the same emulated link between two namespaces.
//!
//! Run: `cargo bench -p wanmig-benches --bench wan_goodput`
//! Environment: `WANMIG_BENCH_BYTES=N` sets the transfer size (default
//! 200 MB), `WANMIG_BENCH_ONLY=quic|tcp` and `WANMIG_BENCH_CC=bbr|cubic`
//! narrow the run, `WANMIG_BENCH_VERBOSE=1` prints progress and, every
//! 100 ms, the QUIC sender's congestion window, RTT and losses next to the
//! emulator's delivered rate and queue drops. The TCP rows need root
//! (namespaces and TUN); without it they are skipped, saying so.

use std::time::Duration;

use anyhow::{Context, Result};
use wanmig_benches::tcp_baseline::TcpPath;
use wanmig_benches::{print_table, GoodputRow};
use wanmig_e2e::{Link, MeshBuilder};
use wanmig_gateway::probe;
use wanmig_netem::LinkParams;

const RATE_BPS: u64 = 250_000_000;
const RTT: Duration = Duration::from_millis(100);
const LOSSES: [f64; 2] = [0.0, 0.001];
const CCS: [&str; 2] = ["bbr", "cubic"];

fn link(loss: f64) -> LinkParams {
    let p = LinkParams::wan(RTT, RATE_BPS);
    if loss > 0.0 {
        p.with_random_loss(loss)
    } else {
        p
    }
}

async fn quic(cc: &str, loss: f64, bytes: u64) -> Result<Vec<GoodputRow>> {
    let mesh = MeshBuilder::new(2)
        .link(Link {
            forward: link(loss),
            reverse: link(loss),
        })
        .hints(RATE_BPS as f64 / 1e6, RTT)
        .transport(&format!(
            "congestion = \"{cc}\"\nidle_timeout = \"10s\"\nkeep_alive = \"1s\"\n"
        ))
        .start()
        .await?;
    anyhow::ensure!(
        mesh.wait_all_up(Duration::from_secs(30)).await,
        "gateways did not peer through the emulator"
    );
    let mut rows = Vec::new();
    let verbose = std::env::var_os("WANMIG_BENCH_VERBOSE").is_some();
    let trace = verbose.then(|| trace_path(&mesh));
    for phase in ["cold", "warm"] {
        let mut next = 0u64;
        let r = probe::run(mesh.gw("site-a"), "site-b", bytes, |sent| {
            if verbose && sent >= next {
                eprintln!("  {cc} {phase}: {sent} bytes written");
                next += 10_000_000;
            }
        })
        .await
        .with_context(|| format!("QUIC {cc} probe"))?;
        rows.push(GoodputRow::new(
            "quic",
            cc,
            loss,
            phase,
            bytes,
            r.duration_ms / 1e3,
            RATE_BPS,
        ));
    }
    if let Some(t) = trace {
        t.abort();
    }
    mesh.shutdown().await;
    Ok(rows)
}

/// With WANMIG_BENCH_VERBOSE: every 100 ms, the sender's congestion window,
/// RTT, packets sent/lost and the emulator's deliveries and queue drops —
/// what shows which of them holds the goodput back.
fn trace_path(mesh: &wanmig_e2e::Mesh) -> tokio::task::JoinHandle<()> {
    let conn = mesh.gw("site-a").live_connection("site-b");
    let relay = mesh.relay("site-a", "site-b").clone();
    tokio::spawn(async move {
        let Ok(conn) = conn else { return };
        let t0 = std::time::Instant::now();
        let mut last = (0u64, 0u64);
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let s = conn.stats().path;
            let r = relay.stats();
            let fwd = r.forward.delivered_bytes;
            eprintln!(
                "  t={:6.2}s cwnd={:9} rtt={:6.1}ms sent={} lost={} fwd={:6.1}Mbit/s qdrop={} ldrop={} inflight={}",
                t0.elapsed().as_secs_f64(),
                s.cwnd,
                s.rtt.as_secs_f64() * 1e3,
                s.sent_packets - last.1,
                s.lost_packets,
                (fwd - last.0) as f64 * 8.0 / 0.1 / 1e6,
                r.forward.dropped_queue,
                r.forward.dropped_loss,
                r.forward.in_flight,
            );
            last = (fwd, s.sent_packets);
        }
    })
}

async fn tcp(cc: &str, loss: f64, bytes: u64) -> Result<Vec<GoodputRow>> {
    let path = TcpPath::start(link(loss), link(loss)).await?;
    let times = path.transfer(cc, bytes, 2).await;
    path.shutdown().await;
    let times = times.with_context(|| format!("TCP {cc} transfer"))?;
    Ok(times
        .iter()
        .zip(["cold", "warm"])
        .map(|(t, phase)| GoodputRow::new("tcp", cc, loss, phase, bytes, t.as_secs_f64(), RATE_BPS))
        .collect())
}

async fn run() -> Result<()> {
    let bytes: u64 = match std::env::var("WANMIG_BENCH_BYTES") {
        Ok(v) => v
            .parse()
            .context("WANMIG_BENCH_BYTES must be a byte count")?,
        Err(_) => 200_000_000,
    };
    println!(
        "wan_goodput: {} Mbit/s, {} ms RTT, {bytes} bytes per transfer",
        RATE_BPS / 1_000_000,
        RTT.as_millis()
    );
    // Loss-based Cubic on a lossy 100 ms path runs at the Mathis limit
    // (~MSS/RTT/sqrt(p), a few Mbit/s): a tenth of the bytes shows that
    // without making the run take many minutes.
    let size = |cc: &str, loss: f64| {
        if cc == "cubic" && loss > 0.0 {
            bytes / 10
        } else {
            bytes
        }
    };
    let only = std::env::var("WANMIG_BENCH_ONLY").unwrap_or_default();
    let ccs: Vec<&str> = CCS
        .into_iter()
        .filter(|cc| {
            std::env::var("WANMIG_BENCH_CC")
                .map(|c| c == *cc)
                .unwrap_or(true)
        })
        .collect();
    let mut rows = Vec::new();
    for loss in LOSSES {
        for &cc in &ccs {
            if only == "tcp" {
                break;
            }
            match quic(cc, loss, size(cc, loss)).await {
                Ok(r) => rows.extend(r),
                Err(e) => eprintln!("QUIC {cc} at {loss} loss failed: {e:#}"),
            }
        }
    }
    match wanmig_testenv::netns_status() {
        Ok(()) if only == "quic" => {}
        Ok(()) => {
            for loss in LOSSES {
                for &cc in &ccs {
                    match tcp(cc, loss, size(cc, loss)).await {
                        Ok(r) => rows.extend(r),
                        Err(e) => eprintln!("TCP {cc} at {loss} loss failed: {e:#}"),
                    }
                }
            }
        }
        Err(why) => eprintln!("skipping the kernel TCP baseline: {why}"),
    }
    print_table(&rows);
    println!("{}", serde_json::to_string(&rows)?);
    Ok(())
}

fn main() -> Result<()> {
    wanmig_e2e::init_logging();
    // `cargo bench` passes `--bench`; this harness takes no arguments.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run())
}
