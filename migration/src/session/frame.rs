//! The gateway-to-gateway migration session's wire format, sans-IO: typed,
//! length-prefixed frames on one QUIC stream ([`encode`] appends a frame,
//! [`FrameDecoder`] takes bytes and yields frames). Every length and count
//! is checked against the bytes present and [`MAX_FRAME`]; bad input is a
//! [`WireError`], never a panic.
//!
//! Frame: `type: u8, length: u32 LE, payload[length]`.
//!
//! Conversation (S = source gateway, D = destination gateway):
//! S→D `Open` (magic, version, JSON [`OpenRequest`]); D→S `Accept`
//! (the destination site's page-store inventory) or `Refuse(reason)`;
//! then S→D `Batch` (codec batches in page order) and `Shim` (the shim
//! protocol's non-page frames, passed through unchanged: hello, state,
//! complete, handover, abort); D→S `Nack` (content the destination could not
//! resolve) and `Shim` (hello-ack, confirmed, resumed, abort).
//!
//! After a link failure late in a migration, the source opens a new stream
//! with `Resolve(id, handed_over)`: whether its shim handed the VM over.
//! The destination, which keeps a VM it confirmed parked until it hears
//! this, resumes or discards it and answers `Resolved(state)`.

use serde::{Deserialize, Serialize};
use wanmig_codec::{Fingerprint, Gfn};
use wanmig_vmm::VmConfig;

/// Version of this session protocol.
pub const SESSION_VERSION: u32 = 2;
/// Magic at the start of `Open`.
pub const OPEN_MAGIC: [u8; 8] = *b"WMGWMIG1";
/// Largest frame payload accepted: a codec batch (at most 80 MiB) or an
/// inventory, with room to spare.
pub const MAX_FRAME: u32 = 96 << 20;
/// Bytes of one NACK entry: gfn (u64 LE) and fingerprint.
const NACK_ENTRY: usize = 8 + 32;

/// What the source asks the destination to receive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenRequest {
    /// Migration id, unique per source gateway (for status and logs).
    pub id: String,
    /// The VM's name (unique per site).
    pub vm: String,
    /// The VM's configuration; the destination builds the VM from it.
    pub config: VmConfig,
    /// Dedup scope: which of the destination's page stores to use.
    pub scope: String,
}

/// One session frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// S→D: open a migration.
    Open {
        version: u32,
        request: Box<OpenRequest>,
    },
    /// D→S: accepted; the serialized inventory of the scope's page store.
    Accept { inventory: Vec<u8> },
    /// D→S: refused, with a reason for the operator.
    Refuse(String),
    /// S→D: one codec batch.
    Batch(Vec<u8>),
    /// D→S: (gfn, content) the destination could not resolve.
    Nack(Vec<(Gfn, Fingerprint)>),
    /// Either way: one whole shim-protocol frame (never `Pages`).
    Shim(Vec<u8>),
    /// S→D on a new stream: settle migration `id` of VM `vm` after a link
    /// failure. `vm` lets a destination that lost its record of the
    /// migration (its gateway restarted) still say whether the VM runs
    /// there; it travels after the id behind a NUL byte, which a gateway
    /// without it reads as part of an unknown id (and answers discarded, as
    /// it always did).
    Resolve {
        id: String,
        vm: Option<String>,
        handed_over: bool,
    },
    /// D→S: where the VM of that migration stands now.
    Resolved(Resolution),
    /// D→S: bytes of `Batch` frames received so far (the source keeps
    /// what is in flight near one bandwidth-delay product, see
    /// `session::SourceSession::in_flight`).
    Ack(u64),
}

/// The destination's answer to `Resolve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resolution {
    /// The VM runs at the destination.
    Running,
    /// The destination does not run it and never will.
    Discarded,
}

/// Errors decoding session frames.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("unknown migration session frame type {0}; is the peer a wanmig gateway of the same version?")]
    UnknownType(u8),
    #[error("migration session frame of {0} bytes exceeds the limit of {MAX_FRAME} bytes; the stream is corrupt")]
    TooLarge(u32),
    #[error("the migration session does not start with the gateway magic; the peer is not a wanmig gateway")]
    BadMagic,
    #[error("malformed migration session {what} frame: {detail}")]
    Malformed { what: &'static str, detail: String },
}

