//! THE forward pass: one call runs a batch of sequences (flattened tokens, per-sequence positions
//! and block tables into the paged KV pool) through our kernels on plain f32 buffers. Serving,
//! `computeLogits`, calibration (through an [`Observer`]) and the tests all run it. Each
//! optimization can be switched off on its own (`ExecOptions`) so benchmarks can show its effect.
use crate::error::Result;
use crate::model::linear::{Linear, Proj};
use crate::model::kv_pool::{KvBuf, KvPool, Slots};
use crate::model::Qwen3Model;
use crate::quantize::calibration::Site;
use nano_qwen3_kernels::attention::{flash_attention_batch, plain_attention, AttentionShape, KvElem, SeqAttention};
use nano_qwen3_kernels::fused;
use nano_qwen3_kernels::{active_isa, Isa};

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

/// Activation buffers of one forward call, sized for its token count.
#[derive(Default)]
pub struct Workspace {
    x: Vec<f32>,
    xn: Vec<f32>,
    qkv: Vec<f32>,
    q: Vec<f32>,
    attn: Vec<f32>,
    o: Vec<f32>,
    gu: Vec<f32>,
    act: Vec<f32>,
    down: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    ids: Vec<u32>,
    /// The rows that go through the final norm and lm_head.
    rows: Vec<usize>,
    sel: Vec<f32>,
}

fn fit(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

impl Workspace {
    fn ensure(&mut self, m: &Qwen3Model, t: usize) {
        let c = &m.config;
        let (h, hd, inter) = (c.hidden_size, c.head_dim, c.intermediate_size);
        let (nq, nkv) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
        for (buf, n) in [
            (&mut self.x, t * h),
            (&mut self.xn, t * h),
            (&mut self.qkv, t * (nq + 2 * nkv)),
            (&mut self.q, t * nq),
            (&mut self.attn, t * nq),
            (&mut self.o, t * h),
            (&mut self.gu, t * 2 * inter),
            (&mut self.act, t * inter),
            (&mut self.down, t * h),
            (&mut self.cos, t * hd / 2),
            (&mut self.sin, t * hd / 2),
        ] {
            fit(buf, n);
        }
    }
}

/// Attention of the batch's `n` sequences (`seq(i)`): one flash call, or the plain path one
/// sequence at a time.
#[allow(clippy::too_many_arguments)]
fn attend<'s, T: KvElem>(q: &[f32], k: &[T], v: &[T], n: usize, seq: impl Fn(usize) -> SeqAttention<'s> + Sync, out: &mut [f32], flash: bool, isa: Isa) {
    if flash {
        return flash_attention_batch(q, k, v, n, seq, out, isa);
    }
    let mut row = 0;
    for s in (0..n).map(seq) {
        let len = s.shape.q_len * s.shape.heads * s.shape.head_dim;
        plain_attention(&q[row..][..len], k, v, &s.pages, &mut out[row..][..len], &s.shape);
        row += len;
    }
}

/// `x += delta; xn = norm(x)`, fused or as two passes.
fn add_norm(x: &mut [f32], delta: &[f32], w: &[f32], eps: f32, xn: &mut [f32], fused_ops: bool) {
    if fused_ops {
        fused::add_rms_norm(x, delta, w, eps, xn);
    } else {
        fused::add_in_place(x, delta);
        fused::rms_norm(x, w, eps, xn);
    }
}

/// Per-head RMSNorm + RoPE of `heads` heads at the start of each row, fused or as two passes.
#[allow(clippy::too_many_arguments)]
fn norm_rope(x: &mut [f32], stride: usize, heads: usize, w: &[f32], eps: f32, cos: &[f32], sin: &[f32], fused_ops: bool) {
    if fused_ops {
        fused::head_norm_rope(x, stride, heads, w, eps, cos, sin);
    } else {
        fused::head_rms_norm(x, stride, heads, w, eps);
        fused::rope(x, stride, heads, w.len(), cos, sin);
    }
}

