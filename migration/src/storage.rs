//! The storage relay's frames, sans-IO: the messages two gateways exchange
//! on a storage stream while a migrated VM's disk follows it. [`encode`]
//! appends a frame; [`decode_frame`] reads one frame's tag and body (the
//! gateway reads the header, then exactly the body, from its QUIC
//! stream). Frames are wanmig-wire's `tag: u8 | length: u32 LE | body`,
//! tags are [`Kind`]s, and [`STORAGE`] declares the versions under the
//! rule in [`crate::version`]. Decoding never panics: malformed input
//! from the wire is a [`WireError`].
//!
//! Conversation (D = destination gateway, S = source gateway), one stream
//! per lane: D→S `Open` (preamble, lane, disk name and geometry, maybe a
//! page-store inventory), S→D `Holes` (or `Error`, or `Released` when the
//! copy was finished before); then D→S `Request`/`RequestPlain`, S→D
//! `Block`s; D→S `Progress` now and then; finally D→S `Done`, S→D
//! `Released`. A stream that only asks a disk's size carries D→S
//! `QuerySize` (preamble, name) and S→D `Size` or `Error`.

use std::ops::Range;

use wanmig_wire::coding::Context;
use wanmig_wire::{write_frame, DecodeError, FrameError, Reader, WriteExt};

use crate::version::{Preamble, PreambleError, Protocol, UnknownKind};

/// The storage relay protocol and the versions this build speaks.
pub const STORAGE: Protocol = Protocol {
    name: "storage relay protocol",
    magic: *b"WMGSTOR1",
    current: 2,
    oldest: 2,
    opener: "the destination gateway",
    answerer: "the source gateway",
};
/// The largest frame body accepted (a 16 MiB block plus headers).
pub const MAX_FRAME: u32 = 17 << 20;

wanmig_wire::wire_enum! {
    /// The kind of a storage frame: its tag. `Progress` is advisory (a
    /// receiver that does not know it loses only a status line); the rest
    /// are essential (see [`crate::version`]).
    pub enum Kind(u8) {
        Open = 1,
        Holes = 2,
        Request = 3,
        Block = 4,
        Error = 5,
        Done = 6,
        Released = 7,
        QuerySize = 8,
        Size = 9,
        RequestPlain = 11,
        Progress = 0x8a,
    }
}

wanmig_wire::wire_enum! {
    /// Which lane a stream carries: on-demand fetches get their own stream
    /// with a higher send priority, so they never queue behind background
    /// data.
    pub enum Lane(u8) {
        OnDemand = 0,
        Background = 1,
    }
}

/// One message on a storage stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Destination → source, first frame of each lane's stream, in storage
    /// version `version`: which exported disk, with the geometry the
    /// destination expects.
    Open {
        version: u32,
        lane: Lane,
        name: String,
        disk_len: u64,
        block_size: u32,
        /// The destination's page-store inventory (`wanmig_codec::Inventory`
        /// bytes) when it dedups against one: the source may then send page
        /// references.
        inventory: Option<Vec<u8>>,
    },
    /// Source → destination, answer to `Open`: block ranges that are holes.
    Holes(Vec<Range<u64>>),
    /// Destination → source: send these blocks.
    Request { first_block: u64, count: u32 },
    /// Destination → source: send these blocks without page references (a
    /// reference did not resolve here).
    RequestPlain { first_block: u64, count: u32 },
    /// Source → destination: one block's payload (`wanmig_storage::wire`).
    Block { block: u64, payload: Vec<u8> },
    /// Either way: the operation failed (or the stream is refused); the
    /// text says why.
    Error(String),
    /// Destination → source: every block is local and durable; `digest` is
    /// the end-of-copy check (`wanmig_storage::verify`) over the blocks not
    /// in `written` (the guest's writes at the destination, a serialized
    /// `wanmig_storage::PresenceBitmap`). Sent again after a reconnect
    /// until `Released` arrives (the source answers idempotently).
    Done { digest: [u8; 32], written: Vec<u8> },
    /// Source → destination: the check passed and the source copy was
    /// released by policy. Also the answer to an `Open` of a disk already
    /// released (its `Released` was lost with the link).
    Released,
    /// Destination → source, now and then: how far the copy is (shown by
    /// the source's `wanmig migrate`). Advisory.
    Progress {
        local_blocks: u64,
        total_blocks: u64,
    },
    /// Destination → source, alone on a stream, in storage version
    /// `version`: how long is exported disk `name`? (The destination of a
    /// VM migration learns the size this way before it creates its copy.)
    QuerySize { version: u32, name: String },
    /// Source → destination, answer to `QuerySize`: the size, and whether
    /// the destination should run the background copy at once (`false`
    /// after `wanmig migrate --no-storage`: on-demand reads only until
    /// `wanmig storage migrate`).
    Size { len: u64, background: bool },
}

