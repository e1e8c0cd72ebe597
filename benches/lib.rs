//! Shared code of the benchmarks: the kernel-TCP baseline over the netem
//! TUN link ([`tcp_baseline`]), the goodput result rows they print, QEMU's
//! live-migration baseline ([`qemu`]), the scenario runner and report
//! ([`scenario`]), the real-memory corpus ([`corpus`]) and the real-memory
//! comparison of QEMU and wanmig on it ([`real_memory`]).

#[path = "src/corpus.rs"]
pub mod corpus;
#[path = "src/qemu.rs"]
pub mod qemu;
#[path = "src/real_memory.rs"]
pub mod real_memory;
#[path = "src/scenario/mod.rs"]
pub mod scenario;
pub mod tcp_baseline;

use serde::Serialize;

/// One measured transfer.
#[derive(Debug, Clone, Serialize)]
pub struct GoodputRow {
    /// "quic" or "tcp".
    pub transport: String,
    /// Congestion controller.
    pub cc: String,
    pub loss: f64,
    /// "cold" (first transfer on a new connection) or "warm" (the next one).
    pub phase: String,
    pub bytes: u64,
    pub seconds: f64,
    pub goodput_mbit: f64,
    /// Goodput as a fraction of the emulated link rate.
    pub of_link: f64,
}

impl GoodputRow {
    pub fn new(
        transport: &str,
        cc: &str,
        loss: f64,
        phase: &str,
        bytes: u64,
        seconds: f64,
        link_bps: u64,
    ) -> Self {
        let goodput = if seconds > 0.0 {
            bytes as f64 * 8.0 / seconds
        } else {
            0.0
        };
        GoodputRow {
            transport: transport.into(),
            cc: cc.into(),
            loss,
            phase: phase.into(),
            bytes,
            seconds,
            goodput_mbit: goodput / 1e6,
            of_link: goodput / link_bps as f64,
        }
    }
}

/// Prints rows as an aligned table.
pub fn print_table(rows: &[GoodputRow]) {
    println!(
        "{:<9} {:<7} {:>6} {:<5} {:>10} {:>8} {:>10} {:>8}",
        "transport", "cc", "loss%", "phase", "bytes", "seconds", "Mbit/s", "of link"
    );
    for r in rows {
        println!(
            "{:<9} {:<7} {:>6.2} {:<5} {:>10} {:>8.2} {:>10.1} {:>7.1}%",
            r.transport,
            r.cc,
            r.loss * 100.0,
            r.phase,
            r.bytes,
            r.seconds,
            r.goodput_mbit,
            r.of_link * 100.0
        );
    }
}
