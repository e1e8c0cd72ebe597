//! Target `overlay_datagram`: overlay datagrams from several peers, with a
//! clock the input advances, into the header decoder, the fragment
//! reassembler and a whole switch.
//!
//! Each datagram goes to [`Header::decode`] (a decoded header must encode
//! back to the bytes it came from), to a [`Reassembler`] of its own when it
//! is a fragment, and to a [`Switch`] with two segments, three local ports
//! and three peers. Operations also fragment frames with the real
//! fragmenter and deliver the pieces in an input-chosen order, advance the
//! clock, run the timers, take peers down and up with input-chosen datagram
//! sizes, and send frames from local ports (which the switch floods and
//! fragments towards the peers).
//!
//! Checked after every step:
//! - a reassembled frame is made of pieces pushed for its own (site, VNI,
//!   id), one per index in order, and is no larger than the frame limit;
//! - the reassembler holds no more bytes than its budget, and nothing at
//!   all once every partial frame has timed out;
//! - the switch sends datagrams only to connected peers, each within that
//!   peer's datagram size and with a header that decodes; it delivers
//!   only to attached ports and frames within the frame limit.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use wanmig_overlay::encap::{FragInfo, Header};
use wanmig_overlay::fragment::{fragment, Reassembler, ReassemblyLimits};
use wanmig_overlay::{Action, OverlayConfig, PortId, SegmentConfig, SiteId, Switch, Vni};

use crate::input::{Input, Script};

const LOCAL: &str = "a";
const PEERS: [&str; 3] = ["b", "c", "d"];
const VNIS: [u32; 2] = [100, 200];
/// Ports 1 and 2 on the first segment, 3 on the second.
const PORTS: [(u32, u32); 3] = [(1, 100), (2, 100), (3, 200)];

const OP_DATAGRAM: u8 = 0;
const OP_FRAGMENTED: u8 = 1;
const OP_ADVANCE: u8 = 2;
const OP_TIMERS: u8 = 3;
const OP_PEER_DOWN: u8 = 4;
const OP_PEER_UP: u8 = 5;
const OP_LOCAL_FRAME: u8 = 6;
const OP_LOCAL_DESCRIBED: u8 = 7;
const OPS: u8 = 8;

