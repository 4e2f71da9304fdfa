//! The CPU backend: each op calls `crates/kernels` on the step's f32 buffers ([`Workspace`]) and
//! the host KV pool, at once. Fused or separate passes, flash or plain attention follow
//! [`ExecOptions`], as they did before the recipe was written over [`Backend`].
use super::{batch_tokens, logit_rows, rope_tables, Act, Backend, Mat, Norm, QkvLayout};
use crate::error::Result;
use crate::model::forward::{ExecOptions, Observer, SeqChunk};
use crate::model::kv_pool::{KvBuf, KvPool, Slots};
use crate::model::linear::{Linear, Proj};
use crate::model::Qwen3Model;
use crate::quantize::calibration::Site;
use nano_qwen3_kernels::attention::{flash_attention_batch, plain_attention, AttentionShape, KvElem, SeqAttention};
use nano_qwen3_kernels::fused;
use nano_qwen3_kernels::{active_isa, Isa};

/// Activation buffers of one forward call, sized for its token count; kept by the caller between
/// calls (reduce-overhead) they are reused, so a warm step allocates nothing.
#[derive(Default)]
pub struct Workspace {
    /// The recipe's buffers, indexed by [`Act`].
    acts: [Vec<f32>; Act::COUNT],
    /// q gathered `[t, heads, hd]` contiguous for the attention kernels.
    q: Vec<f32>,
    /// gate and up before SwiGLU.
    gu: Vec<f32>,
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

/// Row widths of the model's activations.
#[derive(Clone, Copy)]
struct Dims {
    h: usize,
    hd: usize,
    inter: usize,
    nh: usize,
    nkv: usize,
    nq: usize,
    nkvd: usize,
    eps: f32,
}

impl Dims {
    fn width(&self, a: Act) -> usize {
        match a {
            Act::X | Act::Xn | Act::O | Act::Down => self.h,
            Act::Qkv => self.nq + 2 * self.nkvd,
            Act::Attn => self.nq,
            Act::Mlp => self.inter,
        }
    }
}

/// One forward step on the CPU.
pub struct CpuBackend<'a> {
    model: &'a Qwen3Model,
    kv: &'a mut KvPool,
    batch: &'a [SeqChunk<'a>],
    opts: &'a ExecOptions,
    ws: &'a mut Workspace,
    observer: Option<&'a mut dyn Observer>,
    isa: Isa,
    t: usize,
    d: Dims,
}

