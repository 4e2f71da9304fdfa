//! The serving forward pass on plain f32 buffers: every step is one of our kernels (matmuls,
//! fused elementwise ops, flash attention) on slices, without a tensor library in between. Each
//! optimization can be switched off on its own (`ExecOptions`) so benchmarks can show its effect;
//! the tensor forward in `model.rs` stays the reference (and runs calibration).
use crate::error::Result;
use crate::kv_cache::KvBuf;
use crate::linear::{Linear, Proj};
use crate::model::{LogitsFor, Qwen3Model, SequenceInput};
use nano_qwen3_kernels::attention::{flash_attention, AttentionShape, KvElem};
use nano_qwen3_kernels::fused;
use nano_qwen3_kernels::{active_isa, Isa};
use nano_qwen3_kernels::pool::parallel_chunks_mut;

/// Which optimizations the fast path uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecOptions {
    /// Tiled online-softmax attention; off: scores materialised per head, then softmax.
    pub flash_attention: bool,
    /// Residual+RMSNorm, q/k RMSNorm+RoPE in one pass each, SiLU·up in the gate/up matmul's
    /// epilogue (repacked int8 / int4; one pass after the matmul otherwise); stacked q/k/v and
    /// gate/up weights are decided at load. Off: one pass per operation.
    pub fused: bool,
    /// Keep the activation buffers with the sequence between calls (compile mode reduce-overhead).
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
    /// Tokens per sequence, and the rows that go through the final norm and lm_head.
    lens: Vec<usize>,
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

/// Plain causal GQA attention: for each head the scores against every visible key are
/// materialised, soft-maxed, then used to weight V. The reference the flash kernel is measured against.
fn attention_plain<T: KvElem>(q: &[f32], k: &[T], v: &[T], out: &mut [f32], s: &AttentionShape) {
    let (hd, n, total) = (s.head_dim, s.q_len, s.start + s.q_len);
    let group = s.heads / s.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    // Head-major scratch ([heads][n][hd]): each task owns one head's rows.
    let mut per_head = vec![0f32; s.heads * n * hd];
    parallel_chunks_mut(&mut per_head, n * hd, |h, o| {
        let (kh, vh) = (&k[(h / group) * s.kv_stride..], &v[(h / group) * s.kv_stride..]);
        let mut scores = vec![f32::NEG_INFINITY; n * total];
        for i in 0..n {
            let qi = &q[(i * s.heads + h) * hd..][..hd];
            let row = &mut scores[i * total..(i + 1) * total];
            for (j, sc) in row.iter_mut().enumerate().take(s.start + i + 1) {
                *sc = qi.iter().zip(&kh[j * hd..(j + 1) * hd]).map(|(a, b)| a * b.to_f32()).sum::<f32>() * scale;
            }
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for sc in row.iter_mut() {
                *sc = (*sc - m).exp();
                sum += *sc;
            }
            for (j, p) in row.iter().enumerate().take(s.start + i + 1) {
                for (o, vv) in o[i * hd..(i + 1) * hd].iter_mut().zip(&vh[j * hd..(j + 1) * hd]) {
                    *o += p / sum * vv.to_f32();
                }
            }
        }
    });
    for (h, o) in per_head.chunks_exact(n * hd).enumerate() {
        for i in 0..n {
            out[i * s.heads * hd + h * hd..][..hd].copy_from_slice(&o[i * hd..(i + 1) * hd]);
        }
    }
}

