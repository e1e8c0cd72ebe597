//! Goodput probe: sends N bytes over a fresh QUIC stream (kind
//! [`StreamKind::Probe`]) to a peer gateway, which counts them and
//! acknowledges; reports goodput, duration and RTT.
//!
//! Wire format after the kind byte — request: `u64 BE length`, then that
//! many bytes, then FIN. Acknowledgement: `u64 BE bytes received`,
//! `u64 BE microseconds from first to last byte at the receiver`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::VarInt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::peering::{IncomingStream, Peering, PeeringError, StreamKind};

/// Largest probe a receiver accepts (1 TiB).
pub const MAX_PROBE_BYTES: u64 = 1 << 40;
const CHUNK: usize = 256 * 1024;
const REFUSED: u32 = 0x50;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Peering(#[from] PeeringError),
    #[error("probe of {0} bytes is larger than the {MAX_PROBE_BYTES}-byte limit")]
    TooLarge(u64),
    #[error("probe to '{peer}' failed while {during}: {source}")]
    Stream {
        peer: String,
        during: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("probe to '{peer}': the peer counted {received} bytes, {sent} were sent")]
    Mismatch {
        peer: String,
        sent: u64,
        received: u64,
    },
}

/// The receiver's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeAck {
    pub received: u64,
    pub receiver_micros: u64,
}

impl ProbeAck {
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.received.to_be_bytes());
        b[8..].copy_from_slice(&self.receiver_micros.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8; 16]) -> Self {
        let mut r = [0u8; 8];
        r.copy_from_slice(&b[..8]);
        let mut m = [0u8; 8];
        m.copy_from_slice(&b[8..]);
        ProbeAck {
            received: u64::from_be_bytes(r),
            receiver_micros: u64::from_be_bytes(m),
        }
    }
}

/// What a probe measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProbeReport {
    pub peer: String,
    pub bytes: u64,
    /// From the first byte written to the acknowledgement (includes one RTT).
    pub duration_ms: f64,
    /// Payload bits per second over `duration_ms`, in Mbit/s.
    pub goodput_mbit: f64,
    /// Receiver's view: first to last byte.
    pub receiver_ms: f64,
    pub rtt_ms: f64,
    pub lost_packets: u64,
}

impl ProbeReport {
    pub fn compute(
        peer: &str,
        bytes: u64,
        elapsed: Duration,
        ack: ProbeAck,
        rtt: Duration,
        lost: u64,
    ) -> Self {
        let secs = elapsed.as_secs_f64();
        ProbeReport {
            peer: peer.to_string(),
            bytes,
            duration_ms: secs * 1e3,
            goodput_mbit: if secs > 0.0 {
                bytes as f64 * 8.0 / secs / 1e6
            } else {
                0.0
            },
            receiver_ms: ack.receiver_micros as f64 / 1e3,
            rtt_ms: rtt.as_secs_f64() * 1e3,
            lost_packets: lost,
        }
    }
}

fn stream_err<'a, E>(peer: &'a str, during: &'static str) -> impl FnOnce(E) -> ProbeError + 'a
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |e| ProbeError::Stream {
        peer: peer.to_string(),
        during,
        source: Box::new(e),
    }
}

/// Sends `bytes` to `peer` and waits for its acknowledgement.
/// `progress` is called with the number of bytes written so far.
pub async fn run(
    peering: &Peering,
    peer: &str,
    bytes: u64,
    mut progress: impl FnMut(u64),
) -> Result<ProbeReport, ProbeError> {
    if bytes > MAX_PROBE_BYTES {
        return Err(ProbeError::TooLarge(bytes));
    }
    let conn = peering.live_connection(peer)?;
    let lost_before = conn.stats().path.lost_packets;
    let (mut send, mut recv) = peering.open_stream(peer, StreamKind::Probe).await?;
    let start = Instant::now();
    send.write_all(&bytes.to_be_bytes())
        .await
        .map_err(stream_err(peer, "sending the header"))?;
    // One pattern buffer, shared by reference for every chunk: no copies.
    let pattern = Bytes::from(
        (0..CHUNK)
            .map(|i| (i * 31 % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(CHUNK as u64) as usize;
        send.write_chunk(pattern.slice(..n))
            .await
            .map_err(stream_err(peer, "sending data"))?;
        sent += n as u64;
        progress(sent);
    }
    send.finish()
        .map_err(stream_err(peer, "finishing the stream"))?;
    let mut ack = [0u8; 16];
    recv.read_exact(&mut ack)
        .await
        .map_err(stream_err(peer, "waiting for the acknowledgement"))?;
    let elapsed = start.elapsed();
    let ack = ProbeAck::decode(&ack);
    if ack.received != bytes {
        return Err(ProbeError::Mismatch {
            peer: peer.to_string(),
            sent: bytes,
            received: ack.received,
        });
    }
    let lost = conn.stats().path.lost_packets.saturating_sub(lost_before);
    Ok(ProbeReport::compute(
        peer,
        bytes,
        elapsed,
        ack,
        conn.rtt(),
        lost,
    ))
}

/// Serves probe streams: counts bytes and acknowledges each probe.
pub async fn serve(mut streams: mpsc::Receiver<IncomingStream>) {
    while let Some(s) = streams.recv().await {
        tokio::spawn(answer(s));
    }
}

async fn answer(mut s: IncomingStream) {
    let mut header = [0u8; 8];
    if s.recv.read_exact(&mut header).await.is_err() {
        return;
    }
    let expected = u64::from_be_bytes(header);
    if expected > MAX_PROBE_BYTES {
        tracing::warn!(peer = %s.peer, expected, "refusing oversized probe");
        let _ = s.recv.stop(VarInt::from_u32(REFUSED));
        let _ = s.send.reset(VarInt::from_u32(REFUSED));
        return;
    }
    let mut received = 0u64;
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    loop {
        match s.recv.read_chunk(usize::MAX, true).await {
            Ok(Some(chunk)) => {
                first.get_or_insert_with(Instant::now);
                last = Instant::now();
                received += chunk.bytes.len() as u64;
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(peer = %s.peer, "probe stream failed: {e}");
                return;
            }
        }
    }
    let micros = first
        .map(|f| last.duration_since(f).as_micros() as u64)
        .unwrap_or(0);
    let ack = ProbeAck {
        received,
        receiver_micros: micros,
    };
    tracing::debug!(peer = %s.peer, received, "probe received");
    if s.send.write_all(&ack.encode()).await.is_ok() {
        let _ = s.send.finish();
        // Keep the stream alive until the peer has the ack.
        let _ = s.send.stopped().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_round_trips() {
        let a = ProbeAck {
            received: 123_456_789_012,
            receiver_micros: 42,
        };
        assert_eq!(ProbeAck::decode(&a.encode()), a);
    }

    #[test]
    fn report_computes_goodput() {
        let ack = ProbeAck {
            received: 125_000_000,
            receiver_micros: 3_900_000,
        };
        let r = ProbeReport::compute(
            "site-b",
            125_000_000,
            Duration::from_secs(4),
            ack,
            Duration::from_millis(100),
            7,
        );
        assert!((r.goodput_mbit - 250.0).abs() < 1e-9);
        assert!((r.duration_ms - 4000.0).abs() < 1e-9);
        assert!((r.receiver_ms - 3900.0).abs() < 1e-9);
        assert!((r.rtt_ms - 100.0).abs() < 1e-9);
        assert_eq!(r.lost_packets, 7);
        let zero = ProbeReport::compute("x", 0, Duration::ZERO, ack, Duration::ZERO, 0);
        assert_eq!(zero.goodput_mbit, 0.0);
    }
}
