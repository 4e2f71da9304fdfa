//! CPU kernels for nano-qwen3-serving. They know slices, dtypes and shapes, nothing about models.
//!
//! - [`linear`]: `y = x · Wᵀ` with f32 activations and f32 / bf16 / f16 weights (f32 accumulation),
//!   multithreaded over output features, SIMD chosen at run time ([`simd`]).
//! - [`LinearOp`]: the same as a candle op, so the model composes it with candle tensors.
//! - [`q8`]: W8A8 in Q8_0-layout blocks (32 int8 + f16 scale), integer dot products.
//! - [`kquants`]: llama.cpp's Q2_K ... Q6_K super-blocks, dequantized (reference, GGUF import).
//! - [`legacy_quants`]: llama.cpp's Q4_1 / Q5_0 / Q5_1 blocks, dequantized (reference, GGUF import).
//! - [`ggml`]: Q4_K, Q5_K, Q6_K, Q5_0, Q4_1, Q5_1 run as stored (8-row units, int8 activations).
//! - [`q4`]: 4-bit weights in Q4_0-layout blocks with error-minimising scales, int8 activations.
//! - [`repack`]: Q8_0 / Q4_0 weights in 8-row interleaved blocks (no horizontal sums).
//! - [`attention`]: causal flash attention over a paged KV cache, and the plain reference.
//! - [`fused`]: the elementwise layer steps (norms, RoPE, SwiGLU), fused per row.
//!
//! Every matmul splits its work the same way (`tiling`, on [`pool`], sized by [`tuning`]). An op
//! with SIMD paths is a folder: `mod.rs` holds its API, dispatch and portable reference, and
//! `avx2.rs`, `avx512.rs`, `neon.rs` the paths for those instruction sets.
pub mod attention;
pub mod fused;
pub mod ggml;
pub mod kquants;
pub mod legacy_quants;
pub mod linear;
pub mod pool;
pub mod q4;
pub mod q8;
pub mod quant;
pub mod repack;
mod scratch;
pub mod simd;
mod tiling;
pub mod tuning;

pub use ggml::GgmlMatrix;
pub use linear::{linear, LinearOp, Weights};
pub use q4::{BlockQ4, Q4Matrix, Q4Scales};
pub use q8::{BlockQ8, Q8Matrix};
pub use quant::{QuantLinearOp, QuantMatrix};
pub use simd::{active_isa, Isa};
