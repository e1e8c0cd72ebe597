//! ARP suppression: the IP→MAC bindings of one segment, learned from ARP
//! traffic and from peers' MAC advertisements, and the local answers built
//! from them so that ARP requests for known remote hosts never cross the WAN.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::frame::{ArpInfo, ArpOp};
use crate::ids::MacAddr;

#[derive(Debug, Clone, Copy)]
struct Binding {
    mac: MacAddr,
    updated: Instant,
}

/// IP→MAC bindings of one segment.
pub struct ArpCache {
    ageing: Duration,
    by_ip: HashMap<Ipv4Addr, Binding>,
    by_mac: HashMap<MacAddr, Ipv4Addr>,
}

impl ArpCache {
    pub fn new(ageing: Duration) -> Self {
        ArpCache {
            ageing,
            by_ip: HashMap::new(),
            by_mac: HashMap::new(),
        }
    }

    /// Records that `ip` is at `mac`. Unspecified, broadcast and multicast
    /// IPs and group MACs are ignored.
    pub fn learn(&mut self, now: Instant, ip: Ipv4Addr, mac: MacAddr) {
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || mac.is_group() {
            return;
        }
        if let Some(old) = self.by_ip.insert(ip, Binding { mac, updated: now }) {
            if old.mac != mac && self.by_mac.get(&old.mac) == Some(&ip) {
                self.by_mac.remove(&old.mac);
            }
        }
        self.by_mac.insert(mac, ip);
    }

    /// Learns the sender binding of an ARP packet (requests, replies and
    /// gratuitous ARP; RARP carries no usable sender IP).
    pub fn learn_from(&mut self, now: Instant, arp: &ArpInfo) {
        if matches!(arp.op, ArpOp::Request | ArpOp::Reply) {
            self.learn(now, arp.sender_ip, arp.sender_mac);
        }
    }

    /// The MAC bound to `ip`, if the binding is fresh.
    pub fn lookup(&self, now: Instant, ip: Ipv4Addr) -> Option<MacAddr> {
        let b = self.by_ip.get(&ip)?;
        (now.saturating_duration_since(b.updated) < self.ageing).then_some(b.mac)
    }

    /// The IP last bound to `mac` (for advertisements).
    pub fn ip_of(&self, mac: &MacAddr) -> Option<Ipv4Addr> {
        self.by_mac.get(mac).copied()
    }

    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }

    /// Drops stale bindings.
    pub fn expire(&mut self, now: Instant) {
        let ageing = self.ageing;
        let by_mac = &mut self.by_mac;
        self.by_ip.retain(|ip, b| {
            let keep = now.saturating_duration_since(b.updated) < ageing;
            if !keep && by_mac.get(&b.mac) == Some(ip) {
                by_mac.remove(&b.mac);
            }
            keep
        });
    }
}

/// Whether `arp` is a request another host should answer (not a gratuitous
/// announcement or probe).
pub fn is_resolvable_request(arp: &ArpInfo) -> bool {
    arp.op == ArpOp::Request
        && !arp.is_announcement()
        && !arp.target_ip.is_unspecified()
        && arp.sender_ip != arp.target_ip
}

/// The ARP reply frame the owner of `answer_mac` would send to `request`.
pub fn reply_frame(request: &ArpInfo, answer_mac: MacAddr, vlan: Option<u16>) -> Vec<u8> {
    let reply = ArpInfo {
        op: ArpOp::Reply,
        sender_mac: answer_mac,
        sender_ip: request.target_ip,
        target_mac: request.sender_mac,
        target_ip: request.sender_ip,
    };
    reply.to_frame(request.sender_mac, answer_mac, vlan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::EthFrame;

    const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xa]);
    const B: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xb]);
    const IP_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const IP_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    #[test]
    fn learns_bindings_and_forgets_them_after_ageing() {
        let mut c = ArpCache::new(Duration::from_secs(10));
        let t0 = Instant::now();
        c.learn(t0, IP_A, A);
        c.learn(t0, Ipv4Addr::UNSPECIFIED, B);
        c.learn(t0, IP_B, MacAddr::BROADCAST);
        assert_eq!(c.len(), 1);
        assert_eq!(c.lookup(t0, IP_A), Some(A));
        assert_eq!(c.ip_of(&A), Some(IP_A));
        assert_eq!(c.lookup(t0 + Duration::from_secs(10), IP_A), None);
        c.expire(t0 + Duration::from_secs(10));
        assert!(c.is_empty());
        assert_eq!(c.ip_of(&A), None);
    }

    #[test]
    fn rebinding_an_ip_moves_the_reverse_mapping() {
        let mut c = ArpCache::new(Duration::from_secs(10));
        let t0 = Instant::now();
        c.learn(t0, IP_A, A);
        c.learn(t0, IP_A, B);
        assert_eq!(c.lookup(t0, IP_A), Some(B));
        assert_eq!(c.ip_of(&A), None);
        assert_eq!(c.ip_of(&B), Some(IP_A));
    }

    #[test]
    fn reply_frame_answers_the_requester() {
        let req = ArpInfo {
            op: ArpOp::Request,
            sender_mac: A,
            sender_ip: IP_A,
            target_mac: MacAddr::ZERO,
            target_ip: IP_B,
        };
        assert!(is_resolvable_request(&req));
        let bytes = reply_frame(&req, B, Some(5));
        let f = EthFrame::parse(&bytes, 1522).unwrap();
        assert_eq!((f.dst, f.src, f.vlan), (A, B, Some(5)));
        let r = f.arp().unwrap();
        assert_eq!(r.op, ArpOp::Reply);
        assert_eq!((r.sender_mac, r.sender_ip), (B, IP_B));
        assert_eq!((r.target_mac, r.target_ip), (A, IP_A));
        let garp = ArpInfo {
            target_ip: IP_A,
            ..req
        };
        assert!(!is_resolvable_request(&garp));
    }
}
