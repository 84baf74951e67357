//! Sampler (stub: being written).
