//! Qwen3 (dense) forward pass over a batch of sequences: tokens of all sequences are flattened into
//! one [T, hidden] matrix for the projections and MLP (one big matmul per weight), and attention runs
//! per sequence against that sequence's own KV cache. This is the varlen layout continuous batching
//! needs; a paged cache only changes `KvCache`.
use crate::config::ModelConfig;
use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::weights::Checkpoint;
use candle_core::{DType, Device, Module, Tensor};
use std::sync::RwLock;

struct Linear {
    weight: Tensor, // [out, in] as stored by HF, in the plan's weight dtype
}

impl Linear {
    /// f32 activations times 16- or 32-bit weights, f32 accumulation (crates/kernels).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.contiguous()?.apply_op2_no_bwd(&self.weight, &nano_qwen3_kernels::LinearOp)
    }
}

struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::rms_norm(x, &self.weight, self.eps)
    }
}

struct Layer {
    input_norm: RmsNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    post_attention_norm: RmsNorm,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

/// One sequence's share of a batched forward call.
pub struct SequenceInput<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
}

/// Which positions to return logits for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LogitsFor {
    LastToken,
    AllTokens,
}

pub struct Qwen3Model {
    pub config: ModelConfig,
    /// Storage dtype of the matrices (projections, embedding); activations are always f32.
    pub weight_dtype: DType,
    device: Device,
    embed_tokens: Linear, // [vocab, hidden]; also the lm_head when tied
    lm_head: Option<Linear>, // None when tied to the embedding
    layers: Vec<Layer>,
    norm: RmsNorm,
    /// cos/sin tables [positions, head_dim/2] in f32, grown on demand.
    rope: RwLock<(Tensor, Tensor)>,
    pub weight_bytes: usize,
}

fn rope_tables(cfg: &ModelConfig, positions: usize, dev: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    // Same arithmetic as transformers: inv_freq in f32, then position * inv_freq in f32.
    let half = cfg.head_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0f32 / (cfg.rope_theta as f32).powf((2 * i) as f32 / cfg.head_dim as f32))
        .collect();
    let mut freqs = Vec::with_capacity(positions * half);
    for p in 0..positions {
        freqs.extend(inv.iter().map(|f| p as f32 * f));
    }
    let freqs = Tensor::from_vec(freqs, (positions, half), dev)?;
    Ok((freqs.cos()?, freqs.sin()?))
}

