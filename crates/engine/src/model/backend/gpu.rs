//! The GPU backend: the model's weights uploaded once ([`GpuModel`]), a paged KV pool and the
//! step's activations in GPU memory ([`GpuRunner`]), and [`GpuStep`], which records each op of
//! the recipe into one `crates/gpu` step: one command encoder, one submit, and only the wanted
//! logits rows read back.
use super::{batch_tokens, logit_rows, Act, Backend, Mat, Norm, QkvLayout};
use crate::error::{EngineError, Result};
use crate::model::forward::SeqChunk;
use crate::model::kv_pool::KvDtype;
use crate::model::linear::{ExportData, Linear, Proj};
use crate::model::Qwen3Model;
use crate::quantize::calibration::Site;
use candle_core::DType as CDType;
use nano_qwen3_gpu::{DType, GpuContext, GpuError, GpuTensor, KvLayer, ReadHandle, SeqSpan, Step};
use std::sync::Arc;

impl From<GpuError> for EngineError {
    fn from(e: GpuError) -> Self {
        EngineError::Gpu(e.to_string())
    }
}

/// A matrix's bytes in the GPU kernels' format (row-major; Q8_0 / Q4_0 in GGML's block layout).
fn export_bytes(e: ExportData) -> Result<(DType, usize, usize, Vec<u8>)> {
    fn blocks<T>(b: &[T]) -> &[u8] {
        // SAFETY: BlockQ8 / BlockQ4 are `repr(C)` with no padding (34 / 18 bytes, asserted in
        // crates/kernels): their bytes are GGML's block layout.
        unsafe { std::slice::from_raw_parts(b.as_ptr() as *const u8, std::mem::size_of_val(b)) }
    }
    Ok(match e {
        ExportData::Q8 { blocks: b, n, k } => (DType::Q8_0, n, k, blocks(&b).to_vec()),
        ExportData::Q4 { blocks: b, n, k } => (DType::Q4_0, n, k, blocks(&b).to_vec()),
        ExportData::Dense(t) => {
            let (n, k) = t.dims2()?;
            let flat = t.flatten_all()?;
            match t.dtype() {
                CDType::F32 => (DType::F32, n, k, flat.to_vec1::<f32>()?.iter().flat_map(|x| x.to_le_bytes()).collect()),
                CDType::F16 => (DType::F16, n, k, flat.to_vec1::<half::f16>()?.iter().flat_map(|x| x.to_le_bytes()).collect()),
                CDType::BF16 => (DType::Bf16, n, k, flat.to_vec1::<half::bf16>()?.iter().flat_map(|x| x.to_le_bytes()).collect()),
                d => return Err(EngineError::Unsupported(format!("GPU upload: weight dtype {d:?}"))),
            }
        }
    })
}

/// Matrices stacked by rows (q/k/v, gate/up) as one tensor: one matmul each on the GPU.
fn upload_stacked(ctx: &GpuContext, parts: Vec<ExportData>, what: &str) -> Result<GpuTensor> {
    let mut stacked: Option<(DType, usize, usize, Vec<u8>)> = None;
    for p in parts {
        let (d, n, k, bytes) = export_bytes(p)?;
        match &mut stacked {
            None => stacked = Some((d, n, k, bytes)),
            Some((sd, sn, sk, sb)) if *sd == d && *sk == k => {
                *sn += n;
                sb.extend_from_slice(&bytes);
            }
            Some((sd, ..)) => return Err(EngineError::Unsupported(format!("GPU upload of {what}: its matrices are stored in different formats ({sd:?}, {d:?})"))),
        }
    }
    let (d, n, k, bytes) = stacked.ok_or_else(|| EngineError::Internal(format!("{what}: no matrices")))?;
    Ok(ctx.upload(d, n, k, &bytes)?)
}

fn upload_linear(ctx: &GpuContext, l: &Linear, what: &str) -> Result<GpuTensor> {
    upload_stacked(ctx, vec![l.export()?], what)
}

