//! Why a GGUF file was rejected, or why a typed metadata lookup failed.
//!
//! Every message names what was being read (a key, a tensor, a header field), the value found
//! and the value or limit allowed; read failures carry the byte offset where they happened.

use super::cursor::ReadError;
use super::value::ValueType;
use crate::tensor::GgmlType;

/// A rejected GGUF file, or a failed metadata lookup.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GgufError {
    /// The file does not start with `GGUF`.
    #[error("not a GGUF file: magic {found:02x?}, expected \"GGUF\"")]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// The version is not 2 or 3.
    #[error("unsupported GGUF version {version} (supported: 2, 3)")]
    UnsupportedVersion {
        /// The version found.
        version: u32,
    },
    /// The version reads as 2 or 3 byte-swapped: a big-endian file.
    #[error("big-endian GGUF (version {version} byte-swapped) is not supported")]
    BigEndian {
        /// The version, as it reads byte-swapped.
        version: u32,
    },
    /// The file ends before something it claims to contain.
    #[error("{what}: file truncated at byte {offset}: needs {needed} bytes, {remaining} remain")]
    Truncated {
        /// What was being read.
        what: String,
        /// Byte offset of the read.
        offset: u64,
        /// Bytes it needed (at least).
        needed: u64,
        /// Bytes left in the file.
        remaining: u64,
    },
    /// A string is longer than the limit for its kind.
    #[error("{what}: string at byte {offset} has length {len}, limit {limit}")]
    StringTooLong {
        /// What was being read.
        what: String,
        /// Byte offset of the length.
        offset: u64,
        /// Length claimed.
        len: u64,
        /// Largest length allowed.
        limit: u64,
    },
    /// A string is not valid UTF-8.
    #[error("{what}: string at byte {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// What was being read.
        what: String,
        /// Byte offset of the string's bytes.
        offset: u64,
    },
    /// An array is longer than [`super::MAX_ARRAY_LEN`].
    #[error("{what}: array at byte {offset} has length {len}, limit {limit}")]
    ArrayTooLong {
        /// What was being read.
        what: String,
        /// Byte offset of the length.
        offset: u64,
        /// Length claimed.
        len: u64,
        /// Largest length allowed.
        limit: u64,
    },
    /// Arrays of arrays are nested deeper than [`super::MAX_NESTING`].
    #[error("{what}: array at byte {offset} is nested deeper than {limit} levels")]
    NestingTooDeep {
        /// What was being read.
        what: String,
        /// Byte offset of the too-deep array.
        offset: u64,
        /// Deepest nesting allowed.
        limit: u32,
    },
    /// A value type id is not one of GGUF's 0..=12.
    #[error("{what}: unknown value type {id} at byte {offset} (known: 0..=12)")]
    UnknownValueType {
        /// What was being read.
        what: String,
        /// Byte offset of the type id.
        offset: u64,
        /// The type id found.
        id: u32,
    },
    /// The header claims more metadata entries than [`super::MAX_KV`].
    #[error("header claims {count} metadata entries, limit {limit}")]
    TooManyKv {
        /// Count claimed.
        count: u64,
        /// Largest count allowed.
        limit: u64,
    },
    /// The header claims more tensors than [`super::MAX_TENSORS`].
    #[error("header claims {count} tensors, limit {limit}")]
    TooManyTensors {
        /// Count claimed.
        count: u64,
        /// Largest count allowed.
        limit: u64,
    },
    /// Two metadata entries have the same key.
    #[error("duplicate metadata key '{key}'")]
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// `general.alignment` is zero or not a power of two.
    #[error("general.alignment: {value} is not a nonzero power of two")]
    BadAlignment {
        /// The alignment found.
        value: u32,
    },
    /// A key looked up with a typed getter is absent.
    #[error("metadata key '{key}' not found")]
    MissingKey {
        /// The key.
        key: String,
    },
    /// A metadata value has the wrong type for the getter (or for `general.alignment`).
    #[error("metadata key '{key}': expected {expected}, found {found}")]
    WrongType {
        /// The key.
        key: String,
        /// The type(s) accepted.
        expected: &'static str,
        /// The type found.
        found: ValueType,
    },
    /// An integer value does not fit the getter's type.
    #[error("metadata key '{key}': value {value} does not fit {expected}")]
    IntOutOfRange {
        /// The key.
        key: String,
        /// The value found.
        value: i128,
        /// The type asked for.
        expected: &'static str,
    },
    /// Two tensors have the same name.
    #[error("duplicate tensor name '{tensor}'")]
    DuplicateTensor {
        /// The name.
        tensor: String,
    },
    /// A tensor's dimension count is not 1..=[`super::MAX_DIMS`].
    #[error("tensor '{tensor}': {n_dims} dimensions, allowed 1..={limit}")]
    BadDimCount {
        /// The tensor.
        tensor: String,
        /// Dimension count found.
        n_dims: u32,
        /// Largest count allowed.
        limit: u32,
    },
    /// A tensor has a zero-length dimension.
    #[error("tensor '{tensor}': dimension {index} is 0")]
    ZeroDim {
        /// The tensor.
        tensor: String,
        /// Which dimension (0 = ne\[0\]).
        index: usize,
    },
    /// A tensor's element count overflows `u64`.
    #[error("tensor '{tensor}': element count of shape {dims:?} overflows u64")]
    ShapeOverflow {
        /// The tensor.
        tensor: String,
        /// Its dimensions, ne\[0\] first.
        dims: Vec<u64>,
    },
    /// A tensor's type id is not one this crate supports.
    #[error("tensor '{tensor}': unknown or unsupported ggml type id {id}")]
    UnknownTensorType {
        /// The tensor.
        tensor: String,
        /// The type id found.
        id: u32,
    },
    /// A tensor's rows are not a whole number of its type's blocks.
    #[error("tensor '{tensor}': row of {ne0} elements is not whole {ty} blocks of {block_len}")]
    PartialBlock {
        /// The tensor.
        tensor: String,
        /// Its type.
        ty: GgmlType,
        /// Elements per row (ne\[0\]).
        ne0: u64,
        /// Elements per block.
        block_len: u64,
    },
    /// A tensor's byte size overflows `u64`.
    #[error("tensor '{tensor}': byte size of {ty} shape {dims:?} overflows u64")]
    SizeOverflow {
        /// The tensor.
        tensor: String,
        /// Its type.
        ty: GgmlType,
        /// Its dimensions, ne\[0\] first.
        dims: Vec<u64>,
    },
    /// A tensor's offset is not a multiple of the alignment.
    #[error("tensor '{tensor}': offset {offset} is not a multiple of alignment {alignment}")]
    MisalignedOffset {
        /// The tensor.
        tensor: String,
        /// Offset in the data section.
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },
    /// A tensor's data lies (partly) outside the file.
    #[error("tensor '{tensor}': {size} bytes at offset {offset} overrun the {data_len}-byte data section")]
    TensorOutOfBounds {
        /// The tensor.
        tensor: String,
        /// Offset in the data section.
        offset: u64,
        /// Size in bytes.
        size: u64,
        /// Bytes in the data section (0 when it starts past the end of the file).
        data_len: u64,
    },
    /// Two tensors' data overlap.
    #[error("tensor '{tensor}' at offset {offset} overlaps tensor '{other}' ending at {other_end}")]
    TensorOverlap {
        /// The later tensor.
        tensor: String,
        /// Its offset in the data section.
        offset: u64,
        /// The earlier tensor it overlaps.
        other: String,
        /// Where the earlier tensor's data ends.
        other_end: u64,
    },
}

