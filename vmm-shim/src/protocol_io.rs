//! The shim migration protocol (`wanmig_migration::shim`) over blocking
//! `Read`/`Write` streams: [`read_message`] and [`write_message`] wrap the
//! sans-IO decoder and encoder.

use std::io::{Read, Write};

use wanmig_migration::shim::{self, Decoder, Message, ProtocolError};

/// Errors of a blocking read or write.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("migration stream I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer closed the migration stream")]
    Closed,
    #[error("the migration stream ended in the middle of a frame ({0} bytes of it received)")]
    Truncated(usize),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// Reads the next message from a blocking stream.
pub fn read_message<R: Read>(r: &mut R, dec: &mut Decoder) -> Result<Message, StreamError> {
    loop {
        if let Some(m) = dec.next()? {
            return Ok(m);
        }
        let want = dec.wanted().clamp(1, 1 << 20);
        let mut chunk = vec![0u8; want];
        let n = r.read(&mut chunk)?;
        if n == 0 {
            return Err(match dec.buffered() {
                0 => StreamError::Closed,
                b => StreamError::Truncated(b),
            });
        }
        dec.feed(&chunk[..n]);
    }
}

/// Writes one message to a blocking stream; returns the bytes written.
pub fn write_message<W: Write>(
    w: &mut W,
    msg: &Message,
    scratch: &mut Vec<u8>,
) -> Result<u64, StreamError> {
    scratch.clear();
    shim::encode(msg, scratch);
    w.write_all(scratch)?;
    Ok(scratch.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_reader_reports_truncation_and_close() {
        let mut buf = Vec::new();
        shim::encode(&Message::Confirmed { digest: [1; 32] }, &mut buf);
        let mut d = Decoder::new();
        let mut r = &buf[..10];
        assert!(matches!(
            read_message(&mut r, &mut d),
            Err(StreamError::Truncated(10))
        ));
        let mut d = Decoder::new();
        let mut r: &[u8] = &[];
        assert!(matches!(
            read_message(&mut r, &mut d),
            Err(StreamError::Closed)
        ));
        let mut d = Decoder::new();
        let mut r = &buf[..];
        assert_eq!(
            read_message(&mut r, &mut d).unwrap(),
            Message::Confirmed { digest: [1; 32] }
        );
    }

    #[test]
    fn written_bytes_are_what_the_reader_takes() {
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        let n = write_message(&mut out, &Message::Abort("why".into()), &mut scratch).unwrap();
        assert_eq!(n, out.len() as u64);
        let mut r = &out[..];
        assert_eq!(
            read_message(&mut r, &mut Decoder::new()).unwrap(),
            Message::Abort("why".into())
        );
    }
}
