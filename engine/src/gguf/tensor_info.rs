//! The tensor table: one entry per tensor (name, shape, type, offset), checked entry by entry,
//! then placed in the data section and checked against the file and against each other.

use std::fmt;

use super::cursor::Cursor;
use super::error::{Context, GgufError};
use super::{MAX_DIMS, MAX_TENSOR_NAME_LEN};
use crate::tensor::GgmlType;

/// A tensor shape: 1 to [`MAX_DIMS`] dimensions in ggml order (ne\[0\], the contiguous one,
/// first), each at least 1, whose product fits `u64`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    ne: [u64; MAX_DIMS],
    n_dims: usize,
}

impl Shape {
    /// The shape with dimensions `dims` (ne\[0\] first), or `None` unless there are
    /// 1..=[`MAX_DIMS`] of them, none is 0 and their product fits `u64`.
    pub fn new(dims: &[u64]) -> Option<Self> {
        if dims.is_empty() || dims.contains(&0) {
            return None;
        }
        dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d))?;
        let mut ne = [1; MAX_DIMS];
        ne.get_mut(..dims.len())?.copy_from_slice(dims);
        Some(Self { ne, n_dims: dims.len() })
    }

    /// The dimensions, ne\[0\] first.
    pub fn dims(&self) -> &[u64] {
        self.ne.get(..self.n_dims).unwrap_or(&self.ne)
    }

    /// The number of elements (the product of the dimensions).
    pub fn n_elements(&self) -> u64 {
        // `new` checked that the product fits.
        self.ne.iter().fold(1, |n: u64, &d| n.saturating_mul(d))
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.dims(), f)
    }
}

/// A tensor of the file: its table entry and its bytes.
#[derive(Clone, Copy)]
pub struct TensorInfo<'a> {
    /// Name, e.g. `blk.0.ssm_in.weight` (a slice of the file).
    pub name: &'a str,
    /// Shape, ne\[0\] first.
    pub shape: Shape,
    /// Storage type.
    pub ty: GgmlType,
    /// Byte offset of the data, relative to the data section ([`super::Gguf::data_offset`]).
    pub offset: u64,
    /// The tensor's bytes: exactly the size its shape and type need (a slice of the file).
    pub data: &'a [u8],
}

impl TensorInfo<'_> {
    /// The number of elements.
    pub fn n_elements(&self) -> u64 {
        self.shape.n_elements()
    }

    /// The dimensions, ne\[0\] first.
    pub fn dims(&self) -> &[u64] {
        self.shape.dims()
    }
}

impl fmt::Debug for TensorInfo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TensorInfo")
            .field("name", &self.name)
            .field("shape", &self.shape)
            .field("ty", &self.ty)
            .field("offset", &self.offset)
            .field("bytes", &self.data.len())
            .finish()
    }
}

/// A table entry, checked on its own but not yet placed in the data section.
pub(crate) struct Entry<'a> {
    pub name: &'a str,
    pub shape: Shape,
    pub ty: GgmlType,
    pub offset: u64,
    /// Bytes the data takes.
    pub size: u64,
}

impl<'a> Entry<'a> {
    /// Reads entry number `index`: name, `u32` n_dims, `u64` × n_dims, `u32` type, `u64`
    /// offset. Checks the shape, type, size and offset alignment.
    pub fn read(cur: &mut Cursor<'a>, index: u64, alignment: u64) -> Result<Self, GgufError> {
        let name = cur.str(MAX_TENSOR_NAME_LEN).ctx(|| format!("name of tensor #{index}"))?;
        let at = |what: &str| format!("tensor '{name}': {what}");
        let n_dims = cur.u32().ctx(|| at("dimension count"))?;
        if !(1..=MAX_DIMS as u32).contains(&n_dims) {
            let (tensor, limit) = (name.to_owned(), MAX_DIMS as u32);
            return Err(GgufError::BadDimCount { tensor, n_dims, limit });
        }
        let mut ne = [0u64; MAX_DIMS];
        for d in ne.iter_mut().take(n_dims as usize) {
            *d = cur.u64().ctx(|| at("dimensions"))?;
        }
        let dims = ne.get(..n_dims as usize).unwrap_or(&ne);
        let shape = check_shape(name, dims)?;
        let id = cur.u32().ctx(|| at("type"))?;
        let ty = GgmlType::from_id(id)
            .ok_or_else(|| GgufError::UnknownTensorType { tensor: name.to_owned(), id })?;
        let size = byte_size(name, shape, ty)?;
        let offset = cur.u64().ctx(|| at("offset"))?;
        if !offset.is_multiple_of(alignment) {
            let tensor = name.to_owned();
            return Err(GgufError::MisalignedOffset { tensor, offset, alignment });
        }
        Ok(Self { name, shape, ty, offset, size })
    }
}