impl Frame {
    /// The frame's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Frame::Open { .. } => Kind::Open,
            Frame::Holes(_) => Kind::Holes,
            Frame::Request { .. } => Kind::Request,
            Frame::RequestPlain { .. } => Kind::RequestPlain,
            Frame::Block { .. } => Kind::Block,
            Frame::Error(_) => Kind::Error,
            Frame::Done { .. } => Kind::Done,
            Frame::Released => Kind::Released,
            Frame::Progress { .. } => Kind::Progress,
            Frame::QuerySize { .. } => Kind::QuerySize,
            Frame::Size { .. } => Kind::Size,
        }
    }

    /// The frame with its header, in a fresh buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        encode(self, &mut out);
        out
    }
}

/// A malformed or unacceptable storage frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("storage stream: {0}")]
    Frame(#[from] FrameError),
    #[error(transparent)]
    UnknownKind(#[from] UnknownKind),
    #[error(transparent)]
    Preamble(#[from] PreambleError),
    #[error("malformed storage frame: {0}")]
    Malformed(#[from] DecodeError),
}

fn put_preamble(out: &mut Vec<u8>, version: u32) {
    out.put(Preamble {
        magic: STORAGE.magic,
        version,
    });
}

/// Appends `frame` to `out`.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    write_frame(out, frame.kind().into(), |b| match frame {
        Frame::Open {
            version,
            lane,
            name,
            disk_len,
            block_size,
            inventory,
        } => {
            put_preamble(b, *version);
            b.put(*lane);
            b.put(*disk_len);
            b.put(*block_size);
            b.put_len_prefixed(name.as_bytes());
            match inventory {
                Some(inv) => {
                    b.put(1u8);
                    b.extend_from_slice(inv);
                }
                None => b.put(0u8),
            }
        }
        Frame::Holes(h) => {
            for r in h {
                b.put(r.start);
                b.put(r.end);
            }
        }
        Frame::Request { first_block, count } | Frame::RequestPlain { first_block, count } => {
            b.put(*first_block);
            b.put(*count);
        }
        Frame::Block { block, payload } => {
            b.put(*block);
            b.extend_from_slice(payload);
        }
        Frame::Error(m) => b.extend_from_slice(m.as_bytes()),
        Frame::Done { digest, written } => {
            b.put(*digest);
            b.extend_from_slice(written);
        }
        Frame::Progress {
            local_blocks,
            total_blocks,
        } => {
            b.put(*local_blocks);
            b.put(*total_blocks);
        }
        Frame::Released => {}
        Frame::QuerySize { version, name } => {
            put_preamble(b, *version);
            b.extend_from_slice(name.as_bytes());
        }
        Frame::Size { len, background } => {
            b.put(*len);
            b.put(u8::from(*background));
        }
    });
}

fn flag(r: &mut Reader<'_>, what: &'static str) -> Result<bool, DecodeError> {
    match r.get::<u8>().ctx(what)? {
        0 => Ok(false),
        1 => Ok(true),
        f => Err(DecodeError::invalid(what, format!("{f}; expected 0 or 1"))),
    }
}

fn utf8(bytes: &[u8], what: &'static str) -> Result<String, DecodeError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::invalid(what, "not UTF-8"))
}

