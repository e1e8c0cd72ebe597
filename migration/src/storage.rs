//! The storage relay's wire frames (sans-IO): encoding and decoding of the
//! messages exchanged on a `STORAGE` stream, plus thin async helpers that
//! read and write one frame on a QUIC stream.
//!
//! Every frame is `[u32 length][u8 tag][body]` (little-endian). Decoding
//! never panics: malformed input from the wire is a [`FrameError`].

use wanmig_storage::FetchRequest;

/// The largest frame accepted (a 16 MiB block plus headers).
pub const MAX_FRAME: usize = 17 << 20;

/// Which lane a stream carries: on-demand fetches get their own stream with
/// a higher send priority, so they never queue behind background data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    OnDemand,
    Background,
}

/// One message on a storage stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Destination → source, first frame of each stream: which exported disk,
    /// with the geometry the destination expects.
    Open {
        lane: Lane,
        name: String,
        disk_len: u64,
        block_size: u32,
        /// The destination's page-store inventory
        /// ([`wanmig_codec::Inventory`] bytes) when it dedups against one:
        /// the source may then send page references ([`super::dedup`]).
        inventory: Option<Vec<u8>>,
    },
    /// Source → destination, answer to `Open`: block ranges that are holes.
    Holes(Vec<std::ops::Range<u64>>),
    /// Destination → source: send these blocks.
    Request { first_block: u64, count: u32 },
    /// Destination → source: send these blocks without page references (a
    /// reference did not resolve here).
    RequestPlain { first_block: u64, count: u32 },
    /// Source → destination: one block's payload ([`wanmig_storage::wire`]).
    Block { block: u64, payload: Vec<u8> },
    /// Either way: the operation failed; the text says why.
    Error(String),
    /// Destination → source: every block is local and durable; `digest` is
    /// the end-of-copy check ([`wanmig_storage::verify`]) over the blocks not
    /// in `written` (the guest's writes at the destination, a serialized
    /// [`wanmig_storage::PresenceBitmap`]). Sent again after a reconnect
    /// until `Released` arrives (the source answers idempotently).
    Done { digest: [u8; 32], written: Vec<u8> },
    /// Source → destination: the check passed and the source copy was
    /// released by policy. Also the answer to an `Open` of a disk already
    /// released (its `Released` was lost with the link).
    Released,
    /// Destination → source, now and then: how far the copy is (shown by
    /// the source's `wanmig migrate`).
    Progress {
        local_blocks: u64,
        total_blocks: u64,
    },
    /// Destination → source, alone on a stream: how long is exported disk
    /// `name`? (The destination of a VM migration learns the size this way
    /// before it creates its copy.)
    QuerySize(String),
    /// Source → destination, answer to `QuerySize`: the size, and whether
    /// the destination should run the background copy at once (`false`
    /// after `wanmig migrate --no-storage`: on-demand reads only until
    /// `wanmig storage migrate`).
    Size { len: u64, background: bool },
}

