//! CPU kernels (stub: being written).
