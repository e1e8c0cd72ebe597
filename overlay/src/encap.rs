//! The overlay datagram header carried in QUIC datagrams between gateways.
//!
//! Wire form (big-endian):
//!
//! ```text
//!  0       1       2       3       4 .. 8        8       9
//! +-------+-------+-------+-------+-------------+-------+-------+
//! |ver|flg|        VNI (24)       | fragment id | index | count |  (fragment fields only with F)
//! +-------+-------+-------+-------+-------------+-------+-------+
//! ver: 4 bits, currently 1.  flg: bit 0 = F (fragment), bit 1 = B (flooded
//! broadcast/unknown-unicast copy); bits 2-3 must be zero.
//! ```
//!
//! The payload after the header is an Ethernet frame, or one fragment of
//! one. The header is 4 bytes, 10 with fragment fields.

use bytes::{BufMut, Bytes, BytesMut};

use crate::ids::Vni;

pub const VERSION: u8 = 1;
pub const BASE_LEN: usize = 4;
pub const FRAG_LEN: usize = 10;
const FLAG_FRAGMENT: u8 = 0x1;
const FLAG_FLOODED: u8 = 0x2;
const KNOWN_FLAGS: u8 = FLAG_FRAGMENT | FLAG_FLOODED;

/// Fragment fields: which piece of which frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragInfo {
    /// Per-sender frame number, shared by all fragments of one frame.
    pub id: u32,
    /// Zero-based fragment index, below `count`.
    pub index: u8,
    /// Number of fragments of the frame, at least 2.
    pub count: u8,
}

/// A decoded overlay header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub vni: Vni,
    /// The frame is a flooded (broadcast/multicast/unknown-unicast) copy.
    pub flooded: bool,
    pub fragment: Option<FragInfo>,
}

/// Why a datagram's header was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncapError {
    #[error("datagram of {len} bytes is shorter than its {need}-byte overlay header")]
    Truncated { len: usize, need: usize },
    #[error("overlay header version {0} is not supported (this gateway speaks version {VERSION}); upgrade the older gateway")]
    Version(u8),
    #[error("overlay header has unknown flag bits {0:#x}")]
    UnknownFlags(u8),
    #[error("overlay fragment index {index} / count {count} is invalid")]
    BadFragment { index: u8, count: u8 },
    #[error("overlay datagram carries no payload")]
    Empty,
}

impl Header {
    /// Encoded length of this header in bytes.
    pub fn encoded_len(&self) -> usize {
        if self.fragment.is_some() {
            FRAG_LEN
        } else {
            BASE_LEN
        }
    }

    /// Appends the encoded header to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let mut flags = 0;
        if self.fragment.is_some() {
            flags |= FLAG_FRAGMENT;
        }
        if self.flooded {
            flags |= FLAG_FLOODED;
        }
        let v = self.vni.get();
        out.put_u8((VERSION << 4) | flags);
        out.put_u8((v >> 16) as u8);
        out.put_u8((v >> 8) as u8);
        out.put_u8(v as u8);
        if let Some(f) = self.fragment {
            out.put_u32(f.id);
            out.put_u8(f.index);
            out.put_u8(f.count);
        }
    }

    /// Decodes the header at the start of `b`; returns it and the payload
    /// offset. A header without payload is rejected.
    pub fn decode(b: &[u8]) -> Result<(Header, usize), EncapError> {
        let len = b.len();
        if len < BASE_LEN {
            return Err(EncapError::Truncated {
                len,
                need: BASE_LEN,
            });
        }
        let version = b[0] >> 4;
        if version != VERSION {
            return Err(EncapError::Version(version));
        }
        let flags = b[0] & 0x0f;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(EncapError::UnknownFlags(flags));
        }
        let raw = (u32::from(b[1]) << 16) | (u32::from(b[2]) << 8) | u32::from(b[3]);
        // Cannot fail: three bytes are at most 24 bits.
        let vni = Vni::new(raw).map_err(|_| EncapError::Truncated { len, need: 4 })?;
        let mut hdr = Header {
            vni,
            flooded: flags & FLAG_FLOODED != 0,
            fragment: None,
        };
        if flags & FLAG_FRAGMENT != 0 {
            if len < FRAG_LEN {
                return Err(EncapError::Truncated {
                    len,
                    need: FRAG_LEN,
                });
            }
            let id = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
            let (index, count) = (b[8], b[9]);
            if count < 2 || index >= count {
                return Err(EncapError::BadFragment { index, count });
            }
            hdr.fragment = Some(FragInfo { id, index, count });
        }
        let off = hdr.encoded_len();
        if len == off {
            return Err(EncapError::Empty);
        }
        Ok((hdr, off))
    }
}

/// Builds an unfragmented datagram: header plus the whole frame.
pub fn encapsulate(vni: Vni, flooded: bool, frame: &[u8]) -> Bytes {
    let hdr = Header {
        vni,
        flooded,
        fragment: None,
    };
    let mut out = BytesMut::with_capacity(BASE_LEN + frame.len());
    hdr.encode(&mut out);
    out.extend_from_slice(frame);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vni(v: u32) -> Vni {
        Vni::new(v).unwrap()
    }

    #[test]
    fn round_trips_plain_and_fragment_headers() {
        let d = encapsulate(vni(0xabcdef), true, b"frame");
        assert_eq!(d.len(), BASE_LEN + 5);
        let (h, off) = Header::decode(&d).unwrap();
        assert_eq!(h.vni, vni(0xabcdef));
        assert!(h.flooded);
        assert_eq!(h.fragment, None);
        assert_eq!(&d[off..], b"frame");

        let hdr = Header {
            vni: vni(7),
            flooded: false,
            fragment: Some(FragInfo {
                id: 0xdead_beef,
                index: 2,
                count: 3,
            }),
        };
        let mut b = BytesMut::new();
        hdr.encode(&mut b);
        b.extend_from_slice(b"xy");
        let (h2, off2) = Header::decode(&b).unwrap();
        assert_eq!(h2, hdr);
        assert_eq!(off2, FRAG_LEN);
    }

    #[test]
    fn rejects_forged_and_truncated_headers() {
        assert_eq!(
            Header::decode(&[0x10, 0, 0]).unwrap_err(),
            EncapError::Truncated { len: 3, need: 4 }
        );
        assert_eq!(
            Header::decode(&[0x20, 0, 0, 1, 0]).unwrap_err(),
            EncapError::Version(2)
        );
        assert_eq!(
            Header::decode(&[0x14, 0, 0, 1, 0]).unwrap_err(),
            EncapError::UnknownFlags(4)
        );
        assert_eq!(
            Header::decode(&[0x11, 0, 0, 1, 0, 0, 0, 1, 0]).unwrap_err(),
            EncapError::Truncated { len: 9, need: 10 }
        );
        // index >= count, count < 2
        assert!(matches!(
            Header::decode(&[0x11, 0, 0, 1, 0, 0, 0, 1, 3, 3, 0xaa]),
            Err(EncapError::BadFragment { .. })
        ));
        assert!(matches!(
            Header::decode(&[0x11, 0, 0, 1, 0, 0, 0, 1, 0, 1, 0xaa]),
            Err(EncapError::BadFragment { .. })
        ));
        assert_eq!(
            Header::decode(&[0x10, 0, 0, 1]).unwrap_err(),
            EncapError::Empty
        );
    }
}
