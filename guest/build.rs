//! Chooses the GGUF file baked into the component and tells `src/model.rs` where it is.
//!
//! `TINYSTATE_MODEL` (an environment variable at build time) names the file; without it, the
//! repository's default model `models/default-q8_0.gguf` if present, else the tiny test model
//! `engine/tests/fixtures/parity/tiny/model-q8_0.gguf`.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=TINYSTATE_MODEL");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let repo = manifest.parent().expect("guest/ lies inside the repository").to_path_buf();
    let default = repo.join("models/default-q8_0.gguf");
    let tiny = repo.join("engine/tests/fixtures/parity/tiny/model-q8_0.gguf");
    // Rebuild when the default model appears or changes (a missing path is watched too).
    println!("cargo:rerun-if-changed={}", default.display());
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
    println!("cargo:rustc-env=TINYSTATE_MODEL={}", model.display());
}