/// Add `bias` to every row of `x` (rows `stride` apart, the last one possibly cut to `bias.len()`).
fn add_row_bias(x: &mut [f32], stride: usize, bias: &[f32]) {
    for row in x.chunks_mut(stride) {
        for (v, b) in row[..bias.len()].iter_mut().zip(bias) {
            *v += b;
        }
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
        mut observer: Option<&mut dyn Observer>,
    ) -> Result<()> {
        let cfg = &self.config;
        let (h, hd, inter) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let (nq, nkvd) = (nh * hd, nkv * hd);
        let eps = cfg.rms_norm_eps as f32;
        let isa = active_isa();
        let t: usize = batch.iter().map(|s| s.tokens.len()).sum();
        if t == 0 {
            return Ok(());
        }
        ws.ensure(self, t);
        ws.ids.clear();
        for s in batch {
            ws.ids.extend_from_slice(s.tokens);
        }
        self.embed_tokens.rows_into(&ws.ids, &mut ws.x[..t * h])?;
        // RoPE angles per token, as transformers computes them: position * inv_freq in f32.
        let half = hd / 2;
        let mut row = 0;
        for s in batch {
            for p in s.start..s.start + s.tokens.len() {
                for (i, inv) in self.inv_freq.iter().enumerate() {
                    let a = p as f32 * inv;
                    ws.cos[row * half + i] = a.cos();
                    ws.sin[row * half + i] = a.sin();
                }
                row += 1;
            }
        }
        let (cos, sin) = (&ws.cos[..t * half], &ws.sin[..t * half]);
        let final_norm = &self.norm.values;
        for (li, layer) in self.layers.iter().enumerate() {
            let (in_w, post_w) = (&layer.input_norm.values, &layer.post_attention_norm.values);
            if li == 0 {
                fused::rms_norm(&ws.x[..t * h], in_w, eps, &mut ws.xn[..t * h]);
            } else {
                add_norm(&mut ws.x[..t * h], &ws.down[..t * h], in_w, eps, &mut ws.xn[..t * h], opts.fused);
            }
            if let Some(o) = observer.as_deref_mut() {
                o.observe(Some(li), Site::AttnIn, &ws.xn[..t * h], t);
            }
            // q, k, v: one stacked matmul (row stride nq + 2 nkvd) or three (contiguous blocks).
            let (q_at, k_at, v_at, stride_q, stride_kv) = match &layer.qkv {
                Proj::Fused { w, .. } => {
                    w.forward_slice(&ws.xn[..t * h], t, &mut ws.qkv[..t * (nq + 2 * nkvd)]);
                    (0, nq, nq + nkvd, nq + 2 * nkvd, nq + 2 * nkvd)
                }
                Proj::Separate(ps) => {
                    let (q, rest) = ws.qkv.split_at_mut(t * nq);
                    let (k, v) = rest.split_at_mut(t * nkvd);
                    ps[0].forward_slice(&ws.xn[..t * h], t, q);
                    ps[1].forward_slice(&ws.xn[..t * h], t, k);
                    ps[2].forward_slice(&ws.xn[..t * h], t, &mut v[..t * nkvd]);
                    (0, t * nq, t * (nq + nkvd), nq, nkvd)
                }
            };
            // Exactly t rows of each (the slices end after the last row's heads).
            let qkv = &mut ws.qkv[..];
            let (q_rows, k_rows) = (q_at..q_at + (t - 1) * stride_q + nq, k_at..k_at + (t - 1) * stride_kv + nkvd);
            if let Some(bias) = &layer.qkv_bias {
                let v_rows = v_at..v_at + (t - 1) * stride_kv + nkvd;
                let (bq, rest) = bias.values.split_at(nq);
                let (bk, bv) = rest.split_at(nkvd);
                add_row_bias(&mut qkv[q_rows.clone()], stride_q, bq);
                add_row_bias(&mut qkv[k_rows.clone()], stride_kv, bk);
                add_row_bias(&mut qkv[v_rows], stride_kv, bv);
            }
            match (&layer.q_norm, &layer.k_norm) {
                (Some(qn), Some(kn)) => {
                    norm_rope(&mut qkv[q_rows], stride_q, nh, &qn.values, eps, cos, sin, opts.fused);
                    norm_rope(&mut qkv[k_rows], stride_kv, nkv, &kn.values, eps, cos, sin, opts.fused);
                }
                _ => {
                    fused::rope(&mut qkv[q_rows], stride_q, nh, hd, cos, sin);
                    fused::rope(&mut qkv[k_rows], stride_kv, nkv, hd, cos, sin);
                }
            }
            // Every sequence's new K/V into the pool, then one attention call over the batch.
            let mut offset = 0;
            for s in batch {
                let n = s.tokens.len();
                let (kr, vr) = (&ws.qkv[k_at + offset * stride_kv..], &ws.qkv[v_at + offset * stride_kv..]);
                kv.write(li, Slots { table: s.table, start: s.start }, kr, vr, n, stride_kv);
                offset += n;
            }
            // The kernel wants q as [t, heads, hd] contiguous.
            for i in 0..t {
                ws.q[i * nq..(i + 1) * nq].copy_from_slice(&ws.qkv[q_at + i * stride_q..][..nq]);
            }
            let kv = &*kv;
            let seq = |i: usize| {
                let s = &batch[i];
                SeqAttention { pages: kv.pages(s.table), shape: AttentionShape { heads: nh, kv_heads: nkv, head_dim: hd, q_len: s.tokens.len(), start: s.start } }
            };
            let (q, out, n) = (&ws.q[..t * nq], &mut ws.attn[..t * nq], batch.len());
            match kv.layer(li) {
                (KvBuf::F32(k), KvBuf::F32(v)) => attend(q, k, v, n, seq, out, opts.flash_attention, isa),
                (KvBuf::F16(k), KvBuf::F16(v)) => attend(q, k, v, n, seq, out, opts.flash_attention, isa),
                (KvBuf::Bf16(k), KvBuf::Bf16(v)) => attend(q, k, v, n, seq, out, opts.flash_attention, isa),
                _ => unreachable!("K and V share a dtype"),
            }
            if let Some(o) = observer.as_deref_mut() {
                o.observe(Some(li), Site::OIn, &ws.attn[..t * nq], t);
            }
            layer.o_proj.forward_slice(&ws.attn[..t * nq], t, &mut ws.o[..t * h]);
            add_norm(&mut ws.x[..t * h], &ws.o[..t * h], post_w, eps, &mut ws.xn[..t * h], opts.fused);
            if let Some(o) = observer.as_deref_mut() {
                o.observe(Some(li), Site::MlpIn, &ws.xn[..t * h], t);
            }
            match &layer.gate_up {
                Proj::Fused { w, .. } => {
                    w.forward_swiglu_slice(&ws.xn[..t * h], t, &mut ws.gu[..t * 2 * inter], &mut ws.act[..t * inter]);
                }
                Proj::Separate(ps) => {
                    let (g, u) = ws.gu.split_at_mut(t * inter);
                    ps[0].forward_slice(&ws.xn[..t * h], t, g);
                    ps[1].forward_slice(&ws.xn[..t * h], t, &mut u[..t * inter]);
                    fused::silu_mul_separate(g, &u[..t * inter], &mut ws.act[..t * inter], opts.fused);
                }
            }
            if let Some(o) = observer.as_deref_mut() {
                o.observe(Some(li), Site::DownIn, &ws.act[..t * inter], t);
            }
            layer.down_proj.forward_slice(&ws.act[..t * inter], t, &mut ws.down[..t * h]);
        }
        fused::add_in_place(&mut ws.x[..t * h], &ws.down[..t * h]);
        if let Some(o) = observer {
            // Every token's lm_head input, without computing every token's logits.
            fit(&mut ws.sel, t * h);
            for (src, dst) in ws.x[..t * h].chunks_exact(h).zip(ws.sel.chunks_exact_mut(h)) {
                fused::rms_norm(src, final_norm, eps, dst);
            }
            o.observe(None, Site::AttnIn, &ws.sel[..t * h], t);
        }
        // Only the rows we return go through the final norm and the (large) lm_head.
        ws.rows.clear();
        let mut offset = 0;
        for s in batch {
            let n = s.tokens.len();
            match s.logits {
                LogitsFor::Nothing => {}
                LogitsFor::LastToken => ws.rows.push(offset + n - 1),
                LogitsFor::AllTokens => ws.rows.extend(offset..offset + n),
            }
            offset += n;
        }
        let r = ws.rows.len();
        if r == 0 {
            return Ok(());
        }
        fit(&mut ws.sel, r * h);
        for (dst, &row) in ws.sel[..r * h].chunks_exact_mut(h).zip(&ws.rows) {
            fused::rms_norm(&ws.x[row * h..(row + 1) * h], final_norm, eps, dst);
        }
        let head: &Linear = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        let at = logits.len();
        logits.resize(at + r * cfg.vocab_size, 0.0);
        head.forward_slice(&ws.sel[..r * h], r, &mut logits[at..]);
        Ok(())
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