/// Reassembly budgets the first input byte picks from: small enough for
/// eviction to happen within one input (the config requires room for one
/// maximum-size frame), and the configured default.
const BUDGETS: [usize; 3] = [12 * 1024, 32 * 1024, 0];

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mut cfg = OverlayConfig::default();
    let budget = BUDGETS[usize::from(input.u8()) % BUDGETS.len()];
    if budget != 0 {
        cfg.reassembly_buffer = budget;
    }
    cfg.segments = VNIS
        .iter()
        .map(|&v| {
            let mut s = SegmentConfig::new(&format!("seg{v}"), v);
            s.unknown_unicast_flood = v == VNIS[0];
            s
        })
        .collect();
    let limits = ReassemblyLimits {
        timeout: cfg.reassembly_timeout,
        max_buffered: cfg.reassembly_buffer,
        max_buffered_per_peer: cfg.reassembly_buffer_per_peer(),
        max_frame: cfg.max_frame_size,
    };
    let mut world = World {
        switch: Switch::new(SiteId::new(LOCAL), &cfg, crate::overlay_metrics())
            .expect("the fuzz overlay config is valid"),
        reasm: Reassembler::new(limits),
        limits,
        pushed: HashMap::new(),
        peers: HashMap::new(),
        t0: Instant::now(),
        now: Duration::ZERO,
    };
    for (port, v) in PORTS {
        world
            .switch
            .add_port(PortId(port), vni(v))
            .expect("ports attach to configured segments");
    }
    let sizes = [1200usize, 600];
    for (peer, size) in PEERS.iter().zip(sizes) {
        let acts = world.switch.on_peer_up(world.t0, SiteId::new(peer), size);
        world.peers.insert(SiteId::new(peer), size);
        world.check(&acts);
    }

    while !input.is_empty() {
        match input.u8() % OPS {
            OP_DATAGRAM => {
                let from = peer(input.u8());
                let d = Bytes::copy_from_slice(input.blob());
                world.datagram(&from, d);
            }
            OP_FRAGMENTED => {
                let from = peer(input.u8());
                let v = vni(VNIS[usize::from(input.u8()) % VNIS.len()]);
                let size = usize::from(input.u16());
                let id = input.u32();
                let frame = described_frame(&mut input);
                let order = input.blob();
                // The real fragmenter: its datagrams must fit and decode.
                let Ok(pieces) = fragment(v, false, &frame, size, id) else {
                    continue;
                };
                for p in &pieces {
                    assert!(p.len() <= size, "fragment exceeds the datagram size");
                }
                // Deliver the pieces in the order the input names (indices
                // may repeat: duplicates; may be missing: loss).
                let picks: Vec<usize> = if order.is_empty() {
                    (0..pieces.len()).collect()
                } else {
                    order
                        .iter()
                        .map(|&b| usize::from(b) % pieces.len())
                        .collect()
                };
                for i in picks {
                    world.datagram(&from, pieces[i].clone());
                }
            }
            OP_ADVANCE => {
                world.now += Duration::from_millis(u64::from(input.u16()));
            }
            OP_TIMERS => {
                let now = world.instant();
                world.reasm.expire(now);
                world.check_budget();
                let acts = world.switch.poll_timers(now);
                world.check(&acts);
            }
            OP_PEER_DOWN => {
                let site = peer(input.u8());
                let now = world.instant();
                world.reasm.forget_site(&site);
                world.pushed.retain(|k, _| k.0 != site);
                world.peers.remove(&site);
                let acts = world.switch.on_peer_down(now, &site);
                world.check(&acts);
            }
            OP_PEER_UP => {
                let site = peer(input.u8());
                let size = usize::from(input.u16());
                let now = world.instant();
                world.peers.insert(site.clone(), size);
                let acts = world.switch.on_peer_up(now, site, size);
                world.check(&acts);
            }
            OP_LOCAL_FRAME => {
                let port = PortId(PORTS[usize::from(input.u8()) % PORTS.len()].0);
                let frame = Bytes::copy_from_slice(input.blob());
                let now = world.instant();
                let acts = world.switch.on_local_frame(now, port, frame);
                world.check(&acts);
            }
            OP_LOCAL_DESCRIBED => {
                let port = PortId(PORTS[usize::from(input.u8()) % PORTS.len()].0);
                let frame = Bytes::from(described_frame(&mut input));
                let now = world.instant();
                let acts = world.switch.on_local_frame(now, port, frame);
                world.check(&acts);
            }
            _ => unreachable!("op is taken modulo OPS"),
        }
    }

    // Every partial frame times out: nothing may stay buffered.
    let end = world.instant() + world.limits.timeout;
    world.reasm.expire(end);
    assert_eq!(
        world.reasm.pending_frames(),
        0,
        "partial frames outlived the timeout"
    );
    assert_eq!(world.reasm.buffered_bytes(), 0, "reassembly bytes leaked");
    let acts = world.switch.poll_timers(end);
    world.check(&acts);
}

type Key = (SiteId, Vni, u32);

struct World {
    switch: Switch,
    reasm: Reassembler,
    limits: ReassemblyLimits,
    /// Every payload pushed per (key, index): what a completed frame may
    /// be made of.
    pushed: HashMap<Key, Vec<Vec<Bytes>>>,
    /// Connected peers and their datagram sizes.
    peers: HashMap<SiteId, usize>,
    t0: Instant,
    now: Duration,
}

impl World {
    fn instant(&self) -> Instant {
        self.t0 + self.now
    }

    fn datagram(&mut self, from: &SiteId, d: Bytes) {
        let now = self.instant();
        if let Ok((hdr, off)) = Header::decode(&d) {
            assert!(off < d.len(), "a header without payload was accepted");
            let mut again = BytesMut::new();
            hdr.encode(&mut again);
            assert_eq!(
                &again[..],
                &d[..off],
                "header does not encode back to its bytes"
            );
            if let Some(fi) = hdr.fragment {
                self.fragment(now, from, hdr.vni, fi, d.slice(off..));
            }
        }
        let acts = self.switch.on_datagram(now, from, d);
        self.check(&acts);
    }

