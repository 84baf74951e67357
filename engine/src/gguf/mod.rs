//! A hardened, zero-copy reader for GGUF files (version 3, and version 2, which has the same
//! layout), checked as strictly as ggml's `gguf.cpp` after its CVE fixes.
//!
//! # File layout
//!
//! All numbers are little-endian. A string is a `u64` byte length followed by that many bytes
//! of UTF-8, with no terminator.
//!
//! 1. Header: magic `GGUF`, `u32` version, `u64` tensor count, `u64` metadata count.
//! 2. Metadata, in file order: key (string), `u32` value type ([`ValueType`], ids 0..=12),
//!    value. An array value is a `u32` element type, a `u64` length and the elements;
//!    elements may themselves be arrays.
//! 3. Tensor table: per tensor a name (string), `u32` n_dims, n_dims × `u64` dimensions
//!    (ne\[0\], the contiguous one, first), `u32` ggml type
//!    ([`GgmlType`](crate::tensor::GgmlType)), `u64` offset relative to the data section.
//! 4. Padding to the alignment (`general.alignment`, default 32), then the data section,
//!    where each tensor's bytes start at its offset.
//!
//! # How it reads, and what it checks
//!
//! [`Gguf::parse`] walks the file once with a bounds-checked cursor (`cursor.rs`): every read
//! checks the bytes remaining first, and every failure is a [`GgufError`] that names the key
//! or tensor, the value found, the limit allowed and, for reads, the byte offset.
//!
//! - Magic is `GGUF`; version is 2 or 3 (a byte-swapped one is reported as big-endian).
//! - Counts and lengths are checked against a named limit ([`MAX_KV`], [`MAX_TENSORS`],
//!   [`MAX_STRING_LEN`], [`MAX_TENSOR_NAME_LEN`], [`MAX_ARRAY_LEN`], [`MAX_NESTING`],
//!   [`MAX_DIMS`]) and against the bytes remaining *before* anything is sized from them:
//!   nothing is allocated in proportion to what the file merely claims. Sizes use checked
//!   arithmetic.
//! - Keys, tensor names and string values (array elements too) are valid UTF-8.
//! - Keys are unique; tensor names are unique.
//! - Arrays are validated in full at parse time (every element inside the file, every string
//!   UTF-8) but decoded lazily by [`ArrayView`]: a 256k-token vocabulary costs no allocation.
//! - `general.alignment`, if present, is a `U32` power of two.
//! - Each tensor has 1..=4 dimensions, each ≥ 1, whose product fits `u64`; its rows are whole
//!   blocks of its type; its byte size is computed with checked arithmetic; its offset is a
//!   multiple of the alignment; its bytes lie inside the file; and no two tensors overlap
//!   (ggml also requires offsets to be the running padded sum; this reader only requires
//!   them to be disjoint, which is all zero-copy views need).
//!
//! Nothing in this module panics on any input; the `fuzz/` crate beside this one checks that.
//! Strings, arrays and tensor data are slices of the input.

mod cursor;
mod error;
mod tensor_info;
mod value;

use std::collections::BTreeMap;

pub use error::GgufError;
pub use tensor_info::{Shape, TensorInfo};
pub use value::{ArrayView, Value, ValueType};

use cursor::Cursor;
use error::Context;
use tensor_info::Entry;

/// Longest string (key or value) accepted, in bytes.
pub const MAX_STRING_LEN: u64 = 1 << 24;
/// Longest tensor name accepted, in bytes (ggml's `GGML_MAX_NAME` less its terminator).
pub const MAX_TENSOR_NAME_LEN: u64 = 63;
/// Most elements in one array.
pub const MAX_ARRAY_LEN: u64 = 1 << 24;
/// Deepest nesting of arrays within arrays (1 = an array of scalars or strings).
pub const MAX_NESTING: u32 = 8;
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// Most tensors in one file.
pub const MAX_TENSORS: u64 = 1 << 20;
/// Most metadata entries in one file.
pub const MAX_KV: u64 = 1 << 16;
/// Alignment of the data section and of tensor offsets when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The key that sets the alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// Fewest bytes a metadata entry takes: key length, value type, a one-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
/// Fewest bytes a tensor table entry takes: name length, n_dims, one dimension, type, offset.
const MIN_TENSOR_BYTES: u64 = 8 + 4 + 8 + 4 + 8;

