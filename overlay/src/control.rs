//! The overlay's reliable control messages between gateways (MAC
//! advertisements and withdrawals, full-table resynchronisation) and their
//! length-prefixed wire form for a QUIC stream.
//!
//! Wire form: a 4-byte big-endian body length, then the message as JSON
//! (serde). JSON keeps the control plane debuggable and versionable with
//! optional fields; the rate of control messages is tiny next to datagrams.

use std::net::Ipv4Addr;

use bytes::{Buf, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::ids::{MacAddr, SiteId, Vni};

/// Largest control message body accepted (a full sync of ~100k MACs fits).
pub const MAX_MESSAGE: usize = 16 << 20;

/// "MAC `mac` of segment `vni` is at `site`, sequence `seq`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacAdvert {
    pub vni: Vni,
    pub mac: MacAddr,
    pub site: SiteId,
    pub seq: u32,
    /// The IPv4 address bound to the MAC, for ARP suppression at peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    /// A static MAC (RFC 7432 §15.2): peers must not move it by learning.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sticky: bool,
}

/// A control message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMsg {
    /// A MAC was learned at, or moved to, the sending site.
    MacAdvert(MacAdvert),
    /// The sending site no longer has the MAC (aged out or port removed).
    MacWithdraw {
        vni: Vni,
        mac: MacAddr,
        site: SiteId,
        seq: u32,
    },
    /// Every MAC attached at `site`, sent when a peer (re)connects; the
    /// receiver drops whatever it held for `site` that is not listed.
    FullSync {
        site: SiteId,
        entries: Vec<MacAdvert>,
    },
}

impl ControlMsg {
    /// The site the message speaks for.
    pub fn site(&self) -> &SiteId {
        match self {
            ControlMsg::MacAdvert(a) => &a.site,
            ControlMsg::MacWithdraw { site, .. } => site,
            ControlMsg::FullSync { site, .. } => site,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ControlMsg::MacAdvert(_) => "mac_advert",
            ControlMsg::MacWithdraw { .. } => "mac_withdraw",
            ControlMsg::FullSync { .. } => "full_sync",
        }
    }
}

/// Control stream errors.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control message of {0} bytes exceeds the {MAX_MESSAGE}-byte limit; the peer is misbehaving or its table is too large")]
    TooLarge(usize),
    #[error("control message is not valid: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("control stream I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("control stream ended in the middle of a message")]
    TruncatedStream,
}

/// Encodes `msg` with its length prefix.
pub fn encode(msg: &ControlMsg) -> Vec<u8> {
    let mut out = vec![0u8; 4];
    // Serialising these plain types to a Vec cannot fail.
    serde_json::to_writer(&mut out, msg).expect("control message serialises");
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// Decodes one message body (without the length prefix).
pub fn decode_body(body: &[u8]) -> Result<ControlMsg, ControlError> {
    Ok(serde_json::from_slice(body)?)
}

/// Sans-IO stream decoder: feed bytes as they arrive, pull whole messages.
#[derive(Default)]
pub struct ControlDecoder {
    buf: BytesMut,
}

impl ControlDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete message, `Ok(None)` when more bytes are needed.
    /// After an error the stream is out of sync and must be closed.
    pub fn next_msg(&mut self) -> Result<Option<ControlMsg>, ControlError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_MESSAGE {
            return Err(ControlError::TooLarge(len));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        self.buf.advance(4);
        let body = self.buf.split_to(len);
        decode_body(&body).map(Some)
    }

    /// Bytes buffered towards an incomplete message.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Reads one message from an async stream; `Ok(None)` on a clean end of
/// stream between messages.
pub async fn read_msg<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<ControlMsg>, ControlError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(ControlError::TruncatedStream)
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(ControlError::TooLarge(len));
    }
    // The buffer grows as the body arrives (not to the length the header
    // claims up front), so a peer holds only memory it actually sent.
    let mut body = Vec::new();
    (&mut *r).take(len as u64).read_to_end(&mut body).await?;
    if body.len() < len {
        return Err(ControlError::TruncatedStream);
    }
    decode_body(&body).map(Some)
}

/// Writes one message to an async stream.
pub async fn write_msg<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &ControlMsg,
) -> Result<(), ControlError> {
    w.write_all(&encode(msg)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advert() -> ControlMsg {
        ControlMsg::MacAdvert(MacAdvert {
            vni: Vni::new(100).unwrap(),
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            site: "a".into(),
            seq: 7,
            ip: Some(Ipv4Addr::new(198, 18, 0, 1)),
            sticky: false,
        })
    }

    #[test]
    fn decoder_handles_split_and_coalesced_messages() {
        let msgs = vec![
            advert(),
            ControlMsg::MacWithdraw {
                vni: Vni::new(1).unwrap(),
                mac: MacAddr([2, 0, 0, 0, 0, 2]),
                site: "b".into(),
                seq: 3,
            },
            ControlMsg::FullSync {
                site: "c".into(),
                entries: vec![],
            },
        ];
        let wire: Vec<u8> = msgs.iter().flat_map(encode).collect();
        for chunk in [1, 3, 7, wire.len()] {
            let mut d = ControlDecoder::new();
            let mut out = Vec::new();
            for c in wire.chunks(chunk) {
                d.push(c);
                while let Some(m) = d.next_msg().unwrap() {
                    out.push(m);
                }
            }
            assert_eq!(out, msgs);
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn rejects_oversized_and_malformed_bodies() {
        let mut d = ControlDecoder::new();
        d.push(&(MAX_MESSAGE as u32 + 1).to_be_bytes());
        assert!(matches!(d.next_msg(), Err(ControlError::TooLarge(_))));
        let mut d = ControlDecoder::new();
        d.push(&3u32.to_be_bytes());
        d.push(b"{x}");
        assert!(matches!(d.next_msg(), Err(ControlError::Malformed(_))));
        // A VNI above 24 bits is refused by the type itself.
        let bad = br#"{"type":"mac_withdraw","vni":16777216,"mac":"02:00:00:00:00:01","site":"a","seq":1}"#;
        assert!(decode_body(bad).is_err());
    }

    #[tokio::test]
    async fn async_read_write_round_trip_and_truncation() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let m = advert();
        let m2 = m.clone();
        let w = tokio::spawn(async move {
            write_msg(&mut a, &m2).await.unwrap();
            write_msg(&mut a, &m2).await.unwrap();
        });
        assert_eq!(read_msg(&mut b).await.unwrap(), Some(m.clone()));
        assert_eq!(read_msg(&mut b).await.unwrap(), Some(m));
        w.await.unwrap();
        assert!(read_msg(&mut b).await.unwrap().is_none());

        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0, 0, 10, b'{']).await.unwrap();
        drop(a);
        assert!(matches!(
            read_msg(&mut b).await,
            Err(ControlError::TruncatedStream)
        ));
    }
}
