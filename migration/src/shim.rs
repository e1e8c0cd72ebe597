//! The shim migration protocol, between a source and a destination shim
//! (or a gateway relaying between them), sans-IO: [`encode`] appends a
//! message as one frame, [`Decoder`] takes bytes and yields messages. The
//! shim's blocking stream helpers wrap these.
//!
//! Frames are wanmig-wire's `tag: u8 | length: u32 LE | body`, tags are
//! [`Kind`]s, and [`SHIM`] declares the protocol's versions under the
//! rule in [`crate::version`]. Every length and count is checked against
//! the bytes present and [`MAX_PAYLOAD`]; bad input is a
//! [`ProtocolError`], never a panic.
//!
//! Conversation (S = source, D = destination):
//! S→D `Hello` (preamble and the machine's shape), D→S `HelloAck` (or
//! `Abort`), S→D `Pages`* (each naming its pre-copy round: 0 is all of
//! memory, then the dirty pages of each later round, the last round
//! while paused), S→D `State`, S→D `Complete`, D→S `Confirmed(digest)`
//! once it holds and has applied complete state (the digest of the memory
//! it holds), S→D `Digest(digest)` of its own memory at the pause (hashed
//! while `Complete` travels, so the check costs no extra round trip), S→D
//! `Handover` only if the two digests are equal (S has released the VM),
//! D→S `Resumed`. The destination checks the source's digest too, and
//! aborts on a mismatch. Either side may send `Abort(reason)` instead.

use crate::messages::{MessageDecoder, Messages};
use wanmig_guest_abi::PAGE_SIZE;
use wanmig_wire::coding::Context;
use wanmig_wire::{write_frame, DecodeError, FrameError, Reader, WriteExt};

use crate::machine::MachineConfig;
use crate::version::{PreambleError, Protocol, UnknownKind};

/// The shim protocol and the versions this build speaks.
pub const SHIM: Protocol = Protocol {
    name: "shim migration protocol",
    magic: *b"WANMIGVM",
    current: 3,
    oldest: 3,
    opener: "the source shim",
    answerer: "the destination shim",
};
/// Largest body accepted (a page batch of 4096 pages plus headers).
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Pages per batch the sender uses.
pub const BATCH_PAGES: usize = 256;
const PAGE: usize = PAGE_SIZE as usize;

wanmig_wire::wire_enum! {
    /// The kind of a shim protocol message: its frame tag. All are
    /// essential (see [`crate::version`]).
    pub enum Kind(u8) {
        Hello = 1,
        HelloAck = 2,
        Pages = 3,
        State = 4,
        Complete = 5,
        Confirmed = 6,
        Handover = 7,
        Resumed = 8,
        Abort = 9,
        Digest = 10,
    }
}

/// A protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Opens a migration: the protocol version the source speaks and the
    /// machine's shape.
    Hello {
        version: u32,
        machine: MachineConfig,
    },
    /// The destination accepts.
    HelloAck,
    /// A batch of pages of pre-copy round `round` (0 = all of memory; the
    /// round sent while paused is the last).
    Pages { round: u32, batch: PageBatch },
    /// The VM state blob (the shim's saved vCPU and device state).
    State(Vec<u8>),
    /// All pages and the state are sent.
    Complete,
    /// The destination holds and has applied complete state; the memory
    /// digest of what it holds.
    Confirmed { digest: [u8; 32] },
    /// The source's memory digest at the pause.
    Digest { digest: [u8; 32] },
    /// The source has released the VM; the destination runs it.
    Handover,
    /// The destination is running the VM.
    Resumed,
    /// The sender gives up, with a reason for the operator.
    Abort(String),
}

impl Message {
    /// The message's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Message::Hello { .. } => Kind::Hello,
            Message::HelloAck => Kind::HelloAck,
            Message::Pages { .. } => Kind::Pages,
            Message::State(_) => Kind::State,
            Message::Complete => Kind::Complete,
            Message::Confirmed { .. } => Kind::Confirmed,
            Message::Digest { .. } => Kind::Digest,
            Message::Handover => Kind::Handover,
            Message::Resumed => Kind::Resumed,
            Message::Abort(_) => Kind::Abort,
        }
    }
}

