//! A tiny GGUF writer for tests. It writes whatever it is told, valid or not: raw metadata
//! entries, any type ids, counts and offsets, so tests can build every kind of broken file.

#![allow(dead_code)]

use tinystate_engine::tensor::GgmlType;

/// GGUF value type ids.
pub mod ty {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// Encoders for value payloads.
pub mod enc {
    /// A GGUF string of raw bytes (not necessarily UTF-8).
    pub fn string(s: &[u8]) -> Vec<u8> {
        let mut v = (s.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(s);
        v
    }

    /// An array header claiming `len` elements of type `elem`, then `elems` as given.
    pub fn array_raw(elem: u32, len: u64, elems: &[u8]) -> Vec<u8> {
        let mut v = elem.to_le_bytes().to_vec();
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(elems);
        v
    }

    /// An array of already-encoded elements.
    pub fn array(elem: u32, elems: &[Vec<u8>]) -> Vec<u8> {
        array_raw(elem, elems.len() as u64, &elems.concat())
    }
}

/// One tensor table entry, written as given.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: Vec<u8>,
    /// Written as n_dims; `dims` are written regardless.
    pub n_dims: u32,
    pub dims: Vec<u64>,
    pub ty: u32,
    pub offset: u64,
}

/// Bytes a tensor needs, if its type and shape are valid.
pub fn tensor_size(dims: &[u64], ty: u32) -> Option<u64> {
    let ty = GgmlType::from_id(ty)?;
    let (&ne0, rest) = dims.split_first()?;
    rest.iter().try_fold(ty.row_bytes(ne0)?, |n, &d| n.checked_mul(d))
}

/// A GGUF file under construction.
#[derive(Clone, Debug)]
pub struct Builder {
    pub magic: [u8; 4],
    pub version: u32,
    /// Overrides the tensor count in the header.
    pub n_tensors: Option<u64>,
    /// Overrides the metadata count in the header.
    pub n_kv: Option<u64>,
    /// Encoded metadata entries.
    pub kv: Vec<Vec<u8>>,
    pub tensors: Vec<TensorSpec>,
    /// Padding before the data section, and the step for automatic offsets.
    pub alignment: u64,
    /// Overrides the data section length (default: up to the end of the last tensor).
    pub data_len: Option<u64>,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            magic: *b"GGUF",
            version: 3,
            n_tensors: None,
            n_kv: None,
            kv: Vec::new(),
            tensors: Vec::new(),
            alignment: 32,
            data_len: None,
        }
    }
}

impl Builder {
    /// A metadata entry with a UTF-8 key.
    pub fn kv(self, key: &str, ty: u32, payload: impl AsRef<[u8]>) -> Self {
        self.kv_raw_key(key.as_bytes(), ty, payload)
    }

    /// A metadata entry whose key is any bytes.
    pub fn kv_raw_key(mut self, key: &[u8], ty: u32, payload: impl AsRef<[u8]>) -> Self {
        let mut e = enc::string(key);
        e.extend_from_slice(&ty.to_le_bytes());
        e.extend_from_slice(payload.as_ref());
        self.kv.push(e);
        self
    }

    /// A metadata entry written as raw bytes.
    pub fn kv_raw(mut self, bytes: Vec<u8>) -> Self {
        self.kv.push(bytes);
        self
    }

    /// A `u32` entry.
    pub fn kv_u32(self, key: &str, v: u32) -> Self {
        self.kv(key, ty::U32, v.to_le_bytes())
    }

    /// A string entry.
    pub fn kv_str(self, key: &str, v: &str) -> Self {
        self.kv(key, ty::STRING, enc::string(v.as_bytes()))
    }

    /// A valid tensor placed after the previous one, padded to the alignment.
    pub fn tensor(self, name: &str, dims: &[u64], ty: GgmlType) -> Self {
        let offset = self.next_offset();
        self.tensor_at(name, dims, ty.id(), offset)
    }

    /// A tensor at an explicit offset, of any type id.
    pub fn tensor_at(mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
        let n_dims = dims.len() as u32;
        let name = name.as_bytes().to_vec();
        self.tensors.push(TensorSpec { name, n_dims, dims: dims.to_vec(), ty, offset });
        self
    }

    /// A tensor entry written as given.
    pub fn tensor_spec(mut self, spec: TensorSpec) -> Self {
        self.tensors.push(spec);
        self
    }

    /// The end of the last tensor, padded to the alignment.
    pub fn next_offset(&self) -> u64 {
        let end = self.data_end();
        end.div_ceil(self.alignment) * self.alignment
    }

    /// Where the data of the valid tensors ends.
    fn data_end(&self) -> u64 {
        self.tensors
            .iter()
            .filter_map(|t| t.offset.checked_add(tensor_size(&t.dims, t.ty)?))
            .filter(|&end| end < 1 << 20)
            .max()
            .unwrap_or(0)
    }

    /// The file's bytes. Tensor data bytes are `(i * 7 + 1) as u8` at data offset `i`.
    pub fn build(&self) -> Vec<u8> {
        let mut out = self.magic.to_vec();
        out.extend_from_slice(&self.version.to_le_bytes());
        let n_tensors = self.n_tensors.unwrap_or(self.tensors.len() as u64);
        out.extend_from_slice(&n_tensors.to_le_bytes());
        out.extend_from_slice(&self.n_kv.unwrap_or(self.kv.len() as u64).to_le_bytes());
        for e in &self.kv {
            out.extend_from_slice(e);
        }
        for t in &self.tensors {
            out.extend_from_slice(&enc::string(&t.name));
            out.extend_from_slice(&t.n_dims.to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.to_le_bytes());
            out.extend_from_slice(&t.offset.to_le_bytes());
        }
        let data_len = self.data_len.unwrap_or_else(|| self.data_end());
        if data_len > 0 {
            let pad = (out.len() as u64).next_multiple_of(self.alignment) as usize;
            out.resize(pad, 0);
            out.extend((0..data_len).map(|i| (i * 7 + 1) as u8));
        }
        out
    }
}