/// A malformed frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("storage frame of {0} bytes exceeds the {MAX_FRAME}-byte limit (peer runs an incompatible wanmig?)")]
    TooLarge(usize),
    #[error("storage frame truncated: {0}")]
    Truncated(&'static str),
    #[error("unknown storage frame tag {0} (peer runs an incompatible wanmig?)")]
    UnknownTag(u8),
    #[error("storage frame field {0} is invalid")]
    Invalid(&'static str),
}

const OPEN: u8 = 1;
const HOLES: u8 = 2;
const REQUEST: u8 = 3;
const BLOCK: u8 = 4;
const ERROR: u8 = 5;
const DONE: u8 = 6;
const RELEASED: u8 = 7;
const QUERY_SIZE: u8 = 8;
const SIZE: u8 = 9;
const PROGRESS: u8 = 10;
const REQUEST_PLAIN: u8 = 11;

impl Frame {
    /// A request frame for `r`.
    pub fn request(r: &FetchRequest) -> Frame {
        Frame::Request {
            first_block: r.first_block,
            count: r.count,
        }
    }

    /// The frame with its length prefix.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; 4];
        match self {
            Frame::Open {
                lane,
                name,
                disk_len,
                block_size,
                inventory,
            } => {
                b.push(OPEN);
                b.push(match lane {
                    Lane::OnDemand => 0,
                    Lane::Background => 1,
                });
                b.extend_from_slice(&disk_len.to_le_bytes());
                b.extend_from_slice(&block_size.to_le_bytes());
                b.extend_from_slice(&(name.len() as u32).to_le_bytes());
                b.extend_from_slice(name.as_bytes());
                if let Some(inv) = inventory {
                    b.push(1);
                    b.extend_from_slice(inv);
                } else {
                    b.push(0);
                }
            }
            Frame::RequestPlain { first_block, count } => {
                b.push(REQUEST_PLAIN);
                b.extend_from_slice(&first_block.to_le_bytes());
                b.extend_from_slice(&count.to_le_bytes());
            }
            Frame::Holes(h) => {
                b.push(HOLES);
                for r in h {
                    b.extend_from_slice(&r.start.to_le_bytes());
                    b.extend_from_slice(&r.end.to_le_bytes());
                }
            }
            Frame::Request { first_block, count } => {
                b.push(REQUEST);
                b.extend_from_slice(&first_block.to_le_bytes());
                b.extend_from_slice(&count.to_le_bytes());
            }
            Frame::Block { block, payload } => {
                b.push(BLOCK);
                b.extend_from_slice(&block.to_le_bytes());
                b.extend_from_slice(payload);
            }
            Frame::Error(m) => {
                b.push(ERROR);
                b.extend_from_slice(m.as_bytes());
            }
            Frame::Done { digest, written } => {
                b.push(DONE);
                b.extend_from_slice(digest);
                b.extend_from_slice(written);
            }
            Frame::Progress {
                local_blocks,
                total_blocks,
            } => {
                b.push(PROGRESS);
                b.extend_from_slice(&local_blocks.to_le_bytes());
                b.extend_from_slice(&total_blocks.to_le_bytes());
            }
            Frame::Released => b.push(RELEASED),
            Frame::QuerySize(name) => {
                b.push(QUERY_SIZE);
                b.extend_from_slice(name.as_bytes());
            }
            Frame::Size { len, background } => {
                b.push(SIZE);
                b.extend_from_slice(&len.to_le_bytes());
                b.push(u8::from(*background));
            }
        }
        let len = (b.len() - 4) as u32;
        b[..4].copy_from_slice(&len.to_le_bytes());
        b
    }

    /// Decodes a frame body (everything after the length prefix).
    pub fn decode(body: &[u8]) -> Result<Frame, FrameError> {
        let (&tag, rest) = body.split_first().ok_or(FrameError::Truncated("tag"))?;
        let mut r = Reader(rest);
        let f = match tag {
            OPEN => {
                let lane = match r.u8("lane")? {
                    0 => Lane::OnDemand,
                    1 => Lane::Background,
                    _ => return Err(FrameError::Invalid("lane")),
                };
                let disk_len = r.u64("disk_len")?;
                let block_size = r.u32("block_size")?;
                let name_len = r.u32("name length")? as usize;
                if r.0.len() < name_len {
                    return Err(FrameError::Truncated("name"));
                }
                let (name, rest) = r.0.split_at(name_len);
                let name =
                    String::from_utf8(name.to_vec()).map_err(|_| FrameError::Invalid("name"))?;
                r.0 = rest;
                let inventory = match r.u8("inventory flag")? {
                    0 => None,
                    1 => Some(std::mem::take(&mut r.0).to_vec()),
                    _ => return Err(FrameError::Invalid("inventory flag")),
                };
                Frame::Open {
                    lane,
                    name,
                    disk_len,
                    block_size,
                    inventory,
                }
            }
            REQUEST_PLAIN => Frame::RequestPlain {
                first_block: r.u64("first_block")?,
                count: r.u32("count")?,
            },
            HOLES => {
                if r.0.len() % 16 != 0 {
                    return Err(FrameError::Truncated("hole range"));
                }
                let mut h = Vec::with_capacity(r.0.len() / 16);
                while !r.0.is_empty() {
                    let s = r.u64("hole start")?;
                    let e = r.u64("hole end")?;
                    if e < s {
                        return Err(FrameError::Invalid("hole range"));
                    }
                    h.push(s..e);
                }
                Frame::Holes(h)
            }
            REQUEST => Frame::Request {
                first_block: r.u64("first_block")?,
                count: r.u32("count")?,
            },
            BLOCK => {
                let block = r.u64("block")?;
                let payload = std::mem::take(&mut r.0).to_vec();
                Frame::Block { block, payload }
            }
            ERROR => {
                let m = String::from_utf8_lossy(r.0).into_owned();
                r.0 = &[];
                Frame::Error(m)
            }
            DONE => {
                let digest = r.take::<32>("digest")?;
                let written = std::mem::take(&mut r.0).to_vec();
                Frame::Done { digest, written }
            }
            PROGRESS => Frame::Progress {
                local_blocks: r.u64("local_blocks")?,
                total_blocks: r.u64("total_blocks")?,
            },
            RELEASED => Frame::Released,
            QUERY_SIZE => {
                let name =
                    String::from_utf8(r.0.to_vec()).map_err(|_| FrameError::Invalid("name"))?;
                r.0 = &[];
                Frame::QuerySize(name)
            }
            SIZE => Frame::Size {
                len: r.u64("size")?,
                background: match r.u8("background")? {
                    0 => false,
                    1 => true,
                    _ => return Err(FrameError::Invalid("background")),
                },
            },
            t => return Err(FrameError::UnknownTag(t)),
        };
        if !r.0.is_empty() {
            return Err(FrameError::Invalid("trailing bytes"));
        }
        Ok(f)
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], FrameError> {
        if self.0.len() < N {
            return Err(FrameError::Truncated(what));
        }
        let (a, b) = self.0.split_at(N);
        self.0 = b;
        let mut out = [0u8; N];
        out.copy_from_slice(a);
        Ok(out)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, FrameError> {
        Ok(self.take::<1>(what)?[0])
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, FrameError> {
        Ok(u32::from_le_bytes(self.take(what)?))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, FrameError> {
        Ok(u64::from_le_bytes(self.take(what)?))
    }
}

/// Why reading a frame from a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadFrameError {
    #[error("storage stream closed")]
    Closed,
    #[error("reading storage stream: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Reads one frame; `Closed` at a clean end of stream between frames.
pub async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Frame, ReadFrameError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Err(ReadFrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len).into());
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(Frame::decode(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(f: Frame) {
        let bytes = f.encode();
        let len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 4);
        assert_eq!(Frame::decode(&bytes[4..]).unwrap(), f);
    }

    #[test]
    fn every_frame_round_trips() {
        round_trip(Frame::Open {
            lane: Lane::Background,
            name: "vm-1.img".into(),
            disk_len: 16 << 20,
            block_size: 65536,
            inventory: Some(vec![1, 2, 3]),
        });
        round_trip(Frame::Open {
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
        round_trip(Frame::QuerySize("vm-1".into()));
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
    fn malformed_frames_are_errors_not_panics() {
        assert_eq!(Frame::decode(&[]), Err(FrameError::Truncated("tag")));
        assert_eq!(Frame::decode(&[99]), Err(FrameError::UnknownTag(99)));
        assert_eq!(
            Frame::decode(&[REQUEST, 1, 2]),
            Err(FrameError::Truncated("first_block"))
        );
        assert_eq!(Frame::decode(&[OPEN, 5]), Err(FrameError::Invalid("lane")));
        let mut holes = vec![HOLES];
        holes.extend_from_slice(&5u64.to_le_bytes());
        holes.extend_from_slice(&2u64.to_le_bytes());
        assert_eq!(
            Frame::decode(&holes),
            Err(FrameError::Invalid("hole range"))
        );
        assert_eq!(
            Frame::decode(&[DONE, 0]),
            Err(FrameError::Truncated("digest"))
        );
        assert_eq!(
            Frame::decode(&[RELEASED, 0]),
            Err(FrameError::Invalid("trailing bytes"))
        );
        // Every prefix of a valid frame decodes or fails cleanly.
        let full = Frame::Open {
            lane: Lane::OnDemand,
            name: "d".into(),
            disk_len: 1,
            block_size: 2,
            inventory: Some(vec![9; 5]),
        }
        .encode();
        for n in 0..full.len() - 4 {
            let _ = Frame::decode(&full[4..4 + n]);
        }
    }
}
