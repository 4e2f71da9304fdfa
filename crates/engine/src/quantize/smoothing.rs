//! Per-channel smoothing: divide an activation channel j by s_j and multiply the weights' column
//! j by s_j, folding the division into whatever produced the activation: the input RMSNorm weight
//! (q/k/v), the post-attention RMSNorm weight (gate/up), v_proj's rows (o_proj; one factor per KV
//! channel, shared by its query group) or up_proj's rows (down_proj). The f32 model computes the
//! same function; what changes is how the quantizer sees weights and activations. Two rules:
//! - SmoothQuant (static_int8): s_j = max|X_j|^α / max|W_j|^(1-α), only at sites with outlier
//!   channels: activation range moves into the weights, so fixed int8 activation scales fit.
//! - Activation-aware (int4, as AWQ): s_j = rms(X_j)^α at every site, normalised to a geometric
//!   mean of 1: the weights that multiply large activations are scaled up before 4-bit rounding,
//!   so their rounding error, relative to the group's scale, shrinks where it costs the output most.
use crate::error::Result;
use crate::model::config::ModelConfig;
use crate::quantize::calibration::{ActivationStats, Site, SiteStats};
use crate::source::weights::{StoredTensor, TensorSource};
use candle_core::{Device, Tensor};
use std::collections::HashMap;

/// How the smoothing factors are chosen (module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    SmoothQuant { alpha: f32 },
    ActivationAware { alpha: f32 },
}

impl Rule {
    fn alpha(self) -> f32 {
        match self {
            Rule::SmoothQuant { alpha } | Rule::ActivationAware { alpha } => alpha,
        }
    }

    /// Each channel's activation size as the rule measures it: largest |x|, or root mean square.
    fn activation_size(self, st: &SiteStats) -> Vec<f32> {
        match self {
            Rule::SmoothQuant { .. } => st.channel_max.clone(),
            Rule::ActivationAware { .. } => st.mean_square().iter().map(|m| m.sqrt()).collect(),
        }
    }

    /// s per channel from the activation sizes and the weights' column maxima (α = 0: all 1).
    fn factors(self, act: &[f32], weight_max: &[f32], alpha: f32) -> Vec<f32> {
        match self {
            Rule::SmoothQuant { .. } => smoothing_factors(act, weight_max, alpha),
            Rule::ActivationAware { .. } => activation_aware_factors(act, alpha),
        }
    }
}

/// The base source with some tensors replaced (the smoothed ones, in f32).
pub struct Overlay<'a> {
    pub base: &'a dyn TensorSource,
    pub replaced: HashMap<String, Tensor>,
}

impl TensorSource for Overlay<'_> {
    fn load_stored(&self, name: &str, shape: &[usize]) -> Result<StoredTensor> {
        match self.replaced.get(name) {
            Some(t) => Ok(StoredTensor::Dense(t.clone())),
            None => self.base.load_stored(name, shape),
        }
    }
    fn stored_bytes(&self) -> usize {
        self.base.stored_bytes()
    }
    fn has(&self, name: &str) -> bool {
        self.replaced.contains_key(name) || self.base.has(name)
    }
    fn stored_format(&self, name: &str) -> Option<String> {
        self.base.stored_format(name)
    }
}

/// A `[n, k]` matrix in f32 for editing.
struct Mat {
    n: usize,
    k: usize,
    w: Vec<f32>,
}

impl Mat {
    fn load(src: &dyn TensorSource, name: &str, n: usize, k: usize) -> Result<Self> {
        Ok(Self { n, k, w: src.load_stored(name, &[n, k])?.into_f32_vec()? })
    }
    fn col_max(&self) -> Vec<f32> {
        let mut m = vec![0f32; self.k];
        for row in self.w.chunks_exact(self.k) {
            for (m, x) in m.iter_mut().zip(row) {
                *m = m.max(x.abs());
            }
        }
        m
    }
    fn scale_cols(&mut self, s: &[f32]) {
        for row in self.w.chunks_exact_mut(self.k) {
            for (x, s) in row.iter_mut().zip(s) {
                *x *= s;
            }
        }
    }
    fn divide_rows(&mut self, s: &[f32]) {
        for (row, s) in self.w.chunks_exact_mut(self.k).zip(s) {
            for x in row {
                *x /= s;
            }
        }
    }
    fn tensor(self) -> Result<Tensor> {
        Ok(Tensor::from_vec(self.w, (self.n, self.k), &Device::Cpu)?)
    }
}

