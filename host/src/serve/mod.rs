//! `tinystate serve`: the wasm guest behind an HTTP server, one fresh instance per request.
//!
//! How it works:
//! 1. At start-up the guest component (embedded in this binary by `build.rs`, or `--guest`)
//!    is compiled once with Cranelift (cached on disk), linked against WASI and wasi:http, and
//!    pre-instantiated ([`guest`]). A pooling allocator reserves `--max-concurrency` instance
//!    slots; memory images are copy-on-write, so the model baked into the guest is shared.
//! 2. The server prints `listening on http://ADDR` as the first line of stdout, then accepts
//!    HTTP/1.1 connections ([`server`]).
//! 3. Each request gets its own store and instance; nothing is kept warm between requests. The
//!    instance is dropped when its response ends or its client goes away ([`body`]).
//! 4. SIGINT/SIGTERM: stop accepting, let in-flight requests finish for `--shutdown-grace`,
//!    exit.
//!
//! # Contract with the guest and with clients
//!
//! Host routes: `GET /metrics` (Prometheus text). Every other request goes to the guest,
//! including `GET /health` (so a health check proves a fresh instance answers).
//!
//! Response headers added by the host: `x-request-id` (matches the log line's `id`) and
//! `x-tinystate-instantiate-us` (this request's instantiation time).
//!
//! Trailers added by the host when the client sends `TE: trailers` (the response is then
//! chunked, and announces them in a `Trailer` header as HTTP/1.1 requires):
//! `x-tinystate-peak-memory-bytes` (the instance's peak linear memory: the sum of all its
//! memories, which never shrink, including the memory image) and `x-tinystate-instantiate-us`.
//! This is the per-request figure the constant-memory tests compare.
//!
//! Token counts, **to be provided by the guest**: `x-tinystate-prompt-tokens` and
//! `x-tinystate-completion-tokens`, as response headers (non-streaming, when known before the
//! body) or as trailers of the response body (`outgoing-body.finish` with trailers; streaming).
//! The host sums them into `tinystate_prompt_tokens_total` / `tinystate_completion_tokens_total`
//! and passes them on to the client.
//!
//! Host-made errors use OpenAI's body `{"error": {"message", "type", "param", "code"}}`:
//! 503 `server_overloaded` (+ `Retry-After: 1`) at the concurrency limit; 500 `guest_trap`,
//! `memory_limit_exceeded`, `guest_no_response`, `instantiation_failed`; 504 `timeout` past
//! `--timeout`. A failure after the response headers went out cuts the body short instead.
//!
//! Metrics (all prefixed `tinystate_`): `requests_total{status}` (499: the client went away
//! before the response head), `requests_finished_total`,
//! `rejected_total`, `guest_traps_total`, `prompt_tokens_total`, `completion_tokens_total`,
//! `active_instances`, `last_request_peak_memory_bytes` (set when a response ends, before
//! `requests_finished_total` is incremented), and histograms `instantiate_seconds`,
//! `time_to_first_byte_seconds`, `request_duration_seconds`, `request_peak_memory_bytes`.
//! wasi-nn: `nn_contexts` (live execution contexts), `nn_slots_in_use` (GPU state slots held,
//! back to 0 once every context is gone and its slot reset), and the GPU batcher's histograms
//! `nn_batch_size` (sequences per call), `nn_step_seconds`, `nn_linger_seconds`,
//! `nn_idle_seconds`, `nn_turnaround_seconds` and `nn_queue_seconds` (see `NnStats`).
//!
//! `--test-faults` (hidden; tests only) makes the host honour two request headers:
//! `x-tinystate-test-fault: trap` (the guest traps at its first epoch check) and
//! `x-tinystate-test-memory-limit: BYTES` (this request's growth allowance).
//!
//! Logs: `tracing` to stderr, filter from `RUST_LOG` (default `info`); one `request` line per
//! guest request with id, method, path, status, outcome, instantiate_us, ttfb_ms, duration_ms,
//! peak_memory_bytes, bytes_out and the token counts.

