//! The HTTP/1.1 server: the accept loop, graceful shutdown, and what happens to one request.
//!
//! A request, step by step ([`App::handle`]):
//! 1. `GET /metrics` is answered by the host. Everything else goes to the guest.
//! 2. A concurrency slot is taken without waiting; none free → 503 with `Retry-After`.
//! 3. A fresh [`Store`](wasmtime::Store) is made; it holds the slot and the active-instance
//!    count, so both are released exactly when the store is dropped.
//! 4. A task instantiates the component from the pre-instantiated image and calls
//!    `wasi:http/incoming-handler.handle` with the request (its body streams in) and a
//!    response outparam.
//! 5. When the guest sets the response, its headers go out and its body streams through
//!    [`Metered`], which owns the task. Dropping the body (end of response, or the client gone)
//!    aborts the task and so drops the instance.
//! 6. If the guest traps, overruns its deadline, or returns without a response before the
//!    headers went out, the host answers 500 (504 for the deadline) with an OpenAI error body.
//!    A trap after the headers went out can only cut the body short.

use std::convert::Infallible;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use wasmtime::Trap;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

use super::body::{AbortOnDrop, INSTANTIATE_US, Metered, RequestRecord};

/// The trailer fields a response may carry (announced in its `Trailer` header).
const TRAILERS: &str = "x-tinystate-peak-memory-bytes, x-tinystate-instantiate-us, x-tinystate-prompt-tokens, \
     x-tinystate-completion-tokens";
use super::guest::Guest;
use super::limits::RequestStats;
use super::metrics::Metrics;
use super::response::{self, HostError, ServeBody};

/// Server-wide state shared by all connections.
pub struct App {
    guest: Guest,
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    next_id: AtomicU64,
    deadline: Duration,
    test_faults: bool,
}

/// Request header honoured with `--test-faults`: this request's memory allowance in bytes.
const TEST_MEMORY_LIMIT: &str = "x-tinystate-test-memory-limit";
/// Request header honoured with `--test-faults`: `trap` traps the guest at its first epoch
/// check, as a real trap would (the instance unwinds and is dropped).
const TEST_FAULT: &str = "x-tinystate-test-fault";

impl App {
    /// Serves `guest` with at most `max_concurrency` live instances and `deadline` per request,
    /// counting into `metrics`. `test_faults` lets requests lower their own limits (tests only).
    pub fn new(
        guest: Guest,
        metrics: Arc<Metrics>,
        max_concurrency: usize,
        deadline: Duration,
        test_faults: bool,
    ) -> Self {
        Self {
            guest,
            slots: Arc::new(Semaphore::new(max_concurrency)),
            metrics,
            next_id: AtomicU64::new(1),
            deadline,
            test_faults,
        }
    }

