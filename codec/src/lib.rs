//! wanmig's migration data-reduction codec, sans-IO.
//!
//! The source gateway's [`Encoder`] turns guest pages (4 KiB, by guest frame
//! number) into batches of records — zero page, reference to content the
//! destination holds (BLAKE3-256), XOR delta against the version last sent,
//! compressed (zstd or LZ4) or raw page — and the destination gateway's
//! [`Decoder`] rebuilds the pages, resolving references from this session and
//! from the site's persistent [`PageStore`], and NACKing what it cannot
//! resolve. The [`Inventory`] tells a source what a destination holds at
//! session start. [`compress`] shrinks each batch's compressible section
//! (by default one zstd stream across batches, so each batch matches what
//! earlier ones carried; or that stream with long-distance matching, zstd
//! per batch, or LZ4) at a level from [`MIN_LEVEL`] to [`MAX_LEVEL`]; [`mix`] generates the deterministic demo
//! memory mix.
//!
//! No sockets, no clocks: callers move the bytes and pass measurements in.
//!
//! How a gateway drives a session:
//! 1. destination: `store.inventory().to_bytes()` → source:
//!    [`Inventory::from_bytes`], [`Encoder::new`];
//! 2. source: [`Encoder::encode`] each round's pages; send each batch on the
//!    migration stream (a batch is self-delimiting: [`record::frame_len`]);
//! 3. destination: [`Decoder::decode`] each batch in order, hand
//!    [`Decoded::pages`] to the shim in order, send [`Decoded::nacks`] back;
//! 4. source: [`Encoder::on_nack`]; send its batches, and re-read the
//!    `refetch` pages from the VM and encode them again;
//! 5. the destination holds complete memory only when
//!    [`Decoder::pending_count`] is 0.
//!
//! Batches carry no checksum of their own: the QUIC/TLS stream provides
//! integrity; the codec's own checks are about trust (references are
//! verified against content) and robustness (hostile lengths are errors).
//! Batches must reach [`Decoder::decode`] in the order the encoder made
//! them (one ordered stream); with a zstd stream (the default) that is
//! required for decoding at all.
//!
//! The codec exposes what a level controller needs and decides nothing
//! itself: [`Encoder::set_level`] and [`Encoder::set_long_distance`] take
//! effect from the next batch, and [`Encoder::stats`] (differenced with
//! [`EncoderStats::since`]) says how many guest bytes became how many wire
//! bytes. The migration policy (`wanmig_migration::policy::level`) picks
//! the level from those and the measured link rate.
//!
//! The level travels in each batch header (informational; the decoder needs
//! nothing from it). [`LZ4_LEVEL`] (-8) is the fastest setting: LZ4 instead
//! of zstd, for links faster than zstd can feed (LZ4 has no stream: each
//! batch stands alone). Each level change restarts the zstd stream (losing
//! its window), so change the level no more often than every few hundred
//! milliseconds, and every few seconds while long distance is on. The
//! destination's [`DecoderConfig::max_window_log`] must be at least the
//! source's [`LongDistance::window_log`] and
//! [`EncoderConfig::context_window_log`] (27, 27 and 19 by default).

pub mod compress;
pub mod decoder;
pub mod delta;
pub mod encoder;
pub mod error;
pub mod fingerprint;
pub mod inventory;
pub mod mix;
pub mod page;
pub mod page_cache;
pub mod page_kind;
pub mod record;
mod slab;
pub mod store;

pub use compress::{LongDistance, LZ4_LEVEL, MAX_LEVEL, MIN_LEVEL};
pub use decoder::{Decoded, Decoder, DecoderConfig, DecoderStats};
pub use encoder::{Encoder, EncoderConfig, EncoderStats, NackResponse};
pub use error::CodecError;
pub use fingerprint::Fingerprint;
pub use inventory::Inventory;
pub use page::{Gfn, PageBytes, PAGE_SIZE};
pub use page_kind::{PageKind, PerKind};
pub use store::{ContentStore, NoStore, PageStore, StoreStats};
