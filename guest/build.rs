//! Chooses the GGUF file baked into the component and tells `src/model.rs` where it is.
//!
//! `TINYSTATE_MODEL` (an environment variable at build time) names the file; without it, the
//! repository's default model `models/default-q8_0.gguf` if present, else the tiny test model
//! `engine/tests/fixtures/parity/tiny/model-q8_0.gguf`.
//!
//! With the `nn` feature only the model's metadata is baked in: a copy of the file's header and
//! metadata section with the tensor count set to 0 and everything after the metadata dropped
//! (`$OUT_DIR/model-meta.gguf`), which is a valid GGUF holding the tokenizer and chat template.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=TINYSTATE_MODEL");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let repo = manifest.parent().expect("guest/ lies inside the repository").to_path_buf();
    let default = repo.join("models/default-q8_0.gguf");
    let tiny = repo.join("engine/tests/fixtures/parity/tiny/model-q8_0.gguf");
    // Rebuild when the default model appears or changes (a missing path is watched too).
    println!("cargo:rerun-if-changed={}", default.display());
    println!("cargo:rerun-if-changed={}", repo.join("wit").display());
    let model = match std::env::var_os("TINYSTATE_MODEL") {
        Some(p) if !p.is_empty() => {
            let p = PathBuf::from(p);
            if p.is_absolute() { p } else { repo.join(p) }
        }
        _ if default.exists() => default,
        _ => tiny,
    };
    if !model.exists() {
        panic!("TINYSTATE_MODEL: {} does not exist", model.display());
    }
    println!("cargo:rerun-if-changed={}", model.display());
    let baked = match std::env::var_os("CARGO_FEATURE_NN") {
        Some(_) => metadata_only(&model),
        None => model,
    };
    println!("cargo:rustc-env=TINYSTATE_MODEL={}", baked.display());
}

/// Writes the metadata-only copy of `model` into `$OUT_DIR` and returns its path.
#[cfg(feature = "nn")]
fn metadata_only(model: &Path) -> PathBuf {
    let bytes = std::fs::read(model).unwrap_or_else(|e| panic!("read {}: {e}", model.display()));
    let g =
        tinystate_engine::gguf::Gguf::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", model.display()));
    let end = usize::try_from(g.metadata_end()).expect("the metadata ends inside the file");
    let mut meta = bytes[..end].to_vec();
    // Header: magic (4), version (4), tensor count (u64 at 8..16), metadata count.
    meta[8..16].copy_from_slice(&0u64.to_le_bytes());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("model-meta.gguf");
    std::fs::write(&out, meta).unwrap_or_else(|e| panic!("write {}: {e}", out.display()));
    out
}

#[cfg(not(feature = "nn"))]
fn metadata_only(_: &Path) -> PathBuf {
    unreachable!("CARGO_FEATURE_NN is set only with the nn feature")
}
