//! The server's metrics, kept in atomics and small mutexes and written out in Prometheus's text
//! exposition format (version 0.0.4) at `GET /metrics`. Hand-written: a handful of series does
//! not need a metrics framework.
//!
//! Every name and unit is listed in [`Metrics::render`]; the contract is in the `serve` module
//! docs.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A cumulative histogram with fixed upper bounds.
pub struct Histogram {
    /// Upper bounds of the buckets, ascending; `+Inf` is implied.
    bounds: &'static [f64],
    /// (count per bucket incl. +Inf, sum of observations)
    state: Mutex<(Vec<u64>, f64)>,
}

impl Histogram {
    /// An empty histogram with these bucket bounds.
    pub fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, state: Mutex::new((vec![0; bounds.len() + 1], 0.0)) }
    }

    /// Records one observation.
    pub fn observe(&self, v: f64) {
        let i = self.bounds.iter().position(|&b| v <= b).unwrap_or(self.bounds.len());
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0[i] += 1;
        s.1 += v;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&s.0) {
            cum += c;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        cum += s.0[self.bounds.len()];
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cum}\n{name}_sum {}\n{name}_count {cum}", s.1);
    }
}

/// Seconds, from 5 µs to 10 s: instantiation sits at the bottom, first tokens higher up.
const SECONDS: &[f64] = &[
    5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Bytes of guest linear memory, 1 MiB to 4 GiB in powers of two.
const BYTES: &[f64] = &[
    1048576.0,
    2097152.0,
    4194304.0,
    8388608.0,
    16777216.0,
    33554432.0,
    67108864.0,
    134217728.0,
    268435456.0,
    536870912.0,
    1073741824.0,
    2147483648.0,
    4294967296.0,
];

/// Everything `/metrics` reports.
pub struct Metrics {
    /// Guest requests answered, by HTTP status (host-made 503s and 500s included).
    pub requests: Mutex<BTreeMap<u16, u64>>,
    /// Guest requests whose response has ended (body done, failed or dropped).
    pub requests_finished: AtomicU64,
    /// Time to create a Store and instantiate the component from the pre-instantiated image.
    pub instantiate: Histogram,
    /// Time from the request's arrival to the first byte of the response body.
    pub first_byte: Histogram,
    /// Whole request time, arrival to end of body.
    pub duration: Histogram,
    /// Each request's peak guest linear memory.
    pub peak_memory: Histogram,
    /// Peak guest linear memory of the request that finished last.
    pub last_peak_memory: AtomicU64,
    /// Prompt tokens reported by the guest (`x-tinystate-prompt-tokens`).
    pub tokens_in: AtomicU64,
    /// Completion tokens reported by the guest (`x-tinystate-completion-tokens`).
    pub tokens_out: AtomicU64,
    /// Stores (instances) alive now.
    pub active_instances: AtomicI64,
    /// Requests turned away with 503 because `--max-concurrency` instances were alive.
    pub rejected: AtomicU64,
    /// Guest traps (incl. deadline interrupts and memory-cap failures).
    pub traps: AtomicU64,
    /// wasi-nn execution contexts alive now (shared with the nn module, which counts them).
    pub nn_contexts: Arc<AtomicI64>,
    /// What the wasi-nn backends count (GPU batch sizes, slots in use).
    pub nn: Arc<crate::nn::NnStats>,
}

impl Metrics {
    /// All zero.
    pub fn new() -> Self {
        Self {
            requests: Mutex::new(BTreeMap::new()),
            requests_finished: AtomicU64::new(0),
            instantiate: Histogram::new(SECONDS),
            first_byte: Histogram::new(SECONDS),
            duration: Histogram::new(SECONDS),
            peak_memory: Histogram::new(BYTES),
            last_peak_memory: AtomicU64::new(0),
            tokens_in: AtomicU64::new(0),
            tokens_out: AtomicU64::new(0),
            active_instances: AtomicI64::new(0),
            rejected: AtomicU64::new(0),
            traps: AtomicU64::new(0),
            nn_contexts: Arc::new(AtomicI64::new(0)),
            nn: Arc::new(crate::nn::NnStats::new()),
        }
    }

    /// Counts one response with this status.
    pub fn count_status(&self, status: u16) {
        *self.requests.lock().unwrap_or_else(|e| e.into_inner()).entry(status).or_default() += 1;
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(8192);
        let _ = writeln!(
            o,
            "# HELP tinystate_requests_total Guest requests answered, by HTTP status.\n\
             # TYPE tinystate_requests_total counter"
        );
        for (status, n) in self.requests.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(o, "tinystate_requests_total{{status=\"{status}\"}} {n}");
        }
        let counter = |o: &mut String, name: &str, help: &str, kind: &str, v: String| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        counter(
            &mut o,
            "tinystate_requests_finished_total",
            "Guest requests whose response ended (completed, failed or client gone).",
            "counter",
            ld(&self.requests_finished),
        );
        counter(
            &mut o,
            "tinystate_rejected_total",
            "Requests answered 503 because the concurrency limit was reached.",
            "counter",
            ld(&self.rejected),
        );
        counter(
            &mut o,
            "tinystate_guest_traps_total",
            "Requests whose guest trapped (incl. deadline and memory cap).",
            "counter",
            ld(&self.traps),
        );
        counter(
            &mut o,
            "tinystate_prompt_tokens_total",
            "Prompt tokens reported by the guest.",
            "counter",
            ld(&self.tokens_in),
        );
        counter(
            &mut o,
            "tinystate_completion_tokens_total",
            "Completion tokens reported by the guest.",
            "counter",
            ld(&self.tokens_out),
        );
        counter(
            &mut o,
            "tinystate_active_instances",
            "Guest instances (stores) alive now.",
            "gauge",
            self.active_instances.load(Ordering::Relaxed).to_string(),
        );
        counter(
            &mut o,
            "tinystate_nn_contexts",
            "wasi-nn execution contexts (sequence states) alive now.",
            "gauge",
            self.nn_contexts.load(Ordering::Relaxed).to_string(),
        );
        counter(
            &mut o,
            "tinystate_nn_slots_in_use",
            "GPU state slots held by wasi-nn contexts (freed once the slot is reset).",
            "gauge",
            self.nn.slots_in_use.load(Ordering::Relaxed).to_string(),
        );
        counter(
            &mut o,
            "tinystate_last_request_peak_memory_bytes",
            "Peak guest linear memory of the request that finished last.",
            "gauge",
            ld(&self.last_peak_memory),
        );
        let histograms: [(&Histogram, &str, &str); 10] = [
            (
                &self.instantiate,
                "tinystate_instantiate_seconds",
                "Time to create a store and instantiate the guest.",
            ),
            (
                &self.first_byte,
                "tinystate_time_to_first_byte_seconds",
                "Request arrival to first response body byte (time to first token when streaming).",
            ),
            (
                &self.duration,
                "tinystate_request_duration_seconds",
                "Request arrival to end of response body.",
            ),
            (
                &self.peak_memory,
                "tinystate_request_peak_memory_bytes",
                "Peak guest linear memory per request.",
            ),
            (
                &self.nn.batch_size,
                "tinystate_nn_batch_size",
                "Sequences (requests) per wasi-nn GPU call: decode rows and prompt pieces.",
            ),
            (
                &self.nn.step_seconds,
                "tinystate_nn_step_seconds",
                "Seconds per wasi-nn GPU call on the batcher thread (inputs written to outputs read).",
            ),
            (
                &self.nn.linger_seconds,
                "tinystate_nn_linger_seconds",
                "Seconds the GPU batcher waited before a step for the streams of the last steps.",
            ),
            (
                &self.nn.idle_seconds,
                "tinystate_nn_idle_seconds",
                "Seconds the GPU batcher had nothing to run and waited for a compute.",
            ),
            (
                &self.nn.turnaround_seconds,
                "tinystate_nn_turnaround_seconds",
                "Seconds from answering a sequence's compute to its next one-token compute (the guest's turn).",
            ),
            (
                &self.nn.queue_seconds,
                "tinystate_nn_queue_seconds",
                "Seconds a decode row waited from being ready to the start of its GPU step.",
            ),
        ];
        for (h, name, help) in histograms {
            h.render(&mut o, name, help);
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::new(&[1.0, 2.0]);
        h.observe(0.5);
        h.observe(1.5);
        h.observe(9.0);
        let mut s = String::new();
        h.render(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"1\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"2\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3\nx_sum 11\nx_count 3\n"), "{s}");
    }
}
