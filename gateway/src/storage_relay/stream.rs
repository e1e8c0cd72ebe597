//! The storage relay's QUIC edge: reads and writes one storage frame
//! (`wanmig_migration::storage`) on a QUIC stream, and [`StreamError`],
//! which keeps the QUIC and decoding errors typed.

use quinn::{RecvStream, SendStream};
use wanmig_migration::storage::{decode_frame, Frame, WireError, MAX_FRAME};
use wanmig_wire::{frame_header, FRAME_HEADER_LEN};

use crate::peering::PeeringError;

/// Why a storage stream failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the peer closed the storage stream")]
    Closed,
    #[error("reading the storage stream: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("writing the storage stream: {0}")]
    Write(#[from] quinn::WriteError),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Peering(#[from] PeeringError),
    #[error("unexpected storage frame {0}")]
    Unexpected(String),
    #[error("the {0} lane closed")]
    LaneClosed(&'static str),
    #[error("a storage relay task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Reads one frame; [`StreamError::Closed`] at a clean end of stream
/// between frames. Advisory frames this build does not know are skipped.
pub async fn read_frame(recv: &mut RecvStream) -> Result<Frame, StreamError> {
    loop {
        let mut header = [0u8; FRAME_HEADER_LEN];
        match recv.read_exact(&mut header).await {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(0)) => return Err(StreamError::Closed),
            Err(e) => return Err(e.into()),
        }
        let (tag, len) = frame_header(&header, MAX_FRAME).map_err(WireError::from)?;
        let body = read_body(recv, len as usize).await?;
        if let Some(f) = decode_frame(tag, &body)? {
            return Ok(f);
        }
    }
}

/// Reads a frame body of `len` bytes into a buffer that grows only as the
/// bytes arrive: a header that claims a large frame holds no memory the
/// peer has not actually sent.
async fn read_body(recv: &mut RecvStream, len: usize) -> Result<Vec<u8>, StreamError> {
    let mut body = Vec::new();
    while body.len() < len {
        match recv
            .read_chunk(len - body.len(), true)
            .await
            .map_err(quinn::ReadExactError::ReadError)?
        {
            Some(chunk) => body.extend_from_slice(&chunk.bytes),
            None => return Err(quinn::ReadExactError::FinishedEarly(body.len()).into()),
        }
    }
    Ok(body)
}

/// Writes one frame.
pub async fn write_frame(send: &mut SendStream, f: &Frame) -> Result<(), StreamError> {
    send.write_all(&f.to_bytes()).await?;
    Ok(())
}