fn malformed(what: &'static str, detail: impl Into<String>) -> WireError {
    WireError::Malformed {
        what,
        detail: detail.into(),
    }
}

const T_OPEN: u8 = 1;
const T_ACCEPT: u8 = 2;
const T_REFUSE: u8 = 3;
const T_BATCH: u8 = 4;
const T_NACK: u8 = 5;
const T_SHIM: u8 = 6;
const T_RESOLVE: u8 = 7;
const T_RESOLVED: u8 = 8;
const T_ACK: u8 = 9;

/// Appends `frame` to `out`.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 5]);
    let ty = match frame {
        Frame::Open { version, request } => {
            out.extend_from_slice(&OPEN_MAGIC);
            out.extend_from_slice(&version.to_le_bytes());
            // Plain data (strings, numbers, paths) always serialises.
            out.extend_from_slice(&serde_json::to_vec(request).unwrap_or_default());
            T_OPEN
        }
        Frame::Accept { inventory } => {
            out.extend_from_slice(inventory);
            T_ACCEPT
        }
        Frame::Refuse(reason) => {
            out.extend_from_slice(reason.as_bytes());
            T_REFUSE
        }
        Frame::Batch(b) => {
            out.extend_from_slice(b);
            T_BATCH
        }
        Frame::Nack(entries) => {
            out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
            for (gfn, fp) in entries {
                out.extend_from_slice(&gfn.0.to_le_bytes());
                out.extend_from_slice(fp.as_bytes());
            }
            T_NACK
        }
        Frame::Shim(bytes) => {
            out.extend_from_slice(bytes);
            T_SHIM
        }
        Frame::Resolve {
            id,
            vm,
            handed_over,
        } => {
            out.push(u8::from(*handed_over));
            out.extend_from_slice(id.as_bytes());
            if let Some(vm) = vm {
                out.push(0);
                out.extend_from_slice(vm.as_bytes());
            }
            T_RESOLVE
        }
        Frame::Resolved(r) => {
            out.push(match r {
                Resolution::Running => 1,
                Resolution::Discarded => 0,
            });
            T_RESOLVED
        }
        Frame::Ack(bytes) => {
            out.extend_from_slice(&bytes.to_le_bytes());
            T_ACK
        }
    };
    let len = (out.len() - start - 5) as u32;
    out[start] = ty;
    out[start + 1..start + 5].copy_from_slice(&len.to_le_bytes());
}

/// Bytes `frame` takes on the wire.
pub fn frame_len(frame: &Frame) -> u64 {
    5 + match frame {
        Frame::Open { .. } => to_bytes(frame).len() as u64 - 5,
        Frame::Accept { inventory } => inventory.len() as u64,
        Frame::Refuse(r) => r.len() as u64,
        Frame::Batch(b) | Frame::Shim(b) => b.len() as u64,
        Frame::Nack(n) => 4 + (n.len() * NACK_ENTRY) as u64,
        Frame::Resolve { id, vm, .. } => {
            1 + id.len() as u64 + vm.as_ref().map_or(0, |v| 1 + v.len() as u64)
        }
        Frame::Resolved(_) => 1,
        Frame::Ack(_) => 8,
    }
}

/// Encodes one frame into a fresh buffer.
pub fn to_bytes(frame: &Frame) -> Vec<u8> {
    let mut v = Vec::new();
    encode(frame, &mut v);
    v
}

