//! Static int8: int8 weights (Q8_0 blocks) and activation scales fixed ahead of time.
//!
//! Plain per-tensor static int8 wrecks small Qwen models: a few activation channels are 10-100x
//! larger than the rest, so one fixed scale leaves the other channels a handful of levels. Here:
//! 1. calibrate the model as loaded: per-channel max |x| at every linear input;
//! 2. SmoothQuant (α = 0.5): divide each input channel by s_j = max|X_j|^α / max|W_j|^(1-α) and
//!    multiply the weights' column j by s_j; the division is folded into the preceding RMSNorm
//!    weight (q/k/v, gate/up), the v_proj rows (o_proj; s shared by a KV head's query group) or the
//!    up_proj rows (down_proj), so the f32 model computes exactly the same function;
//! 3. calibrate the smoothed model: one static scale per block of 32 input channels (not one per
//!    tensor), and for each site how much wider that range is than a typical token's;
//! 4. a fixed scale's rounding step is `range ratio` times the per-token one, so sites where a
//!    typical token spans less than half of the static range (more than one bit lost) keep
//!    per-token dynamic activation scales, and the report says which and why.
use crate::quantize::calibration::{self, ActivationStats, CalibrationConfig, Site, SiteStats};
use crate::model::config::ModelConfig;
use crate::error::Result;
use crate::model::{Qwen3Model, WeightFormat};
use crate::progress::ProgressFn;
use crate::text::tokenizer::Tokenizer;
use crate::source::weights::{StoredTensor, TensorSource};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Instant;

/// Above this range ratio a site keeps dynamic activation scales: its typical token would lose
/// more than one of its 8 bits. (An earlier limit of 8x, with smoothing at every site, gave 4.9x
/// dynamic int8's logit error on the synthetic 0.6B model in `npm run quality`.)
pub const MAX_RANGE_RATIO: f64 = 2.0;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SiteDecision {
    /// "layers.3.down_proj input", "lm_head input".
    pub site: String,
    /// Static range / typical token's range (geometric mean over blocks of 32 channels).
    pub range_ratio: f64,
    pub is_static: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CalibrationReport {
    pub texts: usize,
    pub tokens: usize,
    pub alpha: f32,
    /// Sites with outlier channels, where SmoothQuant was applied.
    pub smoothed_sites: Vec<String>,
    pub max_range_ratio: f64,
    pub static_sites: usize,
    /// Sites left with dynamic (per-token) activation scales, each with the reason.
    pub dynamic_sites: Vec<String>,
    pub sites: Vec<SiteDecision>,
    pub time_ms: f64,
}

/// The fixed activation scales of one site (None: the lm_head's input), as calibration set them:
/// what a prepared-weights cache entry must restore besides the weights.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StaticScales {
    pub layer: Option<usize>,
    pub site: String,
    pub scales: Vec<f32>,
}

/// Put calibrated scales back on a model loaded from prepared (smoothed, quantized) weights.
pub fn apply_static_scales(model: &mut Qwen3Model, all: &[StaticScales]) -> Result<()> {
    for s in all {
        let site = Site::ALL.into_iter().find(|x| x.name() == s.site).ok_or_else(|| {
            crate::error::EngineError::Internal(format!("prepared weights name an unknown activation site \"{}\"", s.site))
        })?;
        model.set_static_scales(s.layer, site, &s.scales);
    }
    Ok(())
}

/// The base source with some tensors replaced (the smoothed ones, in f32).
struct Overlay<'a> {
    base: &'a dyn TensorSource,
    replaced: HashMap<String, Tensor>,
}

