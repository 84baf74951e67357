//! Decode tokens/s of the engine on one GGUF file, the same measurement natively and under a wasm
//! runtime (the engine alone, without the guest around it):
//!
//! ```sh
//! cargo run --release -p tinystate-engine --example decode_speed -- models/default-q8_0.gguf 256
//! cargo build --release -p tinystate-engine --example decode_speed --target wasm32-wasip2
//! wasmtime run -W simd=y --dir . target/wasm32-wasip2/release/examples/decode_speed.wasm models/default-q8_0.gguf 256
//! ```
//! Prints one JSON line: `{"kernels", "decode_tok_s"}`.

use std::time::Instant;

use tinystate_engine::TokenId;
use tinystate_engine::arch::mamba::Mamba;
use tinystate_engine::generate::{CpuDecoder, Decoder};
use tinystate_engine::gguf::Gguf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: decode_speed FILE.gguf [TOKENS]")?;
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(256);
    let bytes = read_aligned(&path)?;
    let g = Gguf::parse(bytemuck::cast_slice(&bytes))?;
    let model = Mamba::load(&g)?;
    let v = model.config.vocab;
    let mut dec = CpuDecoder::new(&model, 64);
    let tok = |i: usize| TokenId((256 + (i * 7919) % (v - 300)) as u32);
    dec.feed(&[tok(0)])?;
    let t = Instant::now();
    for i in 0..n {
        dec.feed(&[tok(i + 17)])?;
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    println!(r#"{{"kernels": "{}", "decode_tok_s": {rate:.1}}}"#, tinystate_engine::kernels::backend_name());
    Ok(())
}

/// The file in 64-byte-aligned memory (the reader needs aligned tensors; no mmap on wasm).
fn read_aligned(path: &str) -> std::io::Result<Vec<[u64; 8]>> {
    let raw = std::fs::read(path)?;
    let mut out = vec![[0u64; 8]; raw.len().div_ceil(64)];
    let dst: &mut [u8] = bytemuck::cast_slice_mut(&mut out);
    dst[..raw.len()].copy_from_slice(&raw);
    Ok(out)
}