mod body;
mod guest;
mod limits;
pub(crate) mod metrics;
mod response;
mod server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

/// The guest built by `build.rs`, if the workspace had one when this binary was built.
#[cfg(tinystate_embedded_guest)]
static EMBEDDED_GUEST: Option<&[u8]> = Some(include_bytes!(env!("TINYSTATE_GUEST_WASM")));
#[cfg(not(tinystate_embedded_guest))]
static EMBEDDED_GUEST: Option<&[u8]> = None;

/// The guest's `nn` build (decoding through wasi-nn, no weights inside), served with `--model`.
#[cfg(tinystate_embedded_nn_guest)]
static EMBEDDED_NN_GUEST: Option<&[u8]> = Some(include_bytes!(env!("TINYSTATE_NN_GUEST_WASM")));
#[cfg(not(tinystate_embedded_nn_guest))]
static EMBEDDED_NN_GUEST: Option<&[u8]> = None;

/// The custom section in which the nn guest carries its model's metadata (a GGUF without
/// tensors), so the host can check that the tokenizers agree.
const NN_META_SECTION: &str = "tinystate-nn-meta";

/// `--nn-slots` when not given.
#[cfg(feature = "gpu")]
const DEFAULT_NN_SLOTS: u32 = crate::nn::gpu::DEFAULT_SLOTS;
#[cfg(not(feature = "gpu"))]
const DEFAULT_NN_SLOTS: u32 = 256;

/// Arguments of `tinystate serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on. Port 0 picks a free port; the first line printed on stdout is
    /// `listening on http://ADDR` with the port actually bound.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// The wasi:http guest component (.wasm) to serve instead of the one built into this
    /// binary (guest/, with the model chosen at its build).
    #[arg(long)]
    pub guest: Option<PathBuf>,
    /// Most requests served at once; each has its own instance. Requests beyond it get 503
    /// with `Retry-After`. Also the size of the instance pool.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_concurrency: u32,
    /// Linear memory an instance may grow by beyond its initial memory image (which holds the
    /// embedded model), e.g. `64MiB`, `1GiB`, `1048576`. A request that needs more fails with
    /// 500 `memory_limit_exceeded`.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub memory_limit: u64,
    /// Deadline for one request, from arrival to the end of its response, in seconds (`300`,
    /// `2.5`). A guest still running then is interrupted: 504, or a cut body if already
    /// streaming.
    #[arg(long, default_value = "300", value_parser = parse_seconds)]
    pub timeout: Duration,
    /// On SIGINT/SIGTERM, how long in-flight requests may take to finish before the server
    /// exits anyway, in seconds.
    #[arg(long, default_value = "30", value_parser = parse_seconds)]
    pub shutdown_grace: Duration,
    /// Serve a model through wasi-nn as NAME (repeatable; the first is the default). With
    /// `--model`, the built-in guest is the `nn` build, which holds only the tokenizer and asks
    /// the host for logits; every model's tokenizer must match it.
    #[arg(long = "model", value_name = "NAME=FILE.gguf")]
    pub models: Vec<crate::nn::ModelSpec>,
    /// Where wasi-nn computes: `auto` (a hardware GPU if there is one, else the CPU), `gpu`
    /// (any Vulkan/Metal/DX12 adapter, software ones such as lavapipe included; none is a
    /// start-up error), `cpu`.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: crate::nn::BackendChoice,
    /// GPU backend: state slots per model, allocated on the GPU at start-up (one per live
    /// request; about 1.2 MiB each for the default model). While all are taken, a new request
    /// gets 503 (wasi-nn `too-large`).
    #[arg(long, default_value_t = DEFAULT_NN_SLOTS, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub nn_slots: u32,
    /// GPU backend: how long a request waits for a free state slot when all are taken, in
    /// seconds, before it gets 503 (`0` refuses at once). The default covers a client that sends
    /// its next request as soon as the last response ends, before that instance gave its slot
    /// back.
    #[arg(long, default_value = "0.5", value_parser = parse_wait)]
    pub nn_slot_wait: Duration,
    /// GPU backend: keep every GEMM on f32 multiply-adds instead of tensor cores. Tensor cores
    /// (where the adapter has them) take their inputs in f16, which holds values up to 65,504:
    /// a model whose activations grow past that needs this flag. Also for comparisons.
    #[arg(long)]
    pub no_tensor_cores: bool,
    /// GPU backend: run a single stream's decode steps through the plan of ~100 dispatches a
    /// token instead of the fused step (every layer in one dispatch whose workgroups meet at
    /// grid-wide barriers). For comparisons, or a GPU shared with other work that keeps some of
    /// the step's workgroups from running at once (the step then fails with a message saying so).
    #[arg(long)]
    pub no_fused_step: bool,
    /// Tests only: honour `x-tinystate-test-memory-limit: BYTES` and `x-tinystate-test-fault:
    /// trap` on a request, to make the guest fail on purpose. Never on a public server.
    #[arg(long, hide = true)]
    pub test_faults: bool,
}

