//! The one incremental decoder of the stream protocols ([`MessageDecoder`]):
//! feed bytes as they arrive, take whole messages. Each protocol says how
//! to read one frame ([`Messages`]); the decoder applies the versioning
//! rule of [`crate::version`] to the kinds it does not know, skipping
//! advisory ones and ending the stream on essential ones.

use std::marker::PhantomData;

use wanmig_wire::{FrameDecoder, FrameError};

/// A protocol's messages, as [`MessageDecoder`] reads them.
pub trait Messages: Sized {
    /// What ends the stream: bad framing, an unknown essential kind, a
    /// malformed body.
    type Error: From<FrameError>;
    /// Largest frame body the protocol allows.
    const MAX_BODY: u32;

    /// Reads the body of one frame of tag `tag`: `Ok(None)` for an
    /// advisory kind this build does not know (the decoder skips it), an
    /// error for an unknown essential kind or a malformed body.
    fn decode_frame(tag: u8, body: &[u8]) -> Result<Option<Self>, Self::Error>;
}

/// Incremental decoder of `M` messages.
#[derive(Debug)]
pub struct MessageDecoder<M> {
    frames: FrameDecoder,
    messages: PhantomData<fn() -> M>,
}

impl<M: Messages> Default for MessageDecoder<M> {
    fn default() -> Self {
        MessageDecoder {
            frames: FrameDecoder::new(M::MAX_BODY),
            messages: PhantomData,
        }
    }
}

impl<M: Messages> MessageDecoder<M> {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.frames.feed(bytes);
    }

    /// Bytes the next frame still needs before [`MessageDecoder::next`]
    /// can yield it (at least 1 when incomplete, 0 when a frame is ready).
    pub fn wanted(&self) -> usize {
        self.frames.wanted()
    }

    /// Bytes received but not yet returned as messages.
    pub fn buffered(&self) -> usize {
        self.frames.buffered()
    }

    /// The next whole message, `Ok(None)` when more bytes are needed.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<M>, M::Error> {
        while let Some(frame) = self.frames.next()? {
            if let Some(m) = M::decode_frame(frame.tag, &frame.body)? {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }
}
