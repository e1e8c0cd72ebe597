//! wanmig-qemu-stream: the sans-IO core of carrying QEMU live migrations
//! through the gateways. It reads QEMU 7.2's migration channels (the main
//! channel and each multifd channel), takes the RAM pages out of them for
//! the reduction pipeline, and writes channels back that the destination
//! QEMU accepts with every byte as the source sent it.
//!
//! - [`Parser`]: bytes of one channel in, in any chunking; [`Event`]s out.
//!   [`Event::Page`] and [`Event::Zero`] carry pages (RAMBlock name, offset,
//!   4 KiB of data or a fill byte); [`Event::Verbatim`] carries everything
//!   else, in order: the header, configuration, section headers and
//!   footers, commands, device state, EOF and the vmdesc JSON. What it does
//!   not reduce ([`Unsupported`]: xbzrle, the compress threads, multifd
//!   zlib/zstd, postcopy, COLO, RDMA, live sections other than RAM,
//!   unknown flags or versions) switches the channel to passthrough: an
//!   [`Event::Passthrough`] saying why, then the rest as verbatim bytes.
//!   Nothing is lost and no input makes it fail or panic.
//! - [`Emitter`]: events back into bytes. Emitting what a parser yielded
//!   reproduces its input byte for byte.
//! - [`PageIds`]: a page's identity for the codec (`block << 40 | offset /
//!   4096`).
//! - [`format`]: the wire constants; `docs/qemu-stream.md` has the layouts
//!   and what QEMU 7.2 sends with which capabilities.
//! - [`qmp`]: a QEMU Machine Protocol client (blocking, unix socket) to
//!   set a migration up on both QEMUs and follow it; the only I/O here.
//!
//! # How a gateway drives it
//!
//! **Source gateway.** The source QEMU's `migrate` points at a loopback
//! port of the gateway. Each accepted connection gets a [`Parser::new`]
//! (it classifies the channel by its magic; QEMU 7.2 connects the main
//! channel first, then `multifd-channels` multifd channels, each opening
//! with a [`MultifdHello`] naming its channel number). Read every channel
//! concurrently — QEMU blocks its main channel at each round's end until
//! every multifd channel has written its sync packet — and for each
//! event:
//! - [`Event::Page`]: [`PageIds::gfn_of`] gives the page's gfn (announce a
//!   newly numbered block to the peer first); the data goes through the
//!   codec's `Encoder` like a shim page; the page's framing (main-channel
//!   record with or without `CONTINUE`, or a multifd packet's page) travels
//!   with it as metadata.
//! - [`Event::Zero`]: metadata only (block, offset, fill, continued).
//! - [`Event::BlockList`], [`Event::MultifdHello`],
//!   [`Event::MultifdPacket`]: metadata, sent as they are (a packet header
//!   keeps stale bytes QEMU left in it; they compress well).
//! - [`Event::Verbatim`]: sent as they are (zstd-compressed on the way if
//!   the gateway likes: device state compresses well).
//! - [`Event::Passthrough`]: put `relayed unreduced: {reason}` into the
//!   migration's report; the channel's later events are all verbatim.
//!
//! Every event of a channel must reach the destination's emitter in the
//! channel's order. Pages of different channels need no order between
//! them (see below), so the gateway may decode them from one codec stream
//! in whatever interleaving it read them.
//!
//! **Destination gateway.** It starts the destination QEMU's
//! `migrate-incoming` on a loopback port and opens one connection per
//! source channel, **the main channel first** (QEMU 7.2 takes its first
//! connection as the main channel; it tells multifd channels apart by
//! their hello's channel number, so their order does not matter). Each
//! connection gets an [`Emitter`]; the gateway rebuilds each channel's
//! events (pages from the codec's `Decoder` by gfn, [`PageIds::locate`]
//! giving block and offset back) and writes [`Emitter::emit`]'s bytes.
//!
//! **Order between channels is QEMU's business, as long as no channel
//! waits for another in the gateway.** QEMU orders pages itself: at the
//! end of each RAM section part (`RAM_SAVE_FLAG_EOS`), the destination's
//! main thread waits until every multifd channel has delivered its sync
//! packet, and each multifd channel, after its sync packet, waits for the
//! main thread to reach that point. So a page sent twice (on a multifd
//! channel in one round and as a zero record on the main channel in the
//! next, or on two multifd channels in two rounds) is applied in the
//! source's order, and device state (after the last EOS) is loaded after
//! every page. The gateway's part: deliver each channel's bytes in order,
//! and never let one channel's delivery wait for another's — give each
//! destination connection its own queue and keep reading the WAN while
//! one of them is blocked (the main channel stops being read while QEMU
//! waits for the multifd sync packets behind it). One round's worth of
//! main-channel data (zero records and the EOS) is the most that backs up.
//!
//! **What the destination QEMU needs to accept the stream**: started with
//! the same machine type, devices and memory size as the source and
//! `-incoming defer`; the same `-uuid` as the source (multifd hellos carry
//! the source's UUID and QEMU 7.2 refuses a channel whose UUID differs
//! from its own; unset on both sides is the same all-zero UUID); the same
//! migration capabilities as the source where QEMU checks them (`multifd`
//! with the same `multifd-channels` and `multifd-compression`,
//! `x-ignore-shared`, `postcopy-ram`, `return-path`), set before
//! `migrate-incoming`. With a return path (`return-path` or `postcopy-ram`
//! on), the destination writes messages back on the main channel (a PONG
//! for each PING, SHUT at the end) which the source waits for: relay the
//! main channel's reverse direction verbatim too. When the source's
//! connections close, close the destination's after their last bytes.
//!
//! # Robustness
//!
//! A parser buffers at most the unit it is inside (~300 KiB: a 1024-block
//! RAMBlock list; a page record is ~4.4 KiB, a multifd header 1.3 KiB) and
//! checks every length before waiting for the bytes it announces.
//! `tests/props.rs` holds parse → emit to the identity for arbitrary bytes
//! in arbitrary chunkings, and for generated well-formed streams. The same
//! property suits a cargo-fuzz target (`Parser::new`, push the input in
//! fuzzer-chosen pieces, emit every event, compare), which this crate does
//! not carry yet.

#![forbid(unsafe_code)]

pub mod emit;
pub mod event;
pub mod format;
mod grammar;
mod main_channel;
mod multifd;
pub mod page_id;
pub mod parser;
pub mod qmp;
pub mod unsupported;

pub use emit::{EmitError, Emitter};
pub use event::{
    BlockList, BlockName, Event, MultifdHello, MultifdPacket, Page, PageFraming, RamBlock, ZeroPage,
};
pub use page_id::{PageIdError, PageIds};
pub use parser::{ChannelKind, Parser, Phase, Stats};
pub use unsupported::Unsupported;