fn decode_payload(ty: u8, p: &[u8]) -> Result<Frame, WireError> {
    match ty {
        T_OPEN => {
            if p.len() < 12 {
                return Err(malformed("open", "shorter than magic and version"));
            }
            if p[..8] != OPEN_MAGIC {
                return Err(WireError::BadMagic);
            }
            let version = u32::from_le_bytes([p[8], p[9], p[10], p[11]]);
            if version != SESSION_VERSION {
                // The caller refuses other versions; do not guess at the rest.
                return Ok(Frame::Open {
                    version,
                    request: Box::new(OpenRequest {
                        id: String::new(),
                        vm: String::new(),
                        config: VmConfig::default(),
                        scope: String::new(),
                    }),
                });
            }
            let request =
                serde_json::from_slice(&p[12..]).map_err(|e| malformed("open", e.to_string()))?;
            Ok(Frame::Open { version, request })
        }
        T_ACCEPT => Ok(Frame::Accept {
            inventory: p.to_vec(),
        }),
        T_REFUSE => Ok(Frame::Refuse(String::from_utf8_lossy(p).into_owned())),
        T_BATCH => Ok(Frame::Batch(p.to_vec())),
        T_NACK => {
            if p.len() < 4 {
                return Err(malformed("nack", "missing entry count"));
            }
            let n = u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize;
            let body = &p[4..];
            if n.checked_mul(NACK_ENTRY) != Some(body.len()) {
                return Err(malformed(
                    "nack",
                    format!("{n} entries announced but {} bytes follow", body.len()),
                ));
            }
            let entries = body
                .chunks_exact(NACK_ENTRY)
                .map(|e| {
                    let mut gfn = [0u8; 8];
                    gfn.copy_from_slice(&e[..8]);
                    let mut fp = [0u8; 32];
                    fp.copy_from_slice(&e[8..]);
                    (Gfn(u64::from_le_bytes(gfn)), Fingerprint(fp))
                })
                .collect();
            Ok(Frame::Nack(entries))
        }
        T_SHIM => Ok(Frame::Shim(p.to_vec())),
        T_RESOLVE => {
            let (&flag, id) = p
                .split_first()
                .ok_or_else(|| malformed("resolve", "empty"))?;
            let handed_over = match flag {
                0 => false,
                1 => true,
                f => return Err(malformed("resolve", format!("handed-over flag {f}"))),
            };
            let text =
                std::str::from_utf8(id).map_err(|_| malformed("resolve", "the id is not UTF-8"))?;
            let (id, vm) = match text.split_once('\0') {
                Some((id, vm)) => (id.to_string(), Some(vm.to_string())),
                None => (text.to_string(), None),
            };
            Ok(Frame::Resolve {
                id,
                vm,
                handed_over,
            })
        }
        T_RESOLVED => match p {
            [1] => Ok(Frame::Resolved(Resolution::Running)),
            [0] => Ok(Frame::Resolved(Resolution::Discarded)),
            _ => Err(malformed("resolved", format!("{} bytes", p.len()))),
        },
        T_ACK => match <[u8; 8]>::try_from(p) {
            Ok(b) => Ok(Frame::Ack(u64::from_le_bytes(b))),
            Err(_) => Err(malformed("ack", format!("{} bytes", p.len()))),
        },
        other => Err(WireError::UnknownType(other)),
    }
}

