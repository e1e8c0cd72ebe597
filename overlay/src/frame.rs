//! Ethernet frame parsing (with 802.1Q/802.1ad tags) and ARP/RARP
//! decoding/building, on top of smoltcp's wire types.
//!
//! Parsing never panics: every field access is bounds-checked and a frame
//! that does not fit is reported as a [`FrameError`].

use std::net::Ipv4Addr;

use smoltcp::wire::{ArpOperation, ArpPacket, ArpRepr, EthernetAddress};

use crate::ids::MacAddr;

pub const ETH_HEADER_LEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_RARP: u16 = 0x8035;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const ETHERTYPE_QINQ: u16 = 0x88a8;
/// At most this many stacked VLAN tags are skipped (QinQ plus one spare).
const MAX_VLAN_TAGS: usize = 3;

/// Why a frame was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is shorter than its Ethernet/VLAN header")]
    Truncated { len: usize },
    #[error("frame of {len} bytes exceeds the {max}-byte maximum frame size")]
    Oversized { len: usize, max: usize },
    #[error("frame has a group (multicast/broadcast) or zero source MAC {0}")]
    BadSource(MacAddr),
    #[error("frame has more than {MAX_VLAN_TAGS} stacked VLAN tags")]
    TooManyTags,
}

/// A parsed view of an Ethernet frame.
#[derive(Debug, Clone, Copy)]
pub struct EthFrame<'a> {
    pub dst: MacAddr,
    pub src: MacAddr,
    /// VLAN ID of the outermost tag, if the frame is tagged.
    pub vlan: Option<u16>,
    /// Ethertype after any VLAN tags.
    pub ethertype: u16,
    /// Offset of the L3 payload in `bytes`.
    pub payload_offset: usize,
    pub bytes: &'a [u8],
}

impl<'a> EthFrame<'a> {
    /// Parses `bytes`, rejecting frames shorter than the header, longer than
    /// `max_len`, or with a group/zero source address.
    pub fn parse(bytes: &'a [u8], max_len: usize) -> Result<EthFrame<'a>, FrameError> {
        let len = bytes.len();
        if len < ETH_HEADER_LEN {
            return Err(FrameError::Truncated { len });
        }
        if len > max_len {
            return Err(FrameError::Oversized { len, max: max_len });
        }
        let dst = MacAddr::from_slice(&bytes[0..6]).ok_or(FrameError::Truncated { len })?;
        let src = MacAddr::from_slice(&bytes[6..12]).ok_or(FrameError::Truncated { len })?;
        if src.is_group() || src == MacAddr::ZERO {
            return Err(FrameError::BadSource(src));
        }
        let mut off = 12;
        let mut vlan = None;
        let mut tags = 0;
        loop {
            let et = read_u16(bytes, off).ok_or(FrameError::Truncated { len })?;
            if et == ETHERTYPE_VLAN || et == ETHERTYPE_QINQ {
                tags += 1;
                if tags > MAX_VLAN_TAGS {
                    return Err(FrameError::TooManyTags);
                }
                let tci = read_u16(bytes, off + 2).ok_or(FrameError::Truncated { len })?;
                vlan.get_or_insert(tci & 0x0fff);
                off += 4;
                continue;
            }
            return Ok(EthFrame {
                dst,
                src,
                vlan,
                ethertype: et,
                payload_offset: off + 2,
                bytes,
            });
        }
    }

    pub fn payload(&self) -> &'a [u8] {
        self.bytes.get(self.payload_offset..).unwrap_or(&[])
    }

    /// Decodes an ARP or RARP payload for Ethernet/IPv4; `None` for other
    /// ethertypes and for malformed or non-Ethernet/IPv4 ARP.
    pub fn arp(&self) -> Option<ArpInfo> {
        let rarp = match self.ethertype {
            ETHERTYPE_ARP => false,
            ETHERTYPE_RARP => true,
            _ => return None,
        };
        let pkt = ArpPacket::new_checked(self.payload()).ok()?;
        let ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_hardware_addr,
            target_protocol_addr,
        } = ArpRepr::parse(&pkt).ok()?
        else {
            return None;
        };
        let op = match (rarp, operation) {
            (false, ArpOperation::Request) => ArpOp::Request,
            (false, ArpOperation::Reply) => ArpOp::Reply,
            (true, ArpOperation::Unknown(3)) => ArpOp::RarpRequest,
            (true, ArpOperation::Unknown(4)) => ArpOp::RarpReply,
            _ => return None,
        };
        Some(ArpInfo {
            op,
            sender_mac: MacAddr(source_hardware_addr.0),
            sender_ip: source_protocol_addr,
            target_mac: MacAddr(target_hardware_addr.0),
            target_ip: target_protocol_addr,
        })
    }
}

fn read_u16(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off + 2)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

/// The ARP/RARP operations the overlay cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpOp {
    Request,
    Reply,
    /// RARP "request reverse" (op 3): what hypervisors send after a move.
    RarpRequest,
    /// RARP "reply reverse" (op 4).
    RarpReply,
}

/// A decoded Ethernet/IPv4 ARP or RARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpInfo {
    pub op: ArpOp,
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_mac: MacAddr,
    pub target_ip: Ipv4Addr,
}

impl ArpInfo {
    /// A gratuitous ARP announces the sender's own binding (sender IP equals
    /// target IP); RARP announcements count as well, since hypervisors use
    /// them to announce a moved VM.
    pub fn is_announcement(&self) -> bool {
        match self.op {
            ArpOp::Request | ArpOp::Reply => {
                self.sender_ip == self.target_ip && !self.sender_ip.is_unspecified()
            }
            ArpOp::RarpRequest | ArpOp::RarpReply => true,
        }
    }

