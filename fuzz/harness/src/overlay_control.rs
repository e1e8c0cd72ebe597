//! Target `overlay_control`: the overlay's control streams from several
//! peers, cut into input-chosen pieces, through [`ControlDecoder`] and
//! into a [`Switch`], between local frames, clock steps and peer churn.
//!
//! Each peer has its own stream decoder, as each has its own QUIC stream.
//! Input bytes go to a decoder as they are (hostile JSON and lengths), or
//! as a message the input describes field by field and [`control::encode`]
//! frames (advertisements, withdrawals and full syncs, honest or speaking
//! for another site), so the switch's mobility logic is reached without
//! the fuzzer having to spell JSON. A decoding error closes the stream:
//! the peer goes down and comes back with a fresh decoder.
//!
//! Checked:
//! - every decoded message encodes and decodes back to itself;
//! - a message from peer P changes only what P may change: no MAC appears
//!   at, moves to, or disappears from any site but P (a local MAC may move
//!   away to P);
//! - no MAC stays at a peer that is down, unless it is frozen (a freeze
//!   holds whatever happens to the site);
//! - the switch speaks only for itself and only to connected peers, and
//!   delivers only to attached ports.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use wanmig_overlay::control::{self, ControlDecoder};
use wanmig_overlay::mactable::Location;
use wanmig_overlay::{
    Action, ControlMsg, MacAddr, MacAdvert, OverlayConfig, PortId, SegmentConfig, SiteId, Switch,
    Vni,
};

use crate::input::{Input, Script};
use crate::overlay_datagram::{described_frame, eth};

const LOCAL: &str = "a";
const PEERS: [&str; 3] = ["b", "c", "d"];
const VNIS: [u32; 2] = [100, 200];
const PORTS: [(u32, u32); 3] = [(1, 100), (2, 100), (3, 200)];
/// A static MAC configured at this site on port 1.
const STATIC_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x5a];

const OP_STREAM_BYTES: u8 = 0;
const OP_MESSAGE: u8 = 1;
const OP_LOCAL_FRAME: u8 = 2;
const OP_ADVANCE: u8 = 3;
const OP_TIMERS: u8 = 4;
const OP_PEER_DOWN: u8 = 5;
const OP_PEER_UP: u8 = 6;
const OP_LOCAL_DESCRIBED: u8 = 7;
const OPS: u8 = 8;

const MSG_ADVERT: u8 = 0;
const MSG_WITHDRAW: u8 = 1;
const MSG_FULL_SYNC: u8 = 2;

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    // Short holds so flapping MACs freeze and thaw within one input.
    let cfg = OverlayConfig {
        flap_moves: 1 + u32::from(input.u8() % 4),
        freeze_hold: Some(Duration::from_secs(5)),
        segments: VNIS
            .iter()
            .map(|&v| SegmentConfig::new(&format!("seg{v}"), v))
            .collect(),
        ..OverlayConfig::default()
    };
    let t0 = Instant::now();
    let mut w = World {
        switch: Switch::new(SiteId::new(LOCAL), &cfg, crate::overlay_metrics())
            .expect("the fuzz overlay config is valid"),
        decoders: HashMap::new(),
        t0,
        now: Duration::ZERO,
    };
    for (port, v) in PORTS {
        w.switch
            .add_port(PortId(port), vni(v))
            .expect("ports attach to configured segments");
    }
    let acts = w
        .switch
        .add_static_mac(t0, vni(VNIS[0]), MacAddr(STATIC_MAC), PortId(1))
        .expect("the segment exists");
    w.check(&acts);
    for p in PEERS {
        w.peer_up(&SiteId::new(p));
    }

    while !input.is_empty() {
        match input.u8() % OPS {
            OP_STREAM_BYTES => {
                let from = peer(input.u8());
                let bytes = input.blob();
                w.stream(&from, bytes);
            }
            OP_MESSAGE => {
                let from = peer(input.u8());
                let msg = message(&mut input, &from);
                w.stream(&from, &control::encode(&msg));
            }
            OP_LOCAL_FRAME => {
                let port = PortId(PORTS[usize::from(input.u8()) % PORTS.len()].0);
                let frame = Bytes::copy_from_slice(input.blob());
                let acts = w.switch.on_local_frame(w.instant(), port, frame);
                w.check(&acts);
            }
            OP_LOCAL_DESCRIBED => {
                let port = PortId(PORTS[usize::from(input.u8()) % PORTS.len()].0);
                let frame = Bytes::from(described_frame(&mut input));
                let acts = w.switch.on_local_frame(w.instant(), port, frame);
                w.check(&acts);
            }
            OP_ADVANCE => w.now += Duration::from_millis(u64::from(input.u16()) * 16),
            OP_TIMERS => {
                let acts = w.switch.poll_timers(w.instant());
                w.check(&acts);
            }
            OP_PEER_DOWN => {
                let p = peer(input.u8());
                w.peer_down(&p);
            }
            OP_PEER_UP => {
                let p = peer(input.u8());
                if !w.decoders.contains_key(&p) {
                    w.peer_up(&p);
                }
            }
            _ => unreachable!("op is taken modulo OPS"),
        }
    }
}