fn upload_proj(ctx: &GpuContext, p: &Proj, what: &str) -> Result<GpuTensor> {
    upload_stacked(ctx, p.export()?, what)
}

fn upload_vec(ctx: &GpuContext, v: &[f32]) -> Result<GpuTensor> {
    Ok(ctx.upload_f32(1, v.len(), v)?)
}

struct GpuLayer {
    input_norm: GpuTensor,
    post_norm: GpuTensor,
    /// `[nq + 2 nkv, hidden]`: q, k, v stacked.
    qkv: GpuTensor,
    qkv_bias: Option<GpuTensor>,
    q_norm: Option<GpuTensor>,
    k_norm: Option<GpuTensor>,
    o: GpuTensor,
    /// `[2 inter, hidden]`: gate, up stacked.
    gate_up: GpuTensor,
    down: GpuTensor,
}

/// The model's weights in GPU memory, uploaded once at load (shared by serving and
/// computeLogits), with RoPE's cos / sin per position (computed on the CPU as its forward does).
pub struct GpuModel {
    pub ctx: Arc<GpuContext>,
    embed: GpuTensor,
    lm_head: Option<GpuTensor>,
    final_norm: GpuTensor,
    layers: Vec<GpuLayer>,
    cos: GpuTensor,
    sin: GpuTensor,
    /// Bytes uploaded.
    pub bytes: usize,
}

impl GpuModel {
    /// Upload `m`'s weights (in their loaded formats, row-major) and RoPE tables for positions
    /// `0..max_positions`.
    pub fn upload(ctx: Arc<GpuContext>, m: &Qwen3Model, max_positions: usize) -> Result<Self> {
        let c = &ctx;
        let mut layers = Vec::with_capacity(m.layers.len());
        for (i, l) in m.layers.iter().enumerate() {
            layers.push(GpuLayer {
                input_norm: upload_vec(c, &l.input_norm.values)?,
                post_norm: upload_vec(c, &l.post_attention_norm.values)?,
                qkv: upload_proj(c, &l.qkv, &format!("layer {i} q/k/v"))?,
                qkv_bias: l.qkv_bias.as_ref().map(|b| upload_vec(c, &b.values)).transpose()?,
                q_norm: l.q_norm.as_ref().map(|n| upload_vec(c, &n.values)).transpose()?,
                k_norm: l.k_norm.as_ref().map(|n| upload_vec(c, &n.values)).transpose()?,
                o: upload_linear(c, &l.o_proj, &format!("layer {i} o_proj"))?,
                gate_up: upload_proj(c, &l.gate_up, &format!("layer {i} gate/up"))?,
                down: upload_linear(c, &l.down_proj, &format!("layer {i} down_proj"))?,
            });
        }
        let half = m.inv_freq.len();
        let (mut cos, mut sin) = (vec![0.0; max_positions * half], vec![0.0; max_positions * half]);
        for p in 0..max_positions {
            super::rope_row(p, &m.inv_freq, &mut cos[p * half..][..half], &mut sin[p * half..][..half]);
        }
        let mut g = GpuModel {
            embed: upload_linear(c, &m.embed_tokens, "embed_tokens")?,
            lm_head: m.lm_head.as_ref().map(|h| upload_linear(c, h, "lm_head")).transpose()?,
            final_norm: upload_vec(c, &m.norm.values)?,
            cos: ctx.upload_f32(max_positions, half, &cos)?,
            sin: ctx.upload_f32(max_positions, half, &sin)?,
            layers,
            bytes: 0,
            ctx: ctx.clone(),
        };
        let mut tensors: Vec<&GpuTensor> = vec![&g.embed, &g.final_norm, &g.cos, &g.sin];
        tensors.extend(&g.lm_head);
        for l in &g.layers {
            tensors.extend([&l.input_norm, &l.post_norm, &l.qkv, &l.o, &l.gate_up, &l.down]);
            tensors.extend([&l.qkv_bias, &l.q_norm, &l.k_norm].into_iter().flatten());
        }
        g.bytes = tensors.iter().map(|t| t.bytes()).sum();
        Ok(g)
    }
}

