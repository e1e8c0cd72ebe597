//! The one frame format of wanmig's stream protocols (the shim protocol,
//! the gateway migration session, the storage relay):
//!
//! ```text
//! tag: u8 | length: u32 LE | body[length]
//! ```
//!
//! The tag says what the body is (each protocol declares its tags with
//! [`crate::wire_enum!`]); the length is checked against the protocol's limit
//! as soon as the header is in, before any of the body is buffered, so a
//! hostile length cannot make a receiver allocate.

use bytes::{Buf, Bytes, BytesMut};

use crate::coding::WriteExt;

/// Bytes of a frame header: the tag and the length.
pub const FRAME_HEADER_LEN: usize = 5;

/// A frame that cannot be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes; the stream is corrupt or the peer is incompatible")]
    TooLarge { len: u32, max: u32 },
}

/// One received frame, its body not yet parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub tag: u8,
    pub body: Bytes,
}

/// Appends one frame: `body` writes the body, the length is filled in after.
///
/// # Panics
/// If the body reaches 4 GiB (no wanmig frame comes near; a caller bug).
pub fn write_frame(out: &mut Vec<u8>, tag: u8, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.push(tag);
    out.put(0u32);
    body(out);
    let len = out.len() - start - FRAME_HEADER_LEN;
    let len = u32::try_from(len).expect("a frame body is below 4 GiB");
    out[start + 1..start + FRAME_HEADER_LEN].copy_from_slice(&len.to_le_bytes());
}

/// A frame found at the front of a byte slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitFrame<'a> {
    pub tag: u8,
    pub body: &'a [u8],
    /// Bytes of the slice the frame took, header included.
    pub used: usize,
}

/// Splits the first whole frame off `buf`, or `None` if `buf` holds less
/// than one frame.
pub fn split_frame(buf: &[u8], max_body: u32) -> Result<Option<SplitFrame<'_>>, FrameError> {
    let Some((tag, len)) = header(buf) else {
        return Ok(None);
    };
    if len > max_body {
        return Err(FrameError::TooLarge { len, max: max_body });
    }
    let end = FRAME_HEADER_LEN + len as usize;
    Ok((buf.len() >= end).then(|| SplitFrame {
        tag,
        body: &buf[FRAME_HEADER_LEN..end],
        used: end,
    }))
}

fn header(buf: &[u8]) -> Option<(u8, u32)> {
    let h: &[u8; FRAME_HEADER_LEN] = buf.get(..FRAME_HEADER_LEN)?.try_into().ok()?;
    Some((h[0], u32::from_le_bytes([h[1], h[2], h[3], h[4]])))
}

/// The tag and body length of a frame header, for a reader that takes
/// the header and then exactly the body from its stream (no decoder
/// buffer in between).
pub fn frame_header(h: &[u8; FRAME_HEADER_LEN], max_body: u32) -> Result<(u8, u32), FrameError> {
    let (tag, len) = (h[0], u32::from_le_bytes([h[1], h[2], h[3], h[4]]));
    if len > max_body {
        return Err(FrameError::TooLarge { len, max: max_body });
    }
    Ok((tag, len))
}

/// Incremental frame decoder: feed bytes as they arrive, take whole frames.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_body: u32,
}

impl FrameDecoder {
    /// A decoder that refuses bodies longer than `max_body` bytes.
    pub fn new(max_body: u32) -> Self {
        FrameDecoder {
            buf: BytesMut::new(),
            max_body,
        }
    }

    /// Adds received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet taken as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes the next frame still needs before [`FrameDecoder::next`] can
    /// yield it: at least 1 while incomplete, 0 when a frame is ready (or
    /// its header is already known to be bad).
    pub fn wanted(&self) -> usize {
        match header(&self.buf) {
            None => FRAME_HEADER_LEN - self.buf.len(),
            Some((_, len)) if len > self.max_body => 0,
            Some((_, len)) => (FRAME_HEADER_LEN + len as usize).saturating_sub(self.buf.len()),
        }
    }