/// A message described by the input: the peer's own or another site's.
fn message(input: &mut Input<'_>, from: &SiteId) -> ControlMsg {
    let kind = input.u8() % 3;
    let site = |input: &mut Input<'_>| {
        let b = input.u8();
        if b < 0xc0 {
            from.clone()
        } else {
            // Forged: a peer speaking for another site, or for us.
            SiteId::new(["a", "b", "c", "d"][usize::from(b) % 4])
        }
    };
    let advert = |input: &mut Input<'_>| MacAdvert {
        vni: any_vni(input.u8()),
        mac: mac(input.u8()),
        site: site(input),
        seq: u32::from(input.u8()),
        ip: input.bool().then(|| Ipv4Addr::new(198, 18, 0, input.u8())),
        sticky: input.bool(),
    };
    match kind {
        MSG_ADVERT => ControlMsg::MacAdvert(advert(input)),
        MSG_WITHDRAW => ControlMsg::MacWithdraw {
            vni: any_vni(input.u8()),
            mac: mac(input.u8()),
            site: site(input),
            seq: u32::from(input.u8()),
        },
        _ => {
            let site = site(input);
            let n = input.u8() % 8;
            ControlMsg::FullSync {
                site,
                entries: (0..n).map(|_| advert(input)).collect(),
            }
        }
    }
}

struct World {
    switch: Switch,
    /// Connected peers' control stream decoders.
    decoders: HashMap<SiteId, ControlDecoder>,
    t0: Instant,
    now: Duration,
}

type Table = BTreeMap<(u32, MacAddr), Location>;

impl World {
    fn instant(&self) -> Instant {
        self.t0 + self.now
    }

    fn peer_up(&mut self, p: &SiteId) {
        self.decoders.insert(p.clone(), ControlDecoder::new());
        let acts = self.switch.on_peer_up(self.instant(), p.clone(), 1200);
        self.check(&acts);
    }

    fn peer_down(&mut self, p: &SiteId) {
        self.decoders.remove(p);
        let acts = self.switch.on_peer_down(self.instant(), p);
        self.check(&acts);
    }

    /// Bytes on `from`'s control stream (ignored while it is down).
    fn stream(&mut self, from: &SiteId, bytes: &[u8]) {
        let Some(dec) = self.decoders.get_mut(from) else {
            return;
        };
        dec.push(bytes);
        let mut msgs = Vec::new();
        let failed = loop {
            match dec.next_msg() {
                Ok(Some(m)) => msgs.push(m),
                Ok(None) => break false,
                Err(_) => break true,
            }
        };
        for m in msgs {
            let wire = control::encode(&m);
            let back = control::decode_body(&wire[4..]).expect("an encoded message decodes");
            assert_eq!(back, m, "control message does not survive encode/decode");
            let before = self.table();
            let acts = self.switch.on_control(self.instant(), from, m);
            self.check(&acts);
            check_changes_by(&before, &self.table(), from);
        }
        if failed {
            // The gateway closes a stream that went out of sync; the peer
            // reconnects.
            self.peer_down(from);
            self.peer_up(from);
        }
    }