impl TensorSource for Overlay<'_> {
    fn load_stored(&self, name: &str, shape: &[usize], dev: &Device) -> Result<StoredTensor> {
        match self.replaced.get(name) {
            Some(t) => Ok(StoredTensor::Dense(t.clone())),
            None => self.base.load_stored(name, shape, dev),
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
        Ok(Self { n, k, w: src.load_stored(name, &[n, k], &Device::Cpu)?.into_f32_vec()? })
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

/// s_j = max|X_j|^α / max|W_j|^(1-α), 1 where either side is zero, kept within [1e-4, 1e4].
fn smoothing_factors(act_max: &[f32], weight_max: &[f32], alpha: f32) -> Vec<f32> {
    act_max
        .iter()
        .zip(weight_max)
        .map(|(&a, &w)| if a > 0.0 && w > 0.0 && alpha > 0.0 { (a.powf(alpha) / w.powf(1.0 - alpha)).clamp(1e-4, 1e4) } else { 1.0 })
        .collect()
}

/// Smoothed copies of every layer's norms and matrices (step 2 of the module docs).
/// Returns the smoothed tensors and the names of the sites that were smoothed.
fn smooth(cfg: &ModelConfig, src: &dyn TensorSource, stats: &ActivationStats, alpha: f32) -> Result<(HashMap<String, Tensor>, Vec<String>)> {
    let (h, hd, inter) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
    let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    let group = nh / nkv;
    let mut out = HashMap::new();
    let mut smoothed = Vec::new();
    for (i, st) in stats.layers.iter().enumerate() {
        // α per site: only where outlier channels exist.
        let mut alpha_for = |site: Site| {
            if alpha > 0.0 && has_outliers(&st[site as usize].channel_max) {
                smoothed.push(format!("layers.{i}.{}", site.name()));
                alpha
            } else {
                0.0
            }
        };
        let p = format!("model.layers.{i}");
        let name = |n: &str| format!("{p}.{n}.weight");
        let norm = |n: &str| -> Result<Vec<f32>> { src.load_stored(&name(n), &[h], &Device::Cpu)?.into_f32_vec() };
        let mut q = Mat::load(src, &name("self_attn.q_proj"), nh * hd, h)?;
        let mut k = Mat::load(src, &name("self_attn.k_proj"), nkv * hd, h)?;
        let mut v = Mat::load(src, &name("self_attn.v_proj"), nkv * hd, h)?;
        let mut o = Mat::load(src, &name("self_attn.o_proj"), h, nh * hd)?;
        let mut gate = Mat::load(src, &name("mlp.gate_proj"), inter, h)?;
        let mut up = Mat::load(src, &name("mlp.up_proj"), inter, h)?;
        let mut down = Mat::load(src, &name("mlp.down_proj"), h, inter)?;
        let (mut in_norm, mut post_norm) = (norm("input_layernorm")?, norm("post_attention_layernorm")?);

        // q/k/v input: fold into the input RMSNorm weight.
        let s = smoothing_factors(&st[Site::AttnIn as usize].channel_max, &max_of(&[q.col_max(), k.col_max(), v.col_max()]), alpha_for(Site::AttnIn));
        in_norm.iter_mut().zip(&s).for_each(|(w, s)| *w /= s);
        [&mut q, &mut k, &mut v].into_iter().for_each(|m| m.scale_cols(&s));

        // o_proj input (head h, dim d) is attention-weighted v of KV head h / group, dim d: fold
        // into v_proj's rows, with one factor per KV channel shared by its query heads.
        let (xo, wo) = (&st[Site::OIn as usize].channel_max, o.col_max());
        let alpha_o = alpha_for(Site::OIn);
        let mut s_kv = vec![1f32; nkv * hd];
        for c in 0..nkv {
            for d in 0..hd {
                let heads = (c * group..(c + 1) * group).map(|hh| hh * hd + d);
                let a = heads.clone().map(|j| xo[j]).fold(0f32, f32::max);
                let w = heads.map(|j| wo[j]).fold(0f32, f32::max);
                s_kv[c * hd + d] = smoothing_factors(&[a], &[w], alpha_o)[0];
            }
        }
        v.divide_rows(&s_kv);
        if cfg.attention_bias {
            // v = W_v x + b_v: scaling v's rows scales its bias too.
            let bias = format!("{p}.self_attn.v_proj.bias");
            let mut b = src.load_stored(&bias, &[nkv * hd], &Device::Cpu)?.into_f32_vec()?;
            b.iter_mut().zip(&s_kv).for_each(|(b, s)| *b /= s);
            out.insert(bias, Tensor::from_vec(b, nkv * hd, &Device::Cpu)?);
        }
        let s_o: Vec<f32> = (0..nh * hd).map(|j| s_kv[(j / hd / group) * hd + j % hd]).collect();
        o.scale_cols(&s_o);

        // gate/up input: fold into the post-attention RMSNorm weight.
        let s = smoothing_factors(&st[Site::MlpIn as usize].channel_max, &max_of(&[gate.col_max(), up.col_max()]), alpha_for(Site::MlpIn));
        post_norm.iter_mut().zip(&s).for_each(|(w, s)| *w /= s);
        gate.scale_cols(&s);
        up.scale_cols(&s);

        // down_proj input is silu(gate) * up: fold into up_proj's rows.
        let s = smoothing_factors(&st[Site::DownIn as usize].channel_max, &down.col_max(), alpha_for(Site::DownIn));
        up.divide_rows(&s);
        down.scale_cols(&s);

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
    Ok((out, smoothed))
}

fn decide(site: String, stats: &SiteStats) -> (SiteDecision, Vec<f32>) {
    let range_ratio = stats.range_ratio();
    let scales = stats.block_max().iter().map(|m| m / 127.0).collect();
    (SiteDecision { site, range_ratio, is_static: range_ratio <= MAX_RANGE_RATIO }, scales)
}

/// Load `src` as static int8 (the module docs' four steps). Progress: two calibration passes,
/// then the quantization of every matrix.
pub fn load(
    cfg: &ModelConfig,
    src: &dyn TensorSource,
    tokenizer: &Tokenizer,
    calibration: &CalibrationConfig,
    dev: &Device,
    progress: Option<&ProgressFn>,
) -> Result<(Qwen3Model, CalibrationReport, Vec<StaticScales>)> {
    let started = Instant::now();
    let sequences = calibration.token_sequences(tokenizer)?;
    let alpha = calibration.smoothing()?;
    let raw_stats = {
        let model = Qwen3Model::load(cfg, src, WeightFormat::Checkpoint, dev)?;
        calibration::collect(&model, &sequences, progress, "calibrate")?
    };
    let (replaced, smoothed_sites) = smooth(cfg, src, &raw_stats, alpha)?;
    let overlay = Overlay { base: src, replaced };
    let stats = {
        let model = Qwen3Model::load(cfg, &overlay, WeightFormat::Dense(DType::F32), dev)?;
        calibration::collect(&model, &sequences, progress, "calibrate (smoothed)")?
    };
    let mut model = Qwen3Model::load_with_progress(cfg, &overlay, WeightFormat::Q8, dev, progress)?;
    let mut sites = Vec::new();
    let mut dynamic = Vec::new();
    let mut applied = Vec::new();
    let mut apply = |model: &mut Qwen3Model, layer: Option<usize>, site: Site, name: String, st: &SiteStats| {
        let (d, scales) = decide(name, st);
        if d.is_static {
            // Layers whose shape kept them dense simply stay f32.
            model.set_static_scales(layer, site, &scales);
            applied.push(StaticScales { layer, site: site.name().into(), scales });
        } else {
            dynamic.push(format!(
                "{}: dynamic, a typical token spans 1/{:.1} of the calibrated range (over {MAX_RANGE_RATIO}x: more than 1 of 8 bits lost)",
                d.site, d.range_ratio
            ));
        }
        sites.push(d);
    };
    for (i, st) in stats.layers.iter().enumerate() {
        for site in Site::ALL {
            apply(&mut model, Some(i), site, format!("layers.{i}.{}", site.name()), &st[site as usize]);
        }
    }
    apply(&mut model, None, Site::AttnIn, "lm_head input".into(), &stats.lm_head_in);
    let report = CalibrationReport {
        texts: sequences.len(),
        tokens: sequences.iter().map(Vec::len).sum(),
        alpha,
        smoothed_sites,
        max_range_ratio: MAX_RANGE_RATIO,
        static_sites: sites.iter().filter(|s| s.is_static).count(),
        dynamic_sites: dynamic,
        sites,
        time_ms: started.elapsed().as_secs_f64() * 1000.0,
    };
    Ok((model, report, applied))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ExecOptions, LogitsFor};
    use crate::source::weights::Checkpoint;

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
            let mut w = ckpt.load_stored(name, &[len], &Device::Cpu).unwrap().into_f32_vec().unwrap();
            w[channel] *= 50.0;
            boosted.insert(name.to_string(), Tensor::from_vec(w, len, &Device::Cpu).unwrap());
        }
        let src = Overlay { base: &ckpt, replaced: boosted };
        let seqs = CalibrationConfig::default().token_sequences(&tok).unwrap();
        let plain = Qwen3Model::load(&cfg, &src, WeightFormat::Dense(DType::F32), &Device::Cpu).unwrap();
        let stats = calibration::collect(&plain, &seqs, None, "calibrate").unwrap();
        let (replaced, smoothed_sites) = smooth(&cfg, &src, &stats, 0.5).unwrap();
        for site in expect_smoothed {
            assert!(smoothed_sites.contains(&site.to_string()), "{site} not in {smoothed_sites:?}");
        }
        let overlay = Overlay { base: &src, replaced };
        let smoothed = Qwen3Model::load(&cfg, &overlay, WeightFormat::Dense(DType::F32), &Device::Cpu).unwrap();
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
}