    fn fragment(&mut self, now: Instant, from: &SiteId, vni: Vni, fi: FragInfo, payload: Bytes) {
        let key = (from.clone(), vni, fi.id);
        let slots = self.pushed.entry(key.clone()).or_default();
        if slots.len() < usize::from(fi.count) {
            slots.resize(usize::from(fi.count), Vec::new());
        }
        slots[usize::from(fi.index)].push(payload.clone());
        if let Some(frame) = self.reasm.push(now, from, vni, fi, &payload) {
            assert!(
                frame.len() <= self.limits.max_frame,
                "reassembled frame over the limit"
            );
            assert!(
                made_of(&frame, &self.pushed[&key][..usize::from(fi.count)]),
                "reassembled frame is not made of its own fragments"
            );
        }
        self.check_budget();
    }

    fn check_budget(&self) {
        assert!(
            self.reasm.buffered_bytes() <= self.limits.max_buffered,
            "reassembly holds {} bytes, over its {}-byte budget",
            self.reasm.buffered_bytes(),
            self.limits.max_buffered
        );
        for p in PEERS {
            let site = SiteId::new(p);
            assert!(
                self.reasm.buffered_bytes_of(&site) <= self.limits.max_buffered_per_peer,
                "reassembly holds {} bytes of {site}, over its {}-byte per-peer budget",
                self.reasm.buffered_bytes_of(&site),
                self.limits.max_buffered_per_peer
            );
        }
        if self.reasm.pending_frames() == 0 {
            assert_eq!(
                self.reasm.buffered_bytes(),
                0,
                "bytes held without partial frames"
            );
        }
    }

    fn check(&self, acts: &[Action]) {
        for a in acts {
            match a {
                Action::SendDatagram { site, datagram } => {
                    let Some(&size) = self.peers.get(site) else {
                        panic!("datagram to {site}, which is not connected");
                    };
                    assert!(datagram.len() <= size, "datagram over the peer's size");
                    Header::decode(datagram).expect("the switch sends decodable datagrams");
                }
                Action::SendControl { site, .. } => {
                    assert!(
                        self.peers.contains_key(site),
                        "control to a peer that is down"
                    );
                }
                Action::Deliver { port, frame } => {
                    assert!(
                        PORTS.iter().any(|&(p, _)| p == port.0),
                        "delivery to {port}"
                    );
                    assert!(
                        frame.len() <= self.limits.max_frame,
                        "delivered frame over the limit"
                    );
                }
                Action::Event(_) => {}
            }
        }
    }
}

/// Whether `frame` is the concatenation of one candidate per index.
fn made_of(frame: &[u8], slots: &[Vec<Bytes>]) -> bool {
    // Ends reachable after each index; the sets stay tiny.
    let mut ends = vec![0usize];
    for cands in slots {
        let mut next = Vec::new();
        for &at in &ends {
            for c in cands {
                if frame.len() >= at + c.len() && frame[at..at + c.len()] == c[..] {
                    next.push(at + c.len());
                }
            }
        }
        next.sort_unstable();
        next.dedup();
        ends = next;
    }
    ends.contains(&frame.len())
}

fn peer(b: u8) -> SiteId {
    SiteId::new(PEERS[usize::from(b) % PEERS.len()])
}

fn vni(v: u32) -> Vni {
    Vni::new(v).expect("fuzz VNIs are 24-bit")
}

/// An Ethernet frame from `src` to `dst` with `len` bytes of payload.
pub(crate) fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// One of eight MACs (collisions are the point), broadcast for 0xff, the
/// zero MAC (invalid as a source) for 0xfe.
pub(crate) fn mac_of(b: u8) -> [u8; 6] {
    match b {
        0xff => [0xff; 6],
        0xfe => [0; 6],
        _ => [2, 0, 0, 0, 1, b % 8],
    }
}