impl ReadError {
    /// This failure as a [`GgufError`], saying it happened while reading `what`.
    pub(crate) fn context(self, what: impl Into<String>) -> GgufError {
        let what = what.into();
        match self {
            Self::Eof { offset, needed, remaining } => {
                GgufError::Truncated { what, offset, needed, remaining }
            }
            Self::StringTooLong { offset, len, limit } => {
                GgufError::StringTooLong { what, offset, len, limit }
            }
            Self::InvalidUtf8 { offset } => GgufError::InvalidUtf8 { what, offset },
            Self::ArrayTooLong { offset, len } => {
                GgufError::ArrayTooLong { what, offset, len, limit: super::MAX_ARRAY_LEN }
            }
            Self::NestingTooDeep { offset } => {
                GgufError::NestingTooDeep { what, offset, limit: super::MAX_NESTING }
            }
            Self::UnknownValueType { offset, id } => GgufError::UnknownValueType { what, offset, id },
        }
    }
}

/// Adds context to a [`ReadError`] result, building the description only on failure.
pub(crate) trait Context<T> {
    /// Converts the error, describing what was being read with `what()`.
    fn ctx<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T, GgufError>;
}

impl<T> Context<T> for Result<T, ReadError> {
    fn ctx<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T, GgufError> {
        self.map_err(|e| e.context(what()))
    }
}
