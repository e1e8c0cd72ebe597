//! The heap held by fragment reassembly, measured rather than estimated:
//! this test binary runs under dhat's counting allocator, so the figure is
//! every byte the switch keeps alive, whatever the reassembler believes it
//! holds. One test only in this binary: the allocator counts the whole
//! process, and a second test running beside it would blur the figure.

mod common;

use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use wanmig_overlay::encap::{FragInfo, Header};
use wanmig_overlay::{MacAddr, OverlayConfig, PortId, SegmentConfig};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// A fragment datagram as a QUIC stack hands it over: a slice of a larger
/// receive buffer (`recv_buf` bytes), which a kept slice keeps alive whole.
fn fragment_in_buffer(id: u32, count: u8, payload: &[u8], recv_buf: usize) -> Bytes {
    let mut buf = BytesMut::with_capacity(recv_buf);
    Header {
        vni: vni(),
        flooded: false,
        fragment: Some(FragInfo {
            id,
            index: 0,
            count,
        }),
    }
    .encode(&mut buf);
    buf.put_slice(payload);
    let len = buf.len();
    buf.resize(recv_buf, 0);
    buf.freeze().slice(..len)
}

fn live_heap() -> usize {
    dhat::HeapStats::get().curr_bytes
}

#[test]
fn a_flood_of_tiny_first_fragments_stays_within_the_reassembly_budget() {
    let _profiler = dhat::Profiler::builder().testing().build();
    const BUDGET: usize = 64 * 1024;
    let cfg = OverlayConfig {
        segments: vec![SegmentConfig::new("prod", VNI)],
        reassembly_buffer: BUDGET,
        ..Default::default()
    };
    let mut sw = switch("a", &cfg);
    let now = Instant::now();
    sw.add_port(PortId(1), vni()).unwrap();
    let b = site("b");
    sw.on_peer_up(now, b.clone(), 1400);
    // Warm-up: one frame reassembled, one partial frame evicted, so that the
    // metric series and the maps the reassembler keeps already exist.
    let f = eth(MacAddr::BROADCAST, mac(2), 3000);
    for d in wanmig_overlay::fragment::fragment(vni(), true, &f, 1200, 1).unwrap() {
        sw.on_datagram(now, &b, d);
    }
    let baseline = live_heap();

    // Tiny first fragments of frames that never complete, each in its own
    // 2 KiB receive buffer; counts a frame of max_frame_size can need (38 at
    // the smallest datagram size) and counts no frame needs (255).
    let mut worst = 0;
    for id in 0..3000u32 {
        let count = if id % 4 == 3 { 255 } else { 38 };
        let d = fragment_in_buffer(100 + id, count, &[0xab], 2048);
        sw.on_datagram(now, &b, d);
        worst = worst.max(live_heap().saturating_sub(baseline));
    }
    println!("largest heap growth during the flood: {worst} bytes (budget {BUDGET})");
    // Slack for the few metric series a first drop of each kind creates.
    const SLACK: usize = 16 * 1024;
    assert!(
        worst <= BUDGET + SLACK,
        "reassembly kept {worst} bytes of heap alive against a {BUDGET}-byte budget"
    );
}
