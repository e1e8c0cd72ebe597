//! The gateway-to-gateway migration session's frames, sans-IO: [`encode`]
//! appends a frame, [`Decoder`] takes bytes and yields frames. Frames are
//! wanmig-wire's `tag: u8 | length: u32 LE | body` on one QUIC stream,
//! tags are [`Kind`]s, and [`SESSION`] declares the versions under the
//! rule in [`crate::version`]. Every length and count is checked against
//! the bytes present and [`MAX_FRAME`]; bad input is a [`WireError`],
//! never a panic.
//!
//! Conversation (S = source gateway, D = destination gateway):
//! S→D `Open` (preamble, JSON [`OpenRequest`]); D→S `Accept` (the
//! destination site's page-store inventory) or `Refuse(reason)`; then
//! S→D `Batch` (codec batches in page order, each naming the pre-copy
//! round of the shim pages it carries) and `Shim` (the shim protocol's
//! non-page messages, passed through unchanged: hello, state, complete,
//! digest, handover, abort); D→S `Ack` (batch bytes received), `Nack`
//! (content the destination could not resolve) and `Shim` (hello-ack,
//! confirmed, resumed, abort).
//!
//! After a link failure late in a migration, the source opens a new stream
//! with `Resolve(id, vm, handed_over)`: whether its shim handed the VM
//! over. The destination, which keeps a VM it confirmed parked until it
//! hears this, resumes or discards it and answers `Resolved(state)`.

use crate::messages::{MessageDecoder, Messages};
use serde::{Deserialize, Serialize};
use wanmig_codec::{Fingerprint, Gfn};
use wanmig_wire::coding::Context;
use wanmig_wire::{write_frame, DecodeError, FrameError, Reader, WriteExt, FRAME_HEADER_LEN};

use crate::machine::VmConfig;
use crate::version::{Preamble, PreambleError, Protocol, UnknownKind};

/// The session protocol and the versions this build speaks.
pub const SESSION: Protocol = Protocol {
    name: "migration session protocol",
    magic: *b"WMGWMIG1",
    current: 3,
    oldest: 3,
    opener: "the source gateway",
    answerer: "the destination gateway",
};
/// Largest frame body accepted: a codec batch (at most 80 MiB) or an
/// inventory, with room to spare.
pub const MAX_FRAME: u32 = 96 << 20;
/// Bytes of one NACK entry: gfn (u64 LE) and fingerprint.
const NACK_ENTRY: usize = 8 + 32;

wanmig_wire::wire_enum! {
    /// The kind of a session frame: its tag. All are essential (see
    /// [`crate::version`]).
    pub enum Kind(u8) {
        Open = 1,
        Accept = 2,
        Refuse = 3,
        Batch = 4,
        Nack = 5,
        Shim = 6,
        Resolve = 7,
        Resolved = 8,
        Ack = 9,
    }
}

wanmig_wire::wire_enum! {
    /// The destination's answer to `Resolve`.
    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "kebab-case")]
    pub enum Resolution(u8) {
        /// The destination does not run the VM and never will.
        Discarded = 0,
        /// The VM runs at the destination.
        Running = 1,
    }
}

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
    /// S→D: open a migration, in session version `version`.
    Open {
        version: u32,
        request: Box<OpenRequest>,
    },
    /// D→S: accepted; the serialized inventory of the scope's page store.
    Accept { inventory: Vec<u8> },
    /// D→S: refused, with a reason for the operator.
    Refuse(String),
    /// S→D: one codec batch of pages of pre-copy round `round` (fills
    /// answering a NACK carry the round in progress when they are sent).
    Batch { round: u32, batch: Vec<u8> },
    /// D→S: (gfn, content) the destination could not resolve.
    Nack(Vec<(Gfn, Fingerprint)>),
    /// Either way: one whole shim-protocol frame (never `Pages`).
    Shim(Vec<u8>),
    /// S→D on a new stream, in session version `version`: settle
    /// migration `id` of VM `vm` after a link failure. `vm` lets a
    /// destination that lost its record of the migration (its gateway
    /// restarted) still say whether the VM runs there.
    Resolve {
        version: u32,
        id: String,
        vm: Option<String>,
        handed_over: bool,
    },
    /// D→S: where the VM of that migration stands now.
    Resolved(Resolution),
    /// D→S: bytes of `Batch` bodies received so far (the source keeps
    /// what is in flight near one bandwidth-delay product).
    Ack(u64),
}