/// The step's activations in GPU memory: `cap` token rows each, reused by every step.
struct GpuActs {
    cap: usize,
    acts: [GpuTensor; Act::COUNT],
    /// gate and up before SwiGLU.
    gu: GpuTensor,
    /// Final-normed rows whose logits are wanted, and their logits (`logit_rows` rows at a time).
    sel: GpuTensor,
    logits: GpuTensor,
    logit_rows: usize,
}

/// A KV pool and activations in GPU memory over a [`GpuModel`]: what serving (or one
/// computeLogits call) runs its steps on.
pub struct GpuRunner {
    pub model: Arc<GpuModel>,
    kv: Vec<KvLayer>,
    pub blocks: usize,
    acts: GpuActs,
    rows: Vec<usize>,
    rows32: Vec<u32>,
    ids: Vec<u32>,
    /// The last step's CPU time recording its ops, and the time `run` took (encode, submit,
    /// wait for the GPU, read back): figures for the benches.
    pub last_record: std::time::Duration,
    pub last_run: std::time::Duration,
}

fn kv_dtype(d: KvDtype) -> nano_qwen3_gpu::KvDtype {
    match d {
        KvDtype::F32 => nano_qwen3_gpu::KvDtype::F32,
        KvDtype::F16 => nano_qwen3_gpu::KvDtype::F16,
        KvDtype::Bf16 => nano_qwen3_gpu::KvDtype::Bf16,
    }
}

impl GpuRunner {
    /// `blocks` KV blocks of `kv` elements and activations for steps of up to `cap` tokens.
    pub fn new(model: Arc<GpuModel>, m: &Qwen3Model, kv: KvDtype, blocks: usize, cap: usize) -> Result<Self> {
        let c = &m.config;
        let ctx = &model.ctx;
        let (h, hd, inter, nq, nkvd) = (c.hidden_size, c.head_dim, c.intermediate_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim);
        let cap = cap.max(1);
        let z = |w: usize| ctx.zeros(DType::F32, cap, w);
        let acts = [z(h)?, z(h)?, z(nq + 2 * nkvd)?, z(nq)?, z(h)?, z(inter)?, z(h)?];
        // Logits rows per lm_head pass: as many as one binding holds, at most a step's sequences.
        let limit = ctx.report().max_storage_binding as usize;
        let logit_rows = (limit / (4 * c.vocab_size)).clamp(1, cap.min(64));
        let kv = (0..c.num_hidden_layers).map(|_| ctx.kv_layer(kv_dtype(kv), blocks, c.num_key_value_heads, hd)).collect::<std::result::Result<Vec<_>, _>>()?;
        let acts = GpuActs {
            cap,
            acts,
            gu: z(2 * inter)?,
            sel: ctx.zeros(DType::F32, logit_rows, h)?,
            logits: ctx.zeros(DType::F32, logit_rows, c.vocab_size)?,
            logit_rows,
        };
        let zero = std::time::Duration::ZERO;
        Ok(Self { model, kv, blocks, acts, rows: Vec::new(), rows32: Vec::new(), ids: Vec::new(), last_record: zero, last_run: zero })
    }

    /// Tokens one step may hold.
    pub fn capacity(&self) -> usize {
        self.acts.cap
    }