/// A parsed GGUF file: its metadata and tensors, borrowing the bytes it was parsed from.
#[derive(Debug)]
pub struct Gguf<'a> {
    version: u32,
    alignment: u64,
    data_offset: u64,
    /// Byte offset where the metadata ends (and the tensor table starts).
    metadata_end: u64,
    /// Metadata in file order.
    kv: Vec<(&'a str, Value<'a>)>,
    /// Key → index into `kv`.
    kv_index: BTreeMap<&'a str, usize>,
    /// Tensors in file order.
    tensors: Vec<TensorInfo<'a>>,
    /// Name → index into `tensors`.
    tensor_index: BTreeMap<&'a str, usize>,
}

impl<'a> Gguf<'a> {
    /// Parses and validates a whole GGUF file. See the [module docs](self) for the checks.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, GgufError> {
        let mut cur = Cursor::new(bytes);
        let (version, n_tensors, n_kv) = read_header(&mut cur)?;
        let (kv, kv_index) = read_metadata(&mut cur, n_kv)?;
        let metadata_end = cur.pos();
        let alignment = alignment(kv_index.get(ALIGNMENT_KEY).and_then(|&i| kv.get(i)))?;
        let (entries, tensor_index) = read_tensor_table(&mut cur, n_tensors, alignment)?;
        // Pad to the alignment; `pos` ≤ the file length, so this only overflows on a
        // pathological alignment, and then the data section is simply past the end.
        let data_offset = cur.pos().div_ceil(alignment).saturating_mul(alignment);
        let data = usize::try_from(data_offset).ok().and_then(|o| bytes.get(o..)).unwrap_or_default();
        let tensors = tensor_info::place(entries, data)?;
        Ok(Self { version, alignment, data_offset, metadata_end, kv, kv_index, tensors, tensor_index })
    }

    /// The format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The alignment of the data section and of tensor offsets: `general.alignment`, or
    /// [`DEFAULT_ALIGNMENT`].
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Byte offset of the data section in the file. Every tensor lies inside the file; a file
    /// without tensors may end before this offset.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Byte offset where the metadata section ends: header and metadata are `bytes[..this]`.
    /// A copy of that prefix with the header's tensor count set to 0 is a valid GGUF holding
    /// the metadata alone (the wasi-nn guest embeds its tokenizer that way).
    pub fn metadata_end(&self) -> u64 {
        self.metadata_end
    }

    /// Every metadata entry, in file order.
    pub fn metadata(&self) -> impl Iterator<Item = (&'a str, &Value<'a>)> {
        self.kv.iter().map(|(k, v)| (*k, v))
    }

    /// The value for `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        let (_, v) = self.kv.get(*self.kv_index.get(key)?)?;
        Some(v)
    }

    /// The value for `key`, or [`GgufError::MissingKey`].
    fn value(&self, key: &str) -> Result<&Value<'a>, GgufError> {
        self.get(key).ok_or_else(|| GgufError::MissingKey { key: key.to_owned() })
    }

    /// The integer for `key`, of any integer type.
    fn int(&self, key: &str, expected: &'static str) -> Result<i128, GgufError> {
        let v = self.value(key)?;
        v.as_int().ok_or_else(|| wrong_type(key, expected, v))
    }

    /// The `u32` for `key`: any integer type whose value fits.
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        let value = self.int(key, "an integer fitting u32")?;
        u32::try_from(value).map_err(|_| out_of_range(key, value, "u32"))
    }

    /// The `u64` for `key`: any integer type whose value fits.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let value = self.int(key, "an integer fitting u64")?;
        u64::try_from(value).map_err(|_| out_of_range(key, value, "u64"))
    }

    /// The `f32` for `key`: an `F32`, or an `F64` rounded to `f32`.
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        match *self.value(key)? {
            Value::F32(v) => Ok(v),
            Value::F64(v) => Ok(v as f32),
            ref v => Err(wrong_type(key, "F32 or F64", v)),
        }
    }

    /// The `bool` for `key`.
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        match *self.value(key)? {
            Value::Bool(v) => Ok(v),
            ref v => Err(wrong_type(key, "Bool", v)),
        }
    }

    /// The string for `key`, a slice of the file.
    pub fn get_str(&self, key: &str) -> Result<&'a str, GgufError> {
        match *self.value(key)? {
            Value::Str(v) => Ok(v),
            ref v => Err(wrong_type(key, "String", v)),
        }
    }

    /// The array for `key`.
    pub fn get_array(&self, key: &str) -> Result<&ArrayView<'a>, GgufError> {
        match self.value(key)? {
            Value::Array(v) => Ok(v),
            v => Err(wrong_type(key, "Array", v)),
        }
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[TensorInfo<'a>] {
        &self.tensors
    }

    /// The tensor called `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo<'a>> {
        self.tensors.get(*self.tensor_index.get(name)?)
    }
}