/// The shape for `dims`, or why it is invalid.
fn check_shape(name: &str, dims: &[u64]) -> Result<Shape, GgufError> {
    if let Some(index) = dims.iter().position(|&d| d == 0) {
        return Err(GgufError::ZeroDim { tensor: name.to_owned(), index });
    }
    Shape::new(dims).ok_or_else(|| GgufError::ShapeOverflow { tensor: name.to_owned(), dims: dims.to_vec() })
}

/// Bytes taken by a tensor of `shape` and `ty`: whole blocks per row, times the rows.
fn byte_size(name: &str, shape: Shape, ty: GgmlType) -> Result<u64, GgufError> {
    let dims = shape.dims();
    let (&ne0, rows) = dims.split_first().unwrap_or((&1, &[]));
    let block_len = ty.block_len() as u64;
    if !ne0.is_multiple_of(block_len) {
        return Err(GgufError::PartialBlock { tensor: name.to_owned(), ty, ne0, block_len });
    }
    let overflow = || GgufError::SizeOverflow { tensor: name.to_owned(), ty, dims: dims.to_vec() };
    let row = ty.row_bytes(ne0).ok_or_else(overflow)?;
    rows.iter().try_fold(row, |n, &d| n.checked_mul(d)).ok_or_else(overflow)
}

/// Places checked entries in the data section `data` (the file from the data offset on; empty
/// when that is past the end), checking that each lies inside it and that none overlap.
pub(crate) fn place<'a>(entries: Vec<Entry<'a>>, data: &'a [u8]) -> Result<Vec<TensorInfo<'a>>, GgufError> {
    let tensors = entries.into_iter().map(|e| e.place(data)).collect::<Result<Vec<_>, _>>()?;
    check_overlap(&tensors)?;
    Ok(tensors)
}

impl<'a> Entry<'a> {
    /// This tensor with its bytes, if `offset + size` lies inside the data section `data`.
    fn place(self, data: &'a [u8]) -> Result<TensorInfo<'a>, GgufError> {
        let Self { name, shape, ty, offset, size } = self;
        let bytes = offset
            .checked_add(size)
            .and_then(|end| data.get(usize::try_from(offset).ok()?..usize::try_from(end).ok()?))
            .ok_or_else(|| GgufError::TensorOutOfBounds {
                tensor: name.to_owned(),
                offset,
                size,
                data_len: data.len() as u64,
            })?;
        Ok(TensorInfo { name, shape, ty, offset, data: bytes })
    }
}

/// Sorts the tensors by offset and checks that each ends before the next begins.
fn check_overlap(tensors: &[TensorInfo<'_>]) -> Result<(), GgufError> {
    let mut by_offset: Vec<&TensorInfo<'_>> = tensors.iter().collect();
    by_offset.sort_by_key(|t| t.offset);
    for pair in by_offset.windows(2) {
        let [a, b] = pair else { continue };
        // `place` checked offset + size fits in the data section, so this cannot overflow.
        let a_end = a.offset.saturating_add(a.data.len() as u64);
        if b.offset < a_end {
            return Err(GgufError::TensorOverlap {
                tensor: b.name.to_owned(),
                offset: b.offset,
                other: a.name.to_owned(),
                other_end: a_end,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_checks() {
        assert_eq!(Shape::new(&[3, 2]).map(|s| (s.dims().to_vec(), s.n_elements())), Some((vec![3, 2], 6)));
        assert!(Shape::new(&[]).is_none());
        assert!(Shape::new(&[1, 0]).is_none());
        assert!(Shape::new(&[1, 2, 3, 4, 5]).is_none());
        assert!(Shape::new(&[u64::MAX, 2]).is_none());
        assert_eq!(Shape::new(&[u64::MAX, 1, 1, 1]).map(|s| s.n_elements()), Some(u64::MAX));
    }

    #[test]
    fn byte_sizes() {
        let s = Shape::new(&[64, 3]).unwrap();
        assert_eq!(byte_size("t", s, GgmlType::F32), Ok(64 * 3 * 4));
        assert_eq!(byte_size("t", s, GgmlType::Q8_0), Ok(2 * 34 * 3));
        let s = Shape::new(&[48]).unwrap();
        assert!(matches!(byte_size("t", s, GgmlType::Q4_0), Err(GgufError::PartialBlock { ne0: 48, .. })));
        let s = Shape::new(&[1 << 62, 2]).unwrap();
        assert!(matches!(byte_size("t", s, GgmlType::F16), Err(GgufError::SizeOverflow { .. })));
        let s = Shape::new(&[1 << 63]).unwrap();
        assert!(matches!(byte_size("t", s, GgmlType::F32), Err(GgufError::SizeOverflow { .. })));
    }
}
