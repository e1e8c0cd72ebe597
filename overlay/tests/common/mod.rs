//! Test helpers: frame builders and a lossless in-memory "WAN" that carries
//! the actions of several switches to each other (datagrams and control
//! messages), so the switching core can be driven across sites without I/O.

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use wanmig_overlay::frame::{ArpInfo, ArpOp};
use wanmig_overlay::{
    Action, ControlMsg, MacAddr, OverlayConfig, OverlayMetrics, PortId, SegmentConfig, SiteId,
    Switch, SwitchEvent, Vni,
};

pub const VNI: u32 = 5001;

pub fn vni() -> Vni {
    Vni::new(VNI).unwrap()
}

pub fn mac(n: u8) -> MacAddr {
    MacAddr([2, 0, 0, 0, 0, n])
}

pub fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, n)
}

pub fn site(s: &str) -> SiteId {
    SiteId::new(s)
}

pub fn config() -> OverlayConfig {
    OverlayConfig {
        segments: vec![SegmentConfig::new("prod", VNI)],
        ..Default::default()
    }
}

pub fn switch(name: &str, cfg: &OverlayConfig) -> Switch {
    Switch::new(site(name), cfg, OverlayMetrics::unregistered()).unwrap()
}

/// An Ethernet frame with an arbitrary payload of `len` total bytes.
pub fn eth(dst: MacAddr, src: MacAddr, len: usize) -> Bytes {
    let mut f = vec![0u8; len.max(14)];
    f[0..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes()); // local experimental
    for (i, b) in f[14..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7);
    }
    Bytes::from(f)
}

pub fn arp_request(src: MacAddr, src_ip: Ipv4Addr, target: Ipv4Addr) -> Bytes {
    let a = ArpInfo {
        op: ArpOp::Request,
        sender_mac: src,
        sender_ip: src_ip,
        target_mac: MacAddr::ZERO,
        target_ip: target,
    };
    Bytes::from(a.to_frame(MacAddr::BROADCAST, src, None))
}

pub fn garp(src: MacAddr, src_ip: Ipv4Addr) -> Bytes {
    arp_request(src, src_ip, src_ip)
}

pub fn rarp(src: MacAddr) -> Bytes {
    let a = ArpInfo {
        op: ArpOp::RarpRequest,
        sender_mac: src,
        sender_ip: Ipv4Addr::UNSPECIFIED,
        target_mac: src,
        target_ip: Ipv4Addr::UNSPECIFIED,
    };
    Bytes::from(a.to_frame(MacAddr::BROADCAST, src, None))
}

pub fn deliveries(actions: &[Action]) -> Vec<(PortId, Bytes)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Deliver { port, frame } => Some((*port, frame.clone())),
            _ => None,
        })
        .collect()
}

pub fn datagrams(actions: &[Action]) -> Vec<(SiteId, Bytes)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SendDatagram { site, datagram } => Some((site.clone(), datagram.clone())),
            _ => None,
        })
        .collect()
}

pub fn controls(actions: &[Action]) -> Vec<(SiteId, ControlMsg)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SendControl { site, msg } => Some((site.clone(), msg.clone())),
            _ => None,
        })
        .collect()
}

pub fn events(actions: &[Action]) -> Vec<SwitchEvent> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// Several sites in a full mesh with a perfect network between them.
pub struct Mesh {
    pub sites: BTreeMap<String, Switch>,
    /// Frames delivered to local ports, per site.
    pub delivered: BTreeMap<String, Vec<(PortId, Bytes)>>,
    pub events: BTreeMap<String, Vec<SwitchEvent>>,
    pub t0: Instant,
    pub now: Instant,
}

