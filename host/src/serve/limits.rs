//! Per-request memory accounting and the memory cap.
//!
//! Wasmtime asks a store's [`ResourceLimiter`] before every linear-memory growth, including the
//! creation of each memory at instantiation (`current == 0`). [`MemoryMeter`] sums the sizes of
//! all of an instance's memories, so it knows the instance's guest memory at every moment; since
//! linear memory never shrinks, the total at the end is also the request's peak.
//!
//! The cap: whatever the instance needs at instantiation (its memory image, which holds the
//! embedded model) is always allowed; after that the instance may grow by at most
//! `--memory-limit` bytes. A growth past that is refused (`memory.grow` returns -1), which in
//! a Rust guest ends in an allocation-failure trap; the request is then answered 500 and says
//! why.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use wasmtime::ResourceLimiter;

/// Figures about one request that both the store (which writes them) and the response body
/// (which reads them when the response ends) can see.
#[derive(Default)]
pub struct RequestStats {
    /// Sum of the instance's linear-memory sizes now, which is also its peak so far.
    pub memory_bytes: AtomicU64,
    /// Bytes of linear memory at the end of instantiation (the memory image).
    pub initial_bytes: AtomicU64,
    /// A growth was refused by the cap.
    pub hit_memory_cap: AtomicBool,
    /// Instantiation time in µs (0 until done).
    pub instantiate_us: AtomicU64,
}

/// The store's [`ResourceLimiter`]: meters memory into [`RequestStats`] and enforces the cap.
pub struct MemoryMeter {
    stats: Arc<RequestStats>,
    /// Bytes the instance may grow by after instantiation.
    growth_allowed: u64,
    /// Memory total when instantiation ended; `None` while instantiating.
    initial: Option<u64>,
    total: u64,
}

impl MemoryMeter {
    /// A meter writing into `stats` that allows `growth_allowed` bytes after instantiation.
    pub fn new(stats: Arc<RequestStats>, growth_allowed: u64) -> Self {
        Self { stats, growth_allowed, initial: None, total: 0 }
    }

    /// Marks the end of instantiation: from now on growth counts against the cap.
    pub fn instantiated(&mut self) {
        self.initial = Some(self.total);
        self.stats.initial_bytes.store(self.total, Ordering::Relaxed);
    }
}

impl ResourceLimiter for MemoryMeter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let delta = desired.saturating_sub(current) as u64;
        let next = self.total.saturating_add(delta);
        if let Some(initial) = self.initial
            && next > initial.saturating_add(self.growth_allowed)
        {
            self.stats.hit_memory_cap.store(true, Ordering::Relaxed);
            return Ok(false);
        }
        self.total = next;
        self.stats.memory_bytes.store(next, Ordering::Relaxed);
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        // Wasmtime reports the refusal above here too; the guest sees -1 and decides.
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a guest needing more than this is broken.
        Ok(desired <= 1 << 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_is_free_growth_is_capped() {
        let stats = Arc::new(RequestStats::default());
        let mut m = MemoryMeter::new(stats.clone(), 100);
        assert!(m.memory_growing(0, 1000, None).unwrap()); // instantiation: any size
        m.instantiated();
        assert!(m.memory_growing(1000, 1100, None).unwrap()); // exactly the allowance
        assert!(!m.memory_growing(1100, 1101, None).unwrap()); // one byte over
        assert!(stats.hit_memory_cap.load(Ordering::Relaxed));
        assert_eq!(stats.memory_bytes.load(Ordering::Relaxed), 1100);
        assert_eq!(stats.initial_bytes.load(Ordering::Relaxed), 1000);
    }
}
