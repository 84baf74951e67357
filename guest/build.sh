#!/bin/sh
# Builds the guest component and pre-initialises it with `wasmtime wizer`.
#
#   guest/build.sh            → target/wasm32-wasip2/release/tinystate_guest.wasm      (plain)
#                               target/wasm32-wasip2/release/tinystate-guest.wizer.wasm (serve this)
#   guest/build.sh nn         → target/wasm32-wasip2/release/tinystate-guest-nn.wizer.wasm: the
#                               wasi-nn build (no weights; `tinystate serve --model … --guest it`)
#
# The wizer step runs the exported `wizer-initialize` (GGUF header, tensor views, tokenizer
# tables, compiled chat template) and snapshots the memory, so instances start with all of it
# built. `-S cli -S http` (and `-S nn`) only let wizer instantiate the component (the init calls
# no import); `--keep-init-func=true` because wasmtime 49's wizer leaves a dangling component
# export when it removes the function. Env: TINYSTATE_MODEL (the GGUF to bake in), see
# guest/build.rs.
set -eu
cd "$(dirname "$0")/.."
dir=target/wasm32-wasip2/release
if [ "${1:-}" = nn ]; then
    cargo build -p tinystate-guest --target wasm32-wasip2 --release --features nn
    cp "$dir/tinystate_guest.wasm" "$dir/tinystate-guest-nn.wasm"
    wasmtime wizer -S cli -S http -S nn --keep-init-func=true -o "$dir/tinystate-guest-nn.wizer.wasm" "$dir/tinystate-guest-nn.wasm"
    echo "$dir/tinystate-guest-nn.wizer.wasm"
    exit
fi
cargo build -p tinystate-guest --target wasm32-wasip2 --release
wasmtime wizer -S cli -S http --keep-init-func=true -o "$dir/tinystate-guest.wizer.wasm" "$dir/tinystate_guest.wasm"
echo "$dir/tinystate-guest.wizer.wasm"