    /// The next whole frame; `Ok(None)` when more bytes are needed. A frame
    /// over the limit is an error every time it is asked for: the stream
    /// cannot be resynchronised.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<RawFrame>, FrameError> {
        let Some((tag, len)) = header(&self.buf) else {
            return Ok(None);
        };
        if len > self.max_body {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_body,
            });
        }
        let end = FRAME_HEADER_LEN + len as usize;
        if self.buf.len() < end {
            // The header passed the limit: room for the rest is bounded.
            self.buf.reserve(end - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(FRAME_HEADER_LEN);
        let body = self.buf.split_to(len as usize).freeze();
        Ok(Some(RawFrame { tag, body }))
    }

    /// Takes whatever is buffered beyond the frames already taken (for a
    /// stream that changes protocol after its last frame).
    pub fn take_buffered(&mut self) -> Bytes {
        self.buf.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, tag, |o| o.extend_from_slice(body));
        out
    }

    #[test]
    fn a_frame_is_tag_length_body() {
        assert_eq!(frame(7, b"ab"), vec![7, 2, 0, 0, 0, b'a', b'b']);
        assert_eq!(frame(1, b""), vec![1, 0, 0, 0, 0]);
    }

    #[test]
    fn frames_come_out_whole_however_the_bytes_arrive() {
        let mut stream = frame(1, b"hello");
        stream.extend(frame(2, b""));
        stream.extend(frame(3, &[0xAB; 1000]));
        for chunk in [1, 2, 5, 7, 999, stream.len()] {
            let mut d = FrameDecoder::new(4096);
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                d.feed(piece);
                while let Some(f) = d.next().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got.len(), 3, "chunk {chunk}");
            assert_eq!((got[0].tag, &got[0].body[..]), (1, &b"hello"[..]));
            assert_eq!((got[1].tag, got[1].body.len()), (2, 0));
            assert_eq!((got[2].tag, got[2].body.len()), (3, 1000));
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn wanted_counts_down_to_a_whole_frame() {
        let f = frame(9, b"abcd");
        let mut d = FrameDecoder::new(16);
        assert_eq!(d.wanted(), 5);
        d.feed(&f[..3]);
        assert_eq!(d.wanted(), 2);
        d.feed(&f[3..6]);
        assert_eq!(d.wanted(), 3);
        d.feed(&f[6..]);
        assert_eq!(d.wanted(), 0);
        assert!(d.next().unwrap().is_some());
        assert_eq!(d.wanted(), 5);
    }

    #[test]
    fn an_oversized_length_is_refused_from_the_header_alone() {
        let mut d = FrameDecoder::new(100);
        d.feed(&[1, 0xFF, 0xFF, 0xFF, 0xFF]);
        assert_eq!(d.wanted(), 0);
        let e = FrameError::TooLarge {
            len: u32::MAX,
            max: 100,
        };
        assert_eq!(d.next(), Err(e));
        assert_eq!(d.next(), Err(e), "the error sticks");
        assert_eq!(
            split_frame(&[1, 101, 0, 0, 0], 100).unwrap_err(),
            FrameError::TooLarge { len: 101, max: 100 }
        );
    }

    #[test]
    fn a_header_alone_gives_tag_and_length() {
        let f = frame(6, b"body");
        let h: &[u8; FRAME_HEADER_LEN] = f[..FRAME_HEADER_LEN].try_into().unwrap();
        assert_eq!(frame_header(h, 4), Ok((6, 4)));
        assert_eq!(
            frame_header(h, 3),
            Err(FrameError::TooLarge { len: 4, max: 3 })
        );
    }

    #[test]
    fn split_frame_reports_what_it_used() {
        let mut s = frame(4, b"xyz");
        s.push(0xEE);
        let f = split_frame(&s, 10).unwrap().unwrap();
        assert_eq!((f.tag, f.body, f.used), (4, &b"xyz"[..], 8));
        assert_eq!(split_frame(&s[..7], 10).unwrap(), None);
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..2048), max in 0u32..512) {
            let mut d = FrameDecoder::new(max);
            d.feed(&bytes);
            for _ in 0..bytes.len() + 1 {
                match d.next() {
                    Ok(Some(f)) => prop_assert!(f.body.len() <= max as usize),
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
