//! Metadata values: the 13 GGUF value types, decoded values, and arrays that are validated when
//! the file is parsed but decoded lazily, element by element, when iterated.

use std::fmt;

use super::cursor::{Cursor, ReadError};
use super::{MAX_ARRAY_LEN, MAX_NESTING, MAX_STRING_LEN};

/// The type of a metadata value, with GGUF's numeric ids 0..=12 (`enum gguf_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// `u8` (id 0).
    U8,
    /// `i8` (id 1).
    I8,
    /// Little-endian `u16` (id 2).
    U16,
    /// Little-endian `i16` (id 3).
    I16,
    /// Little-endian `u32` (id 4).
    U32,
    /// Little-endian `i32` (id 5).
    I32,
    /// Little-endian `f32` (id 6).
    F32,
    /// One byte, 0 or 1 (id 7). Other bytes read as `true`, as in ggml.
    Bool,
    /// A `u64` length and that many bytes of UTF-8 (id 8).
    String,
    /// An element type id, a `u64` length and the elements (id 9).
    Array,
    /// Little-endian `u64` (id 10).
    U64,
    /// Little-endian `i64` (id 11).
    I64,
    /// Little-endian `f64` (id 12).
    F64,
}

impl ValueType {
    /// The type for a GGUF type id, if it is one of 0..=12.
    pub fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        const ALL: [ValueType; 13] = [U8, I8, U16, I16, U32, I32, F32, Bool, String, Array, U64, I64, F64];
        ALL.get(usize::try_from(id).ok()?).copied()
    }

    /// GGUF's numeric id.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// The encoded size of one value, for fixed-size types (all but strings and arrays).
    pub fn fixed_size(self) -> Option<u64> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }

    /// The fewest bytes one value of this type can take: a string its `u64` length, an array
    /// its element type and length.
    pub(crate) fn min_size(self) -> u64 {
        match self {
            Self::String => 8,
            Self::Array => 12,
            fixed => fixed.fixed_size().unwrap_or(1),
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A metadata value. Strings and arrays borrow the file's bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    /// `u8`.
    U8(u8),
    /// `i8`.
    I8(i8),
    /// `u16`.
    U16(u16),
    /// `i16`.
    I16(i16),
    /// `u32`.
    U32(u32),
    /// `i32`.
    I32(i32),
    /// `f32`.
    F32(f32),
    /// `bool`.
    Bool(bool),
    /// A UTF-8 string, a slice of the file.
    Str(&'a str),
    /// An array, decoded on demand.
    Array(ArrayView<'a>),
    /// `u64`.
    U64(u64),
    /// `i64`.
    I64(i64),
    /// `f64`.
    F64(f64),
}

impl<'a> Value<'a> {
    /// The value's type.
    pub fn value_type(&self) -> ValueType {
        match self {
            Self::U8(_) => ValueType::U8,
            Self::I8(_) => ValueType::I8,
            Self::U16(_) => ValueType::U16,
            Self::I16(_) => ValueType::I16,
            Self::U32(_) => ValueType::U32,
            Self::I32(_) => ValueType::I32,
            Self::F32(_) => ValueType::F32,
            Self::Bool(_) => ValueType::Bool,
            Self::Str(_) => ValueType::String,
            Self::Array(_) => ValueType::Array,
            Self::U64(_) => ValueType::U64,
            Self::I64(_) => ValueType::I64,
            Self::F64(_) => ValueType::F64,
        }
    }

    /// The value as an integer, if it is of an integer type (every GGUF integer fits `i128`).
    pub fn as_int(&self) -> Option<i128> {
        Some(match *self {
            Self::U8(v) => v.into(),
            Self::I8(v) => v.into(),
            Self::U16(v) => v.into(),
            Self::I16(v) => v.into(),
            Self::U32(v) => v.into(),
            Self::I32(v) => v.into(),
            Self::U64(v) => v.into(),
            Self::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// Reads one value of type `ty`; `depth` is the number of arrays enclosing it.
    pub(crate) fn read(cur: &mut Cursor<'a>, ty: ValueType, depth: u32) -> Result<Self, ReadError> {
        Ok(match ty {
            ValueType::U8 => Self::U8(cur.u8()?),
            ValueType::I8 => Self::I8(cur.i8()?),
            ValueType::U16 => Self::U16(cur.u16()?),
            ValueType::I16 => Self::I16(cur.i16()?),
            ValueType::U32 => Self::U32(cur.u32()?),
            ValueType::I32 => Self::I32(cur.i32()?),
            ValueType::F32 => Self::F32(cur.f32()?),
            ValueType::Bool => Self::Bool(cur.u8()? != 0),
            ValueType::String => Self::Str(cur.str(MAX_STRING_LEN)?),
            ValueType::Array => Self::Array(ArrayView::read(cur, depth + 1)?),
            ValueType::U64 => Self::U64(cur.u64()?),
            ValueType::I64 => Self::I64(cur.i64()?),
            ValueType::F64 => Self::F64(cur.f64()?),
        })
    }
}

/// A metadata array: validated when the file is parsed (element type, length, every element
/// inside the file, every string UTF-8, nesting within [`MAX_NESTING`]), decoded lazily. It
/// holds a slice of the file's bytes, so iterating allocates nothing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ArrayView<'a> {
    elem_type: ValueType,
    len: usize,
    /// The encoded elements, exactly `len` of them.
    bytes: &'a [u8],
    /// Arrays enclosing this one, itself included (1 for a top-level array).
    depth: u32,
}

impl fmt::Debug for ArrayView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArrayView")
            .field("elem_type", &self.elem_type)
            .field("len", &self.len)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl<'a> ArrayView<'a> {
    /// Reads an array (element type id, `u64` length, elements) at nesting `depth` (1 for an
    /// array that is a metadata value), validating every element.
    pub(crate) fn read(cur: &mut Cursor<'a>, depth: u32) -> Result<Self, ReadError> {
        let offset = cur.pos();
        if depth > MAX_NESTING {
            return Err(ReadError::NestingTooDeep { offset });
        }
        let id = cur.u32()?;
        let elem_type = ValueType::from_id(id).ok_or(ReadError::UnknownValueType { offset, id })?;
        let len_offset = cur.pos();
        let len = cur.u64()?;
        if len > MAX_ARRAY_LEN {
            return Err(ReadError::ArrayTooLong { offset: len_offset, len });
        }
        // Check the claim against the bytes left before walking it (len ≤ MAX_ARRAY_LEN, so the
        // product cannot overflow; checked anyway).
        let min = len.checked_mul(elem_type.min_size()).ok_or_else(|| cur.eof(u64::MAX))?;
        if min > cur.remaining() {
            return Err(cur.eof(min));
        }
        let start = cur.pos();
        match elem_type.fixed_size() {
            Some(_) => {
                cur.take(min)?;
            }
            None => {
                for _ in 0..len {
                    Value::read(cur, elem_type, depth)?;
                }
            }
        }
        let len = usize::try_from(len).map_err(|_| ReadError::ArrayTooLong { offset, len })?;
        Ok(Self { elem_type, len, bytes: cur.since(start), depth })
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The type of every element.
    pub fn elem_type(&self) -> ValueType {
        self.elem_type
    }

    /// Every element, decoded one at a time.
    pub fn iter(&self) -> impl Iterator<Item = Value<'a>> + 'a {
        let (mut cur, ty, depth) = (Cursor::new(self.bytes), self.elem_type, self.depth);
        // Elements were validated at parse time, so a read cannot fail; if it did, iteration
        // would just stop.
        (0..self.len).map_while(move |_| Value::read(&mut cur, ty, depth).ok())
    }

    /// The elements of a string array, as slices of the file; `None` for other element types.
    pub fn strings(&self) -> Option<impl Iterator<Item = &'a str> + 'a> {
        (self.elem_type == ValueType::String).then(|| {
            let mut cur = Cursor::new(self.bytes);
            (0..self.len).map_while(move |_| cur.str(MAX_STRING_LEN).ok())
        })
    }

    /// The elements of an `i32` array; `None` for other element types.
    pub fn i32s(&self) -> Option<impl Iterator<Item = i32> + 'a> {
        self.fixed(ValueType::I32, i32::from_le_bytes)
    }

    /// The elements of an `f32` array; `None` for other element types.
    pub fn f32s(&self) -> Option<impl Iterator<Item = f32> + 'a> {
        self.fixed(ValueType::F32, f32::from_le_bytes)
    }

    /// The elements of a `u32` array; `None` for other element types.
    pub fn u32s(&self) -> Option<impl Iterator<Item = u32> + 'a> {
        self.fixed(ValueType::U32, u32::from_le_bytes)
    }

    /// The elements of a fixed-size array of type `ty`, each decoded by `decode`.
    fn fixed<const N: usize, T: 'a>(
        &self,
        ty: ValueType,
        decode: fn([u8; N]) -> T,
    ) -> Option<impl Iterator<Item = T> + 'a> {
        let (chunks, _) = self.bytes.as_chunks::<N>();
        (self.elem_type == ty).then(|| chunks.iter().map(move |c| decode(*c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn array(ty: ValueType, len: u64, elems: &[u8]) -> Vec<u8> {
        let mut v = ty.id().to_le_bytes().to_vec();
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(elems);
        v
    }

    fn gguf_str(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    #[test]
    fn type_ids_round_trip() {
        for id in 0..=12 {
            assert_eq!(ValueType::from_id(id).map(ValueType::id), Some(id));
        }
        assert_eq!(ValueType::from_id(13), None);
        assert_eq!(ValueType::from_id(u32::MAX), None);
    }

    #[test]
    fn decodes_every_scalar_type() {
        let cases: [(ValueType, &[u8], Value); 11] = [
            (ValueType::U8, &[200], Value::U8(200)),
            (ValueType::I8, &[0xfe], Value::I8(-2)),
            (ValueType::U16, &[1, 1], Value::U16(257)),
            (ValueType::I16, &[0xff, 0xff], Value::I16(-1)),
            (ValueType::U32, &[0, 0, 0, 1], Value::U32(1 << 24)),
            (ValueType::I32, &[0xfd, 0xff, 0xff, 0xff], Value::I32(-3)),
            (ValueType::F32, &1.5f32.to_le_bytes(), Value::F32(1.5)),
            (ValueType::Bool, &[1], Value::Bool(true)),
            (ValueType::U64, &u64::MAX.to_le_bytes(), Value::U64(u64::MAX)),
            (ValueType::I64, &i64::MIN.to_le_bytes(), Value::I64(i64::MIN)),
            (ValueType::F64, &(-0.25f64).to_le_bytes(), Value::F64(-0.25)),
        ];
        for (ty, bytes, want) in cases {
            let mut cur = Cursor::new(bytes);
            assert_eq!(Value::read(&mut cur, ty, 0), Ok(want), "{ty}");
            assert_eq!(cur.remaining(), 0);
            assert_eq!(want.value_type(), ty);
            // One byte short fails with the offset of the value.
            let mut short = Cursor::new(&bytes[..bytes.len() - 1]);
            assert!(matches!(Value::read(&mut short, ty, 0), Err(ReadError::Eof { offset: 0, .. })));
        }
    }

    #[test]
    fn fixed_arrays_decode_lazily() {
        let elems: Vec<u8> = [1i32, -2, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
        let bytes = array(ValueType::I32, 3, &elems);
        let a = ArrayView::read(&mut Cursor::new(&bytes), 1).unwrap();
        assert_eq!((a.len(), a.elem_type(), a.is_empty()), (3, ValueType::I32, false));
        assert_eq!(a.i32s().unwrap().collect::<Vec<_>>(), [1, -2, 3]);
        assert!(a.f32s().is_none() && a.u32s().is_none() && a.strings().is_none());
        assert_eq!(a.iter().collect::<Vec<_>>(), [Value::I32(1), Value::I32(-2), Value::I32(3)]);
    }

    #[test]
    fn string_arrays_borrow_the_input() {
        let elems = [gguf_str("a"), gguf_str(""), gguf_str("ü")].concat();
        let bytes = array(ValueType::String, 3, &elems);
        let a = ArrayView::read(&mut Cursor::new(&bytes), 1).unwrap();
        let s: Vec<&str> = a.strings().unwrap().collect();
        assert_eq!(s, ["a", "", "ü"]);
        assert_eq!(s[0].as_ptr(), bytes[20..].as_ptr());
    }

    #[test]
    fn nested_arrays() {
        let inner = array(ValueType::U8, 2, &[7, 8]);
        let bytes = array(ValueType::Array, 2, &[inner.clone(), inner].concat());
        let a = ArrayView::read(&mut Cursor::new(&bytes), 1).unwrap();
        let inner: Vec<Value> = a.iter().collect();
        assert_eq!(inner.len(), 2);
        let Value::Array(i) = inner[1] else { panic!("not an array: {:?}", inner[1]) };
        assert_eq!(i.iter().collect::<Vec<_>>(), [Value::U8(7), Value::U8(8)]);
    }

    #[test]
    fn nesting_is_limited() {
        let mut bytes = array(ValueType::U8, 0, &[]);
        for _ in 0..MAX_NESTING {
            bytes = array(ValueType::Array, 1, &bytes);
        }
        let err = ArrayView::read(&mut Cursor::new(&bytes), 1).unwrap_err();
        let offset = 12 * u64::from(MAX_NESTING);
        assert_eq!(err, ReadError::NestingTooDeep { offset });
        // One level less is fine.
        assert!(ArrayView::read(&mut Cursor::new(&bytes[12..]), 1).is_ok());
    }

    #[test]
    fn array_length_is_checked_before_walking() {
        let bytes = array(ValueType::U64, u64::MAX, &[]);
        let err = ArrayView::read(&mut Cursor::new(&bytes), 1).unwrap_err();
        assert_eq!(err, ReadError::ArrayTooLong { offset: 4, len: u64::MAX });
        let bytes = array(ValueType::U32, 3, &[0; 11]);
        let err = ArrayView::read(&mut Cursor::new(&bytes), 1).unwrap_err();
        assert_eq!(err, ReadError::Eof { offset: 12, needed: 12, remaining: 11 });
        let bytes = array(ValueType::String, 2, &[0; 15]);
        let err = ArrayView::read(&mut Cursor::new(&bytes), 1).unwrap_err();
        assert_eq!(err, ReadError::Eof { offset: 12, needed: 16, remaining: 15 });
        let bytes = array(ValueType::from_id(9).unwrap(), 1, &13u32.to_le_bytes());
        let err = ArrayView::read(&mut Cursor::new(&bytes), 1).unwrap_err();
        assert_eq!(err, ReadError::Eof { offset: 12, needed: 12, remaining: 4 });
    }

    #[test]
    fn unknown_element_type() {
        let bytes = [13u32.to_le_bytes().as_slice(), &0u64.to_le_bytes()].concat();
        let err = ArrayView::read(&mut Cursor::new(&bytes), 1).unwrap_err();
        assert_eq!(err, ReadError::UnknownValueType { offset: 0, id: 13 });
    }

    #[test]
    fn integers_widen_losslessly() {
        assert_eq!(Value::I8(-1).as_int(), Some(-1));
        assert_eq!(Value::U64(u64::MAX).as_int(), Some(u64::MAX.into()));
        assert_eq!(Value::F32(1.0).as_int(), None);
        assert_eq!(Value::Bool(true).as_int(), None);
    }
}