/// A frame the input describes in five bytes instead of spelling it:
/// destination and source MAC ([`mac_of`]), a kind (IPv4, an ARP request
/// or reply with IPs in 198.18.0.0/24, a VLAN-tagged frame, or any
/// ethertype) and a length (up to a jumbo frame and a little over).
/// Spelt-out frames stay possible (raw frame operations); describing them
/// keeps inputs small, and small inputs run fast.
pub(crate) fn described_frame(input: &mut Input<'_>) -> Vec<u8> {
    let (d, s, kind) = (input.u8(), input.u8(), input.u8());
    let len = usize::from(input.u16()) % 9300;
    let (dst, src) = (mac_of(d), mac_of(s));
    let mut payload: Vec<u8> = match kind % 4 {
        1 => {
            // ARP: request (op 1) or reply (op 2), sender = the source MAC.
            let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1 + (kind >> 7)];
            a.extend_from_slice(&src);
            a.extend_from_slice(&[198, 18, 0, s]);
            a.extend_from_slice(&if kind >> 7 == 1 { dst } else { [0; 6] });
            a.extend_from_slice(&[198, 18, 0, d]);
            a
        }
        2 => vec![0x00, kind, 0x08, 0x00],
        _ => Vec::new(),
    };
    payload.extend((payload.len()..len).map(|i| (i as u8).wrapping_mul(31) ^ kind));
    let ethertype = match kind % 4 {
        0 => 0x0800,
        1 => 0x0806,
        2 => 0x8100,
        _ => u16::from(kind) << 8 | 0x35,
    };
    eth(dst, src, ethertype, &payload)
}

/// Seeds: plain and fragmented datagrams as the switch itself sends them,
/// lost, duplicated and reordered fragments, timeouts, peer churn, local
/// ARP and floods that fragment towards small-datagram peers.
pub fn seeds() -> Vec<Vec<u8>> {
    let small = eth([0xff; 6], mac_of(1), 0x0800, &[0x45; 100]);
    let plain = wanmig_overlay::encap::encapsulate(vni(100), true, &small);
    // A described frame: destination, source, kind, length.
    let frame = |s: &mut Script, d: u8, src: u8, kind: u8, len: u16| {
        s.u8(d).u8(src).u8(kind).u16(len);
    };
    let mut out = Vec::new();
    for budget in 0..3u8 {
        // One plain datagram, then a fragmented frame in order.
        let mut s = Script::new();
        s.u8(budget).u8(OP_DATAGRAM).u8(0).blob(&plain);
        s.u8(OP_FRAGMENTED).u8(1).u8(0).u16(1200).u32(7);
        frame(&mut s, 2, 1, 0, 3000);
        s.blob(&[]);
        out.push(s.finish());
        // Reordered with duplicates, the same id from two peers, a lost
        // piece that times out, a jumbo frame in reverse.
        let mut s = Script::new();
        s.u8(budget).u8(OP_FRAGMENTED).u8(0).u8(0).u16(600).u32(1);
        frame(&mut s, 2, 1, 0, 3000);
        s.blob(&[4, 0, 2, 2, 1, 3]);
        s.u8(OP_FRAGMENTED).u8(1).u8(0).u16(600).u32(1);
        frame(&mut s, 3, 4, 0, 3000);
        s.blob(&[0, 1]);
        s.u8(OP_ADVANCE).u16(1500).u8(OP_TIMERS);
        s.u8(OP_FRAGMENTED).u8(2).u8(1).u16(1000).u32(9);
        frame(&mut s, 0xff, 2, 0, 9000);
        s.blob(&[8, 7, 6, 5, 4, 3, 2, 1, 0]);
        out.push(s.finish());
    }
    // Local ARP and floods towards a peer whose datagrams are small, a
    // raw local frame, peer churn, timers.
    let mut s = Script::new();
    s.u8(1).u8(OP_PEER_UP).u8(2).u16(300);
    s.u8(OP_LOCAL_DESCRIBED).u8(0);
    frame(&mut s, 0xff, 5, 1, 60);
    s.u8(OP_LOCAL_DESCRIBED).u8(1);
    frame(&mut s, 0xff, 6, 0, 9000);
    s.u8(OP_LOCAL_FRAME)
        .u8(1)
        .blob(&eth(mac_of(1), mac_of(2), 0x0800, &[1; 60]));
    s.u8(OP_PEER_DOWN).u8(0).u8(OP_DATAGRAM).u8(0).blob(&plain);
    s.u8(OP_ADVANCE).u16(60_000).u8(OP_TIMERS);
    out.push(s.finish());
    // Many single first fragments: the budget evicts.
    let mut s = Script::new();
    s.u8(0);
    for id in 0..40u32 {
        s.u8(OP_FRAGMENTED).u8(id as u8).u8(0).u16(1000).u32(id);
        frame(&mut s, 2, 1, 0, 3000);
        s.blob(&[0]);
    }
    out.push(s.finish());
    out
}