/// A list of (guest frame number, 4 KiB page) pairs.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct PageBatch {
    gfns: Vec<u64>,
    data: Vec<u8>,
}

impl std::fmt::Debug for PageBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PageBatch({} pages)", self.gfns.len())
    }
}

impl PageBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a page.
    ///
    /// # Panics
    /// If `page` is not exactly 4 KiB (a caller bug: pages come from guest
    /// memory or a decoder, both in whole pages).
    pub fn push(&mut self, gfn: u64, page: &[u8]) {
        assert_eq!(page.len(), PAGE, "a page is 4 KiB");
        self.gfns.push(gfn);
        self.data.extend_from_slice(page);
    }

    /// Appends a page and returns its buffer to fill in place.
    pub fn push_zeroed(&mut self, gfn: u64) -> &mut [u8] {
        self.gfns.push(gfn);
        let start = self.data.len();
        self.data.resize(start + PAGE, 0);
        &mut self.data[start..]
    }

    /// Number of pages.
    pub fn len(&self) -> usize {
        self.gfns.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.gfns.is_empty()
    }

    /// The pages as (gfn, data) pairs.
    pub fn pages(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.gfns.iter().copied().zip(self.data.chunks_exact(PAGE))
    }

    /// Empties the batch, keeping its allocation.
    pub fn clear(&mut self) {
        self.gfns.clear();
        self.data.clear();
    }

    /// Bytes this batch takes on the wire as a `Pages` message (frame
    /// header, round and count included).
    pub fn wire_len(&self) -> u64 {
        (wanmig_wire::FRAME_HEADER_LEN + 4 + 4 + self.len() * (8 + PAGE)) as u64
    }
}