/// Incremental frame decoder: feed bytes as they arrive, take whole frames.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed (drained lazily).
    pos: usize,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next whole frame, `Ok(None)` when more bytes are needed.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Frame>, WireError> {
        let b = &self.buf[self.pos..];
        if b.len() < 5 {
            return Ok(None);
        }
        let ty = b[0];
        let len = u32::from_le_bytes([b[1], b[2], b[3], b[4]]);
        if !(T_OPEN..=T_ACK).contains(&ty) {
            return Err(WireError::UnknownType(ty));
        }
        if len > MAX_FRAME {
            return Err(WireError::TooLarge(len));
        }
        let end = 5 + len as usize;
        if b.len() < end {
            return Ok(None);
        }
        let frame = decode_payload(ty, &b[5..end]);
        self.pos += end;
        if self.pos > (1 << 20) && self.pos * 2 > self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        frame.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(f: Frame) {
        let buf = to_bytes(&f);
        assert_eq!(frame_len(&f), buf.len() as u64);
        let mut d = FrameDecoder::new();
        for (i, b) in buf.iter().enumerate() {
            assert_eq!(d.next(), Ok(None), "early frame at byte {i}");
            d.feed(&[*b]);
        }
        assert_eq!(d.next(), Ok(Some(f)));
        assert_eq!(d.buffered(), 0);
    }

    fn request() -> OpenRequest {
        OpenRequest {
            id: "site-a-1".into(),
            vm: "web".into(),
            config: VmConfig::default(),
            scope: "tenant-1".into(),
        }
    }

    #[test]
    fn every_frame_roundtrips() {
        roundtrip(Frame::Open {
            version: SESSION_VERSION,
            request: Box::new(request()),
        });
        roundtrip(Frame::Accept {
            inventory: vec![1, 2, 3],
        });
        roundtrip(Frame::Refuse("no room".into()));
        roundtrip(Frame::Batch(vec![9; 100]));
        roundtrip(Frame::Nack(vec![
            (Gfn(7), Fingerprint([1; 32])),
            (Gfn(u64::MAX), Fingerprint([2; 32])),
        ]));
        roundtrip(Frame::Nack(Vec::new()));
        roundtrip(Frame::Shim(vec![7, 0, 0, 0, 0]));
        roundtrip(Frame::Ack(0));
        roundtrip(Frame::Ack(u64::MAX - 3));
        roundtrip(Frame::Resolve {
            id: "site-a-1".into(),
            vm: Some("web1".into()),
            handed_over: true,
        });
        roundtrip(Frame::Resolve {
            id: "site-a-2".into(),
            vm: None,
            handed_over: true,
        });
        roundtrip(Frame::Resolve {
            id: String::new(),
            vm: None,
            handed_over: false,
        });
        roundtrip(Frame::Resolved(Resolution::Running));
        roundtrip(Frame::Resolved(Resolution::Discarded));
    }

    #[test]
    fn several_frames_in_one_read() {
        let mut buf = Vec::new();
        encode(&Frame::Batch(vec![1; 10]), &mut buf);
        encode(&Frame::Refuse("x".into()), &mut buf);
        let mut d = FrameDecoder::new();
        d.feed(&buf[..buf.len() - 1]);
        assert_eq!(d.next(), Ok(Some(Frame::Batch(vec![1; 10]))));
        assert_eq!(d.next(), Ok(None));
        d.feed(&buf[buf.len() - 1..]);
        assert_eq!(d.next(), Ok(Some(Frame::Refuse("x".into()))));
    }

    #[test]
    fn other_versions_decode_far_enough_to_be_refused() {
        let mut buf = to_bytes(&Frame::Open {
            version: SESSION_VERSION,
            request: Box::new(request()),
        });
        buf[5 + 8..5 + 12].copy_from_slice(&99u32.to_le_bytes());
        buf.truncate(5 + 12);
        buf[1..5].copy_from_slice(&12u32.to_le_bytes());
        let mut d = FrameDecoder::new();
        d.feed(&buf);
        assert!(matches!(
            d.next(),
            Ok(Some(Frame::Open { version: 99, .. }))
        ));
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut d = FrameDecoder::new();
        d.feed(&[42, 0, 0, 0, 0]);
        assert_eq!(d.next(), Err(WireError::UnknownType(42)));

        let mut d = FrameDecoder::new();
        d.feed(&[T_BATCH, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(d.next(), Err(WireError::TooLarge(u32::MAX)));

        let mut d = FrameDecoder::new();
        d.feed(&[T_NACK, 8, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        assert!(matches!(
            d.next(),
            Err(WireError::Malformed { what: "nack", .. })
        ));

        let mut d = FrameDecoder::new();
        d.feed(&[T_RESOLVE, 1, 0, 0, 0, 7]);
        assert!(matches!(
            d.next(),
            Err(WireError::Malformed {
                what: "resolve",
                ..
            })
        ));

        let mut d = FrameDecoder::new();
        d.feed(&[T_RESOLVED, 2, 0, 0, 0, 1, 1]);
        assert!(d.next().is_err());

        let mut d = FrameDecoder::new();
        d.feed(&[T_OPEN, 12, 0, 0, 0]);
        d.feed(b"NOTMAGIC\x01\0\0\0");
        assert_eq!(d.next(), Err(WireError::BadMagic));

        let mut d = FrameDecoder::new();
        let mut open = vec![T_OPEN, 0, 0, 0, 0];
        open.extend_from_slice(&OPEN_MAGIC);
        open.extend_from_slice(&SESSION_VERSION.to_le_bytes());
        open.extend_from_slice(b"{not json");
        let len = (open.len() - 5) as u32;
        open[1..5].copy_from_slice(&len.to_le_bytes());
        d.feed(&open);
        assert!(matches!(
            d.next(),
            Err(WireError::Malformed { what: "open", .. })
        ));
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut seed = 0x1234_5678_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..5000 {
            let len = (next() % 96) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(b) = bytes.first_mut() {
                *b %= 10;
            }
            if bytes.len() >= 5 {
                let l = (next() % 80) as u32;
                bytes[1..5].copy_from_slice(&l.to_le_bytes());
            }
            let mut d = FrameDecoder::new();
            d.feed(&bytes);
            while let Ok(Some(_)) = d.next() {}
        }
    }
}