    /// Run `batch` through `m` on the GPU (one submit), appending the wanted logits rows to
    /// `logits` as the CPU forward does. A batch over [`Self::capacity`] tokens is an error.
    pub fn forward(&mut self, m: &Qwen3Model, batch: &[SeqChunk], logits: &mut Vec<f32>) -> Result<()> {
        let t = batch_tokens(batch);
        if t == 0 {
            return Ok(());
        }
        if t > self.acts.cap {
            return Err(EngineError::Internal(format!("a GPU step of {t} tokens is over the {} its buffers hold", self.acts.cap)));
        }
        let spans: Vec<SeqSpan> = batch.iter().map(|s| SeqSpan { start: s.start, len: s.tokens.len(), table: s.table }).collect();
        let started = std::time::Instant::now();
        let mut step = self.model.ctx.step();
        step.set_batch(&spans)?;
        self.ids.clear();
        for s in batch {
            self.ids.extend_from_slice(s.tokens);
        }
        let c = &m.config;
        let mut b = GpuStep {
            g: &self.model,
            kv: &self.kv,
            acts: &self.acts,
            batch,
            ids: &self.ids,
            rows: &mut self.rows,
            rows32: &mut self.rows32,
            step: Some(step),
            err: None,
            t,
            eps: c.rms_norm_eps as f32,
            nh: c.num_attention_heads,
            nkv: c.num_key_value_heads,
            hd: c.head_dim,
            inter: c.intermediate_size,
            vocab: c.vocab_size,
            started,
            record: &mut self.last_record,
            run: &mut self.last_run,
        };
        m.run(&mut b, logits)
    }
}

/// One step being recorded on the GPU. The ops cannot fail one by one in the recipe's
/// signature: the first error is kept, later ops are skipped, and [`Backend::logits`] (the
/// step's end) returns it.
pub struct GpuStep<'a> {
    g: &'a GpuModel,
    kv: &'a [KvLayer],
    acts: &'a GpuActs,
    batch: &'a [SeqChunk<'a>],
    ids: &'a [u32],
    rows: &'a mut Vec<usize>,
    rows32: &'a mut Vec<u32>,
    step: Option<Step<'a>>,
    err: Option<GpuError>,
    t: usize,
    eps: f32,
    nh: usize,
    nkv: usize,
    hd: usize,
    inter: usize,
    vocab: usize,
    started: std::time::Instant,
    record: &'a mut std::time::Duration,
    run: &'a mut std::time::Duration,
}

impl<'a> GpuStep<'a> {
    fn rec(&mut self, f: impl FnOnce(&mut Step<'a>) -> nano_qwen3_gpu::Result<()>) {
        if self.err.is_some() {
            return;
        }
        if let Some(s) = self.step.as_mut() {
            if let Err(e) = f(s) {
                self.err = Some(e);
            }
        }
    }

    fn act(&self, a: Act) -> &'a GpuTensor {
        &self.acts.acts[a as usize]
    }

    fn norm(&self, w: Norm) -> &'a GpuTensor {
        match w {
            Norm::Input(l) => &self.g.layers[l].input_norm,
            Norm::PostAttention(l) => &self.g.layers[l].post_norm,
        }
    }
}

