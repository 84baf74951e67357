//! The guest's response body as the client receives it, metered on the way out.
//!
//! [`Metered`] wraps the body that wasmtime-wasi-http hands over and:
//! - notes the time of the first data byte (time to first token when streaming);
//! - reads the guest's token counts from its trailers (or from the response headers, taken
//!   before the body starts);
//! - at the end adds the trailers `x-tinystate-peak-memory-bytes` and `x-tinystate-instance-us`
//!   when the client asked for trailers (`TE: trailers`);
//! - owns the task that runs the guest: when the body is dropped — the response ended or the
//!   client went away — the task is aborted, which drops the store, the instance and its slot at
//!   once, whatever the guest was doing;
//! - writes the request's one log line and its metrics exactly once, at the end.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use tokio::task::JoinHandle;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::limits::RequestStats;
use super::metrics::Metrics;
use super::response::{BoxError, Failure};

/// Trailer/header the guest sets to the prompt's token count.
pub const PROMPT_TOKENS: &str = "x-tinystate-prompt-tokens";
/// Trailer/header the guest sets to the number of generated tokens.
pub const COMPLETION_TOKENS: &str = "x-tinystate-completion-tokens";
/// Trailer the host adds: the request's peak guest linear memory, bytes.
pub const PEAK_MEMORY: &str = "x-tinystate-peak-memory-bytes";
/// Header the host adds: instantiation time of this request's instance, µs.
pub const INSTANTIATE_US: &str = "x-tinystate-instantiate-us";

/// Aborts the guest's task when dropped.
pub struct AbortOnDrop<T>(pub JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What is known about a request while it runs; logged and counted once when it ends.
pub struct RequestRecord {
    /// Sequence number, also sent as `x-request-id`.
    pub id: u64,
    /// HTTP method.
    pub method: http::Method,
    /// Request path (no query).
    pub path: String,
    /// Response status.
    pub status: u16,
    /// Arrival time.
    pub start: Instant,
    /// Shared with the store.
    pub stats: Arc<RequestStats>,
    /// Where to count.
    pub metrics: Arc<Metrics>,
    /// Token counts from headers or trailers.
    pub prompt_tokens: Option<u64>,
    /// Token counts from headers or trailers.
    pub completion_tokens: Option<u64>,
    /// Time to first body byte.
    pub first_byte: Option<Instant>,
    /// Body bytes sent.
    pub bytes_out: u64,
    /// How the response ended, if it did not simply complete.
    pub failure: Option<String>,
    /// Logged and counted already.
    pub finished: bool,
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        // Dropped unfinished: hyper dropped the request's future or body because the client
        // went away (before the response head when `status` is still 0).
        self.finish("client_gone");
    }
}

impl RequestRecord {
    /// Reads the token-count headers, if the guest set them.
    pub fn take_token_headers(&mut self, headers: &HeaderMap) {
        if let Some(n) = header_u64(headers, PROMPT_TOKENS) {
            self.prompt_tokens = Some(n);
        }
        if let Some(n) = header_u64(headers, COMPLETION_TOKENS) {
            self.completion_tokens = Some(n);
        }
    }

    /// Counts and logs the request, once. `outcome` is "complete", "client_gone", "error" or a
    /// host error code. A client gone before the response head is counted as status 499 (as
    /// nginx does).
    pub fn finish(&mut self, outcome: &str) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        if self.status == 0 {
            self.status = 499;
            self.metrics.count_status(499);
        }
        let m = &self.metrics;
        let peak = self.stats.memory_bytes.load(Ordering::Relaxed);
        let inst_us = self.stats.instantiate_us.load(Ordering::Relaxed);
        let duration = self.start.elapsed();
        m.last_peak_memory.store(peak, Ordering::Relaxed);
        if peak > 0 {
            m.peak_memory.observe(peak as f64);
        }
        m.duration.observe(duration.as_secs_f64());
        m.tokens_in.fetch_add(self.prompt_tokens.unwrap_or(0), Ordering::Relaxed);
        m.tokens_out.fetch_add(self.completion_tokens.unwrap_or(0), Ordering::Relaxed);
        m.requests_finished.fetch_add(1, Ordering::Relaxed);
        let ttfb_ms = self.first_byte.map(|t| (t - self.start).as_secs_f64() * 1e3);
        tracing::info!(
            id = self.id,
            method = %self.method,
            path = %self.path,
            status = self.status,
            outcome,
            instantiate_us = inst_us,
            ttfb_ms = ttfb_ms.map(|v| format!("{v:.2}")).unwrap_or_default(),
            duration_ms = format!("{:.2}", duration.as_secs_f64() * 1e3),
            peak_memory_bytes = peak,
            bytes_out = self.bytes_out,
            prompt_tokens = self.prompt_tokens.map(|n| n.to_string()).unwrap_or_default(),
            completion_tokens = self.completion_tokens.map(|n| n.to_string()).unwrap_or_default(),
            failure = self.failure.as_deref().unwrap_or(""),
            "request"
        );
    }
}

fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// The guest's response body, metered; see the module docs.
pub struct Metered {
    inner: HyperOutgoingBody,
    record: Option<RequestRecord>,
    _task: AbortOnDrop<Result<(), Failure>>,
    /// The client sent `TE: trailers`.
    send_trailers: bool,
    /// The guest's trailers have gone out (with ours merged in).
    trailers_sent: bool,
    done: bool,
}

impl Metered {
    /// Wraps `inner`; `task` runs the guest.
    pub fn new(
        inner: HyperOutgoingBody,
        record: RequestRecord,
        task: AbortOnDrop<Result<(), Failure>>,
        send_trailers: bool,
    ) -> Self {
        Self { inner, record: Some(record), _task: task, send_trailers, trailers_sent: false, done: false }
    }

    fn host_trailers(&self, into: &mut HeaderMap) {
        if let Some(r) = &self.record {
            let peak = r.stats.memory_bytes.load(Ordering::Relaxed);
            into.insert(PEAK_MEMORY, HeaderValue::from(peak));
            let us = r.stats.instantiate_us.load(Ordering::Relaxed);
            into.insert(INSTANTIATE_US, HeaderValue::from(us));
        }
    }

    fn finish(&mut self, outcome: &str, failure: Option<String>) {
        if let Some(r) = &mut self.record {
            if failure.is_some() {
                r.failure = failure;
            }
            r.finish(outcome);
        }
    }
}

impl Body for Metered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                let frame = match frame.into_data() {
                    Ok(data) => {
                        if let Some(r) = &mut this.record {
                            if r.first_byte.is_none() && !data.is_empty() {
                                let now = Instant::now();
                                r.first_byte = Some(now);
                                r.metrics.first_byte.observe((now - r.start).as_secs_f64());
                            }
                            r.bytes_out += data.len() as u64;
                        }
                        // A body of known length may end without a final poll; finish here
                        // unless trailers still have to go out.
                        if this.inner.is_end_stream() && !this.send_trailers {
                            this.done = true;
                            this.finish("complete", None);
                        }
                        Frame::data(data)
                    }
                    Err(frame) => match frame.into_trailers() {
                        Ok(mut trailers) => {
                            if let Some(r) = &mut this.record {
                                r.take_token_headers(&trailers);
                            }
                            this.host_trailers(&mut trailers);
                            this.trailers_sent = true;
                            Frame::trailers(trailers)
                        }
                        Err(other) => other,
                    },
                };
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.done = true;
                this.finish("error", Some(format!("response body: {e}")));
                Poll::Ready(Some(Err(Box::new(e))))
            }
            None => {
                this.done = true;
                let trailers = (this.send_trailers && !this.trailers_sent).then(|| {
                    let mut t = HeaderMap::new();
                    this.host_trailers(&mut t);
                    t
                });
                this.finish("complete", None);
                Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        // With trailers to add, the length is unknown so the response is chunked.
        if self.send_trailers { SizeHint::default() } else { self.inner.size_hint() }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        // Not finished yet: hyper dropped the body before its end, so the client went away (or
        // the connection failed). The task is aborted right after, by `_task`.
        self.finish("client_gone", None);
    }
}
