//! Builds the wasm guest (`guest/`, crate `tinystate-guest`) for `wasm32-wasip2` in release mode,
//! twice, and embeds both, so `cargo run --release -- serve` serves the default model with no
//! other step:
//!
//! - the self-contained guest (the model baked in), served by `tinystate serve`;
//! - the `nn` build (`--features nn`: only the tokenizer baked in, logits from the host's
//!   wasi-nn), served by `tinystate serve --model NAME=FILE`.
//!
//! How:
//! - The guests are built by nested `cargo build`s into their own target dir
//!   (`target/guest-wasm`), so they never wait on the lock of the build that runs this script.
//!   The two builds share every dependency; each output is copied aside before the next build.
//! - `TINYSTATE_GUEST_WASM=/path/x.wasm` embeds that file as the self-contained guest,
//!   `TINYSTATE_NN_GUEST_WASM=/path/y.wasm` as the nn guest; `=none` embeds no such guest (then
//!   `serve` needs `--guest`).
//! - Without a `guest/` folder nothing is embedded either.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One of the two guests: its env override, its cfg, and the cargo features that build it.
struct Flavour {
    env: &'static str,
    cfg: &'static str,
    features: &'static str,
    name: &'static str,
}

const FLAVOURS: [Flavour; 2] = [
    Flavour {
        env: "TINYSTATE_GUEST_WASM",
        cfg: "tinystate_embedded_guest",
        features: "",
        name: "tinystate-guest",
    },
    Flavour {
        env: "TINYSTATE_NN_GUEST_WASM",
        cfg: "tinystate_embedded_nn_guest",
        features: "nn",
        name: "tinystate-guest-nn",
    },
];

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest.parent().expect("host/ is inside the workspace").to_path_buf();
    for f in &FLAVOURS {
        println!("cargo::rustc-check-cfg=cfg({})", f.cfg);
        println!("cargo::rerun-if-env-changed={}", f.env);
        let wasm = match std::env::var(f.env) {
            Ok(v) if v == "none" => None,
            Ok(v) if !v.is_empty() => {
                println!("cargo::rerun-if-changed={v}");
                Some(PathBuf::from(v))
            }
            _ => {
                println!("cargo::rerun-if-changed={}", root.join("guest").display());
                if root.join("guest/Cargo.toml").exists() { Some(build_guest(&root, f)) } else { None }
            }
        };
        if let Some(wasm) = wasm {
            println!("cargo::rustc-cfg={}", f.cfg);
            println!("cargo::rustc-env={}={}", f.env, wasm.display());
        }
    }
}

/// `cargo build --manifest-path guest/Cargo.toml --target wasm32-wasip2 --release
/// [--features F]` with a separate target dir and the outer build's CARGO_*/RUST* variables
/// removed (they describe the host build); the output is copied to `NAME.wasm` and
/// pre-initialised.
fn build_guest(root: &Path, f: &Flavour) -> PathBuf {
    for dep in ["engine", "models", "wit", "Cargo.lock", "Cargo.toml", ".cargo"] {
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
    if !f.features.is_empty() {
        cmd.args(["--features", f.features]);
    }
    clean_env(&mut cmd);
    let status = cmd.status().expect("run cargo to build the guest");
    assert!(
        status.success(),
        "building the wasm guest {} failed (see above); {}=none skips it",
        f.name,
        f.env
    );
    let built = target_dir.join("wasm32-wasip2/release/tinystate_guest.wasm");
    assert!(built.exists(), "the guest build made no {}", built.display());
    let wasm = built.with_file_name(format!("{}.wasm", f.name));
    std::fs::copy(&built, &wasm).expect("copy the built guest");
    wizer(&wasm, f).unwrap_or(wasm)
}

/// Removes the variables that describe the outer (host) build.
fn clean_env(cmd: &mut Command) {
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
}

/// Pre-initialises the guest as guest/build.sh does (`wasmtime wizer`: the exported
/// `wizer-initialize` builds the tokenizer tables and tensor views once, and the snapshot keeps
/// them), so no request repeats that work. The nn guest imports wasi-nn (`-S nn` lets wizer
/// link it; the initialiser calls none of it). Without a `wasmtime` CLI the plain component is
/// embedded, with a warning: it works, each instance then initialises itself.
fn wizer(wasm: &Path, f: &Flavour) -> Option<PathBuf> {
    let out = wasm.with_file_name(format!("{}.wizer.wasm", f.name));
    let mut cmd = Command::new("wasmtime");
    cmd.args(["wizer", "-S", "cli", "-S", "http"]);
    if f.features == "nn" {
        cmd.args(["-S", "nn"]);
    }
    let status =
        cmd.args(["--keep-init-func=true", "-o"]).arg(&out).arg(wasm).stdout(std::io::stderr()).status();
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
