//! wanmig-wire: the byte-level coding every wanmig protocol shares.
//!
//! - [`coding`]: the [`Codec`] trait (a type that reads itself from a
//!   checked [`Reader`] and appends itself to a `Vec<u8>`), implemented for
//!   the integers (little-endian, the wanmig protocols' order; [`Be`] for
//!   network order) and byte arrays, and [`DecodeError`] naming what was
//!   malformed.
//! - [`tag`]: [`wire_enum!`], which declares a wire enum with an `Unknown`
//!   case so a value from a newer peer is data, not a decoding failure.
//! - [`frame`]: the one frame format of wanmig's stream protocols,
//!   `tag: u8, length: u32 LE, body[length]`, with [`frame::write_frame`]
//!   and the incremental [`FrameDecoder`] (bytes in, whole frames out, every
//!   length checked against a limit before anything is buffered for it).
//!
//! Nothing here reads a socket or a clock; decoding never panics on any
//! input (the fuzz targets hold it to that).

#![forbid(unsafe_code)]

pub mod coding;
pub mod frame;
pub mod tag;

pub use coding::{Be, Codec, DecodeError, Reader, UnexpectedEnd, WriteExt};
pub use frame::{
    frame_header, split_frame, write_frame, FrameDecoder, FrameError, RawFrame, SplitFrame,
    FRAME_HEADER_LEN,
};