/// Errors decoding the protocol.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("shim migration stream: {0}")]
    Frame(#[from] FrameError),
    #[error(transparent)]
    UnknownKind(#[from] UnknownKind),
    #[error(transparent)]
    Preamble(#[from] PreambleError),
    #[error("malformed shim migration message: {0}")]
    Malformed(#[from] DecodeError),
}

/// Appends `msg` as one frame to `out`.
pub fn encode(msg: &Message, out: &mut Vec<u8>) {
    write_frame(out, msg.kind().into(), |out| match msg {
        Message::Hello { version, machine } => {
            out.put(crate::version::Preamble {
                magic: SHIM.magic,
                version: *version,
            });
            // Plain data (numbers and strings) always serialises.
            out.extend_from_slice(&serde_json::to_vec(machine).unwrap_or_default());
        }
        Message::Pages { round, batch } => {
            out.put(*round);
            out.put(batch.len() as u32);
            for (gfn, page) in batch.pages() {
                out.put(gfn);
                out.extend_from_slice(page);
            }
        }
        Message::State(blob) => out.extend_from_slice(blob),
        Message::Confirmed { digest } | Message::Digest { digest } => out.put(*digest),
        Message::Abort(reason) => out.extend_from_slice(reason.as_bytes()),
        Message::HelloAck | Message::Complete | Message::Handover | Message::Resumed => {}
    });
}

/// Parses the body of a frame of kind `kind` (a known kind: unknown ones
/// are [`Decoder`]'s business).
pub fn decode_body(kind: Kind, body: &[u8]) -> Result<Message, ProtocolError> {
    let mut r = Reader::new(body);
    let msg = match kind {
        Kind::Hello => {
            let version = SHIM.read_preamble(&mut r)?;
            let machine = serde_json::from_slice(r.rest())
                .map_err(|e| DecodeError::invalid("shim hello's machine", e.to_string()))?;
            Message::Hello { version, machine }
        }
        Kind::Pages => {
            let round = r.get::<u32>().ctx("shim pages round")?;
            let n = r.get::<u32>().ctx("shim pages count")? as usize;
            if n.checked_mul(8 + PAGE) != Some(r.remaining()) {
                return Err(DecodeError::invalid(
                    "shim pages message",
                    format!("{n} pages announced but {} bytes follow", r.remaining()),
                )
                .into());
            }
            let mut batch = PageBatch {
                gfns: Vec::with_capacity(n),
                data: Vec::with_capacity(n * PAGE),
            };
            for _ in 0..n {
                batch.gfns.push(r.get::<u64>().ctx("shim page number")?);
                batch
                    .data
                    .extend_from_slice(r.bytes(PAGE).ctx("shim page")?);
            }
            Message::Pages { round, batch }
        }
        Kind::State => Message::State(r.rest().to_vec()),
        Kind::Confirmed => Message::Confirmed {
            digest: r.get().ctx("shim confirmed digest")?,
        },
        Kind::Digest => Message::Digest {
            digest: r.get().ctx("shim digest")?,
        },
        Kind::Abort => Message::Abort(String::from_utf8_lossy(r.rest()).into_owned()),
        Kind::HelloAck => Message::HelloAck,
        Kind::Complete => Message::Complete,
        Kind::Handover => Message::Handover,
        Kind::Resumed => Message::Resumed,
        Kind::Unknown(tag) => return Err(SHIM.unknown(tag).into()),
    };
    r.finish("shim migration message")?;
    Ok(msg)
}

/// Incremental message decoder: feed bytes as they arrive, take whole
/// messages. Unknown advisory kinds are skipped; unknown essential kinds
/// are errors (see [`crate::version`]).
pub type Decoder = MessageDecoder<Message>;

impl Messages for Message {
    type Error = ProtocolError;
    const MAX_BODY: u32 = MAX_PAYLOAD;

    fn decode_frame(tag: u8, body: &[u8]) -> Result<Option<Message>, ProtocolError> {
        match Kind::from(tag) {
            Kind::Unknown(tag) => SHIM.unknown_kind(tag).map(|()| None).map_err(Into::into),
            kind => decode_body(kind, body).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::VersionError;
    use proptest::prelude::*;

    fn roundtrip(m: Message) {
        let mut buf = Vec::new();
        encode(&m, &mut buf);
        let mut d = Decoder::new();
        // Byte by byte: partial frames must wait, not fail.
        for (i, b) in buf.iter().enumerate() {
            assert_eq!(d.next(), Ok(None), "early message at byte {i}");
            d.feed(&[*b]);
        }
        assert_eq!(d.next(), Ok(Some(m)));
        assert_eq!(d.buffered(), 0);
    }

    fn machine() -> MachineConfig {
        MachineConfig {
            mem_size: 32 << 20,
            vcpus: 1,
            devices: vec!["virtio-net".into()],
        }
    }

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, tag, |o| o.extend_from_slice(body));
        out
    }

    fn hello_with_version(version: u32) -> Vec<u8> {
        let mut body = Vec::new();
        body.put(crate::version::Preamble {
            magic: SHIM.magic,
            version,
        });
        body.extend_from_slice(b"whatever that version sends");
        frame(Kind::Hello.into(), &body)
    }

    #[test]
    fn every_message_roundtrips() {
        let mut b = PageBatch::new();
        b.push(7, &[1u8; PAGE]);
        b.push_zeroed(9)[100] = 5;
        roundtrip(Message::Hello {
            version: SHIM.current,
            machine: machine(),
        });
        roundtrip(Message::HelloAck);
        roundtrip(Message::Pages { round: 4, batch: b });
        roundtrip(Message::Pages {
            round: 0,
            batch: PageBatch::new(),
        });
        roundtrip(Message::State(b"{\"version\":1}".to_vec()));
        roundtrip(Message::Complete);
        roundtrip(Message::Digest { digest: [5; 32] });
        roundtrip(Message::Confirmed { digest: [4; 32] });
        roundtrip(Message::Handover);
        roundtrip(Message::Resumed);
        roundtrip(Message::Abort("no room".into()));
    }

    #[test]
    fn pages_carry_their_round_on_the_wire() {
        let mut b = PageBatch::new();
        b.push_zeroed(3);
        let mut buf = Vec::new();
        encode(
            &Message::Pages {
                round: 0x0102_0304,
                batch: b,
            },
            &mut buf,
        );
        // tag, length, then the round and the page count.
        assert_eq!(buf[0], u8::from(Kind::Pages));
        assert_eq!(&buf[5..13], &[4, 3, 2, 1, 1, 0, 0, 0]);
    }

    #[test]
    fn batch_wire_len_matches_encoding() {
        let mut b = PageBatch::new();
        for g in 0..3 {
            b.push_zeroed(g);
        }
        let mut buf = Vec::new();
        encode(
            &Message::Pages {
                round: 1,
                batch: b.clone(),
            },
            &mut buf,
        );
        assert_eq!(buf.len() as u64, b.wire_len());
        let pages: Vec<u64> = b.pages().map(|(g, _)| g).collect();
        assert_eq!(pages, [0, 1, 2]);
    }

    #[test]
    fn bad_frames_are_errors() {
        let pages: u8 = Kind::Pages.into();
        let mut d = Decoder::new();
        d.feed(&[pages, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            d.next(),
            Err(ProtocolError::Frame(FrameError::TooLarge { .. }))
        ));

        // Page count that does not match the bytes.
        let mut d = Decoder::new();
        d.feed(&frame(pages, &[0, 0, 0, 0, 2, 0, 0, 0]));
        assert!(matches!(
            d.next(),
            Err(ProtocolError::Malformed(DecodeError::Invalid {
                what: "shim pages message",
                ..
            }))
        ));

        // A huge announced count must not allocate or overflow.
        let mut d = Decoder::new();
        d.feed(&frame(pages, &[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]));
        assert!(d.next().is_err());

        // No round: truncated.
        let mut d = Decoder::new();
        d.feed(&frame(pages, &[1, 2]));
        assert_eq!(
            d.next(),
            Err(ProtocolError::Malformed(DecodeError::Truncated {
                what: "shim pages round"
            }))
        );

        let mut d = Decoder::new();
        d.feed(&frame(Kind::Complete.into(), &[1, 2, 3]));
        assert!(matches!(
            d.next(),
            Err(ProtocolError::Malformed(DecodeError::Trailing { .. }))
        ));

        let mut d = Decoder::new();
        d.feed(&frame(Kind::Hello.into(), b"NOTMAGIC\x03\0\0\0{}"));
        assert!(matches!(
            d.next(),
            Err(ProtocolError::Preamble(PreambleError::BadMagic { .. }))
        ));

        let mut d = Decoder::new();
        d.feed(&frame(Kind::Confirmed.into(), &[0; 31]));
        assert!(d.next().is_err());
    }

    #[test]
    fn an_older_or_newer_hello_is_refused_with_a_reason() {
        let mut d = Decoder::new();
        d.feed(&hello_with_version(SHIM.oldest - 1));
        let e = d.next().unwrap_err();
        assert!(
            matches!(
                e,
                ProtocolError::Preamble(PreambleError::Version(VersionError::TooOld { .. }))
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("the source shim's site"), "{e}");

        let mut d = Decoder::new();
        d.feed(&hello_with_version(SHIM.current + 1));
        let e = d.next().unwrap_err();
        assert!(
            matches!(
                e,
                ProtocolError::Preamble(PreambleError::Version(VersionError::TooNew { .. }))
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("the destination shim's site"), "{e}");
    }

    #[test]
    fn unknown_kinds_are_refused_when_essential_and_skipped_when_advisory() {
        let mut d = Decoder::new();
        d.feed(&frame(42, b"from a newer build"));
        let e = d.next().unwrap_err();
        assert_eq!(
            e,
            ProtocolError::UnknownKind(UnknownKind {
                protocol: SHIM.name,
                tag: 42,
                version: SHIM.current
            })
        );
        assert!(e.to_string().contains("kind 42"), "{e}");

        let mut d = Decoder::new();
        d.feed(&frame(0xA0, b"a hint this build does not know"));
        let mut next = Vec::new();
        encode(&Message::Resumed, &mut next);
        d.feed(&next);
        assert_eq!(d.next(), Ok(Some(Message::Resumed)));
        assert_eq!(Kind::from(0xA0), Kind::Unknown(0xA0));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panicking(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            tag in 0u8..12,
        ) {
            // As a whole stream, and as the body of each kind.
            let mut d = Decoder::new();
            d.feed(&bytes);
            while let Ok(Some(_)) = d.next() {}
            let _ = decode_body(Kind::from(tag), &bytes);
        }
    }
}
