//! The ops the forward pass is written over. `forward.rs` is the one recipe of the model; a
//! backend runs each op on its device: [`cpu::CpuBackend`] calls `crates/kernels` at once, the GPU
//! backend (`gpu.rs`) records the same op into the step's command encoder. A backend is made for
//! one step: it holds the step's batch, its activation buffers and the KV pool, so an op names
//! only which activations it reads and writes ([`Act`]) and which weights ([`Norm`], [`Mat`], a
//! layer index); every op covers all the step's tokens unless it says otherwise.
//!
//! The recipe is generic over the backend (static dispatch): the CPU step compiles to the same
//! kernel calls as before the interface existed, with no indirection per op.
pub mod cpu;
pub mod executor;
pub mod gpu;

use crate::model::forward::{LogitsFor, SeqChunk};
use crate::quantize::calibration::Site;

/// The step's activation buffers, one row per token of the batch (row widths from the model).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// The residual stream `[t, hidden]`.
    X,
    /// A normalised copy of it, the input of the next matmuls `[t, hidden]`.
    Xn,
    /// q, k and v rows as [`QkvLayout`] places them.
    Qkv,
    /// Attention output `[t, heads * head_dim]`.
    Attn,
    /// o_proj output `[t, hidden]`.
    O,
    /// silu(gate) * up `[t, intermediate]`.
    Mlp,
    /// down_proj output `[t, hidden]`.
    Down,
}

impl Act {
    pub const COUNT: usize = 7;
}

/// A normalisation's weights.
#[derive(Clone, Copy, Debug)]
pub enum Norm {
    Input(usize),
    PostAttention(usize),
}

/// A plain matmul's weights (q/k/v and gate/up have ops of their own).
#[derive(Clone, Copy, Debug)]
pub enum Mat {
    O(usize),
    Down(usize),
}

/// Where q, k and v landed in [`Act::Qkv`]: token `i`'s q row at `q_at + i * stride_q`, its k and
/// v rows at `k_at` / `v_at + i * stride_kv` (one stacked matmul: every stride is the stacked
/// row; three matmuls: three contiguous blocks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QkvLayout {
    pub q_at: usize,
    pub k_at: usize,
    pub v_at: usize,
    pub stride_q: usize,
    pub stride_kv: usize,
}

impl QkvLayout {
    /// One stacked `[q | k | v]` row per token.
    pub fn stacked(nq: usize, nkv: usize) -> Self {
        Self { q_at: 0, k_at: nq, v_at: nq + nkv, stride_q: nq + 2 * nkv, stride_kv: nq + 2 * nkv }
    }

    /// Three blocks of `t` rows: q, then k, then v.
    pub fn blocks(t: usize, nq: usize, nkv: usize) -> Self {
        Self { q_at: 0, k_at: t * nq, v_at: t * (nq + nkv), stride_q: nq, stride_kv: nkv }
    }
}

/// The ops of one forward step. Every op runs over all `t` tokens of the step.
pub trait Backend {
    /// Token embeddings of the batch into `out`.
    fn embed(&mut self, out: Act) -> crate::error::Result<()>;
    /// RoPE's cos / sin per token from the positions of the batch (angles `position * inv_freq`).
    fn rope_angles(&mut self, inv_freq: &[f32]);
    /// `out = rms_norm(x) * w`.
    fn rms_norm(&mut self, x: Act, w: Norm, out: Act);
    /// `x += delta; out = rms_norm(x) * w`.
    fn add_rms_norm(&mut self, x: Act, delta: Act, w: Norm, out: Act);
    /// `x += delta`.
    fn add(&mut self, x: Act, delta: Act);
    /// The q, k and v projections of `layer`; says where it put them.
    fn qkv(&mut self, layer: usize, x: Act, out: Act) -> QkvLayout;
    /// Add `layer`'s q/k/v biases (Qwen2).
    fn qkv_bias(&mut self, layer: usize, qkv: Act, at: QkvLayout);
    /// RoPE on every q and k head, after a per-head RMSNorm when `head_norm` (Qwen3's q/k norm).
    fn qk_rope(&mut self, layer: usize, qkv: Act, at: QkvLayout, head_norm: bool);
    /// Every sequence's new K and V rows into the KV pool through its block table.
    fn kv_write(&mut self, layer: usize, qkv: Act, at: QkvLayout);
    /// Causal attention of every sequence's queries over its cached K / V (GQA).
    fn attention(&mut self, layer: usize, qkv: Act, at: QkvLayout, out: Act);
    /// `out = x · Wᵀ`.
    fn matmul(&mut self, w: Mat, x: Act, out: Act);
    /// `out = silu(x · gateᵀ) * (x · upᵀ)` of `layer`.
    fn gate_up_swiglu(&mut self, layer: usize, x: Act, out: Act);
    /// Hand a linear layer's input to the step's observer (calibration), if it has one.
    fn observe(&mut self, layer: usize, site: Site, x: Act);
    /// Hand every token's lm_head input (final norm of `x`) to the observer, if any.
    fn observe_lm_head_input(&mut self, x: Act);
    /// The step's last op: final norm and lm_head of the rows the batch wants (see
    /// [`logit_rows`]), appended to `out` in batch order. A GPU backend submits the step here.
    fn logits(&mut self, x: Act, out: &mut Vec<f32>) -> crate::error::Result<()>;
}

/// Total tokens of a batch.
pub fn batch_tokens(batch: &[SeqChunk]) -> usize {
    batch.iter().map(|s| s.tokens.len()).sum()
}

/// The token rows whose logits the batch asks for, in batch order, into `rows` (cleared first).
pub fn logit_rows(batch: &[SeqChunk], rows: &mut Vec<usize>) {
    rows.clear();
    let mut offset = 0;
    for s in batch {
        let n = s.tokens.len();
        match s.logits {
            LogitsFor::Nothing => {}
            LogitsFor::LastToken => rows.push(offset + n - 1),
            LogitsFor::AllTokens => rows.extend(offset..offset + n),
        }
        offset += n;
    }
}

/// RoPE's cos / sin of one position, as transformers computes them: `position * inv_freq` in f32.
pub fn rope_row(position: usize, inv_freq: &[f32], cos: &mut [f32], sin: &mut [f32]) {
    for (i, inv) in inv_freq.iter().enumerate() {
        let a = position as f32 * inv;
        cos[i] = a.cos();
        sin[i] = a.sin();
    }
}

/// RoPE angle tables of the batch: [`rope_row`] of each token's position, `inv_freq.len()`
/// values per token.
pub fn rope_tables(batch: &[SeqChunk], inv_freq: &[f32], cos: &mut [f32], sin: &mut [f32]) {
    let half = inv_freq.len();
    let mut row = 0;
    for s in batch {
        for p in s.start..s.start + s.tokens.len() {
            rope_row(p, inv_freq, &mut cos[row * half..][..half], &mut sin[row * half..][..half]);
            row += 1;
        }
    }
}
