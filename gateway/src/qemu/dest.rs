//! The destination gateway's side of a QEMU relay, sans-IO: [`Frame`]s from
//! the peer in, [`Action`]s out (connect a channel to the destination
//! QEMU, write bytes to it, close it, send NACKs back). Each channel keeps
//! its events in order; a page whose content the codec could not resolve
//! (a NACKed reference) holds its channel back until the fill, or a newer
//! version of the same page, arrives. Channels never wait for each other.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use wanmig_codec::{CodecError, ContentStore, Decoder, DecoderStats, Fingerprint, Gfn};
use wanmig_qemu_stream::{
    EmitError, Emitter, Event, Page, PageFraming, PageIdError, PageIds, ZeroPage,
};

use super::frames::{Frame, PageSlot, SlotKind};

/// Why the destination side cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum DestError {
    #[error(
        "the source gateway named channel {0} before opening it (a relay bug or a mismatched peer)"
    )]
    NoChannel(u8),
    #[error("the source gateway opened channel {got}, expected {want}")]
    ChannelOrder { got: u8, want: u8 },
    #[error("numbering the source's RAMBlocks: {0}")]
    PageIds(#[from] PageIdError),
    #[error("{0} names a RAMBlock the source gateway never defined")]
    UnknownBlock(Gfn),
    #[error("decoding pages: {0}")]
    Codec(#[from] CodecError),
    #[error("a pages frame's batches do not match its slots: {0}")]
    Mismatch(&'static str),
    #[error("re-emitting channel {ch}: {source}")]
    Emit {
        ch: u8,
        #[source]
        source: EmitError,
    },
    #[error("unexpected {0} frame on an open relay")]
    Unexpected(&'static str),
}

/// What the edge must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Connect channel `0` to the destination QEMU (channels open in
    /// number order; the main channel, 0, first).
    Open(u8),
    /// Write these bytes to the channel, after everything written before.
    Write(u8, Bytes),
    /// The channel's last bytes were written: close it.
    Close(u8),
    /// Send these NACKs to the source gateway.
    Nacks(Vec<(Gfn, Fingerprint)>),
}

enum Slot {
    Ready(Event),
    /// A page whose content is not here yet.
    Wait {
        gfn: Gfn,
        framing: PageFraming,
    },
}

#[derive(Default)]
struct Channel {
    emitter: Emitter,
    slots: VecDeque<Slot>,
    ended: bool,
    closed: bool,
}

/// What the destination side wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestStats {
    /// Bytes re-emitted into the destination QEMU, all channels.
    pub qemu_bytes: u64,
    /// Pages whose data came through the codec.
    pub pages: u64,
    /// Pages that waited for a NACKed reference's content.
    pub waited: u64,
    /// Channels the source relayed unreduced, and why.
    pub passthrough: Vec<(u8, String)>,
}

/// The destination side of one QEMU migration's relay.
pub struct DestRelay<S: ContentStore> {
    decoder: Decoder<S>,
    ids: PageIds,
    channels: Vec<Channel>,
    /// Pages some channel waits for, by gfn.
    waiting: HashMap<Gfn, u32>,
    stats: DestStats,
}

impl<S: ContentStore> DestRelay<S> {
    pub fn new(decoder: Decoder<S>) -> Self {
        DestRelay {
            decoder,
            ids: PageIds::new(),
            channels: Vec::new(),
            waiting: HashMap::new(),
            stats: DestStats::default(),
        }
    }

    pub fn stats(&self) -> &DestStats {
        &self.stats
    }

    pub fn decoder_stats(&self) -> DecoderStats {
        self.decoder.stats()
    }

    pub fn decoder(&self) -> &Decoder<S> {
        &self.decoder
    }

    /// Whether every channel opened so far ended and was written out, and
    /// no page is missing.
    pub fn finished(&self) -> bool {
        !self.channels.is_empty()
            && self.channels.iter().all(|c| c.closed)
            && self.decoder.pending_count() == 0
    }

    /// Handles one frame from the source gateway.
    pub fn on_frame(&mut self, frame: Frame, actions: &mut Vec<Action>) -> Result<(), DestError> {
        match frame {
            Frame::Channel(ch) => {
                let want = self.channels.len();
                if usize::from(ch) != want {
                    return Err(DestError::ChannelOrder {
                        got: ch,
                        want: want as u8,
                    });
                }
                self.channels.push(Channel::default());
                actions.push(Action::Open(ch));
            }
            Frame::Verbatim { ch, bytes } => {
                self.channel(ch)?
                    .slots
                    .push_back(Slot::Ready(Event::Verbatim(bytes)));
                self.drain(ch, actions)?;
            }
            Frame::Meta { ch, event } => {
                self.channel(ch)?.slots.push_back(Slot::Ready(event));
                self.drain(ch, actions)?;
            }
            Frame::Passthrough { ch, reason } => {
                self.channel(ch)?;
                self.stats.passthrough.push((ch, reason));
            }
            Frame::Block { number, name } => self.ids.define(number, name)?,
            Frame::Pages { ch, slots, batches } => {
                self.channel(ch)?;
                self.pages(ch, slots, &batches, actions)?;
                self.drain(ch, actions)?;
            }
            Frame::Fill(batches) => {
                for b in &batches {
                    let d = self.decoder.decode(b)?;
                    if !d.nacks.is_empty() {
                        actions.push(Action::Nacks(d.nacks));
                    }
                    for (gfn, page) in d.pages {
                        self.fill_waits(gfn, &page)?;
                    }
                }
                for ch in 0..self.channels.len() as u8 {
                    self.drain(ch, actions)?;
                }
            }
            Frame::End(ch) => {
                self.channel(ch)?.ended = true;
                self.drain(ch, actions)?;
            }
            Frame::Open { .. } => return Err(DestError::Unexpected("open")),
            Frame::Accept { .. } => return Err(DestError::Unexpected("accept")),
            Frame::Refuse(_) => return Err(DestError::Unexpected("refuse")),
            Frame::Nacks(_) => return Err(DestError::Unexpected("nacks")),
            Frame::ReturnPath(_) => return Err(DestError::Unexpected("return-path")),
            Frame::Done(_) => return Err(DestError::Unexpected("done")),
            Frame::Abort(_) => return Err(DestError::Unexpected("abort")),
        }
        Ok(())
    }

    fn channel(&mut self, ch: u8) -> Result<&mut Channel, DestError> {
        self.channels
            .get_mut(ch as usize)
            .ok_or(DestError::NoChannel(ch))
    }

    fn locate(&self, gfn: Gfn) -> Result<(wanmig_qemu_stream::BlockName, u64), DestError> {
        self.ids
            .locate(gfn.0)
            .map(|(b, o)| (b.clone(), o))
            .ok_or(DestError::UnknownBlock(gfn))
    }

    fn pages(
        &mut self,
        ch: u8,
        slots: Vec<PageSlot>,
        batches: &[Bytes],
        actions: &mut Vec<Action>,
    ) -> Result<(), DestError> {
        let mut decoded = VecDeque::new();
        let mut nacked: HashMap<Gfn, u32> = HashMap::new();
        for b in batches {
            let d = self.decoder.decode(b)?;
            for &(gfn, _) in &d.nacks {
                *nacked.entry(gfn).or_default() += 1;
            }
            if !d.nacks.is_empty() {
                actions.push(Action::Nacks(d.nacks));
            }
            decoded.extend(d.pages);
        }
        for slot in slots {
            let (block, offset) = self.locate(slot.gfn)?;
            let entry = match slot.kind {
                SlotKind::Zero { continued } => Slot::Ready(Event::Zero(ZeroPage {
                    block,
                    offset,
                    fill: 0,
                    continued,
                })),
                SlotKind::Page(framing) => {
                    if decoded.front().is_some_and(|(g, _)| *g == slot.gfn) {
                        let (_, page) = decoded.pop_front().expect("just looked");
                        // A newer version also answers older waits for
                        // this page (the source sends no fill for a
                        // superseded version).
                        self.fill_waits(slot.gfn, &page)?;
                        self.stats.pages += 1;
                        Slot::Ready(Event::Page(Page {
                            block,
                            offset,
                            data: Bytes::copy_from_slice(&page[..]),
                            framing,
                        }))
                    } else if let Some(n) = nacked.get_mut(&slot.gfn).filter(|n| **n > 0) {
                        *n -= 1;
                        *self.waiting.entry(slot.gfn).or_default() += 1;
                        self.stats.waited += 1;
                        Slot::Wait {
                            gfn: slot.gfn,
                            framing,
                        }
                    } else {
                        return Err(DestError::Mismatch("a page slot has no page"));
                    }
                }
            };
            self.channel(ch)?.slots.push_back(entry);
        }
        if !decoded.is_empty() {
            return Err(DestError::Mismatch("more pages than slots"));
        }
        Ok(())
    }

    /// Puts `page` into every slot waiting for `gfn`.
    fn fill_waits(&mut self, gfn: Gfn, page: &[u8; 4096]) -> Result<(), DestError> {
        if self.waiting.remove(&gfn).is_none() {
            return Ok(());
        }
        let (block, offset) = self.locate(gfn)?;
        for c in &mut self.channels {
            for s in c.slots.iter_mut() {
                if let Slot::Wait { gfn: g, framing } = *s {
                    if g == gfn {
                        self.stats.pages += 1;
                        *s = Slot::Ready(Event::Page(Page {
                            block: block.clone(),
                            offset,
                            data: Bytes::copy_from_slice(page),
                            framing,
                        }));
                    }
                }
            }
        }
        Ok(())
    }

    /// Emits channel `ch`'s ready events up to its first waiting page.
    fn drain(&mut self, ch: u8, actions: &mut Vec<Action>) -> Result<(), DestError> {
        let c = self
            .channels
            .get_mut(ch as usize)
            .ok_or(DestError::NoChannel(ch))?;
        let mut out = Vec::new();
        loop {
            match c.slots.pop_front() {
                Some(Slot::Ready(ev)) => c
                    .emitter
                    .emit(&ev, &mut out)
                    .map_err(|source| DestError::Emit { ch, source })?,
                Some(wait) => {
                    c.slots.push_front(wait);
                    break;
                }
                None => break,
            }
        }
        if !out.is_empty() {
            self.stats.qemu_bytes += out.len() as u64;
            actions.push(Action::Write(ch, Bytes::from(out)));
        }
        if c.ended && !c.closed && c.slots.is_empty() {
            c.closed = true;
            actions.push(Action::Close(ch));
        }
        Ok(())
    }
}