/// Decodes one frame from its tag and body: `Ok(None)` for an advisory
/// kind this build does not know (skip it), an error for an unknown
/// essential one (see [`crate::version`]).
pub fn decode_frame(tag: u8, body: &[u8]) -> Result<Option<Frame>, WireError> {
    let mut r = Reader::new(body);
    let f = match Kind::from(tag) {
        Kind::Unknown(tag) => {
            STORAGE.unknown_kind(tag)?;
            return Ok(None);
        }
        Kind::Open => {
            let version = STORAGE.read_preamble(&mut r)?;
            let lane = r.get::<Lane>().ctx("storage open lane")?;
            if let Lane::Unknown(l) = lane {
                return Err(DecodeError::invalid("storage open lane", format!("{l}")).into());
            }
            let disk_len = r.get().ctx("storage open disk_len")?;
            let block_size = r.get().ctx("storage open block_size")?;
            let name = utf8(
                r.len_prefixed().ctx("storage open name")?,
                "storage open name",
            )?;
            let inventory = flag(&mut r, "storage open inventory flag")?.then(|| r.rest().to_vec());
            Frame::Open {
                version,
                lane,
                name,
                disk_len,
                block_size,
                inventory,
            }
        }
        Kind::Holes => {
            if r.remaining() % 16 != 0 {
                return Err(DecodeError::Truncated {
                    what: "storage hole range",
                }
                .into());
            }
            let mut h = Vec::with_capacity(r.remaining() / 16);
            while !r.is_empty() {
                let s = r.get::<u64>().ctx("storage hole start")?;
                let e = r.get::<u64>().ctx("storage hole end")?;
                if e < s {
                    return Err(DecodeError::invalid(
                        "storage hole range",
                        format!("{s}..{e} ends before it starts"),
                    )
                    .into());
                }
                h.push(s..e);
            }
            Frame::Holes(h)
        }
        Kind::Request => Frame::Request {
            first_block: r.get().ctx("storage request first_block")?,
            count: r.get().ctx("storage request count")?,
        },
        Kind::RequestPlain => Frame::RequestPlain {
            first_block: r.get().ctx("storage request first_block")?,
            count: r.get().ctx("storage request count")?,
        },
        Kind::Block => Frame::Block {
            block: r.get().ctx("storage block number")?,
            payload: r.rest().to_vec(),
        },
        Kind::Error => Frame::Error(String::from_utf8_lossy(r.rest()).into_owned()),
        Kind::Done => Frame::Done {
            digest: r.get().ctx("storage done digest")?,
            written: r.rest().to_vec(),
        },
        Kind::Progress => Frame::Progress {
            local_blocks: r.get().ctx("storage progress local_blocks")?,
            total_blocks: r.get().ctx("storage progress total_blocks")?,
        },
        Kind::Released => Frame::Released,
        Kind::QuerySize => {
            let version = STORAGE.read_preamble(&mut r)?;
            Frame::QuerySize {
                version,
                name: utf8(r.rest(), "storage query name")?,
            }
        }
        Kind::Size => Frame::Size {
            len: r.get().ctx("storage size")?,
            background: flag(&mut r, "storage size background flag")?,
        },
    };
    r.finish("storage frame")?;
    Ok(Some(f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::VersionError;
    use proptest::prelude::*;

    fn split(bytes: &[u8]) -> (u8, &[u8]) {
        let f = wanmig_wire::split_frame(bytes, MAX_FRAME).unwrap().unwrap();
        assert_eq!(f.used, bytes.len());
        (f.tag, f.body)
    }

    fn round_trip(f: Frame) {
        let bytes = f.to_bytes();
        let (tag, body) = split(&bytes);
        assert_eq!(decode_frame(tag, body).unwrap(), Some(f));
    }

    fn decode(tag: Kind, body: &[u8]) -> Result<Option<Frame>, WireError> {
        decode_frame(tag.into(), body)
    }

    fn open() -> Frame {
        Frame::Open {
            version: STORAGE.current,
            lane: Lane::OnDemand,
            name: "d".into(),
            disk_len: 1,
            block_size: 2,
            inventory: Some(vec![9; 5]),
        }
    }

    #[test]
    fn every_frame_round_trips() {
        round_trip(Frame::Open {
            version: STORAGE.current,
            lane: Lane::Background,
            name: "vm-1.img".into(),
            disk_len: 16 << 20,
            block_size: 65536,
            inventory: Some(vec![1, 2, 3]),
        });
        round_trip(Frame::Open {
            version: STORAGE.current,
            lane: Lane::OnDemand,
            name: "vm-1.img".into(),
            disk_len: 16 << 20,
            block_size: 65536,
            inventory: None,
        });
        round_trip(Frame::RequestPlain {
            first_block: 3,
            count: 2,
        });
        round_trip(Frame::QuerySize {
            version: STORAGE.current,
            name: "vm-1".into(),
        });
        round_trip(Frame::Size {
            len: 16 << 20,
            background: false,
        });
        round_trip(Frame::Progress {
            local_blocks: 5,
            total_blocks: 9,
        });
        round_trip(Frame::Holes(vec![0..3, 10..200]));
        round_trip(Frame::Holes(vec![]));
        round_trip(Frame::Request {
            first_block: 7,
            count: 9,
        });
        round_trip(Frame::Block {
            block: 3,
            payload: vec![1, 2, 3],
        });
        round_trip(Frame::Error("no such disk".into()));
        round_trip(Frame::Done {
            digest: [7; 32],
            written: vec![1, 2, 3],
        });
        round_trip(Frame::Released);
    }

    #[test]
    fn the_tag_comes_first() {
        let bytes = Frame::Request {
            first_block: 1,
            count: 2,
        }
        .to_bytes();
        assert_eq!(&bytes[..5], &[u8::from(Kind::Request), 12, 0, 0, 0]);
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        assert!(matches!(
            decode(Kind::Request, &[1, 2]),
            Err(WireError::Malformed(DecodeError::Truncated {
                what: "storage request first_block"
            }))
        ));
        let mut bad_lane = open().to_bytes();
        bad_lane[5 + 12] = 5;
        let (tag, body) = split(&bad_lane);
        assert!(matches!(
            decode_frame(tag, body),
            Err(WireError::Malformed(DecodeError::Invalid {
                what: "storage open lane",
                ..
            }))
        ));
        let mut holes = Vec::new();
        holes.put(5u64);
        holes.put(2u64);
        assert!(matches!(
            decode(Kind::Holes, &holes),
            Err(WireError::Malformed(DecodeError::Invalid {
                what: "storage hole range",
                ..
            }))
        ));
        assert!(matches!(
            decode(Kind::Done, &[0]),
            Err(WireError::Malformed(DecodeError::Truncated {
                what: "storage done digest"
            }))
        ));
        assert!(matches!(
            decode(Kind::Released, &[0]),
            Err(WireError::Malformed(DecodeError::Trailing { .. }))
        ));
        // Every prefix of a valid frame's body decodes or fails cleanly.
        let full = open().to_bytes();
        for n in 0..full.len() - 5 {
            let _ = decode(Kind::Open, &full[5..5 + n]);
        }
    }

    #[test]
    fn other_versions_are_refused_with_a_reason() {
        for f in [
            open(),
            Frame::QuerySize {
                version: STORAGE.current,
                name: "d".into(),
            },
        ] {
            let mut bytes = f.to_bytes();
            // The version follows the tag, the length and the magic.
            bytes[13..17].copy_from_slice(&(STORAGE.current + 1).to_le_bytes());
            let (tag, body) = split(&bytes);
            let e = decode_frame(tag, body).unwrap_err();
            assert!(
                matches!(
                    e,
                    WireError::Preamble(PreambleError::Version(VersionError::TooNew { .. }))
                ),
                "{e:?}"
            );
            assert!(e.to_string().contains("the source gateway's site"), "{e}");
            bytes[13..17].copy_from_slice(&(STORAGE.oldest - 1).to_le_bytes());
            let (tag, body) = split(&bytes);
            let e = decode_frame(tag, body).unwrap_err();
            assert!(
                e.to_string().contains("the destination gateway's site"),
                "{e}"
            );
        }
    }

    #[test]
    fn unknown_kinds_are_refused_when_essential_and_skipped_when_advisory() {
        assert_eq!(
            decode_frame(99, &[]),
            Err(WireError::UnknownKind(STORAGE.unknown(99)))
        );
        assert_eq!(decode_frame(0x9b, b"some newer status"), Ok(None));
        // Progress itself is advisory: an older build would skip it.
        assert_eq!(
            crate::version::TagClass::of(Kind::Progress.into()),
            crate::version::TagClass::Advisory
        );
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panicking(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            tag in any::<u8>(),
        ) {
            let _ = decode_frame(tag, &bytes);
            if let Ok(Some(f)) = wanmig_wire::split_frame(&bytes, MAX_FRAME) {
                let _ = decode_frame(f.tag, f.body);
            }
        }
    }
}