    /// Answers one request; see the module docs.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<ServeBody> {
        let start = Instant::now();
        if req.uri().path() == "/metrics" && req.method() == Method::GET {
            let text = self.metrics.render();
            return response::full(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", text);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let stats = Arc::new(RequestStats::default());
        let mut record = RequestRecord {
            id,
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            status: 0,
            start,
            stats: stats.clone(),
            metrics: self.metrics.clone(),
            prompt_tokens: None,
            completion_tokens: None,
            first_byte: None,
            bytes_out: 0,
            failure: None,
            finished: false,
        };

        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
            let msg = "the server is at its concurrency limit; retry shortly";
            return self.host_answer(record, HostError::Overloaded, msg.into());
        };
        let send_trailers = req
            .headers()
            .get_all(header::TE)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.to_ascii_lowercase().contains("trailers")));

        let memory_override = match self.test_faults {
            true => req.headers().get(TEST_MEMORY_LIMIT).and_then(|v| v.to_str().ok()?.parse().ok()),
            false => None,
        };
        let inject_trap =
            self.test_faults && req.headers().get(TEST_FAULT).is_some_and(|v| v.as_bytes() == b"trap");
        let mut store =
            self.guest.new_store(stats.clone(), permit, self.metrics.clone(), memory_override, inject_trap);
        let (tx, rx) = oneshot::channel();
        let resources = {
            let mut http = store.data_mut().http();
            http.new_incoming_request(Scheme::Http, req)
                .and_then(|req| Ok((req, http.new_response_outparam(tx)?)))
        };
        let (guest_req, out) = match resources {
            Ok(r) => r,
            Err(e) => return self.host_answer(record, HostError::BadRequest, format!("{e}")),
        };

        let pre = self.guest.pre().clone();
        let metrics = self.metrics.clone();
        let deadline = self.deadline;
        let task_stats = stats.clone();
        let task = tokio::spawn(async move {
            let run = async {
                let t0 = Instant::now();
                let proxy = pre
                    .instantiate_async(&mut store)
                    .await
                    .map_err(|e| (HostError::Instantiate, describe(&e)))?;
                let took = t0.elapsed();
                task_stats.instantiate_us.store(took.as_micros() as u64, Ordering::Relaxed);
                metrics.instantiate.observe(took.as_secs_f64());
                store.data_mut().meter.instantiated();
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, guest_req, out)
                    .await
                    .map_err(|e| (classify(&e, &task_stats), describe(&e)))
            };
            let result = match tokio::time::timeout(deadline, run).await {
                Ok(r) => r,
                Err(_) => Err((HostError::Deadline, format!("deadline of {deadline:?} passed"))),
            };
            if let Err((kind, msg)) = &result {
                metrics.traps.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(id, kind = kind.code(), "guest failed: {msg}");
            }
            result
        });
        let mut task = AbortOnDrop(task);

        match rx.await {
            Ok(Ok(resp)) => {
                let (mut parts, body) = resp.into_parts();
                record.status = parts.status.as_u16();
                record.take_token_headers(&parts.headers);
                self.metrics.count_status(record.status);
                parts.headers.insert("x-request-id", HeaderValue::from(id));
                let us = stats.instantiate_us.load(Ordering::Relaxed);
                parts.headers.insert(INSTANTIATE_US, HeaderValue::from(us));
                if send_trailers {
                    // Trailers need chunked framing, which a fixed length would rule out, and
                    // HTTP/1.1 sends only the trailer fields announced in `Trailer`.
                    parts.headers.remove(header::CONTENT_LENGTH);
                    parts.headers.append(header::TRAILER, HeaderValue::from_static(TRAILERS));
                }
                let body = Metered::new(body, record, task, send_trailers);
                Response::from_parts(parts, body.boxed_unsync())
            }
            Ok(Err(code)) => {
                let msg = format!("the guest answered with an error: {code:?}");
                self.host_answer(record, HostError::NoResponse, msg)
            }
            // The guest dropped the outparam without setting it: the task ended.
            Err(_) => {
                let (kind, msg) = match (&mut task.0).await {
                    Ok(Err(failure)) => failure,
                    Ok(Ok(())) => (HostError::NoResponse, "the guest sent no response".into()),
                    Err(e) => (HostError::Trap, format!("guest task: {e}")),
                };
                let msg = match kind {
                    HostError::MemoryLimit => {
                        format!("the request needed more than the per-instance memory limit: {msg}")
                    }
                    _ => msg,
                };
                self.host_answer(record, kind, msg)
            }
        }
    }

    /// A response made by the host, counted and logged as the request's one line.
    fn host_answer(&self, mut record: RequestRecord, e: HostError, msg: String) -> Response<ServeBody> {
        record.status = e.status().as_u16();
        self.metrics.count_status(record.status);
        let mut resp = response::error(e, &msg);
        record.failure = Some(msg);
        resp.headers_mut().insert("x-request-id", HeaderValue::from(record.id));
        record.finish(e.code());
        resp
    }
}

/// One line about a guest error: the trap if there is one (the rest is a wasm backtrace, which
/// goes to the debug log), else the error's own message.
fn describe(e: &wasmtime::Error) -> String {
    tracing::debug!("guest error in full: {e:?}");
    match e.downcast_ref::<Trap>() {
        Some(trap) => format!("wasm trap: {trap}"),
        None => format!("{e:#}"),
    }
}

/// Which kind of failure a guest error is.
fn classify(e: &wasmtime::Error, stats: &RequestStats) -> HostError {
    if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        HostError::Deadline
    } else if stats.hit_memory_cap.load(Ordering::Relaxed) {
        HostError::MemoryLimit
    } else {
        HostError::Trap
    }
}

/// Accepts connections until SIGINT or SIGTERM, then stops accepting, lets in-flight requests
/// finish for at most `grace`, and returns.
pub async fn serve(listener: TcpListener, app: Arc<App>, grace: Duration) {
    let graceful = GracefulShutdown::new();
    let mut stop = pin!(shutdown_signal());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // e.g. out of file descriptors: back off instead of spinning.
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let svc = service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(app.handle(req).await) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .serve_connection(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("connection: {e}");
                    }
                });
            }
            _ = &mut stop => break,
        }
    }
    drop(listener);
    let live = app.metrics.active_instances.load(Ordering::Relaxed);
    tracing::info!(live_instances = live, "shutting down: not accepting; waiting up to {grace:?}");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("shutdown: all connections closed"),
        _ = tokio::time::sleep(grace) => tracing::warn!("shutdown: grace period over; dropping what is left"),
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
