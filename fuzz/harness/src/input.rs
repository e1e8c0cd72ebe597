//! The byte format the sequence targets read their operations from, and
//! the writer the seed generator builds those inputs with.
//!
//! A target reads small integers and length-prefixed blobs from the
//! front of its input with [`Input`]; when the input runs out every read
//! yields zero or an empty blob, so each input is a valid (if short)
//! program. [`Script`] writes exactly what [`Input`] reads, which is why
//! this is hand-written: `arbitrary::Unstructured` reads but has no
//! inverse, and the seeds must be real encodings placed where a target
//! reads them.

/// Reads operations from fuzzer bytes.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    /// A blob with a u16 length prefix.
    pub fn blob(&mut self) -> &'a [u8] {
        let n = usize::from(self.u16());
        self.bytes(n)
    }

    /// A blob with a u32 length prefix (for inputs that may exceed 64 KiB).
    pub fn big_blob(&mut self) -> &'a [u8] {
        let n = self.u32() as usize;
        self.bytes(n)
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Writes inputs that [`Input`] reads back field for field.
#[derive(Default)]
pub struct Script {
    out: Vec<u8>,
}

impl Script {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.out.push(v);
        self
    }

    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.out.extend_from_slice(b);
        self
    }

    /// A blob with a u16 length prefix; longer blobs are a seed bug.
    pub fn blob(&mut self, b: &[u8]) -> &mut Self {
        let n = u16::try_from(b.len()).expect("a seed blob fits a u16 length");
        self.u16(n).bytes(b)
    }

    /// A blob with a u32 length prefix.
    pub fn big_blob(&mut self, b: &[u8]) -> &mut Self {
        let n = u32::try_from(b.len()).expect("a seed blob fits a u32 length");
        self.u32(n).bytes(b)
    }

    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reader_reads_what_the_writer_wrote_and_zeros_after() {
        let bytes = Script::new()
            .u8(7)
            .bool(true)
            .u16(0xbeef)
            .u32(0xdead_beef)
            .u64(u64::MAX - 1)
            .blob(b"abc")
            .big_blob(b"defg")
            .bytes(b"tail")
            .finish();
        let mut i = Input::new(&bytes);
        assert_eq!(i.u8(), 7);
        assert!(i.bool());
        assert_eq!(i.u16(), 0xbeef);
        assert_eq!(i.u32(), 0xdead_beef);
        assert_eq!(i.u64(), u64::MAX - 1);
        assert_eq!(i.blob(), b"abc");
        assert_eq!(i.big_blob(), b"defg");
        assert_eq!(i.rest(), b"tail");
        assert!(i.is_empty());
        assert_eq!((i.u8(), i.u32(), i.blob()), (0, 0, &b""[..]));
    }
}
