//! Tensor element types as ggml stores them, and typed zero-copy views over tensor bytes.
//!
//! Block layouts follow ggml (`ggml-common.h`): a block holds `block_len()` elements in
//! `block_bytes()` bytes. Quantised blocks are `#[repr(C)]` structs so a tensor's bytes can be
//! viewed as a slice of blocks without copying (bytemuck checks size and alignment).

use bytemuck::{Pod, Zeroable};
use half::{bf16, f16};

/// Elements in one Q8_0 / Q4_0 block.
pub const QK: usize = 32;

/// A tensor element type, with ggml's numeric id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit IEEE float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// bfloat16.
    BF16,
    /// 32 × i8 with one f16 scale: x = d · q.
    Q8_0,
    /// 32 × 4-bit with one f16 scale: x = d · (q − 8).
    Q4_0,
}

impl GgmlType {
    /// The type for ggml's numeric id, if this crate supports it.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            8 => Self::Q8_0,
            30 => Self::BF16,
            _ => return None,
        })
    }

    /// ggml's numeric id.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q8_0 => 8,
            Self::BF16 => 30,
        }
    }

    /// ggml's name for the type.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q8_0 => "Q8_0",
            Self::Q4_0 => "Q4_0",
        }
    }

    /// Elements per block (1 for plain floats).
    pub fn block_len(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q8_0 | Self::Q4_0 => QK,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q8_0 => size_of::<BlockQ8_0>(),
            Self::Q4_0 => size_of::<BlockQ4_0>(),
        }
    }

    /// Bytes taken by a row of `n` elements, or `None` if `n` is not a whole number of blocks or
    /// the size overflows.
    pub fn row_bytes(self, n: u64) -> Option<u64> {
        let bl = self.block_len() as u64;
        if !n.is_multiple_of(bl) {
            return None;
        }
        (n / bl).checked_mul(self.block_bytes() as u64)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// ggml `block_q8_0`: 32 signed bytes and their scale.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ8_0 {
    /// Scale: x\[i\] = d · qs\[i\].
    pub d: f16,
    /// Quantised values.
    pub qs: [i8; QK],
}

/// ggml `block_q4_0`: 32 nibbles and their scale. Byte j holds element j (low nibble) and
/// element j + 16 (high nibble).
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4_0 {
    /// Scale: x = d · (q − 8).
    pub d: f16,
    /// Packed nibbles.
    pub qs: [u8; QK / 2],
}

/// Borrowed elements of a tensor, typed by storage format.
#[derive(Clone, Copy, Debug)]
pub enum Elems<'a> {
    /// Plain f32.
    F32(&'a [f32]),
    /// IEEE half.
    F16(&'a [f16]),
    /// bfloat16.
    BF16(&'a [bf16]),
    /// Q8_0 blocks.
    Q8_0(&'a [BlockQ8_0]),
    /// Q4_0 blocks.
    Q4_0(&'a [BlockQ4_0]),
}

/// Why tensor bytes could not be viewed as elements.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ViewError {
    /// The byte length does not match the shape.
    #[error("{ty} tensor of {elems} elements needs {want} bytes, got {got}")]
    Size {
        /// Element type.
        ty: GgmlType,
        /// Element count.
        elems: usize,
        /// Bytes needed.
        want: usize,
        /// Bytes given.
        got: usize,
    },
    /// The bytes are not aligned for the element type.
    #[error("{ty} tensor data is not aligned to {align} bytes")]
    Align {
        /// Element type.
        ty: GgmlType,
        /// Alignment required.
        align: usize,
    },
}

impl<'a> Elems<'a> {
    /// Views `bytes` as `elems` elements of type `ty`, without copying.
    pub fn new(ty: GgmlType, bytes: &'a [u8], elems: usize) -> Result<Self, ViewError> {
        let size_err = || ViewError::Size {
            ty,
            elems,
            want: ty.row_bytes(elems as u64).unwrap_or(u64::MAX) as usize,
            got: bytes.len(),
        };
        let want = ty.row_bytes(elems as u64).ok_or_else(size_err)?;
        if want != bytes.len() as u64 {
            return Err(size_err());
        }
        fn cast<T: Pod>(ty: GgmlType, b: &[u8]) -> Result<&[T], ViewError> {
            bytemuck::try_cast_slice(b).map_err(|_| ViewError::Align { ty, align: align_of::<T>() })
        }
        Ok(match ty {
            GgmlType::F32 => Self::F32(cast(ty, bytes)?),
            GgmlType::F16 => Self::F16(cast(ty, bytes)?),
            GgmlType::BF16 => Self::BF16(cast(ty, bytes)?),
            GgmlType::Q8_0 => Self::Q8_0(cast(ty, bytes)?),
            GgmlType::Q4_0 => Self::Q4_0(cast(ty, bytes)?),
        })
    }

    /// The storage type.
    pub fn ty(&self) -> GgmlType {
        match self {
            Self::F32(_) => GgmlType::F32,
            Self::F16(_) => GgmlType::F16,
            Self::BF16(_) => GgmlType::BF16,
            Self::Q8_0(_) => GgmlType::Q8_0,
            Self::Q4_0(_) => GgmlType::Q4_0,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::F16(v) => v.len(),
            Self::BF16(v) => v.len(),
            Self::Q8_0(v) => v.len() * QK,
            Self::Q4_0(v) => v.len() * QK,
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A row-major matrix of `rows` rows of `cols` elements (ggml: ne\[0\] = cols, ne\[1\] = rows).
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a> {
    /// Rows (output features).
    pub rows: usize,
    /// Columns (input features), contiguous in memory.
    pub cols: usize,
    /// The elements, `rows * cols` of them.
    pub elems: Elems<'a>,
}

impl<'a> Matrix<'a> {
    /// Views `bytes` as a `rows × cols` matrix of type `ty`.
    pub fn new(ty: GgmlType, bytes: &'a [u8], rows: usize, cols: usize) -> Result<Self, ViewError> {
        let n = rows.checked_mul(cols).ok_or(ViewError::Size {
            ty,
            elems: usize::MAX,
            want: usize::MAX,
            got: bytes.len(),
        })?;
        if ty.row_bytes(cols as u64).is_none() {
            return Err(ViewError::Size { ty, elems: n, want: usize::MAX, got: bytes.len() });
        }
        Ok(Self { rows, cols, elems: Elems::new(ty, bytes, n)? })
    }
}
