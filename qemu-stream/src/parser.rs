//! [`Parser`]: bytes of one channel in (any chunking), [`Event`]s out.
//!
//! The parser buffers only the unit it is in the middle of (a record, a
//! packet header, a command: at most ~300 KiB, the largest being a RAMBlock
//! list of 1024 blocks) and never holds back bytes it has classified as
//! verbatim. Every byte pushed comes out in exactly one event, in order;
//! [`Parser::finish`] hands back whatever the channel ended in the middle
//! of. When it meets something it does not reduce it yields
//! [`Event::Passthrough`] and relays the rest of the channel verbatim.

use std::collections::VecDeque;

use bytes::BytesMut;
use wanmig_wire::Reader;

use crate::event::{Event, Page};
use crate::format::PAGE_SIZE;
pub use crate::grammar::ChannelKind;
use crate::grammar::{Stop, Unit};
use crate::main_channel::MainGrammar;
use crate::multifd::MultifdGrammar;
use crate::unsupported::Unsupported;

/// Where a parser stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Fewer than four bytes seen, kind unknown.
    Unclassified,
    /// Parsing RAM records and the structure around them.
    Parsing,
    /// Main channel: the device state has begun (the source has stopped
    /// the guest and sent its last RAM); the rest is verbatim by design.
    DeviceState,
    /// Relaying the rest verbatim because of this.
    Passthrough(Unsupported),
}

/// What a parser has seen so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes pushed.
    pub bytes_in: u64,
    /// Bytes given out in [`Event::Verbatim`].
    pub verbatim_bytes: u64,
    /// [`Event::Page`]s.
    pub pages: u64,
    /// [`Event::Zero`]s.
    pub zero_pages: u64,
    /// Main channel: ends of RAM section parts (`RAM_SAVE_FLAG_EOS`).
    pub ram_parts: u64,
    /// Multifd: packet headers, and those of them that were sync packets.
    pub multifd_packets: u64,
    pub multifd_syncs: u64,
}

/// The grammar a parser follows.
enum Grammar {
    Unclassified,
    Main(MainGrammar),
    Multifd(MultifdGrammar),
    /// Everything from here on is verbatim.
    Verbatim,
}

/// Parses one channel of a QEMU migration. Sans-IO: [`Parser::push`] what
/// was read, then [`Parser::poll`] until it returns `None`.
pub struct Parser {
    grammar: Grammar,
    buf: BytesMut,
    /// Bytes at the front of `buf` already parsed as verbatim, not yet
    /// handed out (so consecutive verbatim units leave as one event).
    verbatim: usize,
    queue: VecDeque<Event>,
    phase: Phase,
    kind: Option<ChannelKind>,
    ended: bool,
    truncated: bool,
    stats: Stats,
}

impl Default for Parser {
    fn default() -> Self {
        Self::new()
    }
}

impl Parser {
    /// A parser that learns from the first four bytes which kind of
    /// channel it reads.
    pub fn new() -> Self {
        Self::with(Grammar::Unclassified, Phase::Unclassified, None)
    }

    /// A parser for a channel known to be the main channel.
    pub fn main() -> Self {
        Self::with(
            Grammar::Main(MainGrammar::new()),
            Phase::Parsing,
            Some(ChannelKind::Main),
        )
    }

    /// A parser for a channel known to be a multifd channel.
    pub fn multifd() -> Self {
        Self::with(
            Grammar::Multifd(MultifdGrammar::new()),
            Phase::Parsing,
            Some(ChannelKind::Multifd),
        )
    }

    fn with(grammar: Grammar, phase: Phase, kind: Option<ChannelKind>) -> Self {
        Parser {
            grammar,
            buf: BytesMut::new(),
            verbatim: 0,
            queue: VecDeque::new(),
            phase,
            kind,
            ended: false,
            truncated: false,
            stats: Stats::default(),
        }
    }

    /// Appends bytes read from the channel.
    pub fn push(&mut self, data: &[u8]) {
        self.stats.bytes_in += data.len() as u64;
        self.buf.extend_from_slice(data);
    }

    /// Marks the end of the channel: the next polls hand out what is left,
    /// as verbatim bytes if the channel ended inside a unit.
    pub fn finish(&mut self) {
        self.ended = true;
    }

