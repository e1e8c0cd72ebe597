//! Frames per second through the switching core: encapsulation, MAC lookup,
//! fragmentation and reassembly, without any I/O.
//!
//! Run: `cargo bench -p wanmig-overlay --bench switch`
//! (criterion prints the rate as `thrpt: … elem/s`, one element per frame).

use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use wanmig_overlay::{
    Action, MacAddr, OverlayConfig, OverlayMetrics, PortId, SegmentConfig, SiteId, Switch, Vni,
};

const VNI: u32 = 5001;

fn mac(n: u8) -> MacAddr {
    MacAddr([2, 0, 0, 0, 0, n])
}

fn frame(dst: MacAddr, src: MacAddr, len: usize) -> Bytes {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    Bytes::from(f)
}

/// Site `name` with ports 1 and 2 on the segment, peer `peer` up with the
/// given datagram size; mac(l) on port 1, mac(l+1) on port 2, mac(r) at peer.
fn site(name: &str, peer: &str, mds: usize, l: u8, r: u8) -> Switch {
    let cfg = OverlayConfig {
        segments: vec![SegmentConfig::new("bench", VNI)],
        ..Default::default()
    };
    let mut sw = Switch::new(SiteId::new(name), &cfg, OverlayMetrics::unregistered()).unwrap();
    let vni = Vni::new(VNI).unwrap();
    sw.add_port(PortId(1), vni).unwrap();
    sw.add_port(PortId(2), vni).unwrap();
    let now = Instant::now();
    sw.on_peer_up(now, SiteId::new(peer), mds);
    sw.on_local_frame(now, PortId(1), frame(MacAddr::BROADCAST, mac(l), 60));
    sw.on_local_frame(now, PortId(2), frame(MacAddr::BROADCAST, mac(l + 1), 60));
    sw.on_control(
        now,
        &SiteId::new(peer),
        wanmig_overlay::ControlMsg::MacAdvert(wanmig_overlay::MacAdvert {
            vni,
            mac: mac(r),
            site: SiteId::new(peer),
            seq: 0,
            ip: None,
            sticky: false,
        }),
    );
    sw
}

fn datagrams(acts: Vec<Action>) -> Vec<Bytes> {
    acts.into_iter()
        .filter_map(|a| match a {
            Action::SendDatagram { datagram, .. } => Some(datagram),
            _ => None,
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("switch");
    g.throughput(Throughput::Elements(1));
    let now = Instant::now();

    let mut sw = site("a", "b", 1600, 1, 9);
    let f64b = frame(mac(2), mac(1), 64);
    g.bench_function("local_to_local_64B", |b| {
        b.iter(|| sw.on_local_frame(now, PortId(1), f64b.clone()))
    });

    // A 1600-byte datagram size (jumbo underlay) carries a full frame whole;
    // 1200 bytes (a typical QUIC path) needs two fragments.
    let f1514 = frame(mac(9), mac(1), 1514);
    g.bench_function("local_to_remote_1514B_encap", |b| {
        b.iter(|| sw.on_local_frame(now, PortId(1), f1514.clone()))
    });

    let mut small = site("a", "b", 1200, 1, 9);
    g.bench_function("local_to_remote_1514B_fragmented_x2", |b| {
        b.iter(|| small.on_local_frame(now, PortId(1), f1514.clone()))
    });

    // Receive side: plain datagrams.
    let mut sender = site("b", "a", 1600, 3, 1);
    let mut rx = site("a", "b", 1600, 1, 9);
    let from = SiteId::new("b");
    let plain = datagrams(sender.on_local_frame(now, PortId(1), frame(mac(1), mac(3), 1514)));
    assert_eq!(plain.len(), 1);
    g.bench_function("remote_to_local_1514B_decap", |b| {
        b.iter(|| rx.on_datagram(now, &from, plain[0].clone()))
    });

    // Receive side: fresh fragment pairs (fragment ids must differ).
    let mut frag_sender = site("b", "a", 1200, 3, 1);
    let mut frag_rx = site("a", "b", 1200, 1, 9);
    g.bench_function("remote_to_local_1514B_reassembled_x2", |b| {
        b.iter_batched(
            || datagrams(frag_sender.on_local_frame(now, PortId(1), frame(mac(1), mac(3), 1514))),
            |ds| {
                let mut out = Vec::new();
                for d in ds {
                    out.extend(frag_rx.on_datagram(now, &from, d));
                }
                assert_eq!(out.len(), 1);
                out
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