impl Backend for GpuStep<'_> {
    fn embed(&mut self, out: Act) -> Result<()> {
        let (table, ids, out) = (&self.g.embed, self.ids, self.act(out));
        self.rec(|s| s.embedding(table, ids, out.view()));
        Ok(())
    }

    /// The angles are tables per position, uploaded at load (the same f32 values).
    fn rope_angles(&mut self, _inv_freq: &[f32]) {}

    fn rms_norm(&mut self, x: Act, w: Norm, out: Act) {
        let (x, w, out, eps, t) = (self.act(x), self.norm(w), self.act(out), self.eps, self.t);
        self.rec(|s| s.rms_norm(x.view(), w, eps, out.view(), t));
    }

    fn add_rms_norm(&mut self, x: Act, delta: Act, w: Norm, out: Act) {
        let (x, r, w, out, eps, t) = (self.act(x), self.act(delta), self.norm(w), self.act(out), self.eps, self.t);
        self.rec(|s| s.add_rms_norm(x.view(), r.view(), w, eps, out.view(), t));
    }

    fn add(&mut self, x: Act, delta: Act) {
        let (x, r, t) = (self.act(x), self.act(delta), self.t);
        self.rec(|s| s.add(x.view(), r.view(), t, x.cols));
    }

    fn qkv(&mut self, layer: usize, x: Act, out: Act) -> QkvLayout {
        let (x, w, out, t) = (self.act(x), &self.g.layers[layer].qkv, self.act(out), self.t);
        self.rec(|s| s.matmul(x.view(), w, out.view(), t));
        QkvLayout::stacked(self.nh * self.hd, self.nkv * self.hd)
    }

    fn qkv_bias(&mut self, layer: usize, qkv: Act, _at: QkvLayout) {
        // The bias is [bq | bk | bv], the stacked row's layout: one add over the whole row.
        let Some(bias) = &self.g.layers[layer].qkv_bias else { return };
        let (x, t) = (self.act(qkv), self.t);
        self.rec(|s| s.add_bias(x.view(), bias, t));
    }

    fn qk_rope(&mut self, layer: usize, qkv: Act, at: QkvLayout, head_norm: bool) {
        let l = &self.g.layers[layer];
        let (x, eps, (cos, sin)) = (self.act(qkv), self.eps, (&self.g.cos, &self.g.sin));
        let (nh, nkv, hd) = (self.nh, self.nkv, self.hd);
        let (qn, kn) = match (&l.q_norm, &l.k_norm) {
            (Some(q), Some(k)) if head_norm => (Some((q, eps)), Some((k, eps))),
            _ => (None, None),
        };
        self.rec(|s| {
            s.head_norm_rope(x.cols_from(at.q_at), nh, hd, qn, cos, sin)?;
            s.head_norm_rope(x.cols_from(at.k_at), nkv, hd, kn, cos, sin)
        });
    }

    fn kv_write(&mut self, layer: usize, qkv: Act, at: QkvLayout) {
        let (x, kv) = (self.act(qkv), &self.kv[layer]);
        self.rec(|s| s.kv_write(x.cols_from(at.k_at), x.cols_from(at.v_at), kv));
    }

    fn attention(&mut self, layer: usize, qkv: Act, at: QkvLayout, out: Act) {
        let (x, kv, out, nh) = (self.act(qkv), &self.kv[layer], self.act(out), self.nh);
        self.rec(|s| s.attention(x.cols_from(at.q_at), kv, nh, out.view()));
    }

    fn matmul(&mut self, w: Mat, x: Act, out: Act) {
        let w = match w {
            Mat::O(i) => &self.g.layers[i].o,
            Mat::Down(i) => &self.g.layers[i].down,
        };
        let (x, out, t) = (self.act(x), self.act(out), self.t);
        self.rec(|s| s.matmul(x.view(), w, out.view(), t));
    }

    fn gate_up_swiglu(&mut self, layer: usize, x: Act, out: Act) {
        let (x, w, gu, out, t, inter) = (self.act(x), &self.g.layers[layer].gate_up, &self.acts.gu, self.act(out), self.t, self.inter);
        self.rec(|s| {
            s.matmul(x.view(), w, gu.view(), t)?;
            s.swiglu(gu.cols_from(0), gu.cols_from(inter), out.view(), t, inter)
        });
    }

    /// GPU steps carry no observer (calibration runs on the CPU at load).
    fn observe(&mut self, _layer: usize, _site: Site, _x: Act) {}

    fn observe_lm_head_input(&mut self, _x: Act) {}

    fn logits(&mut self, x: Act, out: &mut Vec<f32>) -> Result<()> {
        logit_rows(self.batch, self.rows);
        self.rows32.clear();
        self.rows32.extend(self.rows.iter().map(|&r| r as u32));
        let (x, head, norm, eps) = (self.act(x), self.g.lm_head.as_ref().unwrap_or(&self.g.embed), &self.g.final_norm, self.eps);
        let (sel, lt, per) = (&self.acts.sel, &self.acts.logits, self.acts.logit_rows);
        let mut reads: Vec<(ReadHandle, usize)> = Vec::new();
        let rows = std::mem::take(self.rows32);
        // The final norm and lm_head of the wanted rows only, `per` rows at a time (the
        // logits buffer is reused: each pass's rows are copied out before the next pass).
        for chunk in rows.chunks(per) {
            let n = chunk.len();
            let vocab = self.vocab;
            let mut handle = None;
            self.rec(|s| {
                s.rms_norm_rows(x.view(), chunk, norm, eps, sel.view())?;
                s.matmul(sel.view(), head, lt.view(), n)?;
                handle = Some(s.read_f32(lt, 0, n * vocab)?);
                Ok(())
            });
            if let Some(h) = handle {
                reads.push((h, n));
            }
        }
        *self.rows32 = rows;
        if let Some(e) = self.err.take() {
            return Err(e.into());
        }
        let step = self.step.take().ok_or_else(|| EngineError::Internal("a GPU step ran twice".into()))?;
        let ran = std::time::Instant::now();
        *self.record = ran - self.started;
        let done = self.g.ctx.run(step)?;
        *self.run = ran.elapsed();
        for (h, _) in reads {
            out.extend_from_slice(&done.f32(h));
        }
        Ok(())
    }
}

