//! TCP MSS clamping: lowers the MSS option of IPv4 TCP SYN segments inside
//! Ethernet frames so that hosts on a stretched segment pick a segment size
//! the overlay path carries without fragmenting.

use smoltcp::wire::{IpProtocol, Ipv4Packet, TcpPacket};

const OPT_END: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;

/// Clamps the MSS option of an IPv4 TCP SYN in `frame` (whose L3 header
/// starts at `l3_offset`) to `max_mss`. Returns true when the frame was
/// changed. Anything that is not a well-formed, unfragmented IPv4 TCP SYN
/// with an MSS above `max_mss` is left alone.
pub fn clamp(frame: &mut [u8], l3_offset: usize, max_mss: u16) -> bool {
    let Some(l3) = frame.get_mut(l3_offset..) else {
        return false;
    };
    let Ok(mut ip) = Ipv4Packet::new_checked(l3) else {
        return false;
    };
    if ip.version() != 4
        || ip.next_header() != IpProtocol::Tcp
        || ip.more_frags()
        || ip.frag_offset() != 0
    {
        return false;
    }
    let Ok(mut tcp) = TcpPacket::new_checked(ip.payload_mut()) else {
        return false;
    };
    if !tcp.syn() {
        return false;
    }
    let old_sum = tcp.checksum();
    let opts = tcp.options_mut();
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            OPT_END => return false,
            OPT_NOP => i += 1,
            kind => {
                let Some(&len) = opts.get(i + 1) else {
                    return false;
                };
                let len = usize::from(len);
                if len < 2 || i + len > opts.len() {
                    return false;
                }
                if kind == OPT_MSS && len == 4 {
                    let old = u16::from_be_bytes([opts[i + 2], opts[i + 3]]);
                    if old <= max_mss {
                        return false;
                    }
                    opts[i + 2..i + 4].copy_from_slice(&max_mss.to_be_bytes());
                    tcp.set_checksum(update_checksum(old_sum, old, max_mss));
                    return true;
                }
                i += len;
            }
        }
    }
    false
}

/// Incremental Internet checksum update for one changed 16-bit word
/// (RFC 1624, eqn. 3). Hand-written rather than recomputing the whole
/// checksum with smoltcp so that a segment whose checksum was wrong stays
/// wrong (we must not launder corrupt packets).
fn update_checksum(sum: u16, old: u16, new: u16) -> u16 {
    let mut acc = u32::from(!sum) + u32::from(!old) + u32::from(new);
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use smoltcp::wire::{IpAddress, Ipv4Address};

    /// Builds an Ethernet+IPv4+TCP frame with a SYN carrying MSS `mss`.
    pub(crate) fn syn_frame(mss: u16, syn: bool) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 24];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let src = Ipv4Address::new(198, 18, 0, 1);
        let dst = Ipv4Address::new(198, 18, 0, 2);
        {
            let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
            ip.set_version(4);
            ip.set_header_len(20);
            ip.set_total_len(44);
            ip.set_hop_limit(64);
            ip.set_next_header(IpProtocol::Tcp);
            ip.set_src_addr(src);
            ip.set_dst_addr(dst);
            ip.fill_checksum();
        }
        {
            let mut tcp = TcpPacket::new_unchecked(&mut f[34..]);
            tcp.set_src_port(40000);
            tcp.set_dst_port(22);
            tcp.set_header_len(24);
            tcp.set_syn(syn);
            tcp.set_window_len(65535);
            let o = tcp.options_mut();
            o.copy_from_slice(&[OPT_MSS, 4, (mss >> 8) as u8, mss as u8]);
            tcp.fill_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst));
        }
        f
    }

    pub(crate) fn mss_and_checksum_ok(f: &[u8]) -> (u16, bool) {
        let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        let o = tcp.options();
        let mss = u16::from_be_bytes([o[2], o[3]]);
        let ok = tcp.verify_checksum(
            &IpAddress::Ipv4(ip.src_addr()),
            &IpAddress::Ipv4(ip.dst_addr()),
        );
        (mss, ok)
    }

    #[test]
    fn clamps_large_mss_and_keeps_checksum_valid() {
        let mut f = syn_frame(1460, true);
        assert!(clamp(&mut f, 14, 1360));
        assert_eq!(mss_and_checksum_ok(&f), (1360, true));
        // Already small enough: untouched.
        let mut g = syn_frame(1200, true);
        let before = g.clone();
        assert!(!clamp(&mut g, 14, 1360));
        assert_eq!(g, before);
    }

    #[test]
    fn leaves_non_syn_and_malformed_packets_alone() {
        let mut f = syn_frame(1460, false);
        assert!(!clamp(&mut f, 14, 1360));
        let mut t = syn_frame(1460, true);
        t.truncate(40);
        assert!(!clamp(&mut t, 14, 1360));
        // Option length running past the header.
        let mut bad = syn_frame(1460, true);
        bad[14 + 20 + 21] = 9;
        assert!(!clamp(&mut bad, 14, 1360));
        assert!(!clamp(&mut [0u8; 10], 14, 1360));
    }

    #[test]
    fn incremental_checksum_matches_known_vector() {
        // RFC 1624 example: changing a word keeps the one's complement sum.
        let sum = 0xdd2f;
        let updated = update_checksum(sum, 0x5555, 0x3285);
        assert_eq!(update_checksum(updated, 0x3285, 0x5555), sum);
    }
}
