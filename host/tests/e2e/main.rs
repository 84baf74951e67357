//! End-to-end tests of `tinystate serve`: a real server process on a free loopback port, real
//! HTTP over TCP, real guests. One test binary of the host package (so it can start the built
//! binary, `CARGO_BIN_EXE_tinystate`); run with `cargo test -p tinystate --test e2e`.
//!
//! - `host`: what the host must do whatever the guest (traps, limits, metrics, shutdown), with
//!   the probe guest in host/tests/fixtures/probe-guest (built here for wasm32-wasip2).
//! - `api`: the OpenAI-compatible API of the real guest and the default model. The guest is the
//!   one built into the binary, or `TINYSTATE_TEST_GUEST=path.wasm`; the model for the
//!   `tinystate run` comparison is models/default-q8_0.gguf or `TINYSTATE_TEST_MODEL`.
//! - `browser`: the playground page in headless Chromium (Playwright), against the real guest.

mod api;
mod browser;
mod harness;
mod host;
mod nn;