fn attend<T: KvElem>(q: &[f32], k: &[T], v: &[T], out: &mut [f32], s: &AttentionShape, flash: bool, isa: Isa) {
    if flash {
        flash_attention(q, k, v, out, s, isa);
    } else {
        attention_plain(q, k, v, out, s);
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

impl Qwen3Model {
    /// The forward pass on slices (see the module docs); same contract as [`Qwen3Model::forward`],
    /// logits as one `Vec` per sequence (`[vocab]` or `[n, vocab]`).
    pub fn forward_fast(&self, batch: &mut [SequenceInput], which: LogitsFor, opts: &ExecOptions) -> Result<Vec<Vec<f32>>> {
        let lens: Vec<usize> = batch.iter().map(|s| s.tokens.len()).collect();
        let mut logits = Vec::new();
        self.forward_fast_into(batch, which, opts, &mut logits)?;
        if lens.len() == 1 {
            return Ok(vec![logits]); // one sequence: its rows are all of them, no copy
        }
        let vocab = self.config.vocab_size;
        let mut out = Vec::with_capacity(lens.len());
        let mut at = 0;
        for &n in &lens {
            let r = if which == LogitsFor::LastToken { 1 } else { n };
            out.push(logits[at * vocab..(at + r) * vocab].to_vec());
            at += r;
        }
        Ok(out)
    }

    /// [`Qwen3Model::forward_fast`] appending every sequence's logits rows, in batch order, to
    /// `logits`. With `reuse_buffers`, a KV cache reserved ahead and `logits` with room for the
    /// rows, a step allocates nothing (the compile mode reduce-overhead; tested).
    pub fn forward_fast_into(&self, batch: &mut [SequenceInput], which: LogitsFor, opts: &ExecOptions, logits: &mut Vec<f32>) -> Result<()> {
        let cfg = &self.config;
        let (h, hd, inter) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let (nq, nkvd) = (nh * hd, nkv * hd);
        let eps = cfg.rms_norm_eps as f32;
        let isa = active_isa();
        let mut ws = match (opts.reuse_buffers, batch.len()) {
            (true, 1) => batch[0].cache.workspace.take().unwrap_or_default(),
            _ => Workspace::default(),
        };
        let mut lens = std::mem::take(&mut ws.lens);
        lens.clear();
        lens.extend(batch.iter().map(|s| s.tokens.len()));
        let t: usize = lens.iter().sum();
        ws.ensure(self, t);
        ws.ids.clear();
        for s in batch.iter_mut() {
            ws.ids.extend_from_slice(s.tokens);
            s.cache.reserve(s.tokens.len());
        }
        self.embed_tokens.rows_into(&ws.ids, &mut ws.x[..t * h])?;
        // RoPE angles per token, as transformers computes them: position * inv_freq in f32.
        let half = hd / 2;
        let mut row = 0;
        for s in batch.iter() {
            for p in s.cache.len()..s.cache.len() + s.tokens.len() {
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
            let (qn_w, kn_w) = (&layer.q_norm.values, &layer.k_norm.values);
            if li == 0 {
                fused::rms_norm(&ws.x[..t * h], in_w, eps, &mut ws.xn[..t * h]);
            } else {
                add_norm(&mut ws.x[..t * h], &ws.down[..t * h], in_w, eps, &mut ws.xn[..t * h], opts.fused);
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
            norm_rope(&mut qkv[q_at..q_at + (t - 1) * stride_q + nq], stride_q, nh, qn_w, eps, cos, sin, opts.fused);
            norm_rope(&mut qkv[k_at..k_at + (t - 1) * stride_kv + nkvd], stride_kv, nkv, kn_w, eps, cos, sin, opts.fused);
            let mut offset = 0;
            for (s, &n) in batch.iter_mut().zip(&lens) {
                let (kr, vr) = (&ws.qkv[k_at + offset * stride_kv..], &ws.qkv[v_at + offset * stride_kv..]);
                s.cache.write(li, kr, vr, n, stride_kv);
                // The kernel wants q as [n, heads, hd] contiguous.
                for i in 0..n {
                    ws.q[i * nq..(i + 1) * nq].copy_from_slice(&ws.qkv[q_at + (offset + i) * stride_q..][..nq]);
                }
                let shape = AttentionShape {
                    heads: nh,
                    kv_heads: nkv,
                    head_dim: hd,
                    q_len: n,
                    start: s.cache.len(),
                    kv_stride: s.cache.head_stride(),
                };
                let (q, out) = (&ws.q[..n * nq], &mut ws.attn[offset * nq..(offset + n) * nq]);
                match s.cache.layer(li) {
                    (KvBuf::F32(k), KvBuf::F32(v)) => attend(q, k, v, out, &shape, opts.flash_attention, isa),
                    (KvBuf::F16(k), KvBuf::F16(v)) => attend(q, k, v, out, &shape, opts.flash_attention, isa),
                    (KvBuf::Bf16(k), KvBuf::Bf16(v)) => attend(q, k, v, out, &shape, opts.flash_attention, isa),
                    _ => unreachable!("K and V share a dtype"),
                }
                offset += n;
            }
            layer.o_proj.forward_slice(&ws.attn[..t * nq], t, &mut ws.o[..t * h]);
            add_norm(&mut ws.x[..t * h], &ws.o[..t * h], post_w, eps, &mut ws.xn[..t * h], opts.fused);
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
            layer.down_proj.forward_slice(&ws.act[..t * inter], t, &mut ws.down[..t * h]);
        }
        fused::add_in_place(&mut ws.x[..t * h], &ws.down[..t * h]);
        for (s, n) in batch.iter_mut().zip(&lens) {
            s.cache.commit(*n);
        }
        // Only the rows we return go through the final norm and the (large) lm_head.
        let mut rows = std::mem::take(&mut ws.rows);
        rows.clear();
        let mut offset = 0;
        for &n in &lens {
            match which {
                LogitsFor::LastToken => rows.push(offset + n - 1),
                LogitsFor::AllTokens => rows.extend(offset..offset + n),
            }
            offset += n;
        }
        fit(&mut ws.sel, rows.len() * h);
        let sel = &mut ws.sel[..rows.len() * h];
        for (dst, &r) in sel.chunks_exact_mut(h).zip(&rows) {
            fused::rms_norm(&ws.x[r * h..(r + 1) * h], final_norm, eps, dst);
        }
        let head: &Linear = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        let at = logits.len();
        logits.resize(at + rows.len() * cfg.vocab_size, 0.0);
        head.forward_slice(sel, rows.len(), &mut logits[at..]);
        (ws.lens, ws.rows) = (lens, rows);
        if opts.reuse_buffers && batch.len() == 1 {
            batch[0].cache.workspace = Some(ws);
        }
        Ok(())
    }
}