    /// The kind of channel, once known.
    pub fn kind(&self) -> Option<ChannelKind> {
        self.kind
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// Why the channel is relayed unreduced, if it is.
    pub fn unsupported(&self) -> Option<&Unsupported> {
        match &self.phase {
            Phase::Passthrough(u) => Some(u),
            _ => None,
        }
    }

    /// Whether the channel ended (see [`Parser::finish`]) inside a unit.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Bytes pushed but not yet handed out in an event.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next event, or `None` until more bytes are pushed (or, after
    /// [`Parser::finish`], when everything has been handed out).
    pub fn poll(&mut self) -> Option<Event> {
        loop {
            if let Some(ev) = self.queue.pop_front() {
                return Some(ev);
            }
            let step = match &mut self.grammar {
                Grammar::Verbatim => {
                    let n = self.buf.len();
                    return self.take_verbatim(n);
                }
                Grammar::Unclassified => classify(&self.buf[self.verbatim..]),
                Grammar::Main(g) => g.parse(&self.buf[self.verbatim..]),
                Grammar::Multifd(g) => g.parse(&self.buf[self.verbatim..]),
            };
            match step {
                Ok(unit) => self.commit(unit),
                Err(Stop::Short) => {
                    if self.ended && self.buf.len() > self.verbatim {
                        self.truncated = true;
                        self.grammar = Grammar::Verbatim;
                        continue;
                    }
                    let n = self.verbatim;
                    return self.take_verbatim(n);
                }
                Err(Stop::Unsupported(why)) => {
                    let n = self.verbatim;
                    if let Some(ev) = self.take_verbatim(n) {
                        self.queue.push_back(ev);
                    }
                    self.phase = Phase::Passthrough(why.clone());
                    self.grammar = Grammar::Verbatim;
                    self.queue.push_back(Event::Passthrough(why));
                }
            }
        }
    }

    /// Takes a unit the grammar parsed at `self.verbatim` into events.
    fn commit(&mut self, unit: Unit) {
        let at = self.verbatim;
        match unit {
            Unit::Verbatim(len) => {
                self.verbatim += len;
                return;
            }
            Unit::PartEnd(len) => {
                self.verbatim += len;
                self.stats.ram_parts += 1;
                return;
            }
            Unit::Classified(kind, first) => {
                self.kind = Some(kind);
                self.phase = Phase::Parsing;
                self.grammar = match kind {
                    ChannelKind::Main => Grammar::Main(MainGrammar::new()),
                    ChannelKind::Multifd => Grammar::Multifd(MultifdGrammar::new()),
                    ChannelKind::Other => {
                        let why = Unsupported::UnknownChannel(first);
                        self.phase = Phase::Passthrough(why.clone());
                        self.queue.push_back(Event::Passthrough(why));
                        Grammar::Verbatim
                    }
                };
                return;
            }
            Unit::DeviceState => {
                self.phase = Phase::DeviceState;
                self.grammar = Grammar::Verbatim;
                return;
            }
            _ => {}
        }
        if let Some(ev) = self.take_verbatim(at) {
            self.queue.push_back(ev);
        }
        let ev = match unit {
            Unit::Page {
                len,
                block,
                offset,
                framing,
            } => {
                let chunk = self.buf.split_to(len).freeze();
                self.stats.pages += 1;
                Event::Page(Page {
                    block,
                    offset,
                    data: chunk.slice(len - PAGE_SIZE..),
                    framing,
                })
            }
            Unit::Zero(len, z) => {
                let _ = self.buf.split_to(len);
                self.stats.zero_pages += 1;
                Event::Zero(z)
            }
            Unit::BlockList(len, l) => {
                let _ = self.buf.split_to(len);
                Event::BlockList(l)
            }
            Unit::Hello(len, h) => {
                let _ = self.buf.split_to(len);
                Event::MultifdHello(h)
            }
            Unit::Packet(len, p) => {
                let _ = self.buf.split_to(len);
                self.stats.multifd_packets += 1;
                self.stats.multifd_syncs += u64::from(p.is_sync());
                Event::MultifdPacket(p)
            }
            Unit::Verbatim(_) | Unit::PartEnd(_) | Unit::Classified(..) | Unit::DeviceState => {
                return
            }
        };
        self.queue.push_back(ev);
    }

    /// Hands out the first `n` buffered bytes as verbatim.
    fn take_verbatim(&mut self, n: usize) -> Option<Event> {
        self.verbatim = 0;
        if n == 0 {
            return None;
        }
        self.stats.verbatim_bytes += n as u64;
        Some(Event::Verbatim(self.buf.split_to(n).freeze()))
    }
}

/// The unclassified grammar: decides the channel's kind from its magic.
fn classify(input: &[u8]) -> Result<Unit, Stop> {
    let first: [u8; 4] = Reader::new(input).array()?;
    Ok(Unit::Classified(ChannelKind::classify(first), first))
}
