#!/bin/sh
# Builds the guest component and pre-initialises it with `wasmtime wizer`.
#
#   guest/build.sh            → target/wasm32-wasip2/release/tinystate_guest.wasm      (plain)
#                               target/wasm32-wasip2/release/tinystate-guest.wizer.wasm (serve this)
#
# The wizer step runs the exported `wizer-initialize` (GGUF header, tensor views, tokenizer
# tables, compiled chat template) and snapshots the memory, so instances start with all of it
# built. `-S cli -S http` only lets wizer instantiate the component (the init calls no import);
# `--keep-init-func=true` because wasmtime 49's wizer leaves a dangling component export when it
# removes the function. Env: TINYSTATE_MODEL (the GGUF to bake in), see guest/build.rs.
set -eu
cd "$(dirname "$0")/.."
cargo build -p tinystate-guest --target wasm32-wasip2 --release
dir=target/wasm32-wasip2/release
wasmtime wizer -S cli -S http --keep-init-func=true -o "$dir/tinystate-guest.wizer.wasm" "$dir/tinystate_guest.wasm"
echo "$dir/tinystate-guest.wizer.wasm"
