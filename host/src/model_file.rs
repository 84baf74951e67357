//! Model files on disk, mapped read-only into memory so the engine reads tensors in place.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

/// A GGUF file mapped into memory. Page alignment of the mapping keeps every tensor aligned as
/// the file's own alignment says, which the engine's zero-copy views require.
pub struct ModelFile {
    map: Mmap,
    path: PathBuf,
}

impl ModelFile {
    /// Maps `path` read-only.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        // SAFETY: the mapping is read-only and private to this process. Another process
        // truncating or rewriting the file while it is mapped would change the bytes under us
        // (or fault); model files are not expected to change while served, as with llama.cpp's
        // own mmap loading.
        let map = unsafe { Mmap::map(&file)? };
        Ok(Self { map, path: path.to_owned() })
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Where it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
