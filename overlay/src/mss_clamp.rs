//! TCP MSS clamping: lowers the MSS option of IPv4 TCP SYN segments inside
//! Ethernet frames so that hosts on a stretched segment pick a segment size
//! the overlay path carries without fragmenting.

use smoltcp::wire::{IpProtocol, Ipv4Packet, TcpPacket};

const OPT_END: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;

/// Where the MSS option of a TCP SYN sits in a frame.
struct MssField {
    /// Offset of the 2-byte MSS value.
    value_at: usize,
    /// Offset of the TCP checksum.
    checksum_at: usize,
    value: u16,
}

/// Finds the MSS option of an unfragmented IPv4 TCP SYN whose IP header
/// starts at `l3_offset`; `None` for anything else or anything malformed.
fn find_mss(frame: &[u8], l3_offset: usize) -> Option<MssField> {
    let ip = Ipv4Packet::new_checked(frame.get(l3_offset..)?).ok()?;
    if ip.version() != 4
        || ip.next_header() != IpProtocol::Tcp
        || ip.more_frags()
        || ip.frag_offset() != 0
    {
        return None;
    }
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    if !tcp.syn() {
        return None;
    }
    let tcp_at = l3_offset + usize::from(ip.header_len());
    let opts = tcp.options();
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            OPT_END => return None,
            OPT_NOP => i += 1,
            kind => {
                let len = usize::from(*opts.get(i + 1)?);
                if len < 2 || i + len > opts.len() {
                    return None;
                }
                if kind == OPT_MSS && len == 4 {
                    return Some(MssField {
                        value_at: tcp_at + 20 + i + 2,
                        checksum_at: tcp_at + 16,
                        value: u16::from_be_bytes([opts[i + 2], opts[i + 3]]),
                    });
                }
                i += len;
            }
        }
    }
    None
}

/// Whether [`clamp`] would change `frame` (read-only, so callers can avoid
/// copying frames that are not SYNs with a large MSS).
pub fn needs_clamp(frame: &[u8], l3_offset: usize, max_mss: u16) -> bool {
    find_mss(frame, l3_offset).is_some_and(|f| f.value > max_mss)
}

/// Clamps the MSS option of an IPv4 TCP SYN in `frame` (whose L3 header
/// starts at `l3_offset`) to `max_mss`. Returns true when the frame was
/// changed. Anything that is not a well-formed, unfragmented IPv4 TCP SYN
/// with an MSS above `max_mss` is left alone.
pub fn clamp(frame: &mut [u8], l3_offset: usize, max_mss: u16) -> bool {
    let Some(f) = find_mss(frame, l3_offset) else {
        return false;
    };
    if f.value <= max_mss {
        return false;
    }
    let sum = u16::from_be_bytes([frame[f.checksum_at], frame[f.checksum_at + 1]]);
    frame[f.value_at..f.value_at + 2].copy_from_slice(&max_mss.to_be_bytes());
    let sum = update_checksum(sum, f.value, max_mss);
    frame[f.checksum_at..f.checksum_at + 2].copy_from_slice(&sum.to_be_bytes());
    true
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
        assert!(!needs_clamp(&g, 14, 1360));
        assert!(needs_clamp(&syn_frame(1460, true), 14, 1360));
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