impl Frame {
    /// The frame's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Frame::Open { .. } => Kind::Open,
            Frame::Accept { .. } => Kind::Accept,
            Frame::Refuse(_) => Kind::Refuse,
            Frame::Batch { .. } => Kind::Batch,
            Frame::Nack(_) => Kind::Nack,
            Frame::Shim(_) => Kind::Shim,
            Frame::Resolve { .. } => Kind::Resolve,
            Frame::Resolved(_) => Kind::Resolved,
            Frame::Ack(_) => Kind::Ack,
        }
    }

    /// Short name of the frame for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Open { .. } => "open",
            Frame::Accept { .. } => "accept",
            Frame::Refuse(_) => "refuse",
            Frame::Batch { .. } => "a page batch",
            Frame::Nack(_) => "a nack",
            Frame::Shim(_) => "a shim message",
            Frame::Resolve { .. } => "resolve",
            Frame::Resolved(_) => "resolved",
            Frame::Ack(_) => "an ack",
        }
    }
}

/// Errors decoding session frames.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("migration session stream: {0}")]
    Frame(#[from] FrameError),
    #[error(transparent)]
    UnknownKind(#[from] UnknownKind),
    #[error(transparent)]
    Preamble(#[from] PreambleError),
    #[error("malformed migration session frame: {0}")]
    Malformed(#[from] DecodeError),
}

fn put_preamble(out: &mut Vec<u8>, version: u32) {
    out.put(Preamble {
        magic: SESSION.magic,
        version,
    });
}

/// Appends `frame` to `out`.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    write_frame(out, frame.kind().into(), |out| match frame {
        Frame::Open { version, request } => {
            put_preamble(out, *version);
            // Plain data (strings, numbers, paths) always serialises.
            out.extend_from_slice(&serde_json::to_vec(request).unwrap_or_default());
        }
        Frame::Accept { inventory } => out.extend_from_slice(inventory),
        Frame::Refuse(reason) => out.extend_from_slice(reason.as_bytes()),
        Frame::Batch { round, batch } => {
            out.put(*round);
            out.extend_from_slice(batch);
        }
        Frame::Nack(entries) => {
            out.put(entries.len() as u32);
            for (gfn, fp) in entries {
                out.put(gfn.0);
                out.put(fp.0);
            }
        }
        Frame::Shim(bytes) => out.extend_from_slice(bytes),
        Frame::Resolve {
            version,
            id,
            vm,
            handed_over,
        } => {
            put_preamble(out, *version);
            out.put(u8::from(*handed_over));
            out.put_len_prefixed(id.as_bytes());
            match vm {
                Some(vm) => {
                    out.put(1u8);
                    out.put_len_prefixed(vm.as_bytes());
                }
                None => out.put(0u8),
            }
        }
        Frame::Resolved(r) => out.put(*r),
        Frame::Ack(bytes) => out.put(*bytes),
    });
}

/// Bytes `frame` takes on the wire.
pub fn frame_len(frame: &Frame) -> u64 {
    let body = match frame {
        Frame::Open { .. } => return to_bytes(frame).len() as u64,
        Frame::Accept { inventory } => inventory.len(),
        Frame::Refuse(r) => r.len(),
        Frame::Batch { batch, .. } => 4 + batch.len(),
        Frame::Shim(b) => b.len(),
        Frame::Nack(n) => 4 + n.len() * NACK_ENTRY,
        Frame::Resolve { id, vm, .. } => {
            12 + 1 + 4 + id.len() + 1 + vm.as_ref().map_or(0, |v| 4 + v.len())
        }
        Frame::Resolved(_) => 1,
        Frame::Ack(_) => 8,
    };
    (FRAME_HEADER_LEN + body) as u64
}

/// Encodes one frame into a fresh buffer.
pub fn to_bytes(frame: &Frame) -> Vec<u8> {
    let mut v = Vec::new();
    encode(frame, &mut v);
    v
}

fn utf8(bytes: &[u8], what: &'static str) -> Result<String, DecodeError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::invalid(what, "not UTF-8"))
}

