//! THE forward pass: one call runs a batch of sequences (flattened tokens, per-sequence positions
//! and block tables into the paged KV pool) through the model, written once over the ops of a
//! [`Backend`] (the CPU's kernels on plain f32 buffers, or the GPU's recorded into one command
//! encoder). Serving,
//! `computeLogits`, calibration (through an [`Observer`]) and the tests all run it. Each
//! optimization can be switched off on its own (`ExecOptions`) so benchmarks can show its effect.
use crate::error::Result;
use crate::model::backend::cpu::CpuBackend;
pub use crate::model::backend::cpu::Workspace;
use crate::model::backend::{batch_tokens, Act, Backend, Mat, Norm};
use crate::model::kv_pool::KvPool;
use crate::model::Qwen3Model;
use crate::quantize::calibration::Site;

/// One sequence's share of a forward call: `tokens` at positions `start..start + tokens.len()`,
/// whose K/V go (and whose earlier K/V are read) through `table`.
#[derive(Clone, Copy)]
pub struct SeqChunk<'a> {
    pub tokens: &'a [u32],
    pub start: usize,
    pub table: &'a [u32],
    pub logits: LogitsFor,
}

/// Which of a sequence's positions to compute logits for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LogitsFor {
    /// None: a prefill chunk before the prompt's end (skips the final norm and the lm_head).
    Nothing,
    LastToken,
    AllTokens,
}

/// Sees the input of every linear layer during a forward call (calibration statistics).
/// `layer` is `None` for the lm_head, whose input is given for every token.
pub trait Observer {
    fn observe(&mut self, layer: Option<usize>, site: Site, x: &[f32], rows: usize);
}

/// Which optimizations the fast path uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecOptions {
    /// Tiled online-softmax attention; off: scores materialised per head, then softmax.
    pub flash_attention: bool,
    /// Residual+RMSNorm, q/k RMSNorm+RoPE in one pass each, SiLU·up in the gate/up matmul's
    /// epilogue (repacked int8 / int4; one pass after the matmul otherwise); stacked q/k/v and
    /// gate/up weights are decided at load. Off: one pass per operation.
    pub fused: bool,
    /// Keep the activation buffers between calls (compile mode reduce-overhead).
    pub reuse_buffers: bool,
}

impl Default for ExecOptions {
    fn default() -> Self {
        Self { flash_attention: true, fused: true, reuse_buffers: false }
    }
}

impl Qwen3Model {
    /// Run `batch` through the model, writing each sequence's new K/V into `kv`, and append the
    /// logits rows its `LogitsFor` asks for, in batch order, to `logits` (`[rows, vocab]`).
    /// `ws` holds the activation buffers: kept by the caller between calls (reduce-overhead) a
    /// warm step with `logits` reused allocates nothing (tested). Each token's row is computed
    /// the same way whatever its batch neighbours are, so a sequence's results do not depend on them.
    pub fn forward(
        &self,
        kv: &mut KvPool,
        batch: &[SeqChunk],
        opts: &ExecOptions,
        ws: &mut Workspace,
        logits: &mut Vec<f32>,
        observer: Option<&mut dyn Observer>,
    ) -> Result<()> {
        if batch_tokens(batch) == 0 {
            return Ok(());
        }
        // The observer's trait object narrowed to the step's lifetime.
        let observer = observer.map(|o| &mut *o as &mut dyn Observer);
        self.run(&mut CpuBackend::new(self, kv, batch, opts, ws, observer), logits)
    }

    /// THE recipe of the model over a backend's ops: the backend holds the step (its batch,
    /// buffers and KV pool) and runs or records each op on its device.
    pub(crate) fn run<B: Backend>(&self, b: &mut B, logits: &mut Vec<f32>) -> Result<()> {
        b.embed(Act::X)?;
        b.rope_angles(&self.inv_freq);
        for (li, layer) in self.layers.iter().enumerate() {
            if li == 0 {
                b.rms_norm(Act::X, Norm::Input(li), Act::Xn);
            } else {
                b.add_rms_norm(Act::X, Act::Down, Norm::Input(li), Act::Xn);
            }
            b.observe(li, Site::AttnIn, Act::Xn);
            let at = b.qkv(li, Act::Xn, Act::Qkv);
            if layer.qkv_bias.is_some() {
                b.qkv_bias(li, Act::Qkv, at);
            }
            b.qk_rope(li, Act::Qkv, at, layer.q_norm.is_some() && layer.k_norm.is_some());
            // Every sequence's new K/V into the pool, then one attention call over the batch.
            b.kv_write(li, Act::Qkv, at);
            b.attention(li, Act::Qkv, at, Act::Attn);
            b.observe(li, Site::OIn, Act::Attn);
            b.matmul(Mat::O(li), Act::Attn, Act::O);
            b.add_rms_norm(Act::X, Act::O, Norm::PostAttention(li), Act::Xn);
            b.observe(li, Site::MlpIn, Act::Xn);
            b.gate_up_swiglu(li, Act::Xn, Act::Mlp);
            b.observe(li, Site::DownIn, Act::Mlp);
            b.matmul(Mat::Down(li), Act::Mlp, Act::Down);
        }
        b.add(Act::X, Act::Down);
        b.observe_lm_head_input(Act::X);
        b.logits(Act::X, logits)
    }
}

impl Qwen3Model {
    /// One sequence from position 0 in a KV pool of its own, sized for it and dropped after (so
    /// it never competes with serving for blocks): `computeLogits`, calibration, tests. Prompts
    /// run in chunks of `chunk` tokens when given. Returns the logits `which` asks for. Runs on the
    /// current kernel pool.
    pub fn run_alone(
        &self,
        tokens: &[u32],
        which: LogitsFor,
        opts: &ExecOptions,
        kv_dtype: crate::model::KvDtype,
        chunk: Option<usize>,
        mut observer: Option<&mut dyn Observer>,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let blocks = tokens.len().div_ceil(crate::model::BLOCK_TOKENS);
        let mut kv = KvPool::new(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, kv_dtype, blocks);
        let table: Vec<u32> = (0..blocks as u32).collect();
        let (mut ws, mut logits) = (Workspace::default(), Vec::new());
        let step = chunk.unwrap_or(usize::MAX).max(1);
        let mut start = 0;
        for part in tokens.chunks(step) {
            let last = start + part.len() == tokens.len();
            let logits_for = match which {
                LogitsFor::LastToken if !last => LogitsFor::Nothing,
                w => w,
            };
            let seq = SeqChunk { tokens: part, start, table: &table, logits: logits_for };
            self.forward(&mut kv, &[seq], opts, &mut ws, &mut logits, observer.as_deref_mut().map(|o| o as &mut dyn Observer))?;
            start += part.len();
        }
        Ok(logits)
    }
}

/// Runs serving steps with the activation buffers the compile mode asks for: kept between steps
/// (reduce-overhead: a warm step allocates nothing) or made fresh for each step.
#[derive(Default)]
pub struct Stepper {
    kept: Workspace,
}

impl Stepper {
    pub fn step(&mut self, model: &Qwen3Model, kv: &mut KvPool, batch: &[SeqChunk], opts: &ExecOptions, logits: &mut Vec<f32>) -> Result<()> {
        let mut fresh = Workspace::default();
        let ws = if opts.reuse_buffers { &mut self.kept } else { &mut fresh };
        model.forward(kv, batch, opts, ws, logits, None)
    }
}
