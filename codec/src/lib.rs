//! wanmig's migration data-reduction codec, sans-IO.
//!
//! The source gateway's [`Encoder`] turns guest pages (4 KiB, by guest frame
//! number) into self-contained batches of records — zero page, reference to
//! content the destination holds (BLAKE3-256), XOR delta against the version
//! last sent, zstd-compressed or raw page — and the destination gateway's
//! [`Decoder`] rebuilds the pages, resolving references from this session and
//! from the site's persistent [`PageStore`], and NACKing what it cannot
//! resolve. The [`Inventory`] tells a source what a destination holds at
//! session start. [`level`] picks the zstd level from measured link and codec
//! rates; [`mix`] generates the deterministic demo memory mix.
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

pub mod compress;
pub mod decoder;
pub mod delta;
pub mod encoder;
pub mod error;
pub mod fingerprint;
pub mod inventory;
pub mod level;
pub mod mix;
pub mod page;
pub mod page_cache;
pub mod record;
pub mod store;

pub use compress::{LongDistance, LZ4_LEVEL};
pub use decoder::{Decoded, Decoder, DecoderConfig, DecoderStats};
pub use encoder::{Encoder, EncoderConfig, EncoderStats, NackResponse};
pub use error::CodecError;
pub use fingerprint::Fingerprint;
pub use inventory::Inventory;
pub use page::{Gfn, PageBytes, PAGE_SIZE};
pub use store::{ContentStore, NoStore, PageStore, StoreStats};