    /// Builds a full Ethernet frame carrying this ARP/RARP packet.
    pub fn to_frame(&self, eth_dst: MacAddr, eth_src: MacAddr, vlan: Option<u16>) -> Vec<u8> {
        let (ethertype, op) = match self.op {
            ArpOp::Request => (ETHERTYPE_ARP, ArpOperation::Request),
            ArpOp::Reply => (ETHERTYPE_ARP, ArpOperation::Reply),
            ArpOp::RarpRequest => (ETHERTYPE_RARP, ArpOperation::Unknown(3)),
            ArpOp::RarpReply => (ETHERTYPE_RARP, ArpOperation::Unknown(4)),
        };
        let repr = ArpRepr::EthernetIpv4 {
            operation: op,
            source_hardware_addr: EthernetAddress(self.sender_mac.0),
            source_protocol_addr: self.sender_ip,
            target_hardware_addr: EthernetAddress(self.target_mac.0),
            target_protocol_addr: self.target_ip,
        };
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&eth_dst.0);
        out.extend_from_slice(&eth_src.0);
        if let Some(id) = vlan {
            out.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
            out.extend_from_slice(&(id & 0x0fff).to_be_bytes());
        }
        out.extend_from_slice(&ethertype.to_be_bytes());
        let start = out.len();
        out.resize(start + repr.buffer_len(), 0);
        repr.emit(&mut ArpPacket::new_unchecked(&mut out[start..]));
        // Pad to the 60-byte Ethernet minimum (without FCS), as hosts do.
        if out.len() < 60 {
            out.resize(60, 0);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xa]);
    const B: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xb]);

    fn arp(op: ArpOp, sip: [u8; 4], tip: [u8; 4]) -> ArpInfo {
        ArpInfo {
            op,
            sender_mac: A,
            sender_ip: sip.into(),
            target_mac: MacAddr::ZERO,
            target_ip: tip.into(),
        }
    }

    #[test]
    fn parses_untagged_and_tagged_arp() {
        let info = arp(ArpOp::Request, [198, 18, 0, 1], [198, 18, 0, 2]);
        for vlan in [None, Some(42)] {
            let bytes = info.to_frame(MacAddr::BROADCAST, A, vlan);
            let f = EthFrame::parse(&bytes, 1522).unwrap();
            assert_eq!(f.dst, MacAddr::BROADCAST);
            assert_eq!(f.src, A);
            assert_eq!(f.vlan, vlan);
            assert_eq!(f.ethertype, ETHERTYPE_ARP);
            assert_eq!(f.arp(), Some(info));
            assert!(!info.is_announcement());
        }
    }

    #[test]
    fn recognises_garp_and_rarp_announcements() {
        let garp = arp(ArpOp::Request, [198, 18, 0, 1], [198, 18, 0, 1]);
        assert!(garp.is_announcement());
        let rarp = ArpInfo {
            op: ArpOp::RarpRequest,
            sender_mac: B,
            sender_ip: Ipv4Addr::UNSPECIFIED,
            target_mac: B,
            target_ip: Ipv4Addr::UNSPECIFIED,
        };
        let bytes = rarp.to_frame(MacAddr::BROADCAST, B, None);
        let f = EthFrame::parse(&bytes, 1522).unwrap();
        assert_eq!(f.ethertype, ETHERTYPE_RARP);
        let got = f.arp().unwrap();
        assert_eq!(got.op, ArpOp::RarpRequest);
        assert!(got.is_announcement());
        // A probe (sender IP 0.0.0.0) is not an announcement.
        assert!(!arp(ArpOp::Request, [0, 0, 0, 0], [0, 0, 0, 0]).is_announcement());
    }

    #[test]
    fn rejects_truncated_oversized_and_bad_source() {
        assert_eq!(
            EthFrame::parse(&[0u8; 13], 1522).unwrap_err(),
            FrameError::Truncated { len: 13 }
        );
        let mut f = vec![0u8; 20];
        f[6..12].copy_from_slice(&A.0);
        assert!(EthFrame::parse(&f, 19).is_err());
        // VLAN tag whose TCI is cut off.
        let mut t = vec![0u8; 14];
        t[6..12].copy_from_slice(&A.0);
        t[12..14].copy_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        assert_eq!(
            EthFrame::parse(&t, 1522).unwrap_err(),
            FrameError::Truncated { len: 14 }
        );
        let mut g = vec![0u8; 60];
        g[6..12].copy_from_slice(&MacAddr::BROADCAST.0);
        assert!(matches!(
            EthFrame::parse(&g, 1522),
            Err(FrameError::BadSource(_))
        ));
        g[6..12].copy_from_slice(&[0; 6]);
        assert!(matches!(
            EthFrame::parse(&g, 1522),
            Err(FrameError::BadSource(_))
        ));
    }

    #[test]
    fn rejects_endless_vlan_stack() {
        let mut f = vec![0u8; 60];
        f[6..12].copy_from_slice(&A.0);
        for i in 0..10 {
            let off = 12 + 4 * i;
            f[off..off + 2].copy_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        }
        assert_eq!(
            EthFrame::parse(&f, 1522).unwrap_err(),
            FrameError::TooManyTags
        );
    }

    #[test]
    fn truncated_arp_payload_is_not_arp() {
        let info = arp(ArpOp::Request, [198, 18, 0, 1], [198, 18, 0, 2]);
        let bytes = info.to_frame(MacAddr::BROADCAST, A, None);
        let f = EthFrame::parse(&bytes[..30], 1522).unwrap();
        assert_eq!(f.arp(), None);
    }
}
