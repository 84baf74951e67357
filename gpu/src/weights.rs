//! Weight matrices repacked once, at upload, into layouts WGSL storage arrays can read
//! (`shaders/weights_*.wgsl`): rows padded to whole vec4 groups for float formats; ggml's
//! 34- / 18-byte quantised blocks split into a quant array and an f16 scale array, so every word
//! is 4-byte aligned.

use crate::GpuError;
use tinystate_engine::tensor::{Elems, Matrix, QK};

/// How a matrix is stored on the GPU; one `shaders/weights_*.wgsl` file each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Format {
    /// f32 (also BF16 files, widened at upload).
    F32,
    /// IEEE half, read as u32 pairs.
    F16,
    /// Q8_0: i8 quants + f16 scales.
    Q8_0,
    /// Q4_0: nibbles + f16 scales.
    Q4_0,
}

impl Format {
    /// The WGSL file that defines `load_w` for this format.
    pub(crate) fn shader(self) -> &'static str {
        match self {
            Self::F32 => include_str!("shaders/weights_f32.wgsl"),
            Self::F16 => include_str!("shaders/weights_f16.wgsl"),
            Self::Q8_0 => include_str!("shaders/weights_q8_0.wgsl"),
            Self::Q4_0 => include_str!("shaders/weights_q4_0.wgsl"),
        }
    }
}

/// A matrix W (rows, cols) in its GPU layout, still in host memory.
pub(crate) struct Packed {
    /// Storage format.
    pub format: Format,
    /// Output features.
    pub rows: usize,
    /// vec4 groups per row: ceil(cols / 4).
    pub groups: usize,
    /// Binding 2: values or quants.
    pub data: Vec<u8>,
    /// Binding 3: f16 block scales, two per word (quantised formats only).
    pub scales: Option<Vec<u8>>,
}

/// W (rows, cols) → its GPU layout.
pub(crate) fn pack(m: &Matrix<'_>) -> Result<Packed, GpuError> {
    let (rows, cols) = (m.rows, m.cols);
    let groups = cols.div_ceil(4);
    let padded = |row_bytes: usize, elem: usize, f: &mut dyn FnMut(usize, &mut [u8])| {
        let mut data = vec![0u8; rows * groups * 4 * elem];
        for (r, out) in data.chunks_exact_mut(groups * 4 * elem).enumerate() {
            f(r, &mut out[..row_bytes]);
        }
        data
    };
    let p = match m.elems {
        Elems::F32(v) => {
            let data = padded(cols * 4, 4, &mut |r, o| {
                o.copy_from_slice(bytemuck::cast_slice(&v[r * cols..(r + 1) * cols]))
            });
            Packed { format: Format::F32, rows, groups, data, scales: None }
        }
        Elems::BF16(v) => {
            let data = padded(cols * 4, 4, &mut |r, o| {
                for (o, x) in o.chunks_exact_mut(4).zip(&v[r * cols..(r + 1) * cols]) {
                    o.copy_from_slice(&x.to_f32().to_le_bytes());
                }
            });
            Packed { format: Format::F32, rows, groups, data, scales: None }
        }
        Elems::F16(v) => {
            let data = padded(cols * 2, 2, &mut |r, o| {
                o.copy_from_slice(bytemuck::cast_slice(&v[r * cols..(r + 1) * cols]))
            });
            Packed { format: Format::F16, rows, groups, data, scales: None }
        }
        Elems::Q8_0(b) => {
            let data = b.iter().flat_map(|blk| blk.qs.map(|q| q as u8)).collect();
            let scales = Some(scales(b.iter().map(|blk| blk.d.to_bits())));
            Packed { format: Format::Q8_0, rows, groups, data, scales }
        }
        Elems::Q4_0(b) => {
            let data = b.iter().flat_map(|blk| blk.qs).collect();
            let scales = Some(scales(b.iter().map(|blk| blk.d.to_bits())));
            Packed { format: Format::Q4_0, rows, groups, data, scales }
        }
    };
    if matches!(p.format, Format::Q8_0 | Format::Q4_0) && !cols.is_multiple_of(QK) {
        // Matrix::new already rejects this; a hand-built Matrix could still slip through.
        return Err(GpuError::Unsupported { what: format!("quantised matrix with {cols} columns") });
    }
    Ok(p)
}

/// f16 scale bits → little-endian bytes, padded to whole words.
fn scales(bits: impl Iterator<Item = u16>) -> Vec<u8> {
    let mut out: Vec<u8> = bits.flat_map(u16::to_le_bytes).collect();
    pad_to_word(&mut out);
    out
}

/// Pads f16 scale bytes to whole words (storage arrays of u32).
fn pad_to_word(scales: &mut Vec<u8>) {
    if !scales.len().is_multiple_of(4) {
        scales.extend_from_slice(&[0, 0]);
    }
}

/// Matrices of one shape and format (a kind's every layer), packed by [`pack`], as one matrix
/// of their rows one after another: layer l's row r is row l · rows + r. Quantised blocks stay
/// in order, so the scales concatenate without each matrix's padding to whole words.
pub(crate) fn stack(parts: &[Packed]) -> Result<Packed, GpuError> {
    let first = parts.first().ok_or_else(|| GpuError::BadInput("no matrices to stack".into()))?;
    if parts.iter().any(|p| (p.format, p.groups) != (first.format, first.groups)) {
        return Err(GpuError::Unsupported { what: "layers that differ in format or shape".into() });
    }
    let scales = first.scales.as_ref().map(|_| {
        let mut out = Vec::new();
        for (p, s) in parts.iter().filter_map(|p| p.scales.as_ref().map(|s| (p, s))) {
            out.extend_from_slice(&s[..2 * (p.rows * p.groups * 4 / QK)]);
        }
        pad_to_word(&mut out);
        out
    });
    Ok(Packed {
        format: first.format,
        rows: parts.iter().map(|p| p.rows).sum(),
        groups: first.groups,
        data: parts.iter().flat_map(|p| p.data.iter().copied()).collect(),
        scales,
    })
}

/// True when two matrices view the same bytes (a tied LM head reads the embeddings).
pub(crate) fn same_tensor(a: &Matrix<'_>, b: &Matrix<'_>) -> bool {
    fn bytes<'a>(e: &Elems<'a>) -> &'a [u8] {
        match *e {
            Elems::F32(v) => bytemuck::cast_slice(v),
            Elems::F16(v) => bytemuck::cast_slice(v),
            Elems::BF16(v) => bytemuck::cast_slice(v),
            Elems::Q8_0(v) => bytemuck::cast_slice(v),
            Elems::Q4_0(v) => bytemuck::cast_slice(v),
        }
    }
    let (x, y) = (bytes(&a.elems), bytes(&b.elems));
    std::ptr::eq(x.as_ptr(), y.as_ptr()) && x.len() == y.len()
}
