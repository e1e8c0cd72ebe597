//! Checked reading and appending of wire values: [`Reader`] over a byte
//! slice (every read checks the bytes left and fails with
//! [`UnexpectedEnd`] instead of panicking), [`WriteExt`] on `Vec<u8>`, and
//! the [`Codec`] trait that ties a type to its encoding.

/// The input ended before the value did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unexpected end of input")]
pub struct UnexpectedEnd;

/// A malformed message, naming the part that was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{what} is truncated")]
    Truncated { what: &'static str },
    #[error("{what} is followed by {extra} unexpected bytes")]
    Trailing { what: &'static str, extra: usize },
    #[error("{what} is invalid: {detail}")]
    Invalid { what: &'static str, detail: String },
}

impl DecodeError {
    /// An invalid field `what`, with a reason for the operator.
    pub fn invalid(what: &'static str, detail: impl Into<String>) -> Self {
        DecodeError::Invalid {
            what,
            detail: detail.into(),
        }
    }
}

/// Names the part that was truncated: `r.get::<u32>().ctx("page count")?`.
pub trait Context<T> {
    fn ctx(self, what: &'static str) -> Result<T, DecodeError>;
}

impl<T> Context<T> for Result<T, UnexpectedEnd> {
    fn ctx(self, what: &'static str) -> Result<T, DecodeError> {
        self.map_err(|UnexpectedEnd| DecodeError::Truncated { what })
    }
}

/// A value with a wire encoding.
pub trait Codec: Sized {
    /// Reads the value from the front of `r`.
    fn decode(r: &mut Reader<'_>) -> Result<Self, UnexpectedEnd>;
    /// Appends the value's encoding to `out`.
    fn encode(&self, out: &mut Vec<u8>);
}

/// A checked cursor over received bytes.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Reads a value.
    pub fn get<T: Codec>(&mut self) -> Result<T, UnexpectedEnd> {
        T::decode(self)
    }

    /// Takes the next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], UnexpectedEnd> {
        if n > self.buf.len() {
            return Err(UnexpectedEnd);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Takes the next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], UnexpectedEnd> {
        let b = self.bytes(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }

    /// Takes a `u32 LE` length and that many bytes.
    pub fn len_prefixed(&mut self) -> Result<&'a [u8], UnexpectedEnd> {
        let n = self.get::<u32>()?;
        self.bytes(n as usize)
    }

    /// Takes everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Fails unless every byte was read: messages have no slack.
    pub fn finish(self, what: &'static str) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing {
                what,
                extra: self.buf.len(),
            })
        }
    }
}

/// Appending wire values to an output buffer.
pub trait WriteExt {
    /// Appends `v`'s encoding.
    fn put<T: Codec>(&mut self, v: T);
    /// Appends a `u32 LE` length and `bytes`.
    ///
    /// # Panics
    /// If `bytes` is 4 GiB or longer: no wanmig frame carries that much, so
    /// such a call is a programming error, not bad input.
    fn put_len_prefixed(&mut self, bytes: &[u8]);
}

impl WriteExt for Vec<u8> {
    fn put<T: Codec>(&mut self, v: T) {
        v.encode(self)
    }

    fn put_len_prefixed(&mut self, bytes: &[u8]) {
        let n = u32::try_from(bytes.len()).expect("a length-prefixed field is below 4 GiB");
        self.put(n);
        self.extend_from_slice(bytes);
    }
}

macro_rules! le_int {
    ($($t:ty),*) => {$(
        impl Codec for $t {
            fn decode(r: &mut Reader<'_>) -> Result<Self, UnexpectedEnd> {
                Ok(<$t>::from_le_bytes(r.array()?))
            }
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
        impl Codec for Be<$t> {
            fn decode(r: &mut Reader<'_>) -> Result<Self, UnexpectedEnd> {
                Ok(Be(<$t>::from_be_bytes(r.array()?)))
            }
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.0.to_be_bytes());
            }
        }
    )*};
}

/// A big-endian (network order) integer: `r.get::<Be<u16>>()?.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Be<T>(pub T);

le_int!(u8, u16, u32, u64, i32, i64);

impl<const N: usize> Codec for [u8; N] {
    fn decode(r: &mut Reader<'_>) -> Result<Self, UnexpectedEnd> {
        r.array()
    }
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_round_trip_in_both_orders() {
        let mut out = Vec::new();
        out.put(0x0102_0304u32);
        out.put(Be(0x0506u16));
        out.put(u64::MAX - 1);
        out.put([9u8, 8, 7]);
        assert_eq!(&out[..6], &[4, 3, 2, 1, 5, 6]);
        let mut r = Reader::new(&out);
        assert_eq!(r.get::<u32>(), Ok(0x0102_0304));
        assert_eq!(r.get::<Be<u16>>(), Ok(Be(0x0506)));
        assert_eq!(r.get::<u64>(), Ok(u64::MAX - 1));
        assert_eq!(r.get::<[u8; 3]>(), Ok([9, 8, 7]));
        assert!(r.finish("test").is_ok());
    }

    #[test]
    fn short_input_is_an_error_and_consumes_nothing() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.get::<u32>(), Err(UnexpectedEnd));
        assert_eq!(r.remaining(), 3);
        assert_eq!(r.bytes(4), Err(UnexpectedEnd));
        assert_eq!(r.get::<u16>().ctx("x"), Ok(0x0201));
        assert_eq!(
            r.get::<u16>().ctx("field y"),
            Err(DecodeError::Truncated { what: "field y" })
        );
    }

    #[test]
    fn length_prefixed_fields_check_their_length() {
        let mut out = Vec::new();
        out.put_len_prefixed(b"abc");
        assert_eq!(Reader::new(&out).len_prefixed(), Ok(&b"abc"[..]));
        // A length longer than the bytes present.
        let mut bad = Vec::new();
        bad.put(1000u32);
        bad.extend_from_slice(b"abc");
        assert_eq!(Reader::new(&bad).len_prefixed(), Err(UnexpectedEnd));
    }

    #[test]
    fn trailing_bytes_are_named() {
        let mut r = Reader::new(&[1, 2, 3]);
        r.get::<u8>().unwrap();
        assert_eq!(
            r.finish("hello"),
            Err(DecodeError::Trailing {
                what: "hello",
                extra: 2
            })
        );
    }
}