/// What can stop `serve` from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// `--guest` could not be read.
    #[error("cannot read guest '{path}': {source}")]
    ReadGuest {
        /// The path given.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// No `--guest` and none built in.
    #[error(
        "this binary has no built-in {0}guest (guest/ was missing, or it was skipped, when it was \
         built); pass --guest PATH.wasm"
    )]
    NoGuest(&'static str),
    /// The models could not be loaded.
    #[error(transparent)]
    Models(#[from] crate::nn::LoadError),
    /// A model's tokenizer is not the one the guest tokenizes with.
    #[error(
        "model '{model}' has another tokenizer ({model_id}) than the guest ({guest_id}); \
         the guest's token ids would mean other tokens to it"
    )]
    TokenizerMismatch {
        /// The model's name.
        model: String,
        /// Its tokenizer.
        model_id: crate::nn::TokenizerId,
        /// The guest's.
        guest_id: crate::nn::TokenizerId,
    },
    /// The component did not compile or link.
    #[error("guest '{what}': {message}")]
    Load {
        /// Which guest.
        what: String,
        /// Wasmtime's error, with its causes.
        message: String,
    },
    /// Binding, the runtime, or stdout failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Runs the server until SIGINT/SIGTERM.
pub fn run(args: &ServeArgs) -> Result<(), ServeError> {
    init_logging();
    let (what, wasm) = choose_guest(args)?;
    let metrics = Arc::new(metrics::Metrics::new());
    let nn = crate::nn::NnConfig {
        backend: args.backend,
        slots: args.nn_slots,
        slot_wait: args.nn_slot_wait,
        tensor_cores: !args.no_tensor_cores,
        fused_step: !args.no_fused_step,
        stats: metrics.nn.clone(),
    };
    let models = Arc::new(crate::nn::Models::load(&args.models, &nn)?);
    check_tokenizers(&wasm, &models)?;
    let limits = guest::InstanceLimits {
        max_instances: args.max_concurrency,
        memory_growth: args.memory_limit,
        deadline: args.timeout,
    };
    let t0 = std::time::Instant::now();
    let guest = guest::Guest::new(&wasm, limits, models)
        .map_err(|e| ServeError::Load { what: what.clone(), message: format!("{e:?}") })?;
    drop(wasm);
    tracing::info!(
        guest = %what,
        compile_ms = t0.elapsed().as_millis() as u64,
        max_concurrency = args.max_concurrency,
        memory_limit = args.memory_limit,
        timeout_s = args.timeout.as_secs_f64(),
        "guest ready"
    );

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let app = Arc::new(server::App::new(
        guest,
        metrics,
        args.max_concurrency as usize,
        args.timeout,
        args.test_faults,
    ));
    let grace = args.shutdown_grace;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.addr).await?;
        let bound = listener.local_addr()?;
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on http://{bound}")?;
            out.flush()?;
        }
        tracing::info!(addr = %bound, "listening");
        server::serve(listener, app, grace).await;
        Ok::<(), ServeError>(())
    })?;
    // In-flight requests past the grace period are dropped with the runtime.
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// The guest to serve: `--guest`, else the built-in `nn` guest with `--model`, else the
/// built-in self-contained one.
fn choose_guest(args: &ServeArgs) -> Result<(String, std::borrow::Cow<'static, [u8]>), ServeError> {
    let nn = !args.models.is_empty();
    let built_in = if nn { EMBEDDED_NN_GUEST } else { EMBEDDED_GUEST };
    match (&args.guest, built_in) {
        (Some(path), _) => {
            let bytes =
                std::fs::read(path).map_err(|source| ServeError::ReadGuest { path: path.clone(), source })?;
            Ok((path.display().to_string(), bytes.into()))
        }
        (None, Some(bytes)) => Ok((if nn { "built-in (nn)" } else { "built-in" }.into(), bytes.into())),
        (None, None) => Err(ServeError::NoGuest(if nn { "nn " } else { "" })),
    }
}

