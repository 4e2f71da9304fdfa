//! GPU ops for nano-qwen3-serving on wgpu (Vulkan, Metal, DX12): device selection, tensors in GPU
//! memory, and WGSL compute kernels recorded into one command encoder per step. Like
//! `crates/kernels`, this crate knows shapes, not models: the engine's GPU backend
//! (`crates/engine/src/model/backend/gpu.rs`) calls it op by op in the forward's order.
//!
//! # API
//!
//! ```no_run
//! use nano_qwen3_gpu::*;
//! # fn main() -> Result<()> {
//! // 1. A device. `Auto` never picks a software adapter; `Any(None)` ('gpu') does (tests).
//! let ctx = GpuContext::new(DeviceRequest::Any(None))?;
//! println!("{:?}", ctx.report()); // name, backend, driver, features used, subgroup sizes, limits
//!
//! // 2. Tensors, uploaded once. Weights as stored: F32 / F16 / Bf16 / Q8_0 / Q4_0 bytes of a
//! //    [rows, cols] matrix; past the binding limit they are split into parts of whole rows.
//! let (vocab, h) = (1000, 64);
//! let embed = ctx.upload(DType::F32, vocab, h, &vec![0u8; vocab * h * 4])?;
//! let norm_w = ctx.upload_f32(1, h, &vec![1.0; h])?;
//! let x = ctx.zeros(DType::F32, 8, h)?;      // activations: [max tokens, width], reused
//! let xn = ctx.zeros(DType::F32, 8, h)?;
//! let logits = ctx.zeros(DType::F32, 8, vocab)?;
//! let next = ctx.zeros(DType::U32, 8, 1)?;
//! let kv = ctx.kv_layer(KvDtype::F16, 64, 2, 32)?; // one per layer: [blocks][kv_heads][16][hd]
//!
//! // 3. A step: declare the batch, record ops (one method per op), run = one submit.
//! let mut step = ctx.step();
//! step.set_batch(&[SeqSpan { start: 0, len: 3, table: &[5] }])?;
//! step.embedding(&embed, &[1, 2, 3], x.view())?;
//! step.rms_norm(x.view(), &norm_w, 1e-6, xn.view(), 3)?;
//! // ... matmul, head_norm_rope, kv_write, attention, matmul_swiglu, add_rms_norm per layer ...
//! step.rms_norm_rows(x.view(), &[2], &norm_w, 1e-6, xn.view())?; // final norm, wanted rows only
//! step.matmul(xn.view(), &embed, logits.view(), 1)?;               // tied lm_head
//! step.argmax(logits.view(), 1, vocab, &next, 0)?;
//! let ids = step.read_u32(&next, 0, 1)?;                          // or read_f32(&logits, ..)
//! let out = ctx.run(step)?;
//! let _token = out.u32(ids)[0];
//! # Ok(()) }
//! ```
//!
//! Rules the ops follow:
//! - Activations are f32 [`View`]s (tensor, element offset, row stride), so q/k/v and gate/up can
//!   be column ranges of one fused tensor ([`GpuTensor::cols_from`]). An op's output tensor must
//!   not also be one of its inputs (wgpu forbids it; the op returns an error).
//! - Row `i` of every activation is the batch's i-th token ([`Step::set_batch`] order).
//! - Every kernel accumulates in f32. Matmul: `y = x · Wᵀ`, `W` `[n, k]`; [`Step::matmul`] takes
//!   the matrix-vector kernel up to [`MATVEC_MAX_ROWS`] rows, the tiled one past that.
//! - Attention cuts the KV length at fixed multiples of [`ATTN_SPLIT_KEYS`], so a row's result
//!   does not depend on the other sequences of the batch.
//! - A warm step (same tensors, same or smaller batch) creates no buffers and no bind groups:
//!   see [`GpuContext::counters`].
//!   The two matmul kernels sum in different orders (last-bit differences): a row's logits can
//!   differ in the last bits between a decode step of <= 8 rows and a bigger one.
//! - [`GpuContext`] is `Send + Sync`; steps may be recorded on any thread, and `run` holds the
//!   context's step arenas until its submit completes (runs are serialised).
//! - Measuring: [`Step::time_gpu`] + [`StepOutput::gpu_ns`] (timestamp queries),
//!   [`StepOutput::encode_ns`] (CPU), [`Counters`] (buffers / bind groups created, submits,
//!   dispatches, live GPU bytes), [`GpuContext::parts_needed`] (check before uploading).
//!
//! # Kernels (`src/wgsl/`), each tested against a plain CPU loop in `tests/`
//!
//! | op | kernel | test |
//! |---|---|---|
//! | [`Step::embedding`] | `embedding.wgsl` + `weights_*.wgsl` (every format, per part) | `elementwise.rs`, `split.rs` |
//! | [`Step::rms_norm`], [`Step::rms_norm_rows`] | `rms_norm.wgsl` | `elementwise.rs` |
//! | [`Step::add_rms_norm`] | `add_rms_norm.wgsl` (x += r; out = norm(x) * w) | `elementwise.rs` |
//! | [`Step::add`], [`Step::add_bias`] | `add.wgsl` | `elementwise.rs` |
//! | [`Step::head_norm_rope`] (+ `_rows`) | `head_norm_rope.wgsl` (q/k RMSNorm, rotate-half RoPE) | `attention.rs` |
//! | [`Step::kv_write`] | `kv_write.wgsl` + `kv_*.wgsl` (f32 / f16 / bf16 pools, by slot) | `attention.rs` |
//! | [`Step::attention`] | `attention.wgsl` (query tiles x KV splits, paged, GQA) + `attn_merge.wgsl` | `attention.rs` |
//! | [`Step::swiglu`] | `swiglu.wgsl` | `elementwise.rs` |
//! | [`Step::matmul_swiglu`] | `matvec_swiglu.wgsl` (gate/up matvec, SwiGLU epilogue); prefill: tiled + `swiglu.wgsl` | `matmul.rs` |
//! | [`Step::matmul`] | `matvec.wgsl` (subgroups) / `matmul_tiled.wgsl` + `weights_*.wgsl` | `matmul.rs`, `split.rs` |
//! | [`Step::argmax`] | `argmax.wgsl` | `elementwise.rs` |
mod adapter;
mod context;
mod error;
mod kernels;
mod ops_attention;
mod ops_basic;
mod ops_matmul;
mod probe;
mod step;
mod tensor;

pub use adapter::{list_adapters, AdapterReport, DeviceRequest, GpuBackend};
pub use context::{ContextOptions, Counters, GpuContext, KvLayer};
pub use error::{GpuError, Result};
pub use kernels::{KvDtype, WEIGHT_FORMATS};
pub use ops_attention::{SeqSpan, ATTN_MAX_ROWS, ATTN_SPLIT_KEYS};
pub use ops_matmul::{MatmulKind, MATVEC_MAX_ROWS};
pub use step::{ReadHandle, Step, StepOutput};
pub use tensor::{DType, GpuTensor, Part, View};

/// Tokens per KV block (the engine's `BLOCK_TOKENS`).
pub const BLOCK_TOKENS: usize = 16;

// The engine keeps one context for the runner's lifetime and steps it from its engine thread.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<GpuContext>();
    send_sync::<GpuTensor>();
    send_sync::<KvLayer>();
};
