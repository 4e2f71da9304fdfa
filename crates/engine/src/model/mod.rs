//! The Qwen3 / Qwen2 (dense) model: its weights as loaded (quantized, fused, repacked per the plan) and
//! what they are made of. The forward pass is in [`forward`], the paged KV storage in [`kv_pool`].
pub mod autotune;
pub mod backend;
pub mod config;
pub mod forward;
pub mod kv_pool;
pub mod linear;

pub use forward::{ExecOptions, LogitsFor, Observer, SeqChunk, Stepper, Workspace};
pub use kv_pool::{KvDtype, KvPool, BLOCK_TOKENS};

use crate::quantize::calibration::Site;
use crate::model::config::ModelConfig;
use crate::progress::{Progress, ProgressFn};
use crate::error::Result;
use crate::source::weights::{StoredTensor, TensorSource};
use candle_core::{DType, Device, Tensor};
use crate::model::linear::{ExportData, Linear, Proj};
use nano_qwen3_kernels::q4::{GROUP_SIZES, QK4};
use nano_qwen3_kernels::{GgmlMatrix, Q4Matrix, Q8Matrix};
use crate::error::EngineError;
use std::collections::HashMap;
use std::sync::Arc;

/// One class of tensors as loaded: e.g. all 28 `q_proj` matrices in q8_0.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TensorClass {
    pub class: String,
    pub format: String,
    pub count: usize,
    pub bytes: usize,
}

/// How matrices are stored after loading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightFormat {
    /// Each tensor as the checkpoint stores it (f32, bf16 or f16).
    Checkpoint,
    Dense(DType),
    /// Q8_0 blocks; a matrix whose row length is not a multiple of 32 stays in the checkpoint dtype.
    Q8,
    /// Q4_0 blocks with one scale per `group` weights (32, 64 or 128; a matrix whose row length
    /// the group does not divide takes the largest size that does), same rule for shapes; the
    /// output projection (lm_head, or the embedding it is tied to) in Q8_0 when `lm_head_q8`;
    /// `scales`: how the quantizer chooses each scale.
    Q4 { group: usize, lm_head_q8: bool, scales: nano_qwen3_kernels::Q4Scales },
}

pub(crate) struct RmsNorm {
    pub(crate) weight: Tensor,
    /// The same weights as a slice, for the fast path.
    pub(crate) values: Vec<f32>,
}

/// The q, k and v projection biases (Qwen2): one tensor each for export, and the three
/// concatenated (`[nq + 2·nkv]`) for the forward pass.
pub(crate) struct QkvBias {
    pub(crate) parts: [Tensor; 3],
    pub(crate) values: Vec<f32>,
}

pub(crate) struct Layer {
    pub(crate) input_norm: RmsNorm,
    /// q, k, v projections.
    pub(crate) qkv: Proj,
    pub(crate) qkv_bias: Option<QkvBias>,
    pub(crate) o_proj: Linear,
    /// Per-head query / key RMSNorm (Qwen3; None for Qwen2).
    pub(crate) q_norm: Option<RmsNorm>,
    pub(crate) k_norm: Option<RmsNorm>,
    pub(crate) post_attention_norm: RmsNorm,
    /// gate, up projections.
    pub(crate) gate_up: Proj,
    pub(crate) down_proj: Linear,
}

pub struct Qwen3Model {
    pub config: ModelConfig,
    /// Storage format of the layers' matrices as loaded ("bf16", "q8_0", ...); activations are always f32.
    pub weight_format: String,
    /// Matrices kept in the checkpoint dtype because their shape does not fit the format, and why.
    pub unquantized: Vec<String>,
    pub(crate) embed_tokens: Linear, // [vocab, hidden]; also the lm_head when tied
    pub(crate) lm_head: Option<Linear>, // None when tied to the embedding
    pub(crate) layers: Vec<Layer>,
    pub(crate) norm: RmsNorm,
    /// RoPE inverse frequencies [head_dim/2] (the forward computes its angles from them).
    pub(crate) inv_freq: Vec<f32>,
}

