//! CPU kernels for nano-qwen3-serving. They know slices, dtypes and shapes, nothing about models.
//!
//! - [`linear`]: `y = x · Wᵀ` with f32 activations and f32 / bf16 / f16 weights (f32 accumulation),
//!   multithreaded over output features, SIMD chosen at run time ([`simd`]).
//! - [`LinearOp`]: the same as a candle op, so the model composes it with candle tensors.
//! - [`q8`]: W8A8 in Q8_0-layout blocks (32 int8 + f16 scale), integer dot products.
//! - [`kquants`]: llama.cpp's Q4_K / Q5_K / Q6_K super-blocks, dequantized (GGUF import).
//! - [`q4`]: 4-bit weights in Q4_0-layout blocks with error-minimising scales, int8 activations.
pub mod attention;
pub mod fused;
pub mod kquants;
pub mod linear;
pub mod q4;
pub mod q8;
pub mod repack;
mod scratch;
pub mod tuning;
pub mod pool;
pub mod quant;
pub mod simd;

pub use linear::{linear, LinearOp, Weights};
pub use q4::{BlockQ4, Q4Matrix};
pub use q8::{BlockQ8, Q8Matrix};
pub use quant::{QuantLinearOp, QuantMatrix};
pub use simd::{active_isa, Isa};