fn max_of(cols: &[Vec<f32>]) -> Vec<f32> {
    let mut m = cols[0].clone();
    for c in &cols[1..] {
        for (a, b) in m.iter_mut().zip(c) {
            *a = a.max(*b);
        }
    }
    m
}

/// SmoothQuant exists for outlier channels: a site is smoothed only when its largest channel range
/// is over this many times the median one. Without outliers, moving range into the weights only
/// adds weight rounding error (measured on the synthetic 0.6B model, whose random weights have no
/// outliers: smoothing every site raised static int8's KL divergence 4x).
pub const OUTLIER_SPREAD: f32 = 8.0;

fn has_outliers(act_max: &[f32]) -> bool {
    let mut v: Vec<f32> = act_max.iter().copied().filter(|x| *x > 0.0).collect();
    if v.is_empty() {
        return false;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() - 1] > OUTLIER_SPREAD * v[v.len() / 2]
}

/// rms_j^α divided by the geometric mean over the channels that saw any activation (so the
/// weights keep their overall size and f16 block scales their precision), 1 for dead channels,
/// kept within [1e-4, 1e4].
fn activation_aware_factors(rms: &[f32], alpha: f32) -> Vec<f32> {
    let live: Vec<f64> = rms.iter().filter(|&&a| a > 0.0).map(|&a| (a as f64).ln()).collect();
    if alpha == 0.0 || live.is_empty() {
        return vec![1.0; rms.len()];
    }
    let mean_log = live.iter().sum::<f64>() / live.len() as f64;
    rms.iter().map(|&a| if a > 0.0 { ((alpha as f64 * ((a as f64).ln() - mean_log)).exp() as f32).clamp(1e-4, 1e4) } else { 1.0 }).collect()
}

/// s_j = max|X_j|^α / max|W_j|^(1-α), 1 where either side is zero, kept within [1e-4, 1e4].
fn smoothing_factors(act_max: &[f32], weight_max: &[f32], alpha: f32) -> Vec<f32> {
    act_max
        .iter()
        .zip(weight_max)
        .map(|(&a, &w)| if a > 0.0 && w > 0.0 && alpha > 0.0 { (a.powf(alpha) / w.powf(1.0 - alpha)).clamp(1e-4, 1e4) } else { 1.0 })
        .collect()
}

/// What [`smooth`] made.
pub struct Smoothed {
    /// Smoothed copies of every layer's norms and matrices, to be read through an [`Overlay`].
    pub tensors: HashMap<String, Tensor>,
    /// The sites that were smoothed ("layers.3.o_proj input").
    pub sites: Vec<String>,
    /// Per layer and [`Site`], the factor each input channel's activation is now divided by (1
    /// where a site was left alone): the smoothed model's activation statistics follow from the
    /// original ones without running it (`x / s`: mean square / s²).
    pub factors: Vec<[Vec<f32>; 4]>,
}