/// Parses the body of a frame of kind `kind`.
pub fn decode_body(kind: Kind, body: &[u8]) -> Result<Frame, WireError> {
    let mut r = Reader::new(body);
    let frame = match kind {
        Kind::Open => {
            let version = SESSION.read_preamble(&mut r)?;
            let request = serde_json::from_slice(r.rest())
                .map_err(|e| DecodeError::invalid("session open request", e.to_string()))?;
            Frame::Open { version, request }
        }
        Kind::Accept => Frame::Accept {
            inventory: r.rest().to_vec(),
        },
        Kind::Refuse => Frame::Refuse(String::from_utf8_lossy(r.rest()).into_owned()),
        Kind::Batch => Frame::Batch {
            round: r.get().ctx("session batch round")?,
            batch: r.rest().to_vec(),
        },
        Kind::Nack => {
            let n = r.get::<u32>().ctx("session nack count")? as usize;
            if n.checked_mul(NACK_ENTRY) != Some(r.remaining()) {
                return Err(DecodeError::invalid(
                    "session nack",
                    format!("{n} entries announced but {} bytes follow", r.remaining()),
                )
                .into());
            }
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                let gfn = r.get::<u64>().ctx("session nack gfn")?;
                let fp = r.get::<[u8; 32]>().ctx("session nack fingerprint")?;
                entries.push((Gfn(gfn), Fingerprint(fp)));
            }
            Frame::Nack(entries)
        }
        Kind::Shim => Frame::Shim(r.rest().to_vec()),
        Kind::Resolve => {
            let version = SESSION.read_preamble(&mut r)?;
            let handed_over = match r.get::<u8>().ctx("session resolve flag")? {
                0 => false,
                1 => true,
                f => {
                    return Err(DecodeError::invalid(
                        "session resolve flag",
                        format!("{f}; expected 0 or 1"),
                    )
                    .into())
                }
            };
            let id = utf8(
                r.len_prefixed().ctx("session resolve id")?,
                "session resolve id",
            )?;
            let vm = match r.get::<u8>().ctx("session resolve vm flag")? {
                0 => None,
                1 => Some(utf8(
                    r.len_prefixed().ctx("session resolve vm")?,
                    "session resolve vm",
                )?),
                f => {
                    return Err(DecodeError::invalid(
                        "session resolve vm flag",
                        format!("{f}; expected 0 or 1"),
                    )
                    .into())
                }
            };
            Frame::Resolve {
                version,
                id,
                vm,
                handed_over,
            }
        }
        Kind::Resolved => Frame::Resolved(r.get().ctx("session resolution")?),
        Kind::Ack => Frame::Ack(r.get().ctx("session ack")?),
        Kind::Unknown(tag) => return Err(SESSION.unknown(tag).into()),
    };
    r.finish("migration session frame")?;
    Ok(frame)
}

/// Incremental frame decoder: feed bytes as they arrive, take whole
/// frames. Unknown advisory kinds are skipped; unknown essential kinds
/// are errors (see [`crate::version`]).
pub type Decoder = MessageDecoder<Frame>;

impl Messages for Frame {
    type Error = WireError;
    const MAX_BODY: u32 = MAX_FRAME;