/// RoPE's inverse frequencies, in f32 as transformers computes them; angles are position * inv_freq in f32.
fn inv_freq(cfg: &ModelConfig) -> Vec<f32> {
    (0..cfg.head_dim / 2).map(|i| 1.0f32 / (cfg.rope_theta as f32).powf((2 * i) as f32 / cfg.head_dim as f32)).collect()
}

impl Qwen3Model {
    /// Norm weights (tiny) are always f32; matrices follow `format`. Tensors already stored in the
    /// requested block format (Q8_0 / Q4_0 from a GGUF file) are used as they are.
    pub fn load(cfg: &ModelConfig, src: &dyn TensorSource, format: WeightFormat) -> Result<Self> {
        Self::load_with_progress(cfg, src, format, None)
    }

    /// [`Self::load`], reporting each matrix converted ("quantize" stage) when the format converts.
    pub fn load_with_progress(
        cfg: &ModelConfig,
        src: &dyn TensorSource,
        format: WeightFormat,
        progress: Option<&ProgressFn>,
    ) -> Result<Self> {
        Self::load_full(cfg, src, format, progress, None)
    }

    /// [`Self::load_with_progress`]; `importance` (weight name -> mean square of each input
    /// feature, from calibration) makes int4 scales activation-aware.
    pub fn load_full(
        cfg: &ModelConfig,
        src: &dyn TensorSource,
        format: WeightFormat,
        progress: Option<&ProgressFn>,
        importance: Option<&HashMap<String, Vec<f32>>>,
    ) -> Result<Self> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let matrices = 1 + 7 * cfg.num_hidden_layers + usize::from(!cfg.tie_word_embeddings);
        let mut done = 0usize;
        let report = progress.filter(|_| matches!(format, WeightFormat::Q8 | WeightFormat::Q4 { .. }));
        let (nq, nkv) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd);
        let mut unquantized = Vec::new();
        let mut lin = |name: &str, shape: [usize; 2]| -> Result<Linear> {
            let stored = src.load_stored(name, &shape)?;
            let is_output = name == "lm_head.weight" || (cfg.tie_word_embeddings && name == "model.embed_tokens.weight");
            let format = match format {
                WeightFormat::Q4 { lm_head_q8: true, .. } if is_output => WeightFormat::Q8,
                f => f,
            };
            let fits = shape[1] % nano_qwen3_kernels::q8::QK8 == 0;
            let l = match (format, stored) {
                (WeightFormat::Checkpoint, StoredTensor::Q8(q)) | (WeightFormat::Q8, StoredTensor::Q8(q)) => Linear::Q8(Arc::new(q)),
                (WeightFormat::Checkpoint, StoredTensor::Q4(q)) | (WeightFormat::Q4 { .. }, StoredTensor::Q4(q)) => Linear::Q4(Arc::new(q)),
                // GGUF k-quants and legacy blocks: repacked into the block kernels' 8-row units.
                (WeightFormat::Checkpoint, StoredTensor::Blocks { format, n, k, bytes }) => {
                    let q = GgmlMatrix::from_gguf(format, n, k, &bytes).map_err(|e| EngineError::Internal(format!("{name}: {e}")))?;
                    Linear::Ggml(Arc::new(q))
                }
                (WeightFormat::Checkpoint, s) => Linear::Dense(s.into_dense(None)?),
                (WeightFormat::Dense(d), s) => Linear::Dense(s.into_dense(Some(d))?),
                (WeightFormat::Q8, s) if fits => Linear::Q8(Arc::new(Q8Matrix::quantize(&s.into_f32_vec()?, shape[0], shape[1]))),
                (WeightFormat::Q4 { group, scales, .. }, s) if fits => {
                    let w = s.into_f32_vec()?;
                    let imp = importance.and_then(|m| m.get(name)).map(Vec::as_slice);
                    let group = GROUP_SIZES.into_iter().rev().find(|&g| g <= group && shape[1] % g == 0).unwrap_or(QK4);
                    Linear::Q4(Arc::new(Q4Matrix::quantize_with(&w, shape[0], shape[1], imp, group, scales)))
                }
                (WeightFormat::Q8 | WeightFormat::Q4 { .. }, s) => {
                    unquantized.push(format!("{name}: row length {} is not a multiple of 32", shape[1]));
                    Linear::Dense(s.into_dense(None)?)
                }
            };
            done += 1;
            if let Some(p) = report {
                p(&Progress { stage: "quantize", done, total: matrices, unit: "tensors" });
            }
            Ok(l)
        };
        let embed_tokens = lin("model.embed_tokens.weight", [cfg.vocab_size, h])?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let mut l = |n: &str, shape: [usize; 2]| lin(&format!("{p}.{n}.weight"), shape);
            let q_proj = l("self_attn.q_proj", [nq, h])?;
            let k_proj = l("self_attn.k_proj", [nkv, h])?;
            let v_proj = l("self_attn.v_proj", [nkv, h])?;
            let o_proj = l("self_attn.o_proj", [h, nq])?;
            let gate_proj = l("mlp.gate_proj", [cfg.intermediate_size, h])?;
            let up_proj = l("mlp.up_proj", [cfg.intermediate_size, h])?;
            let down_proj = l("mlp.down_proj", [h, cfg.intermediate_size])?;
            layers.push((q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj));
        }
        // Some checkpoints say tied but still ship lm_head.weight; the flag decides, as in transformers.
        let lm_head = if cfg.tie_word_embeddings { None } else { Some(lin("lm_head.weight", [cfg.vocab_size, h])?) };
        let norm = |name: String, size: usize| -> Result<RmsNorm> {
            let weight = src.load_stored(&name, &[size])?.into_dense(Some(DType::F32))?;
            let values = weight.to_vec1::<f32>()?;
            Ok(RmsNorm { weight, values })
        };
        // The layers' matrices say what the mode stored (int4 may keep the output projection in Q8_0).
        // A GGUF file as stored mixes block formats by tensor (Q4_K_M: Q4_K and Q6_K, ...): all are named.
        let mut weight_format = layers.first().map_or_else(|| embed_tokens.format(), |l| l.6.format());
        type Mats = (Linear, Linear, Linear, Linear, Linear, Linear, Linear);
        fn mats_of(l: &Mats) -> [&Linear; 7] {
            [&l.0, &l.1, &l.2, &l.3, &l.4, &l.5, &l.6]
        }
        if layers.iter().flat_map(mats_of).any(|m| matches!(m, Linear::Ggml(_))) {
            let mut names: Vec<String> = Vec::new();
            for f in layers.iter().flat_map(mats_of).map(Linear::format) {
                if !names.contains(&f) {
                    names.push(f);
                }
            }
            weight_format = names.join(" + ");
        }
        let layers = layers
            .into_iter()
            .enumerate()
            .map(|(i, (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj))| {
                let p = format!("model.layers.{i}");
                let qk_norm = cfg.architecture.qk_norm();
                let head_norm = |n: &str| qk_norm.then(|| norm(format!("{p}.self_attn.{n}.weight"), hd)).transpose();
                let qkv_bias = cfg
                    .attention_bias
                    .then(|| -> Result<QkvBias> {
                        let part = |n: &str, size: usize| {
                            src.load_stored(&format!("{p}.self_attn.{n}.bias"), &[size])?.into_dense(Some(DType::F32))
                        };
                        let parts = [part("q_proj", nq)?, part("k_proj", nkv)?, part("v_proj", nkv)?];
                        let values = Tensor::cat(&parts, 0)?.to_vec1::<f32>()?;
                        Ok(QkvBias { parts, values })
                    })
                    .transpose()?;
                Ok(Layer {
                    input_norm: norm(format!("{p}.input_layernorm.weight"), h)?,
                    q_norm: head_norm("q_norm")?,
                    k_norm: head_norm("k_norm")?,
                    qkv_bias,
                    post_attention_norm: norm(format!("{p}.post_attention_layernorm.weight"), h)?,
                    qkv: Proj::new(vec![q_proj, k_proj, v_proj], false),
                    o_proj,
                    gate_up: Proj::new(vec![gate_proj, up_proj], false),
                    down_proj,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = norm("model.norm.weight".into(), h)?;
        Ok(Self {
            config: cfg.clone(),
            weight_format,
            unquantized,
            embed_tokens,
            lm_head,
            layers,
            norm,
            inv_freq: inv_freq(cfg),
        })
    }

    /// Fix the activation scales (static int8) of the linear layers fed by `site` of `layer`
    /// (None: the lm_head). Returns false where a layer is not int8 (its shape kept it dense).
    pub fn set_static_scales(&mut self, layer: Option<usize>, site: Site, scales: &[f32]) -> bool {
        match layer {
            None => self.lm_head.as_mut().unwrap_or(&mut self.embed_tokens).set_static_scales(scales),
            Some(i) => {
                let l = &mut self.layers[i];
                match site {
                    Site::AttnIn => l.qkv.set_static_scales(scales),
                    Site::OIn => l.o_proj.set_static_scales(scales),
                    Site::MlpIn => l.gate_up.set_static_scales(scales),
                    Site::DownIn => l.down_proj.set_static_scales(scales),
                }
            }
        }
    }

    /// Repack every int8 / int4 matrix 8 rows interleaved for the x8 kernels (`useChannelsLast`).
    pub fn repack_weights(&mut self) {
        let take = |l: &mut Linear| std::mem::replace(l, Linear::Dense(Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap()));
        self.embed_tokens = take(&mut self.embed_tokens).repacked();
        if let Some(h) = self.lm_head.as_mut() {
            *h = take(h).repacked();
        }
        for l in &mut self.layers {
            l.o_proj = take(&mut l.o_proj).repacked();
            l.down_proj = take(&mut l.down_proj).repacked();
            for p in [&mut l.qkv, &mut l.gate_up] {
                *p = std::mem::replace(p, Proj::Separate(vec![])).repacked();
            }
        }
    }

    /// Stack q/k/v and gate/up into one matrix each (fused kernels): one matmul per group.
    pub fn fuse_projections(&mut self) {
        for l in &mut self.layers {
            for p in [&mut l.qkv, &mut l.gate_up] {
                if let Proj::Separate(parts) = std::mem::replace(p, Proj::Separate(vec![])) {
                    *p = Proj::new(parts, true);
                }
            }
        }
    }

    /// Every tensor under llama.cpp's `qwen3` / `qwen2` names, in a stable order (fused projections split).
    pub fn export_tensors(&self) -> Result<Vec<(String, ExportData<'_>)>> {
        let dense = |t: &Tensor| ExportData::Dense(t.clone());
        let mut out = vec![("token_embd.weight".to_string(), self.embed_tokens.export()?)];
        for (i, l) in self.layers.iter().enumerate() {
            let b = |n: &str| format!("blk.{i}.{n}.weight");
            let mut qkv = l.qkv.export()?.into_iter();
            let mut gu = l.gate_up.export()?.into_iter();
            out.push((b("attn_norm"), dense(&l.input_norm.weight)));
            for (j, n) in ["attn_q", "attn_k", "attn_v"].into_iter().enumerate() {
                out.push((b(n), qkv.next().unwrap()));
                if let Some(bias) = &l.qkv_bias {
                    out.push((format!("blk.{i}.{n}.bias"), dense(&bias.parts[j])));
                }
            }
            out.push((b("attn_output"), l.o_proj.export()?));
            if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                out.push((b("attn_q_norm"), dense(&qn.weight)));
                out.push((b("attn_k_norm"), dense(&kn.weight)));
            }
            out.push((b("ffn_norm"), dense(&l.post_attention_norm.weight)));
            out.push((b("ffn_gate"), gu.next().unwrap()));
            out.push((b("ffn_up"), gu.next().unwrap()));
            out.push((b("ffn_down"), l.down_proj.export()?));
        }
        out.push(("output_norm.weight".into(), dense(&self.norm.weight)));
        if let Some(h) = &self.lm_head {
            out.push(("output.weight".into(), h.export()?));
        }
        Ok(out)
    }

    /// The matrices the serving path multiplies by, with their class ("lm_head" for the output
    /// projection, tied or not).
    pub fn matmuls(&self) -> Vec<(&'static str, &Linear)> {
        let mut out = vec![("lm_head", self.lm_head.as_ref().unwrap_or(&self.embed_tokens))];
        for l in &self.layers {
            out.extend(l.qkv.matrices(&["q_proj", "k_proj", "v_proj"], "qkv_proj"));
            out.push(("o_proj", &l.o_proj));
            out.extend(l.gate_up.matrices(&["gate_proj", "up_proj"], "gate_up_proj"));
            out.push(("down_proj", &l.down_proj));
        }
        out
    }

    /// Measured bytes and storage format of every class of tensor (q_proj of all layers, ...).
    pub fn tensor_classes(&self) -> Vec<TensorClass> {
        let mut classes: Vec<TensorClass> = Vec::new();
        let mut add = |class: &str, format: String, bytes: usize| match classes.iter_mut().find(|c| c.class == class && c.format == format) {
            Some(c) => {
                c.count += 1;
                c.bytes += bytes;
            }
            None => classes.push(TensorClass { class: class.into(), format, count: 1, bytes }),
        };
        let tied = if self.lm_head.is_none() { "embed_tokens (tied lm_head)" } else { "embed_tokens" };
        add(tied, self.embed_tokens.format(), self.embed_tokens.bytes());
        for l in &self.layers {
            let mut mats = l.qkv.matrices(&["q_proj", "k_proj", "v_proj"], "qkv_proj (fused q/k/v)");
            mats.push(("o_proj", &l.o_proj));
            mats.extend(l.gate_up.matrices(&["gate_proj", "up_proj"], "gate_up_proj (fused)"));
            mats.push(("down_proj", &l.down_proj));
            for (name, lin) in mats {
                add(name, lin.format(), lin.bytes());
            }
            for n in [Some(&l.input_norm), Some(&l.post_attention_norm), l.q_norm.as_ref(), l.k_norm.as_ref()].into_iter().flatten() {
                add("norms", "f32".into(), n.weight.elem_count() * 4);
            }
            if let Some(b) = &l.qkv_bias {
                add("qkv biases", "f32".into(), b.values.len() * 4);
            }
        }
        add("norms", "f32".into(), self.norm.weight.elem_count() * 4);
        if let Some(h) = &self.lm_head {
            add("lm_head", h.format(), h.bytes());
        }
        classes
    }

    /// Bytes of all weights as held now (after any fusing or repacking), measured per tensor.
    pub fn weight_bytes(&self) -> usize {
        self.tensor_classes().iter().map(|c| c.bytes).sum()
    }

    /// Bytes one cached token costs across all layers (K and V), for a cache element of `elem` bytes.
    pub fn kv_bytes_per_token(&self, elem: usize) -> usize {
        let c = &self.config;
        2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * elem
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nano_qwen3_kernels::Q4Scales;

    /// The int4 quantizer uses the scale rule the format carries (which the prepared-weights
    /// cache keys on): llama.cpp's absmax rule gives other blocks than the searched one.
    #[test]
    fn int4_scales_follow_the_format() {
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/qwen3-tiny");
        let opened = crate::source::open(&fixture).unwrap();
        let down = |scales| {
            let m = Qwen3Model::load(&opened.config, opened.tensors.as_ref(), WeightFormat::Q4 { group: 32, lm_head_q8: true, scales }).unwrap();
            match &m.layers[0].down_proj {
                Linear::Q4(q) => q.blocks.clone(),
                _ => panic!("down_proj is not Q4"),
            }
        };
        let (searched, absmax) = (down(Q4Scales::Searched), down(Q4Scales::Absmax));
        assert_ne!(searched, absmax);
    }
}