    fn table(&self) -> Table {
        let mut t = Table::new();
        for v in VNIS {
            for e in self.switch.mac_table(vni(v)) {
                t.insert((v, e.mac), e.location);
            }
        }
        t
    }

    fn check(&self, acts: &[Action]) {
        for a in acts {
            match a {
                Action::SendControl { site, msg } => {
                    assert!(
                        self.decoders.contains_key(site),
                        "control to {site}, which is down"
                    );
                    assert_eq!(
                        msg.site().as_str(),
                        LOCAL,
                        "the switch speaks for another site"
                    );
                }
                Action::SendDatagram { site, .. } => {
                    assert!(
                        self.decoders.contains_key(site),
                        "datagram to {site}, which is down"
                    );
                }
                Action::Deliver { port, .. } => {
                    assert!(
                        PORTS.iter().any(|&(p, _)| p == port.0),
                        "delivery to {port}"
                    );
                }
                Action::Event(_) => {}
            }
        }
        // A frozen MAC keeps its place while its freeze holds, even at a
        // peer that went down; every other MAC leaves with its peer.
        for v in VNIS {
            for e in self.switch.mac_table(vni(v)) {
                if let (Location::Remote(s), false) = (&e.location, e.frozen) {
                    assert!(
                        self.decoders.contains_key(s),
                        "MAC {} of {v} is still at {s}, which is down",
                        e.mac
                    );
                }
            }
        }
    }
}

/// A message from `from` may add, move or drop MACs at `from` only (and
/// move a local MAC away to `from`).
fn check_changes_by(before: &Table, after: &Table, from: &SiteId) {
    let at_from = |l: &Location| matches!(l, Location::Remote(s) if s == from);
    for (key, loc) in after {
        match before.get(key) {
            Some(old) if old == loc => {}
            _ => assert!(
                at_from(loc),
                "a message from {from} put MAC {key:?} at {loc:?} (was {:?})",
                before.get(key)
            ),
        }
    }
    for (key, old) in before {
        if !after.contains_key(key) {
            assert!(
                at_from(old),
                "a message from {from} removed {key:?} at {old:?}"
            );
        }
    }
}

fn peer(b: u8) -> SiteId {
    SiteId::new(PEERS[usize::from(b) % PEERS.len()])
}

fn vni(v: u32) -> Vni {
    Vni::new(v).expect("fuzz VNIs are 24-bit")
}

/// A configured VNI, or (rarely) one that is not.
fn any_vni(b: u8) -> Vni {
    if b < 0xf0 {
        vni(VNIS[usize::from(b) % VNIS.len()])
    } else {
        vni(u32::from(b))
    }
}

/// One of a handful of MACs (collisions are the point), or the static one.
fn mac(b: u8) -> MacAddr {
    if b == 0xff {
        MacAddr(STATIC_MAC)
    } else {
        MacAddr([2, 0, 0, 0, 1, b % 8])
    }
}