/// Smoothed copies of every layer's norms and matrices under `rule` (see [`Smoothed`]).
pub fn smooth(cfg: &ModelConfig, src: &dyn TensorSource, stats: &ActivationStats, rule: Rule) -> Result<Smoothed> {
    let (h, hd, inter) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
    let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    let group = nh / nkv;
    let mut out = HashMap::new();
    let mut smoothed = Vec::new();
    let mut factors = Vec::with_capacity(stats.layers.len());
    for (i, st) in stats.layers.iter().enumerate() {
        // α per site: SmoothQuant only where outlier channels exist, activation-aware everywhere.
        let mut alpha_for = |site: Site| {
            let alpha = rule.alpha();
            let applies = match rule {
                Rule::SmoothQuant { .. } => has_outliers(&st[site as usize].channel_max),
                Rule::ActivationAware { .. } => true,
            };
            if alpha > 0.0 && applies {
                smoothed.push(format!("layers.{i}.{}", site.name()));
                alpha
            } else {
                0.0
            }
        };
        let act = |site: Site| rule.activation_size(&st[site as usize]);
        let p = format!("model.layers.{i}");
        let name = |n: &str| format!("{p}.{n}.weight");
        let norm = |n: &str| -> Result<Vec<f32>> { src.load_stored(&name(n), &[h])?.into_f32_vec() };
        let mut q = Mat::load(src, &name("self_attn.q_proj"), nh * hd, h)?;
        let mut k = Mat::load(src, &name("self_attn.k_proj"), nkv * hd, h)?;
        let mut v = Mat::load(src, &name("self_attn.v_proj"), nkv * hd, h)?;
        let mut o = Mat::load(src, &name("self_attn.o_proj"), h, nh * hd)?;
        let mut gate = Mat::load(src, &name("mlp.gate_proj"), inter, h)?;
        let mut up = Mat::load(src, &name("mlp.up_proj"), inter, h)?;
        let mut down = Mat::load(src, &name("mlp.down_proj"), h, inter)?;
        let (mut in_norm, mut post_norm) = (norm("input_layernorm")?, norm("post_attention_layernorm")?);

        // q/k/v input: fold into the input RMSNorm weight.
        let s_attn = rule.factors(&act(Site::AttnIn), &max_of(&[q.col_max(), k.col_max(), v.col_max()]), alpha_for(Site::AttnIn));
        in_norm.iter_mut().zip(&s_attn).for_each(|(w, s)| *w /= s);
        [&mut q, &mut k, &mut v].into_iter().for_each(|m| m.scale_cols(&s_attn));

        // o_proj input (head h, dim d) is attention-weighted v of KV head h / group, dim d: fold
        // into v_proj's rows, with one factor per KV channel shared by its query heads.
        let (xo, wo) = (&act(Site::OIn), o.col_max());
        let alpha_o = alpha_for(Site::OIn);
        let (mut a_kv, mut w_kv) = (vec![0f32; nkv * hd], vec![0f32; nkv * hd]);
        for c in 0..nkv {
            for d in 0..hd {
                let heads = (c * group..(c + 1) * group).map(|hh| hh * hd + d);
                a_kv[c * hd + d] = heads.clone().map(|j| xo[j]).fold(0f32, f32::max);
                w_kv[c * hd + d] = heads.map(|j| wo[j]).fold(0f32, f32::max);
            }
        }
        let s_kv = rule.factors(&a_kv, &w_kv, alpha_o);
        v.divide_rows(&s_kv);
        if cfg.attention_bias {
            // v = W_v x + b_v: scaling v's rows scales its bias too.
            let bias = format!("{p}.self_attn.v_proj.bias");
            let mut b = src.load_stored(&bias, &[nkv * hd])?.into_f32_vec()?;
            b.iter_mut().zip(&s_kv).for_each(|(b, s)| *b /= s);
            out.insert(bias, Tensor::from_vec(b, nkv * hd, &Device::Cpu)?);
        }
        let s_o: Vec<f32> = (0..nh * hd).map(|j| s_kv[(j / hd / group) * hd + j % hd]).collect();
        o.scale_cols(&s_o);

        // gate/up input: fold into the post-attention RMSNorm weight.
        let s_mlp = rule.factors(&act(Site::MlpIn), &max_of(&[gate.col_max(), up.col_max()]), alpha_for(Site::MlpIn));
        post_norm.iter_mut().zip(&s_mlp).for_each(|(w, s)| *w /= s);
        gate.scale_cols(&s_mlp);
        up.scale_cols(&s_mlp);

        // down_proj input is silu(gate) * up: fold into up_proj's rows.
        let s_down = rule.factors(&act(Site::DownIn), &down.col_max(), alpha_for(Site::DownIn));
        up.divide_rows(&s_down);
        down.scale_cols(&s_down);
        factors.push([s_attn, s_o, s_mlp, s_down]);

        out.insert(name("input_layernorm"), Tensor::from_vec(in_norm, h, &Device::Cpu)?);
        out.insert(name("post_attention_layernorm"), Tensor::from_vec(post_norm, h, &Device::Cpu)?);
        for (n, m) in [
            ("self_attn.q_proj", q),
            ("self_attn.k_proj", k),
            ("self_attn.v_proj", v),
            ("self_attn.o_proj", o),
            ("mlp.gate_proj", gate),
            ("mlp.up_proj", up),
            ("mlp.down_proj", down),
        ] {
            out.insert(name(n), m.tensor()?);
        }
    }
    Ok(Smoothed { tensors: out, sites: smoothed, factors })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ExecOptions, LogitsFor, Qwen3Model, WeightFormat};
    use crate::quantize::calibration::{self, CalibrationConfig};
    use crate::source::weights::Checkpoint;
    use crate::text::tokenizer::Tokenizer;
    use candle_core::DType;

    /// SmoothQuant only moves scale between activations and weights: in f32 the smoothed model
    /// computes the same logits, while the activation ranges it feeds to int8 shrink. The fixture
    /// gets outlier channels first (weights x50 at `outliers`: name, length, index), as real Qwen
    /// checkpoints have, and every site in `expect_smoothed` must be smoothed.
    fn check_smoothing(fixture: &str, outliers: &[(&str, usize, usize)], expect_smoothed: &[&str]) {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures").join(fixture);
        let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
        let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
        let ckpt = Checkpoint::open(&dir).unwrap();
        let mut boosted = HashMap::new();
        for &(name, len, channel) in outliers {
            let mut w = ckpt.load_stored(name, &[len]).unwrap().into_f32_vec().unwrap();
            w[channel] *= 50.0;
            boosted.insert(name.to_string(), Tensor::from_vec(w, len, &Device::Cpu).unwrap());
        }
        let src = Overlay { base: &ckpt, replaced: boosted };
        let seqs = CalibrationConfig::default().token_sequences(&tok).unwrap();
        let plain = Qwen3Model::load(&cfg, &src, WeightFormat::Dense(DType::F32)).unwrap();
        let stats = calibration::collect(&plain, &seqs, None, "calibrate").unwrap();
        let Smoothed { tensors: replaced, sites: smoothed_sites, .. } = smooth(&cfg, &src, &stats, Rule::SmoothQuant { alpha: 0.5 }).unwrap();
        for site in expect_smoothed {
            assert!(smoothed_sites.contains(&site.to_string()), "{site} not in {smoothed_sites:?}");
        }
        let overlay = Overlay { base: &src, replaced };
        let smoothed = Qwen3Model::load(&cfg, &overlay, WeightFormat::Dense(DType::F32)).unwrap();
        let logits = |m: &Qwen3Model, t: &[u32]| {
            m.run_alone(t, LogitsFor::LastToken, &ExecOptions::default(), Default::default(), None, None).unwrap()
        };
        for s in &seqs {
            let (a, b) = (logits(&plain, s), logits(&smoothed, s));
            let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
            let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(diff < 1e-4 * scale.max(1.0), "smoothing changed the logits by {diff}");
        }
        let after = calibration::collect(&smoothed, &seqs, None, "calibrate").unwrap();
        // The spread between a site's largest and smallest channel range must not grow.
        let spread = |s: &SiteStats| {
            let nz: Vec<f32> = s.channel_max.iter().copied().filter(|x| *x > 0.0).collect();
            nz.iter().copied().fold(0f32, f32::max) / nz.iter().copied().fold(f32::INFINITY, f32::min)
        };
        for (i, (b, a)) in stats.layers.iter().zip(&after.layers).enumerate() {
            for site in [Site::AttnIn, Site::OIn, Site::MlpIn, Site::DownIn] {
                let (sb, sa) = (spread(&b[site as usize]), spread(&a[site as usize]));
                assert!(sa <= sb * 1.001, "{}: channel spread grew from {sb} to {sa}", site.name());
                if smoothed_sites.contains(&format!("layers.{i}.{}", site.name())) {
                    assert!(sa < sb / 4.0, "layer {i} {}: outlier spread only went from {sb} to {sa}", site.name());
                }
            }
        }
    }

    #[test]
    fn smoothing_keeps_the_function_and_narrows_activation_ranges() {
        check_smoothing(
            "qwen3-tiny",
            &[("model.layers.0.input_layernorm.weight", 32, 3), ("model.layers.1.post_attention_layernorm.weight", 32, 5)],
            &["layers.0.q/k/v_proj input", "layers.1.gate/up_proj input"],
        );
    }

    /// Qwen2's v_proj bias is scaled with v_proj's rows when the o_proj input is smoothed (an
    /// outlier put in that bias makes the o_proj input need it).
    #[test]
    fn smoothing_keeps_a_qwen2_model_with_biases_the_same() {
        check_smoothing(
            "qwen2-tiny",
            &[("model.layers.0.self_attn.v_proj.bias", 128, 65), ("model.layers.1.input_layernorm.weight", 256, 9)],
            &["layers.0.o_proj input", "layers.1.q/k/v_proj input"],
        );
    }

    /// Activation-aware scaling keeps the f32 function too (every site scaled, Qwen2's v bias
    /// included), and its factors have a geometric mean of 1.
    #[test]
    fn activation_aware_scaling_keeps_the_function() {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/qwen2-tiny");
        let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
        let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
        let ckpt = Checkpoint::open(&dir).unwrap();
        let seqs = CalibrationConfig::default().token_sequences(&tok).unwrap();
        let plain = Qwen3Model::load(&cfg, &ckpt, WeightFormat::Dense(DType::F32)).unwrap();
        let stats = calibration::collect(&plain, &seqs, None, "calibrate").unwrap();
        let Smoothed { tensors: replaced, sites, .. } = smooth(&cfg, &ckpt, &stats, Rule::ActivationAware { alpha: 0.5 }).unwrap();
        assert_eq!(sites.len(), 4 * cfg.num_hidden_layers, "every site is scaled: {sites:?}");
        let scaled = Qwen3Model::load(&cfg, &Overlay { base: &ckpt, replaced: replaced.clone() }, WeightFormat::Dense(DType::F32)).unwrap();
        for s in &seqs {
            let run = |m: &Qwen3Model| m.run_alone(s, LogitsFor::LastToken, &ExecOptions::default(), Default::default(), None, None).unwrap();
            let (a, b) = (run(&plain), run(&scaled));
            let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
            let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(diff < 1e-4 * scale.max(1.0), "scaling changed the logits by {diff}");
        }
        // The input norm was divided by the q/k/v factors: their log-mean is 0.
        let before = ckpt.load_stored("model.layers.0.input_layernorm.weight", &[cfg.hidden_size]).unwrap().into_f32_vec().unwrap();
        let after = replaced["model.layers.0.input_layernorm.weight"].to_vec1::<f32>().unwrap();
        let mean_log = before.iter().zip(&after).map(|(b, a)| ((b / a) as f64).ln()).sum::<f64>() / before.len() as f64;
        assert!(mean_log.abs() < 1e-5, "log-mean of the factors {mean_log}");
        assert!(before.iter().zip(&after).any(|(b, a)| (b / a - 1.0).abs() > 0.1), "the factors did not move");
    }

    /// Deterministic bell-shaped numbers in [-1, 1).
    fn noise(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        (0..len).map(|_| (next() + next() + next()) / 3.0).collect()
    }

    /// The rule's purpose, on one matrix shaped like a trained layer: input channels of unequal
    /// size, the weights that meet the larger ones smaller (training balances them). Scaling the
    /// weights by rms^α before int4 rounding, and the activations by the inverse, lowers the
    /// layer's output error against rounding the weights as they are (both with the
    /// activation-weighted scale search); α = 0 gives factors of 1: the same error.
    #[test]
    fn activation_aware_factors_lower_a_layers_int4_output_error() {
        use nano_qwen3_kernels::{q4::Q4Scales, quant::QuantMatrix, Q4Matrix};
        let (n, k, t) = (64, 256, 128);
        let size: Vec<f32> = (0..k).map(|j| if j % 37 == 5 { 12.0 } else { 0.5 + (j % 7) as f32 * 0.2 }).collect();
        let w: Vec<f32> = noise(n * k, 1).iter().enumerate().map(|(i, v)| v / size[i % k]).collect();
        let x: Vec<f32> = noise(t * k, 2).iter().enumerate().map(|(i, v)| v * size[i % k]).collect();
        let ms: Vec<f32> = (0..k).map(|j| (0..t).map(|r| x[r * k + j].powi(2)).sum::<f32>() / t as f32).collect();
        let rms: Vec<f32> = ms.iter().map(|m| m.sqrt()).collect();
        let output_error = |alpha: f32| {
            let s = activation_aware_factors(&rms, alpha);
            let ws: Vec<f32> = w.chunks_exact(k).flat_map(|row| row.iter().zip(&s).map(|(w, s)| w * s).collect::<Vec<_>>()).collect();
            let imp: Vec<f32> = ms.iter().zip(&s).map(|(m, s)| m / (s * s)).collect();
            let q = Q4Matrix::quantize_with(&ws, n, k, Some(&imp), 32, Q4Scales::Searched);
            let mut row = vec![0f32; k];
            let mut err = 0f64;
            for j in 0..n {
                q.dequantize_row(j, &mut row);
                for r in 0..t {
                    let xr = &x[r * k..(r + 1) * k];
                    let want: f32 = xr.iter().zip(&w[j * k..(j + 1) * k]).map(|(a, b)| a * b).sum();
                    let got: f32 = xr.iter().zip(&s).zip(&row).map(|((a, s), q)| a / s * q).sum();
                    err += ((want - got) as f64).powi(2);
                }
            }
            err
        };
        let (plain, scaled) = (output_error(0.0), output_error(0.5));
        assert!(scaled < 0.8 * plain, "output error with scaling {scaled}, without {plain}");
    }
}