/// Refuses models whose tokenizer differs from the one in the guest's [`NN_META_SECTION`]. A
/// guest without the section (not ours) is served unchecked, with a warning.
fn check_tokenizers(wasm: &[u8], models: &crate::nn::Models) -> Result<(), ServeError> {
    if models.names().is_empty() {
        return Ok(());
    }
    let guest_id = match guest_tokenizer(wasm) {
        Some(Ok(id)) => id,
        Some(Err(e)) => {
            return Err(ServeError::Load {
                what: "guest".into(),
                message: format!("{NN_META_SECTION}: {e}"),
            });
        }
        None => {
            tracing::warn!("the guest carries no {NN_META_SECTION} section: tokenizers not checked");
            return Ok(());
        }
    };
    for m in models.iter() {
        if m.tokenizer != guest_id {
            return Err(ServeError::TokenizerMismatch {
                model: m.name.clone(),
                model_id: m.tokenizer,
                guest_id,
            });
        }
    }
    tracing::info!(tokenizer = %guest_id, "every model's tokenizer matches the guest's");
    Ok(())
}

/// The tokenizer of the GGUF metadata in the component's [`NN_META_SECTION`] custom section
/// (in any of its core modules), if there is one.
fn guest_tokenizer(wasm: &[u8]) -> Option<Result<crate::nn::TokenizerId, String>> {
    let section = wasmparser::Parser::new(0).parse_all(wasm).find_map(|p| match p {
        Ok(wasmparser::Payload::CustomSection(c)) if c.name() == NN_META_SECTION => Some(c.data()),
        _ => None,
    })?;
    let parse = || {
        let g = tinystate_engine::gguf::Gguf::parse(section).map_err(|e| e.to_string())?;
        let t = tinystate_engine::tokenizer::Tokenizer::from_gguf(&g).map_err(|e| e.to_string())?;
        Ok(crate::nn::TokenizerId::of(&t))
    };
    Some(parse())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Parses `123`, `64KiB`/`64K`, `64MiB`/`64M`, `1GiB`/`1G` (binary multiples) into bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("'{s}' is not a size like 64MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        u => return Err(format!("unknown size unit '{u}' (use KiB, MiB or GiB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("'{s}' is too large"))
}

/// Parses seconds, possibly fractional and with an `s` suffix: `300`, `2.5`, `10s`; zero allowed.
fn parse_wait(s: &str) -> Result<Duration, String> {
    let v: f64 = s.trim().trim_end_matches('s').parse().map_err(|_| format!("'{s}' is not seconds"))?;
    Duration::try_from_secs_f64(v).map_err(|e| format!("'{s}': {e}"))
}

/// [`parse_wait`], more than zero.
fn parse_seconds(s: &str) -> Result<Duration, String> {
    parse_wait(s).and_then(|d| if d.is_zero() { Err("must be more than 0".into()) } else { Ok(d) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_seconds() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
        assert_eq!(parse_seconds("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_seconds("10s"), Ok(Duration::from_secs(10)));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
    }
}
