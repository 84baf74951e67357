//! Builds the wasm guest (`guest/`, crate `tinystate-guest`) for `wasm32-wasip2` in release mode
//! and embeds it, so `cargo run --release -- serve` serves the default model with no other step.
//!
//! - The guest is built by a nested `cargo build` into its own target dir
//!   (`target/guest-wasm`), so it never waits on the lock of the build that runs this script.
//! - `TINYSTATE_GUEST_WASM=/path/x.wasm` embeds that file instead; `TINYSTATE_GUEST_WASM=none`
//!   embeds nothing (then `serve` needs `--guest`).
//! - Without a `guest/` folder nothing is embedded either.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(tinystate_embedded_guest)");
    println!("cargo::rerun-if-env-changed=TINYSTATE_GUEST_WASM");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest.parent().expect("host/ is inside the workspace").to_path_buf();

    let wasm = match std::env::var("TINYSTATE_GUEST_WASM") {
        Ok(v) if v == "none" => None,
        Ok(v) if !v.is_empty() => {
            println!("cargo::rerun-if-changed={v}");
            Some(PathBuf::from(v))
        }
        _ => {
            println!("cargo::rerun-if-changed={}", root.join("guest").display());
            if root.join("guest/Cargo.toml").exists() { Some(build_guest(&root)) } else { None }
        }
    };
    if let Some(wasm) = wasm {
        println!("cargo::rustc-cfg=tinystate_embedded_guest");
        println!("cargo::rustc-env=TINYSTATE_GUEST_WASM={}", wasm.display());
    }
}

/// `cargo build --manifest-path guest/Cargo.toml --target wasm32-wasip2 --release` with a separate target dir
/// and the outer build's CARGO_*/RUST* variables removed (they describe the host build).
fn build_guest(root: &Path) -> PathBuf {
    for dep in ["engine", "models", "Cargo.lock", "Cargo.toml", ".cargo"] {
        println!("cargo::rerun-if-changed={}", root.join(dep).display());
    }
    let target_dir = root.join("target/guest-wasm");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--manifest-path", "guest/Cargo.toml", "--target", "wasm32-wasip2"])
        .args(["--release", "--target-dir"])
        .arg(&target_dir)
        // This script's stdout is read by cargo as directives: keep the nested build off it.
        .stdout(std::io::stderr());
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        let keep =
            k == "CARGO_HOME" || k == "CARGO_NET_OFFLINE" || k == "CARGO_REGISTRIES_CRATES_IO_PROTOCOL";
        if !keep
            && (k.starts_with("CARGO_")
                || k.starts_with("RUSTFLAGS")
                || k == "RUSTC_WRAPPER"
                || k == "RUSTC_WORKSPACE_WRAPPER"
                || k == "RUSTDOCFLAGS"
                || k == "CARGO_ENCODED_RUSTFLAGS"
                || k == "TARGET"
                || k == "HOST"
                || k == "OUT_DIR"
                || k == "PROFILE"
                || k == "OPT_LEVEL"
                || k == "DEBUG"
                || k == "NUM_JOBS")
        {
            cmd.env_remove(&k);
        }
    }
    let status = cmd.status().expect("run cargo to build the guest");
    assert!(
        status.success(),
        "building the wasm guest failed (see above); TINYSTATE_GUEST_WASM=none skips it"
    );
    let wasm = target_dir.join("wasm32-wasip2/release/tinystate_guest.wasm");
    assert!(wasm.exists(), "the guest build made no {}", wasm.display());
    wizer(&wasm).unwrap_or(wasm)
}

/// Pre-initialises the guest as guest/build.sh does (`wasmtime wizer`: the exported
/// `wizer-initialize` builds the tokenizer tables and tensor views once, and the snapshot keeps
/// them), so no request repeats that work. Without a `wasmtime` CLI the plain component is
/// embedded, with a warning: it works, each instance then initialises itself.
fn wizer(wasm: &Path) -> Option<PathBuf> {
    let out = wasm.with_file_name("tinystate-guest.wizer.wasm");
    let status = Command::new("wasmtime")
        .args(["wizer", "-S", "cli", "-S", "http", "--keep-init-func=true", "-o"])
        .arg(&out)
        .arg(wasm)
        .stdout(std::io::stderr())
        .status();
    match status {
        Ok(s) if s.success() => Some(out),
        Ok(s) => panic!("wasmtime wizer failed ({s}) on {}", wasm.display()),
        Err(e) => {
            println!(
                "cargo::warning=no `wasmtime` CLI ({e}): embedding the guest without pre-initialisation"
            );
            None
        }
    }
}