impl<'a> CpuBackend<'a> {
    /// A step over `batch` (at least one token), its buffers in `ws` (grown to fit).
    pub fn new(
        model: &'a Qwen3Model,
        kv: &'a mut KvPool,
        batch: &'a [SeqChunk<'a>],
        opts: &'a ExecOptions,
        ws: &'a mut Workspace,
        observer: Option<&'a mut dyn Observer>,
    ) -> Self {
        let c = &model.config;
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let d = Dims { h: c.hidden_size, hd, inter: c.intermediate_size, nh, nkv, nq: nh * hd, nkvd: nkv * hd, eps: c.rms_norm_eps as f32 };
        let t = batch_tokens(batch);
        for a in [Act::X, Act::Xn, Act::Qkv, Act::Attn, Act::O, Act::Mlp, Act::Down] {
            fit(&mut ws.acts[a as usize], t * d.width(a));
        }
        fit(&mut ws.q, t * d.nq);
        fit(&mut ws.gu, t * 2 * d.inter);
        fit(&mut ws.cos, t * hd / 2);
        fit(&mut ws.sin, t * hd / 2);
        Self { model, kv, batch, opts, ws, observer, isa: active_isa(), t, d }
    }

    fn buf(&mut self, a: Act) -> &mut [f32] {
        let n = self.t * self.d.width(a);
        &mut self.ws.acts[a as usize][..n]
    }

    /// `a` to read and `b` to write (two distinct buffers).
    fn pair(&mut self, a: Act, b: Act) -> (&[f32], &mut [f32]) {
        let (na, nb) = (self.t * self.d.width(a), self.t * self.d.width(b));
        let [x, y] = self.ws.acts.get_disjoint_mut([a as usize, b as usize]).expect("an op reads and writes two different buffers");
        (&x[..na], &mut y[..nb])
    }

    /// `a` and `b` written, `c` read.
    fn triple(&mut self, a: Act, b: Act, c: Act) -> (&mut [f32], &mut [f32], &[f32]) {
        let (na, nb, nc) = (self.t * self.d.width(a), self.t * self.d.width(b), self.t * self.d.width(c));
        let [x, y, z] = self.ws.acts.get_disjoint_mut([a as usize, b as usize, c as usize]).expect("an op's buffers are distinct");
        (&mut x[..na], &mut y[..nb], &z[..nc])
    }

    fn norm_weights(&self, w: Norm) -> &'a [f32] {
        let m = self.model;
        match w {
            Norm::Input(l) => &m.layers[l].input_norm.values,
            Norm::PostAttention(l) => &m.layers[l].post_attention_norm.values,
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

impl Backend for CpuBackend<'_> {
    fn embed(&mut self, out: Act) -> Result<()> {
        self.ws.ids.clear();
        for s in self.batch {
            self.ws.ids.extend_from_slice(s.tokens);
        }
        let n = self.t * self.d.width(out);
        self.model.embed_tokens.rows_into(&self.ws.ids, &mut self.ws.acts[out as usize][..n])?;
        Ok(())
    }

    fn rope_angles(&mut self, inv_freq: &[f32]) {
        let n = self.t * inv_freq.len();
        rope_tables(self.batch, inv_freq, &mut self.ws.cos[..n], &mut self.ws.sin[..n]);
    }

    fn rms_norm(&mut self, x: Act, w: Norm, out: Act) {
        let (w, eps) = (self.norm_weights(w), self.d.eps);
        let (x, out) = self.pair(x, out);
        fused::rms_norm(x, w, eps, out);
    }

    fn add_rms_norm(&mut self, x: Act, delta: Act, w: Norm, out: Act) {
        let (w, eps, fused_ops) = (self.norm_weights(w), self.d.eps, self.opts.fused);
        let (x, out, delta) = self.triple(x, out, delta);
        if fused_ops {
            fused::add_rms_norm(x, delta, w, eps, out);
        } else {
            fused::add_in_place(x, delta);
            fused::rms_norm(x, w, eps, out);
        }
    }

    fn add(&mut self, x: Act, delta: Act) {
        let (delta, x) = self.pair(delta, x);
        fused::add_in_place(x, delta);
    }

    fn qkv(&mut self, layer: usize, x: Act, out: Act) -> QkvLayout {
        let (t, nq, nkvd) = (self.t, self.d.nq, self.d.nkvd);
        let proj = &self.model.layers[layer].qkv;
        let (x, qkv) = self.pair(x, out);
        match proj {
            Proj::Fused { w, .. } => {
                w.forward_slice(x, t, qkv);
                QkvLayout::stacked(nq, nkvd)
            }
            Proj::Separate(ps) => {
                let (q, rest) = qkv.split_at_mut(t * nq);
                let (k, v) = rest.split_at_mut(t * nkvd);
                ps[0].forward_slice(x, t, q);
                ps[1].forward_slice(x, t, k);
                ps[2].forward_slice(x, t, &mut v[..t * nkvd]);
                QkvLayout::blocks(t, nq, nkvd)
            }
        }
    }

    fn qkv_bias(&mut self, layer: usize, qkv: Act, at: QkvLayout) {
        let Some(bias) = &self.model.layers[layer].qkv_bias else { return };
        let (t, nq, nkvd) = (self.t, self.d.nq, self.d.nkvd);
        let qkv = self.buf(qkv);
        // Exactly t rows of each (the slices end after the last row's heads).
        let (bq, rest) = bias.values.split_at(nq);
        let (bk, bv) = rest.split_at(nkvd);
        add_row_bias(&mut qkv[at.q_at..at.q_at + (t - 1) * at.stride_q + nq], at.stride_q, bq);
        add_row_bias(&mut qkv[at.k_at..at.k_at + (t - 1) * at.stride_kv + nkvd], at.stride_kv, bk);
        add_row_bias(&mut qkv[at.v_at..at.v_at + (t - 1) * at.stride_kv + nkvd], at.stride_kv, bv);
    }

    fn qk_rope(&mut self, layer: usize, qkv: Act, at: QkvLayout, head_norm: bool) {
        let Dims { nh, nkv, hd, nq, nkvd, eps, .. } = self.d;
        let (t, half, fused_ops) = (self.t, hd / 2, self.opts.fused);
        let l = &self.model.layers[layer];
        let n = self.t * self.d.width(qkv);
        let ws = &mut *self.ws;
        let (qkv, cos, sin) = (&mut ws.acts[qkv as usize][..n], &ws.cos[..t * half], &ws.sin[..t * half]);
        let (q_rows, k_rows) = (at.q_at..at.q_at + (t - 1) * at.stride_q + nq, at.k_at..at.k_at + (t - 1) * at.stride_kv + nkvd);
        match (&l.q_norm, &l.k_norm) {
            (Some(qn), Some(kn)) if head_norm => {
                norm_rope(&mut qkv[q_rows], at.stride_q, nh, &qn.values, eps, cos, sin, fused_ops);
                norm_rope(&mut qkv[k_rows], at.stride_kv, nkv, &kn.values, eps, cos, sin, fused_ops);
            }
            _ => {
                fused::rope(&mut qkv[q_rows], at.stride_q, nh, hd, cos, sin);
                fused::rope(&mut qkv[k_rows], at.stride_kv, nkv, hd, cos, sin);
            }
        }
    }

    fn kv_write(&mut self, layer: usize, qkv: Act, at: QkvLayout) {
        let n = self.t * self.d.width(qkv);
        let qkv = &self.ws.acts[qkv as usize][..n];
        let mut offset = 0;
        for s in self.batch {
            let n = s.tokens.len();
            let (kr, vr) = (&qkv[at.k_at + offset * at.stride_kv..], &qkv[at.v_at + offset * at.stride_kv..]);
            self.kv.write(layer, Slots { table: s.table, start: s.start }, kr, vr, n, at.stride_kv);
            offset += n;
        }
    }

    fn attention(&mut self, layer: usize, qkv: Act, at: QkvLayout, out: Act) {
        let Dims { nh, nkv, hd, nq, .. } = self.d;
        let (t, flash, isa, batch) = (self.t, self.opts.flash_attention, self.isa, self.batch);
        let (nqkv, nout) = (t * self.d.width(qkv), t * self.d.width(out));
        let ws = &mut *self.ws;
        let [qkv, out] = ws.acts.get_disjoint_mut([qkv as usize, out as usize]).expect("an op reads and writes two different buffers");
        let (qkv, out, q) = (&qkv[..nqkv], &mut out[..nout], &mut ws.q);
        // The kernel wants q as [t, heads, hd] contiguous.
        for i in 0..t {
            q[i * nq..(i + 1) * nq].copy_from_slice(&qkv[at.q_at + i * at.stride_q..][..nq]);
        }
        let kv = &*self.kv;
        let seq = |i: usize| {
            let s = &batch[i];
            SeqAttention { pages: kv.pages(s.table), shape: AttentionShape { heads: nh, kv_heads: nkv, head_dim: hd, q_len: s.tokens.len(), start: s.start } }
        };
        let (q, n) = (&q[..t * nq], batch.len());
        match kv.layer(layer) {
            (KvBuf::F32(k), KvBuf::F32(v)) => attend(q, k, v, n, seq, out, flash, isa),
            (KvBuf::F16(k), KvBuf::F16(v)) => attend(q, k, v, n, seq, out, flash, isa),
            (KvBuf::Bf16(k), KvBuf::Bf16(v)) => attend(q, k, v, n, seq, out, flash, isa),
            _ => unreachable!("K and V share a dtype"),
        }
    }

    fn matmul(&mut self, w: Mat, x: Act, out: Act) {
        let l = &self.model.layers;
        let w: &Linear = match w {
            Mat::O(i) => &l[i].o_proj,
            Mat::Down(i) => &l[i].down_proj,
        };
        let t = self.t;
        let (x, out) = self.pair(x, out);
        w.forward_slice(x, t, out);
    }

    fn gate_up_swiglu(&mut self, layer: usize, x: Act, out: Act) {
        let (t, inter, fused_ops) = (self.t, self.d.inter, self.opts.fused);
        let proj = &self.model.layers[layer].gate_up;
        let (nx, nout) = (t * self.d.width(x), t * self.d.width(out));
        let ws = &mut *self.ws;
        let [x, act] = ws.acts.get_disjoint_mut([x as usize, out as usize]).expect("an op reads and writes two different buffers");
        let (x, act, gu) = (&x[..nx], &mut act[..nout], &mut ws.gu);
        match proj {
            Proj::Fused { w, .. } => w.forward_swiglu_slice(x, t, &mut gu[..t * 2 * inter], act),
            Proj::Separate(ps) => {
                let (g, u) = gu.split_at_mut(t * inter);
                ps[0].forward_slice(x, t, g);
                ps[1].forward_slice(x, t, &mut u[..t * inter]);
                fused::silu_mul_separate(g, &u[..t * inter], act, fused_ops);
            }
        }
    }

    fn observe(&mut self, layer: usize, site: Site, x: Act) {
        let (t, n) = (self.t, self.t * self.d.width(x));
        if let Some(o) = self.observer.as_deref_mut() {
            o.observe(Some(layer), site, &self.ws.acts[x as usize][..n], t);
        }
    }

    fn observe_lm_head_input(&mut self, x: Act) {
        let Some(o) = self.observer.as_deref_mut() else { return };
        let (t, h, eps) = (self.t, self.d.h, self.d.eps);
        let final_norm = &self.model.norm.values;
        let ws = &mut *self.ws;
        // Every token's lm_head input, without computing every token's logits.
        fit(&mut ws.sel, t * h);
        for (src, dst) in ws.acts[x as usize][..t * h].chunks_exact(h).zip(ws.sel.chunks_exact_mut(h)) {
            fused::rms_norm(src, final_norm, eps, dst);
        }
        o.observe(None, Site::AttnIn, &ws.sel[..t * h], t);
    }

    fn logits(&mut self, x: Act, logits: &mut Vec<f32>) -> Result<()> {
        let (h, eps) = (self.d.h, self.d.eps);
        let ws = &mut *self.ws;
        // Only the rows we return go through the final norm and the (large) lm_head.
        logit_rows(self.batch, &mut ws.rows);
        let r = ws.rows.len();
        if r == 0 {
            return Ok(());
        }
        let m = self.model;
        fit(&mut ws.sel, r * h);
        let x = &ws.acts[x as usize];
        for (dst, &row) in ws.sel[..r * h].chunks_exact_mut(h).zip(&ws.rows) {
            fused::rms_norm(&x[row * h..(row + 1) * h], &m.norm.values, eps, dst);
        }
        let head: &Linear = m.lm_head.as_ref().unwrap_or(&m.embed_tokens);
        let at = logits.len();
        logits.resize(at + r * m.config.vocab_size, 0.0);
        head.forward_slice(&ws.sel[..r * h], r, &mut logits[at..]);
        Ok(())
    }
}
