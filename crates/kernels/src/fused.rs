//! Fused elementwise kernels (being written).