/// The device-independent check that the shapes are what the GPU kernels take.
pub fn check_shapes(m: &Qwen3Model) -> Result<()> {
    let c = &m.config;
    let group = c.num_attention_heads / c.num_key_value_heads.max(1);
    if c.head_dim > 256 || c.head_dim % 2 != 0 || group > nano_qwen3_gpu::ATTN_MAX_ROWS {
        return Err(EngineError::Unsupported(format!(
            "the GPU attention kernel takes head_dim <= 256 (even) and at most {} query heads per KV head; this model has head_dim {} and {group}",
            nano_qwen3_gpu::ATTN_MAX_ROWS,
            c.head_dim
        )));
    }
    Ok(())
}

/// One sequence from position 0 on the GPU in a KV pool of its own (computeLogits), in chunks of
/// at most `chunk` tokens; returns the logits `which` asks for. The pool and buffers live in
/// `slot` and are reused by the next call that fits them; when they are replaced, the bind groups
/// that held the old ones are dropped too (else they would keep their GPU memory).
#[allow(clippy::too_many_arguments)]
pub fn run_alone(
    g: &Arc<GpuModel>,
    m: &Qwen3Model,
    slot: &mut Option<GpuRunner>,
    tokens: &[u32],
    which: crate::model::LogitsFor,
    kv: KvDtype,
    chunk: usize,
) -> Result<Vec<f32>> {
    use crate::model::LogitsFor;
    let blocks = tokens.len().div_ceil(crate::model::BLOCK_TOKENS);
    let chunk = chunk.clamp(1, tokens.len().max(1));
    if !slot.as_ref().is_some_and(|r| r.blocks >= blocks && r.capacity() >= chunk) {
        if slot.take().is_some() {
            g.ctx.clear_bind_group_cache();
        }
        *slot = Some(GpuRunner::new(g.clone(), m, kv, blocks, chunk)?);
    }
    let runner = slot.as_mut().expect("made above");
    let table: Vec<u32> = (0..blocks as u32).collect();
    let mut logits = Vec::new();
    let mut start = 0;
    for part in tokens.chunks(chunk) {
        let last = start + part.len() == tokens.len();
        let logits_for = match which {
            LogitsFor::LastToken if !last => LogitsFor::Nothing,
            w => w,
        };
        runner.forward(m, &[SeqChunk { tokens: part, start, table: &table, logits: logits_for }], &mut logits)?;
        start += part.len();
    }
    Ok(logits)
}
