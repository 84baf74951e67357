//! The guest component: compiled once at start-up, linked and pre-instantiated once
//! ([`ProxyPre`]), then instantiated afresh for every request into its own [`Store`].
//!
//! Engine settings, and why:
//! - **Pooling allocator**: instance slots (memories, tables, fiber stacks) are reserved once
//!   and reused, so instantiation is a few page-table operations, not mmap calls. The pool holds
//!   exactly `--max-concurrency` instances; the server never has more stores alive than that.
//! - **Copy-on-write memory images** (`memory_init_cow`, wasmtime's default, set explicitly):
//!   a guest's data segments, including an embedded model, are mapped from the compiled image
//!   and shared by every instance; an instance pays only for the pages it writes.
//! - **Epoch interruption**: a ticker thread advances the engine's epoch every [`TICK`]; at each
//!   tick a running guest yields to the async runtime (so one long generation cannot starve the
//!   others or the accept loop) and traps once its request's deadline has passed.
//! - **Compile cache**: wasmtime's on-disk cache (the CLI's default location) so a restart with
//!   the same guest skips Cranelift.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::OwnedSemaphorePermit;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
    UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use super::limits::{MemoryMeter, RequestStats};
use super::metrics::Metrics;
use crate::nn::Models;
use crate::nn::wit::{NnCtx, NnView};

/// How often the engine's epoch advances: the granularity of deadlines and of yielding.
pub const TICK: Duration = Duration::from_millis(10);

/// Limits applied to every instance.
#[derive(Clone, Copy, Debug)]
pub struct InstanceLimits {
    /// Instances alive at once (the pool's size).
    pub max_instances: u32,
    /// Bytes an instance may grow beyond its memory image.
    pub memory_growth: u64,
    /// Wall-clock time a request's guest may run.
    pub deadline: Duration,
}

/// A compiled, linked, pre-instantiated guest.
pub struct Guest {
    pre: ProxyPre<RequestState>,
    limits: InstanceLimits,
    /// The models wasi-nn serves (none for a self-contained guest).
    models: Arc<Models>,
    /// `TINYSTATE_MODELS` for the nn guest (contract in crate::nn), joined once, not per request.
    models_env: Option<String>,
    ticker_stop: Arc<AtomicBool>,
}

impl Guest {
    /// Compiles `wasm` (a component, binary) and links it against WASI, wasi:http and wasi-nn
    /// (serving `models`).
    pub fn new(wasm: &[u8], limits: InstanceLimits, models: Arc<Models>) -> wasmtime::Result<Self> {
        let engine = Engine::new(&engine_config(limits))?;
        let component = Component::new(&engine, wasm)?;
        let mut linker = Linker::<RequestState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        crate::nn::wit::add_to_linker(&mut linker, |s: &mut RequestState| NnView {
            ctx: &mut s.nn,
            table: &mut s.table,
        })?;
        let pre = ProxyPre::new(linker.instantiate_pre(&component)?)?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (stop, engine) = (ticker_stop.clone(), engine.clone());
        std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                }
            })
            .map_err(wasmtime::Error::from)?;
        let models_env = (!models.names().is_empty()).then(|| models.names().join(","));
        Ok(Self { pre, limits, models, models_env, ticker_stop })
    }

    /// The pre-instantiated component.
    pub fn pre(&self) -> &ProxyPre<RequestState> {
        &self.pre
    }

    /// A fresh store for one request. `permit` and the active-instance count are held by the
    /// store, so both are released exactly when the instance is dropped. `memory_growth`
    /// overrides the configured allowance and `inject_trap` traps the guest as soon as it runs
    /// (test faults only).
    pub fn new_store(
        &self,
        stats: Arc<RequestStats>,
        permit: OwnedSemaphorePermit,
        metrics: Arc<Metrics>,
        memory_growth: Option<u64>,
        inject_trap: bool,
    ) -> Store<RequestState> {
        metrics.active_instances.fetch_add(1, Ordering::Relaxed);
        let mut wasi = WasiCtx::builder();
        wasi.inherit_stderr();
        if let Some(names) = &self.models_env {
            wasi.env("TINYSTATE_MODELS", names);
        }
        let nn = NnCtx::new(self.models.clone(), metrics.nn_contexts.clone());
        let state = RequestState {
            wasi: wasi.build(),
            nn,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: NoOutgoingRequests,
            meter: MemoryMeter::new(stats, memory_growth.unwrap_or(self.limits.memory_growth)),
            _alive: Alive { metrics, _permit: permit },
        };
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|s| &mut s.meter);
        let deadline = Instant::now() + self.limits.deadline;
        // An injected trap fires at the guest's first epoch check.
        store.set_epoch_deadline(if inject_trap { 0 } else { 1 });
        store.epoch_deadline_callback(move |_| {
            if inject_trap {
                return Err(InjectedTrap.into());
            }
            Ok(if Instant::now() >= deadline { UpdateDeadline::Interrupt } else { UpdateDeadline::Yield(1) })
        });
        store
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

fn engine_config(limits: InstanceLimits) -> Config {
    let n = limits.max_instances.max(1);
    let mut pool = PoolingAllocationConfig::new();
    // A component built by rustc/wit-component holds one main module plus small shim modules
    // (a few core instances and tables) and one or two memories; these bounds leave room.
    pool.total_component_instances(n)
        .total_core_instances(n * 16)
        .max_core_instances_per_component(16)
        .total_memories(n * 2)
        .max_memories_per_component(2)
        .total_tables(n * 8)
        .max_tables_per_component(8)
        .total_stacks(n)
        // The largest a single memory may become: the wasm32 maximum. Only address space is
        // reserved for it; the cap per request is the limiter's (`--memory-limit`).
        .max_memory_size(1 << 32);
    let mut config = Config::new();
    config
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .memory_init_cow(true)
        .epoch_interruption(true);
    match Cache::new(CacheConfig::new()) {
        Ok(cache) => {
            config.cache(Some(cache));
        }
        Err(e) => tracing::warn!("compile cache disabled: {e}"),
    }
    config
}

/// The error an injected trap (`--test-faults`) unwinds the guest with.
#[derive(Debug, thiserror::Error)]
#[error("trap injected by x-tinystate-test-fault")]
pub struct InjectedTrap;

/// Holds what must be released when a request's store is dropped.
struct Alive {
    metrics: Arc<Metrics>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.metrics.active_instances.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The `T` of each request's `Store<T>`.
pub struct RequestState {
    wasi: WasiCtx,
    nn: NnCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: NoOutgoingRequests,
    /// Memory accounting and cap.
    pub meter: MemoryMeter,
    _alive: Alive,
}

impl WasiView for RequestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for RequestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

/// The guest may not make outgoing HTTP requests: an inference function has no reason to reach
/// the network, and refusing keeps it inside the same sandbox as under Spin with no
/// `allowed_outbound_hosts`.
struct NoOutgoingRequests;

impl WasiHttpHooks for NoOutgoingRequests {
    fn send_request(
        &mut self,
        _request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}