impl Qwen3Model {
    /// `weight_dtype`: storage for the matrices; `None` keeps each tensor's checkpoint dtype.
    /// Norm weights (tiny) are always f32.
    pub fn load(cfg: &ModelConfig, ckpt: &Checkpoint, weight_dtype: Option<DType>, dev: &Device) -> Result<Self> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let (nq, nkv) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd);
        let mut weight_bytes = 0usize;
        let mut load = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let dtype = if shape.len() == 1 { Some(DType::F32) } else { weight_dtype };
            let t = ckpt.load(name, shape, dtype, dev)?;
            weight_bytes += t.elem_count() * t.dtype().size_in_bytes();
            Ok(t)
        };
        let eps = cfg.rms_norm_eps as f32;
        let embed_tokens = Linear { weight: load("model.embed_tokens.weight", &[cfg.vocab_size, h])? };
        let stored_dtype = embed_tokens.weight.dtype();
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let mut lin = |n: &str, shape: &[usize]| -> Result<Linear> { Ok(Linear { weight: load(&format!("{p}.{n}.weight"), shape)? }) };
            let q_proj = lin("self_attn.q_proj", &[nq, h])?;
            let k_proj = lin("self_attn.k_proj", &[nkv, h])?;
            let v_proj = lin("self_attn.v_proj", &[nkv, h])?;
            let o_proj = lin("self_attn.o_proj", &[h, nq])?;
            let gate_proj = lin("mlp.gate_proj", &[cfg.intermediate_size, h])?;
            let up_proj = lin("mlp.up_proj", &[cfg.intermediate_size, h])?;
            let down_proj = lin("mlp.down_proj", &[h, cfg.intermediate_size])?;
            let mut norm = |n: &str, size: usize| -> Result<RmsNorm> {
                Ok(RmsNorm { weight: load(&format!("{p}.{n}.weight"), &[size])?, eps })
            };
            layers.push(Layer {
                input_norm: norm("input_layernorm", h)?,
                q_norm: norm("self_attn.q_norm", hd)?,
                k_norm: norm("self_attn.k_norm", hd)?,
                post_attention_norm: norm("post_attention_layernorm", h)?,
                q_proj,
                k_proj,
                v_proj,
                o_proj,
                gate_proj,
                up_proj,
                down_proj,
            });
        }
        let norm = RmsNorm { weight: load("model.norm.weight", &[h])?, eps };
        // Some checkpoints say tied but still ship lm_head.weight; the flag decides, as in transformers.
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(Linear { weight: load("lm_head.weight", &[cfg.vocab_size, h])? })
        };
        let rope = rope_tables(cfg, 4096.min(cfg.max_position_embeddings.max(1)), dev)?;
        Ok(Self {
            config: cfg.clone(),
            weight_dtype: stored_dtype,
            device: dev.clone(),
            embed_tokens,
            lm_head,
            layers,
            norm,
            rope: RwLock::new(rope),
            weight_bytes,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Bytes one cached token costs across all layers (K and V).
    pub fn kv_bytes_per_token(&self) -> usize {
        let c = &self.config;
        2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * DType::F32.size_in_bytes()
    }

    fn rope_slice(&self, start: usize, len: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let needed = start + len;
        if self.rope.read().unwrap().0.dim(0)? < needed {
            let mut w = self.rope.write().unwrap();
            if w.0.dim(0)? < needed {
                *w = rope_tables(&self.config, needed.next_power_of_two(), &self.device)?;
            }
        }
        let r = self.rope.read().unwrap();
        let cos = r.0.narrow(0, start, len)?.contiguous()?;
        let sin = r.1.narrow(0, start, len)?.contiguous()?;
        Ok((cos, sin))
    }

    /// Forward a batch of sequences. Each sequence's new tokens continue from its cache length.
    /// Returns one f32 logits tensor per sequence: [vocab] for `LastToken`, [n, vocab] for `AllTokens`.
    pub fn forward(&self, batch: &mut [SequenceInput], which: LogitsFor) -> Result<Vec<Tensor>> {
        let cfg = &self.config;
        let lens: Vec<usize> = batch.iter().map(|s| s.tokens.len()).collect();
        let all: Vec<u32> = batch.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        let total = all.len();
        let ids = Tensor::from_vec(all, total, &self.device)?;
        let mut x = self.embed_tokens.weight.index_select(&ids, 0)?.to_dtype(DType::F32)?; // [T, h]
        let ropes: Vec<(Tensor, Tensor)> =
            batch.iter().map(|s| self.rope_slice(s.cache.len(), s.tokens.len())).collect::<candle_core::Result<_>>()?;
        let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        for (li, layer) in self.layers.iter().enumerate() {
            let xn = layer.input_norm.forward(&x)?;
            let q = layer.q_norm.forward(&layer.q_proj.forward(&xn)?.reshape((total, nh, hd))?)?;
            let k = layer.k_norm.forward(&layer.k_proj.forward(&xn)?.reshape((total, nkv, hd))?)?;
            let v = layer.v_proj.forward(&xn)?.reshape((total, nkv, hd))?;
            let mut outs = Vec::with_capacity(batch.len());
            let mut offset = 0;
            for (si, seq) in batch.iter_mut().enumerate() {
                let n = lens[si];
                let (cos, sin) = &ropes[si];
                // [n, heads, hd] -> [1, heads, n, hd] for RoPE.
                let qs = q.narrow(0, offset, n)?.transpose(0, 1)?.unsqueeze(0)?.contiguous()?;
                let ks = k.narrow(0, offset, n)?.transpose(0, 1)?.unsqueeze(0)?.contiguous()?;
                let qs = candle_nn::rotary_emb::rope(&qs, cos, sin)?.squeeze(0)?;
                let ks = candle_nn::rotary_emb::rope(&ks, cos, sin)?.squeeze(0)?;
                let vs = v.narrow(0, offset, n)?.transpose(0, 1)?;
                let start = seq.cache.len();
                let (k_all, v_all) = seq.cache.append(li, &ks, &vs)?;
                outs.push(attention(&qs, &k_all, &v_all, start, nkv, hd)?); // [n, nh*hd]
                offset += n;
            }
            let attn = if outs.len() == 1 { outs.pop().unwrap() } else { Tensor::cat(&outs, 0)? };
            x = (x + layer.o_proj.forward(&attn)?)?;
            let xn = layer.post_attention_norm.forward(&x)?;
            let gate = candle_nn::ops::silu(&layer.gate_proj.forward(&xn)?)?;
            let mlp = layer.down_proj.forward(&(gate * layer.up_proj.forward(&xn)?)?)?;
            x = (x + mlp)?;
        }
        for (seq, n) in batch.iter_mut().zip(&lens) {
            seq.cache.commit(*n);
        }
        // Only the rows we return go through the final norm and the (large) lm_head.
        let mut rows = Vec::new();
        let mut offset = 0;
        for n in &lens {
            rows.push(match which {
                LogitsFor::LastToken => x.narrow(0, offset + n - 1, 1)?,
                LogitsFor::AllTokens => x.narrow(0, offset, *n)?,
            });
            offset += n;
        }
        let selected = Tensor::cat(&rows, 0)?;
        let h = self.norm.forward(&selected)?;
        let logits = self.lm_head.as_ref().unwrap_or(&self.embed_tokens).forward(&h)?;
        let mut out = Vec::with_capacity(lens.len());
        let mut offset = 0;
        for n in &lens {
            out.push(match which {
                LogitsFor::LastToken => logits.get(offset)?,
                LogitsFor::AllTokens => logits.narrow(0, offset, *n)?,
            });
            offset += if which == LogitsFor::LastToken { 1 } else { *n };
        }
        Ok(out)
    }
}

/// Causal GQA attention for one sequence. q: [nh, n, hd] (positions start..start+n);
/// k, v: [nkv, start+n, hd]. Each KV head is used by its whole query group in one matmul,
/// without repeating K/V. All in f32.
fn attention(q: &Tensor, k: &Tensor, v: &Tensor, start: usize, nkv: usize, hd: usize) -> candle_core::Result<Tensor> {
    let (nh, n, _) = q.dims3()?;
    let group = nh / nkv;
    let total = start + n;
    let q = q.reshape((nkv, group * n, hd))?;
    let scale = 1.0 / (hd as f64).sqrt();
    let scores = (q.matmul(&k.t()?)? * scale)?; // [nkv, group*n, total]
    let scores = if n > 1 {
        let mask: Vec<f32> = (0..n)
            .flat_map(|i| (0..total).map(move |j| if j > start + i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (1, 1, n, total), q.device())?;
        scores.reshape((nkv, group, n, total))?.broadcast_add(&mask)?.reshape((nkv, group * n, total))?
    } else {
        scores
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    let out = probs.matmul(&v.contiguous()?)?; // [nkv, group*n, hd]
    out.reshape((nh, n, hd))?.transpose(0, 1)?.reshape((n, nh * hd))
}