    fn decode_frame(tag: u8, body: &[u8]) -> Result<Option<Frame>, WireError> {
        match Kind::from(tag) {
            Kind::Unknown(tag) => SESSION.unknown_kind(tag).map(|()| None).map_err(Into::into),
            kind => decode_body(kind, body).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::VersionError;
    use proptest::prelude::*;

    fn roundtrip(f: Frame) {
        let buf = to_bytes(&f);
        assert_eq!(frame_len(&f), buf.len() as u64, "{f:?}");
        let mut d = Decoder::new();
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

    fn raw(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, tag, |o| o.extend_from_slice(body));
        out
    }

    #[test]
    fn every_frame_roundtrips() {
        roundtrip(Frame::Open {
            version: SESSION.current,
            request: Box::new(request()),
        });
        roundtrip(Frame::Accept {
            inventory: vec![1, 2, 3],
        });
        roundtrip(Frame::Refuse("no room".into()));
        roundtrip(Frame::Batch {
            round: 7,
            batch: vec![9; 100],
        });
        roundtrip(Frame::Nack(vec![
            (Gfn(7), Fingerprint([1; 32])),
            (Gfn(u64::MAX), Fingerprint([2; 32])),
        ]));
        roundtrip(Frame::Nack(Vec::new()));
        roundtrip(Frame::Shim(vec![7, 0, 0, 0, 0]));
        roundtrip(Frame::Ack(0));
        roundtrip(Frame::Ack(u64::MAX - 3));
        roundtrip(Frame::Resolve {
            version: SESSION.current,
            id: "site-a-1".into(),
            vm: Some("web1".into()),
            handed_over: true,
        });
        roundtrip(Frame::Resolve {
            version: SESSION.current,
            id: "site-a-2".into(),
            vm: None,
            handed_over: true,
        });
        roundtrip(Frame::Resolve {
            version: SESSION.current,
            id: String::new(),
            vm: None,
            handed_over: false,
        });
        roundtrip(Frame::Resolved(Resolution::Running));
        roundtrip(Frame::Resolved(Resolution::Discarded));
        roundtrip(Frame::Resolved(Resolution::Unknown(9)));
    }

    #[test]
    fn several_frames_in_one_read() {
        let mut buf = Vec::new();
        let batch = Frame::Batch {
            round: 0,
            batch: vec![1; 10],
        };
        encode(&batch, &mut buf);
        encode(&Frame::Refuse("x".into()), &mut buf);
        let mut d = Decoder::new();
        d.feed(&buf[..buf.len() - 1]);
        assert_eq!(d.next(), Ok(Some(batch)));
        assert_eq!(d.next(), Ok(None));
        d.feed(&buf[buf.len() - 1..]);
        assert_eq!(d.next(), Ok(Some(Frame::Refuse("x".into()))));
    }

    #[test]
    fn other_versions_are_refused_with_a_reason_naming_both() {
        for (version, upgrade) in [
            (SESSION.oldest - 1, "the source gateway's site"),
            (SESSION.current + 1, "the destination gateway's site"),
        ] {
            for kind in [Kind::Open, Kind::Resolve] {
                let mut body = Vec::new();
                put_preamble(&mut body, version);
                body.extend_from_slice(b"whatever that version sends");
                let mut d = Decoder::new();
                d.feed(&raw(kind.into(), &body));
                let e = d.next().unwrap_err();
                assert!(
                    matches!(e, WireError::Preamble(PreambleError::Version(_))),
                    "{e:?}"
                );
                let text = e.to_string();
                assert!(
                    text.contains(&format!("version {version}")) && text.contains(upgrade),
                    "{text}"
                );
            }
        }
        let e = SESSION.check(SESSION.current + 1).unwrap_err();
        assert!(matches!(e, VersionError::TooNew { .. }));
    }

    #[test]
    fn unknown_kinds_are_refused_when_essential_and_skipped_when_advisory() {
        let mut d = Decoder::new();
        d.feed(&raw(42, b""));
        assert_eq!(d.next(), Err(WireError::UnknownKind(SESSION.unknown(42))));

        let mut d = Decoder::new();
        d.feed(&raw(0xC3, b"advice"));
        d.feed(&to_bytes(&Frame::Ack(5)));
        assert_eq!(d.next(), Ok(Some(Frame::Ack(5))));
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut d = Decoder::new();
        d.feed(&[Kind::Batch.into(), 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            d.next(),
            Err(WireError::Frame(FrameError::TooLarge { .. }))
        ));

        let mut d = Decoder::new();
        d.feed(&raw(
            Kind::Nack.into(),
            &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0],
        ));
        assert!(matches!(
            d.next(),
            Err(WireError::Malformed(DecodeError::Invalid {
                what: "session nack",
                ..
            }))
        ));

        // A resolve whose flag is neither 0 nor 1.
        let mut body = Vec::new();
        put_preamble(&mut body, SESSION.current);
        body.push(7);
        let mut d = Decoder::new();
        d.feed(&raw(Kind::Resolve.into(), &body));
        assert!(matches!(
            d.next(),
            Err(WireError::Malformed(DecodeError::Invalid {
                what: "session resolve flag",
                ..
            }))
        ));

        let mut d = Decoder::new();
        d.feed(&raw(Kind::Resolved.into(), &[1, 1]));
        assert!(d.next().is_err());

        let mut d = Decoder::new();
        d.feed(&raw(Kind::Open.into(), b"NOTMAGIC\x03\0\0\0{}"));
        assert!(matches!(
            d.next(),
            Err(WireError::Preamble(PreambleError::BadMagic { .. }))
        ));

        let mut body = Vec::new();
        put_preamble(&mut body, SESSION.current);
        body.extend_from_slice(b"{not json");
        let mut d = Decoder::new();
        d.feed(&raw(Kind::Open.into(), &body));
        assert!(matches!(
            d.next(),
            Err(WireError::Malformed(DecodeError::Invalid {
                what: "session open request",
                ..
            }))
        ));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panicking(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            tag in 0u8..11,
        ) {
            let mut d = Decoder::new();
            d.feed(&bytes);
            while let Ok(Some(_)) = d.next() {}
            let _ = decode_body(Kind::from(tag), &bytes);
        }
    }
}
