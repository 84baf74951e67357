//! A bounds-checked little-endian reader over a byte slice.
//!
//! Every read checks the bytes remaining before it touches them and returns a [`ReadError`]
//! carrying the byte offset; nothing here can panic or allocate. Lengths arrive as `u64` (as the
//! file stores them) and are converted to `usize` with a check, so a 32-bit host (wasm32) cannot
//! truncate them.

/// A low-level read failure, without the context of what was being read; [`super::error`]
/// turns it into a [`super::GgufError`] naming the key or tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// `needed` bytes were wanted at `offset`, but only `remaining` are left.
    Eof { offset: u64, needed: u64, remaining: u64 },
    /// A string length at `offset` is over the limit.
    StringTooLong { offset: u64, len: u64, limit: u64 },
    /// The string whose bytes start at `offset` is not UTF-8.
    InvalidUtf8 { offset: u64 },
    /// An array length at `offset` is over [`super::MAX_ARRAY_LEN`].
    ArrayTooLong { offset: u64, len: u64 },
    /// An array at `offset` is nested deeper than [`super::MAX_NESTING`].
    NestingTooDeep { offset: u64 },
    /// A value type id at `offset` is not one of GGUF's 0..=12.
    UnknownValueType { offset: u64, id: u32 },
}

/// A read position in a byte slice. Slices it hands out borrow the input, not the cursor.
#[derive(Clone, Debug)]
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    /// The current byte offset from the start of the input.
    pub fn pos(&self) -> u64 {
        self.pos as u64
    }

    /// Bytes left after the current position.
    pub fn remaining(&self) -> u64 {
        self.bytes.len().saturating_sub(self.pos) as u64
    }

    /// An end-of-input error for a read of `needed` bytes here.
    pub fn eof(&self, needed: u64) -> ReadError {
        ReadError::Eof { offset: self.pos(), needed, remaining: self.remaining() }
    }

    /// The next `n` bytes, advancing past them.
    pub fn take(&mut self, n: u64) -> Result<&'a [u8], ReadError> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| self.eof(n))?;
        let out = self.bytes.get(self.pos..end).ok_or_else(|| self.eof(n))?;
        self.pos = end;
        Ok(out)
    }

    /// The input between byte `start` and the current position (empty if `start` is past it).
    pub fn since(&self, start: u64) -> &'a [u8] {
        usize::try_from(start).ok().and_then(|s| self.bytes.get(s..self.pos)).unwrap_or_default()
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], ReadError> {
        let b = self.take(N as u64)?;
        b.first_chunk::<N>().copied().ok_or_else(|| self.eof(N as u64))
    }

    /// A `u8`.
    pub fn u8(&mut self) -> Result<u8, ReadError> {
        self.array::<1>().map(u8::from_le_bytes)
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, ReadError> {
        self.array().map(u16::from_le_bytes)
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, ReadError> {
        self.array().map(u32::from_le_bytes)
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, ReadError> {
        self.array().map(u64::from_le_bytes)
    }

    /// An `i8`.
    pub fn i8(&mut self) -> Result<i8, ReadError> {
        self.array().map(i8::from_le_bytes)
    }

    /// A little-endian `i16`.
    pub fn i16(&mut self) -> Result<i16, ReadError> {
        self.array().map(i16::from_le_bytes)
    }

    /// A little-endian `i32`.
    pub fn i32(&mut self) -> Result<i32, ReadError> {
        self.array().map(i32::from_le_bytes)
    }

    /// A little-endian `i64`.
    pub fn i64(&mut self) -> Result<i64, ReadError> {
        self.array().map(i64::from_le_bytes)
    }

    /// A little-endian IEEE `f32`.
    pub fn f32(&mut self) -> Result<f32, ReadError> {
        self.array().map(f32::from_le_bytes)
    }

    /// A little-endian IEEE `f64`.
    pub fn f64(&mut self) -> Result<f64, ReadError> {
        self.array().map(f64::from_le_bytes)
    }

    /// A GGUF string: a `u64` byte length, then that many bytes of UTF-8 (no terminator).
    /// The length is checked against `limit`, then against the bytes remaining.
    pub fn str(&mut self, limit: u64) -> Result<&'a str, ReadError> {
        let offset = self.pos();
        let len = self.u64()?;
        if len > limit {
            return Err(ReadError::StringTooLong { offset, len, limit });
        }
        let start = self.pos();
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| ReadError::InvalidUtf8 { offset: start })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_scalars() {
        let bytes = [1, 2, 0, 3, 0, 0, 0, 0xff, 0, 0, 0x80, 0x3f];
        let mut c = Cursor::new(&bytes);
        assert_eq!(c.u8(), Ok(1));
        assert_eq!(c.u16(), Ok(2));
        assert_eq!(c.u32(), Ok(3));
        assert_eq!(c.i8(), Ok(-1));
        assert_eq!(c.f32(), Ok(1.0));
        assert_eq!(c.remaining(), 0);
        assert_eq!(c.pos(), 12);
    }

    #[test]
    fn short_read_reports_offset_and_leaves_position() {
        let mut c = Cursor::new(&[1, 2, 3]);
        assert_eq!(c.u8(), Ok(1));
        assert_eq!(c.u32(), Err(ReadError::Eof { offset: 1, needed: 4, remaining: 2 }));
        assert_eq!(c.pos(), 1);
        assert_eq!(c.u16(), Ok(0x0302));
    }

    #[test]
    fn take_rejects_huge_lengths_without_overflow() {
        let mut c = Cursor::new(&[0; 8]);
        c.take(3).unwrap();
        for n in [6, u64::MAX, u64::MAX - 2, usize::MAX as u64] {
            assert_eq!(c.take(n), Err(ReadError::Eof { offset: 3, needed: n, remaining: 5 }));
        }
        assert_eq!(c.take(5), Ok(&[0u8; 5][..]));
        assert_eq!(c.take(0), Ok(&[][..]));
    }

    #[test]
    fn since_slices_the_input() {
        let bytes = [9, 8, 7, 6];
        let mut c = Cursor::new(&bytes);
        c.take(3).unwrap();
        assert_eq!(c.since(1), &[8, 7]);
        assert_eq!(c.since(4), &[] as &[u8]);
        assert_eq!(c.since(u64::MAX), &[] as &[u8]);
    }

    fn gguf_str(s: &[u8]) -> Vec<u8> {
        let mut v = (s.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(s);
        v
    }

    #[test]
    fn strings_are_length_prefixed_utf8_slices() {
        let bytes = gguf_str("héllo".as_bytes());
        let mut c = Cursor::new(&bytes);
        let s = c.str(100).unwrap();
        assert_eq!(s, "héllo");
        assert_eq!(s.as_ptr(), bytes[8..].as_ptr(), "zero-copy");
    }

    #[test]
    fn string_errors() {
        let bytes = gguf_str(b"abcdef");
        assert_eq!(Cursor::new(&bytes).str(5), Err(ReadError::StringTooLong { offset: 0, len: 6, limit: 5 }));
        assert_eq!(
            Cursor::new(&bytes[..10]).str(100),
            Err(ReadError::Eof { offset: 8, needed: 6, remaining: 2 })
        );
        let bad = gguf_str(&[b'a', 0xff]);
        assert_eq!(Cursor::new(&bad).str(100), Err(ReadError::InvalidUtf8 { offset: 8 }));
        let huge = u64::MAX.to_le_bytes();
        assert_eq!(
            Cursor::new(&huge).str(u64::MAX),
            Err(ReadError::Eof { offset: 8, needed: u64::MAX, remaining: 0 })
        );
    }
}