fn wrong_type(key: &str, expected: &'static str, found: &Value<'_>) -> GgufError {
    GgufError::WrongType { key: key.to_owned(), expected, found: found.value_type() }
}

fn out_of_range(key: &str, value: i128, expected: &'static str) -> GgufError {
    GgufError::IntOutOfRange { key: key.to_owned(), value, expected }
}

/// Reads magic and version, and the tensor and metadata counts (checked against their limits).
fn read_header(cur: &mut Cursor<'_>) -> Result<(u32, u64, u64), GgufError> {
    let found = cur.array::<4>().ctx(|| "header: magic")?;
    if &found != b"GGUF" {
        return Err(GgufError::BadMagic { found });
    }
    let version = cur.u32().ctx(|| "header: version")?;
    match version {
        2 | 3 => {}
        v if matches!(v.swap_bytes(), 2 | 3) => return Err(GgufError::BigEndian { version: v }),
        v => return Err(GgufError::UnsupportedVersion { version: v }),
    }
    let n_tensors = cur.u64().ctx(|| "header: tensor count")?;
    let n_kv = cur.u64().ctx(|| "header: metadata count")?;
    if n_tensors > MAX_TENSORS {
        return Err(GgufError::TooManyTensors { count: n_tensors, limit: MAX_TENSORS });
    }
    if n_kv > MAX_KV {
        return Err(GgufError::TooManyKv { count: n_kv, limit: MAX_KV });
    }
    Ok((version, n_tensors, n_kv))
}

/// Checks that `count` items of at least `min_bytes` each can fit in what is left of the
/// file, and returns a capacity to reserve for them.
fn claim(cur: &Cursor<'_>, count: u64, min_bytes: u64, what: &str) -> Result<usize, GgufError> {
    // `count` is within a limit far below u64::MAX / min_bytes; saturate anyway.
    let needed = count.saturating_mul(min_bytes);
    if needed > cur.remaining() {
        return Err(cur.eof(needed).context(format!("{what} of {count} entries")));
    }
    Ok(usize::try_from(count).unwrap_or(0))
}

type Metadata<'a> = (Vec<(&'a str, Value<'a>)>, BTreeMap<&'a str, usize>);

/// Reads `n_kv` metadata entries, rejecting duplicate keys.
fn read_metadata<'a>(cur: &mut Cursor<'a>, n_kv: u64) -> Result<Metadata<'a>, GgufError> {
    let mut kv = Vec::with_capacity(claim(cur, n_kv, MIN_KV_BYTES, "metadata table")?);
    let mut index = BTreeMap::new();
    for i in 0..n_kv {
        let key = cur.str(MAX_STRING_LEN).ctx(|| format!("key of metadata entry #{i}"))?;
        let what = || format!("metadata key '{key}'");
        let offset = cur.pos();
        let id = cur.u32().ctx(what)?;
        let ty =
            ValueType::from_id(id).ok_or_else(|| GgufError::UnknownValueType { what: what(), offset, id })?;
        let value = Value::read(cur, ty, 0).ctx(what)?;
        if index.insert(key, kv.len()).is_some() {
            return Err(GgufError::DuplicateKey { key: key.to_owned() });
        }
        kv.push((key, value));
    }
    Ok((kv, index))
}

/// The alignment set by the `general.alignment` entry, or the default.
fn alignment(entry: Option<&(&str, Value<'_>)>) -> Result<u64, GgufError> {
    match entry {
        None => Ok(DEFAULT_ALIGNMENT),
        Some((_, Value::U32(v))) if v.is_power_of_two() => Ok(u64::from(*v)),
        Some((_, Value::U32(v))) => Err(GgufError::BadAlignment { value: *v }),
        Some((key, v)) => Err(wrong_type(key, "U32", v)),
    }
}

type TensorTable<'a> = (Vec<Entry<'a>>, BTreeMap<&'a str, usize>);

/// Reads `n_tensors` tensor table entries, rejecting duplicate names.
fn read_tensor_table<'a>(
    cur: &mut Cursor<'a>,
    n_tensors: u64,
    alignment: u64,
) -> Result<TensorTable<'a>, GgufError> {
    let mut entries = Vec::with_capacity(claim(cur, n_tensors, MIN_TENSOR_BYTES, "tensor table")?);
    let mut index = BTreeMap::new();
    for i in 0..n_tensors {
        let entry = Entry::read(cur, i, alignment)?;
        if index.insert(entry.name, entries.len()).is_some() {
            return Err(GgufError::DuplicateTensor { tensor: entry.name.to_owned() });
        }
        entries.push(entry);
    }
    Ok((entries, index))
}