impl Mesh {
    /// Sites with one port each (PortId 1) on the test segment, all
    /// connected with datagram size `mds`.
    pub fn new(names: &[&str], cfg: &OverlayConfig, mds: usize) -> Mesh {
        let t0 = Instant::now();
        let mut m = Mesh {
            sites: BTreeMap::new(),
            delivered: BTreeMap::new(),
            events: BTreeMap::new(),
            t0,
            now: t0,
        };
        for n in names {
            let mut s = switch(n, cfg);
            s.add_port(PortId(1), vni()).unwrap();
            m.sites.insert(n.to_string(), s);
        }
        for a in names {
            for b in names {
                if a != b {
                    m.peer_up(a, b, mds);
                }
            }
        }
        m.clear();
        m
    }

    pub fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    pub fn at(&mut self, secs: u64) {
        self.now = self.t0 + Duration::from_secs(secs);
    }

    pub fn peer_up(&mut self, at: &str, peer: &str, mds: usize) {
        let now = self.now;
        let acts = self
            .sites
            .get_mut(at)
            .unwrap()
            .on_peer_up(now, site(peer), mds);
        self.run(at, acts);
    }

    pub fn peer_down(&mut self, at: &str, peer: &str) {
        let now = self.now;
        let acts = self
            .sites
            .get_mut(at)
            .unwrap()
            .on_peer_down(now, &site(peer));
        self.run(at, acts);
    }

    pub fn clear(&mut self) {
        self.delivered.clear();
        self.events.clear();
    }

    /// Injects a frame at `at`'s port 1 and runs the mesh until quiet.
    pub fn send(&mut self, at: &str, frame: Bytes) {
        self.send_on(at, PortId(1), frame);
    }

    pub fn send_on(&mut self, at: &str, port: PortId, frame: Bytes) {
        let now = self.now;
        let acts = self
            .sites
            .get_mut(at)
            .unwrap()
            .on_local_frame(now, port, frame);
        self.run(at, acts);
    }

    pub fn poll(&mut self) {
        let now = self.now;
        let names: Vec<String> = self.sites.keys().cloned().collect();
        for n in names {
            let acts = self.sites.get_mut(&n).unwrap().poll_timers(now);
            self.run(&n, acts);
        }
    }

    /// Carries actions (and the actions they cause) until none are left.
    pub fn run(&mut self, from: &str, acts: Vec<Action>) {
        let mut queue: VecDeque<(String, Action)> =
            acts.into_iter().map(|a| (from.to_string(), a)).collect();
        let now = self.now;
        let mut steps = 0;
        while let Some((src, act)) = queue.pop_front() {
            steps += 1;
            assert!(
                steps < 100_000,
                "the sites keep messaging each other: a control loop"
            );
            let more = match act {
                Action::Deliver { port, frame } => {
                    self.delivered.entry(src).or_default().push((port, frame));
                    continue;
                }
                Action::Event(e) => {
                    self.events.entry(src).or_default().push(e);
                    continue;
                }
                Action::SendDatagram {
                    site: dst,
                    datagram,
                } => {
                    let Some(sw) = self.sites.get_mut(dst.as_str()) else {
                        continue;
                    };
                    (dst, sw.on_datagram(now, &site(&src), datagram))
                }
                Action::SendControl { site: dst, msg } => {
                    let Some(sw) = self.sites.get_mut(dst.as_str()) else {
                        continue;
                    };
                    (dst, sw.on_control(now, &site(&src), msg))
                }
            };
            let (dst, acts) = more;
            queue.extend(acts.into_iter().map(|a| (dst.as_str().to_string(), a)));
        }
    }

    pub fn delivered_to(&self, at: &str) -> Vec<Bytes> {
        self.delivered
            .get(at)
            .map(|v| v.iter().map(|(_, f)| f.clone()).collect())
            .unwrap_or_default()
    }

    pub fn location(&self, at: &str, m: MacAddr) -> Option<wanmig_overlay::mactable::Location> {
        self.sites[at].lookup(vni(), m)
    }

    pub fn seq(&self, at: &str, m: MacAddr) -> Option<u32> {
        self.sites[at]
            .mac_table(vni())
            .into_iter()
            .find(|e| e.mac == m)
            .map(|e| e.seq)
    }
}
