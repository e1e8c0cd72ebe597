//! The switch under hostile load stays bounded and keeps serving everyone
//! else: fragment floods from one peer, fragments no frame needs, and a
//! guest inventing source MACs.

mod common;

use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use rand::{Rng, SeedableRng};
use wanmig_overlay::encap::{FragInfo, Header};
use wanmig_overlay::fragment;
use wanmig_overlay::mactable::Location;
use wanmig_overlay::{MacAddr, OverlayConfig, PortId, SegmentConfig, SiteId, Switch};

fn fragment_datagram(id: u32, index: u8, count: u8, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::new();
    Header {
        vni: vni(),
        flooded: false,
        fragment: Some(FragInfo { id, index, count }),
    }
    .encode(&mut buf);
    buf.put_slice(payload);
    buf.freeze()
}

fn failures(sw: &Switch, reason: &str) -> u64 {
    sw.metrics()
        .reassembly_failures
        .with_label_values(&[reason])
        .get()
}

/// Site "a" with mac(1) learned on port 1 and the given peers up.
fn receiver(cfg: &OverlayConfig, peers: &[&str]) -> Switch {
    let mut sw = switch("a", cfg);
    let now = Instant::now();
    sw.add_port(PortId(1), vni()).unwrap();
    for p in peers {
        sw.on_peer_up(now, site(p), 1400);
    }
    sw.on_local_frame(now, PortId(1), eth(MacAddr::BROADCAST, mac(1), 60));
    sw
}

#[test]
fn one_peers_fragment_flood_does_not_evict_another_peers_frame() {
    let cfg = OverlayConfig {
        segments: vec![SegmentConfig::new("prod", VNI)],
        reassembly_buffer: 64 * 1024,
        ..Default::default()
    };
    let flooders = ["c", "d", "e", "f", "g", "h"];
    let mut peers = vec!["b"];
    peers.extend(flooders);
    let mut sw = receiver(&cfg, &peers);
    let now = Instant::now();
    let b = site("b");
    let f = eth(mac(1), mac(2), 3000);
    let ds = fragment::fragment(vni(), false, &f, 1200, 7).unwrap();
    assert_eq!(ds.len(), 3);
    for d in &ds[..2] {
        assert!(deliveries(&sw.on_datagram(now, &b, d.clone())).is_empty());
    }

    // One peer floods first fragments that never complete: only its own
    // partial frames make room for its new ones.
    let junk = vec![0u8; 1000];
    for id in 0..1000 {
        sw.on_datagram(now, &site("c"), fragment_datagram(id, 0, 2, &junk));
    }
    let peer_evictions = failures(&sw, "peer_budget");
    let global_evictions = failures(&sw, "global_budget");

    // Several peers flood at once, together over the switch-wide budget:
    // room is made at the peers that hold the most, not at "b".
    for id in 0..1000 {
        for p in &flooders {
            sw.on_datagram(now, &site(p), fragment_datagram(id, 0, 2, &junk));
        }
    }

    // b's frame, begun before both floods, still completes.
    let got = deliveries(&sw.on_datagram(now, &b, ds[2].clone()));
    assert!(
        got == vec![(PortId(1), f)],
        "b's frame was not delivered whole ({} deliveries)",
        got.len()
    );
    assert_eq!(sw.metrics().reassembled.get(), 1);
    // Each eviction was counted under its reason.
    assert!(peer_evictions > 900, "{peer_evictions}");
    assert_eq!(global_evictions, 0);
    assert!(failures(&sw, "global_budget") > 0);
}

#[test]
fn fragments_no_frame_of_max_frame_size_needs_are_refused() {
    let cfg = config();
    let mut sw = receiver(&cfg, &["b"]);
    let now = Instant::now();
    // A 9216-byte frame needs at most 38 fragments at the smallest datagram
    // size the overlay fragments into (256 bytes): 255 is refused outright.
    sw.on_datagram(now, &site("b"), fragment_datagram(1, 0, 255, &[1; 100]));
    assert_eq!(failures(&sw, "too_many_fragments"), 1);
    // 38 is what the largest frame may need, and is reassembled.
    let f = eth(mac(1), mac(2), 9216);
    let ds = fragment::fragment(vni(), false, &f, 256, 2).unwrap();
    assert_eq!(ds.len(), 38);
    let mut got = Vec::new();
    for d in ds.into_iter().rev() {
        got.extend(deliveries(&sw.on_datagram(now, &site("b"), d)));
    }
    assert!(
        got == vec![(PortId(1), f)],
        "the 38-fragment frame was not delivered whole ({} deliveries)",
        got.len()
    );
}

fn random_mac(rng: &mut impl Rng) -> MacAddr {
    let mut m: [u8; 6] = rng.random();
    m[0] = (m[0] & 0xfc) | 0x02; // unicast, locally administered
    MacAddr(m)
}

fn macs_at(sw: &Switch, at: &Location) -> usize {
    sw.mac_table(vni())
        .iter()
        .filter(|e| &e.location == at)
        .count()
}

#[test]
fn a_guest_inventing_source_macs_fills_no_table_with_default_limits() {
    let mut m = Mesh::new(&["a", "b"], &config(), 1400);
    m.sites
        .get_mut("a")
        .unwrap()
        .add_port(PortId(2), vni())
        .unwrap();
    // The host at b that a's guest talks to.
    m.send("b", eth(MacAddr::BROADCAST, mac(2), 60));
    // The guest on a's port 1 sends from 20 000 made-up MACs to it.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(14);
    for _ in 0..20_000 {
        let src = random_mac(&mut rng);
        m.send("a", eth(mac(2), src, 60));
    }
    let (a, b) = (&m.sites["a"], &m.sites["b"]);
    let port1 = macs_at(a, &Location::Local(PortId(1)));
    let from_a = macs_at(b, &Location::Remote(SiteId::new("a")));
    // Defaults: at most 1024 MACs per port, 2048 per peer, 4096 per segment.
    assert!(port1 <= 1024, "a learned {port1} MACs on the guest's port");
    assert!(from_a <= 2048, "b learned {from_a} MACs from a");
    assert!(a.mac_table(vni()).len() <= 4096);
    assert!(b.mac_table(vni()).len() <= 4096);
    // The guest's frames were still carried.
    assert!(m.delivered["b"].len() >= 20_000);

    // Another host on a's port 2 is learned, advertised and reachable.
    m.clear();
    m.send_on("a", PortId(2), eth(mac(2), mac(3), 60));
    assert_eq!(
        m.sites["a"].lookup(vni(), mac(3)),
        Some(Location::Local(PortId(2)))
    );
    assert_eq!(
        m.sites["b"].lookup(vni(), mac(3)),
        Some(Location::Remote(SiteId::new("a")))
    );
    m.send("b", eth(mac(3), mac(2), 60));
    assert_eq!(m.delivered["a"], vec![(PortId(2), eth(mac(3), mac(2), 60))]);
}