/// Seeds: the control traffic of real sessions (full syncs on connect,
/// adverts and withdrawals, a MAC moving between sites and flapping, a
/// forged advert), as encoded JSON on the streams and as described
/// messages, in whole and in pieces.
pub fn seeds() -> Vec<Vec<u8>> {
    let advert = |site: &str, m: u8, seq: u32, ip: Option<u8>| MacAdvert {
        vni: vni(100),
        mac: mac(m),
        site: SiteId::new(site),
        seq,
        ip: ip.map(|i| Ipv4Addr::new(198, 18, 0, i)),
        sticky: false,
    };
    let msgs_b = [
        ControlMsg::FullSync {
            site: SiteId::new("b"),
            entries: vec![advert("b", 1, 1, Some(1)), advert("b", 2, 1, None)],
        },
        ControlMsg::MacAdvert(advert("b", 3, 1, Some(3))),
        ControlMsg::MacWithdraw {
            vni: vni(100),
            mac: mac(2),
            site: SiteId::new("b"),
            seq: 1,
        },
    ];
    let stream: Vec<u8> = msgs_b.iter().flat_map(control::encode).collect();
    let mut out = Vec::new();
    // Whole stream at once, and in small pieces.
    out.push(
        Script::new()
            .u8(0)
            .u8(OP_STREAM_BYTES)
            .u8(0)
            .blob(&stream)
            .finish(),
    );
    let mut s = Script::new();
    s.u8(1);
    for piece in stream.chunks(13) {
        s.u8(OP_STREAM_BYTES).u8(0).blob(piece);
    }
    out.push(s.finish());
    // A MAC learnt locally, then advertised by b and c in turn (moves,
    // then a freeze), time passes, the hold expires.
    let local = eth([0xff; 6], [2, 0, 0, 0, 1, 4], 0x0800, &[0; 46]);
    let mut s = Script::new();
    s.u8(0).u8(OP_LOCAL_FRAME).u8(0).blob(&local);
    for (i, p) in [0u8, 1, 0, 1].iter().enumerate() {
        s.u8(OP_MESSAGE)
            .u8(*p)
            .u8(MSG_ADVERT)
            .u8(0)
            .u8(4)
            .u8(0)
            .u8(i as u8 + 2)
            .bool(true)
            .u8(4)
            .bool(false);
    }
    s.u8(OP_ADVANCE).u16(400).u8(OP_TIMERS);
    out.push(s.finish());
    // A forged advert and a forged full sync; a sync that drops entries;
    // a peer going down and up; a static conflict.
    out.push(
        Script::new()
            .u8(2)
            .u8(OP_MESSAGE)
            .u8(0)
            .u8(MSG_ADVERT)
            .u8(0)
            .u8(1)
            .u8(0xc2)
            .u8(5)
            .bool(false)
            .bool(false)
            .u8(OP_MESSAGE)
            .u8(1)
            .u8(MSG_FULL_SYNC)
            .u8(0xc3)
            .u8(1)
            .u8(0)
            .u8(1)
            .u8(0)
            .u8(1)
            .bool(false)
            .bool(false)
            .u8(OP_STREAM_BYTES)
            .u8(2)
            .blob(&control::encode(&ControlMsg::FullSync {
                site: SiteId::new("d"),
                entries: vec![advert("d", 1, 9, None), advert("b", 6, 9, None)],
            }))
            .u8(OP_PEER_DOWN)
            .u8(2)
            .u8(OP_PEER_UP)
            .u8(2)
            .u8(OP_MESSAGE)
            .u8(1)
            .u8(MSG_ADVERT)
            .u8(0)
            .u8(0xff)
            .u8(0)
            .u8(1)
            .bool(false)
            .bool(true)
            .finish(),
    );
    // Hostile bytes: a length over the limit, broken JSON, a VNI over 24 bits.
    let bad =
        br#"{"type":"mac_withdraw","vni":16777216,"mac":"02:00:00:00:00:01","site":"b","seq":1}"#;
    let mut framed = (bad.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(bad);
    out.push(
        Script::new()
            .u8(0)
            .u8(OP_STREAM_BYTES)
            .u8(0)
            .blob(&framed)
            .u8(OP_STREAM_BYTES)
            .u8(1)
            .blob(&[0, 0, 0, 3, b'{', b'x', b'}'])
            .u8(OP_STREAM_BYTES)
            .u8(2)
            .blob(&[0xff, 0xff, 0xff, 0xff])
            .finish(),
    );
    out
}
