//! The switch under hostile load stays bounded and keeps serving everyone
//! else: fragment floods from one peer, fragments no frame needs, and a
//! guest inventing source MACs.

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

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

/// Log output of this test binary (warnings and above), with thread names:
/// one global subscriber, as scoped ones miss events when other tests hit
/// the same call sites on their threads.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// Counts log lines containing a text, from the calling test's thread,
/// since it was created.
struct LogCounter {
    logs: &'static Captured,
    thread: String,
    since: usize,
}

impl LogCounter {
    fn new() -> LogCounter {
        static LOGS: OnceLock<Captured> = OnceLock::new();
        let logs = LOGS.get_or_init(|| {
            let logs = Captured::default();
            let sub = tracing_subscriber::fmt()
                .with_writer(logs.clone())
                .with_max_level(tracing::Level::WARN)
                .with_ansi(false)
                .with_thread_names(true)
                .finish();
            tracing::subscriber::set_global_default(sub).unwrap();
            logs
        });
        let thread = std::thread::current()
            .name()
            .unwrap_or_default()
            .to_string();
        let since = logs.0.lock().unwrap().len();
        LogCounter {
            logs,
            thread,
            since,
        }
    }

    fn lines_with(&self, needle: &str) -> usize {
        let text = String::from_utf8_lossy(&self.logs.0.lock().unwrap()[self.since..]).into_owned();
        text.lines()
            .filter(|l| l.contains(needle) && l.contains(&self.thread))
            .count()
    }
}

fn refused(sw: &Switch, limit: &str) -> u64 {
    sw.metrics()
        .mac_learning_refused
        .with_label_values(&["5001", limit])
        .get()
}

const LIMIT_LOG: &str = "MAC table limits kept new source MACs out";

#[test]
fn a_guest_inventing_source_macs_fills_no_table_with_default_limits() {
    let logs = LogCounter::new();
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

    // Every MAC kept out was counted; b made room for a's advertisement of
    // mac(3) by displacing one of the MACs it had learned from a's traffic.
    let (a, b) = (&m.sites["a"], &m.sites["b"]);
    assert_eq!(refused(a, "port"), 20_000 - 1024);
    assert_eq!(refused(b, "peer"), 20_000 - 2048);
    assert_eq!(refused(a, "segment") + refused(b, "segment"), 0);
    assert_eq!(
        b.metrics().mac_displaced.with_label_values(&["5001"]).get(),
        1
    );
    // Logged once per site, not once per frame...
    assert_eq!(logs.lines_with(LIMIT_LOG), 2);
    // ...and again once the interval has passed and more were kept out.
    m.advance(Duration::from_secs(30));
    m.send("a", eth(mac(2), random_mac(&mut rng), 60));
    m.poll();
    assert_eq!(logs.lines_with(LIMIT_LOG), 2);
    m.advance(Duration::from_secs(31));
    m.poll();
    assert_eq!(logs.lines_with(LIMIT_LOG), 4);
    m.advance(Duration::from_secs(61));
    m.poll();
    assert_eq!(logs.lines_with(LIMIT_LOG), 4, "nothing new to report");
}

#[test]
fn at_its_limits_a_table_keeps_statics_and_lets_a_migrated_vm_move_in() {
    let cfg: OverlayConfig = toml::from_str(
        r#"
        max_macs_per_segment = 8
        max_macs_per_port = 2
        max_macs_per_peer = 4
        [[segment]]
        name = "prod"
        vni = 5001
        "#,
    )
    .unwrap();
    let mut m = Mesh::new(&["a", "b"], &cfg, 1400);
    let now = m.now;
    let static_mac = mac(50);
    let acts = m
        .sites
        .get_mut("a")
        .unwrap()
        .add_static_mac(now, vni(), static_mac, PortId(1))
        .unwrap();
    m.run("a", acts);
    // A VM runs at b.
    let vm = mac(9);
    m.send("b", garp(vm, ip(9)));
    assert_eq!(m.location("a", vm), Some(Location::Remote(site("b"))));
    // The guest on a's port 1 fills that port's share and more.
    for n in 20..30 {
        m.send("a", eth(MacAddr::BROADCAST, mac(n), 60));
    }
    let a = &m.sites["a"];
    assert_eq!(
        macs_at(a, &Location::Local(PortId(1))),
        3,
        "2 learned + static"
    );
    assert_eq!(refused(a, "port"), 8);
    assert_eq!(
        a.lookup(vni(), static_mac),
        Some(Location::Local(PortId(1)))
    );
    // The VM migrates onto the full port and announces itself: it moves.
    m.clear();
    m.send("a", rarp(vm));
    assert_eq!(m.location("a", vm), Some(Location::Local(PortId(1))));
    assert_eq!(m.location("b", vm), Some(Location::Remote(site("a"))));
    assert_eq!(m.seq("b", vm), Some(1));
    assert_eq!(refused(&m.sites["a"], "port"), 8);
    // The static MAC is still asserted against peers.
    assert_eq!(
        m.location("b", static_mac),
        Some(Location::Remote(site("a")))
    );
}
