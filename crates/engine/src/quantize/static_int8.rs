//! Static int8: int8 weights (Q8_0 blocks) and activation scales fixed ahead of time.
//!
//! Plain per-tensor static int8 wrecks small Qwen models: a few activation channels are 10-100x
//! larger than the rest, so one fixed scale leaves the other channels a handful of levels. Here:
//! 1. calibrate the model as loaded: per-channel max |x| at every linear input;
//! 2. SmoothQuant (α = 0.5, [`crate::quantize::smoothing`]): divide each input channel by
//!    s_j = max|X_j|^α / max|W_j|^(1-α) and multiply the weights' column j by s_j, folded into
//!    the preceding operation, so the f32 model computes exactly the same function;
//! 3. calibrate the smoothed model: one static scale per block of 32 input channels (not one per
//!    tensor), and for each site how much wider that range is than a typical token's;
//! 4. a fixed scale's rounding step is `range ratio` times the per-token one, so sites where a
//!    typical token spans less than half of the static range (more than one bit lost) keep
//!    per-token dynamic activation scales, and the report says which and why.
use crate::quantize::calibration::{self, CalibrationConfig, Site, SiteStats};
use crate::model::config::ModelConfig;
use crate::error::Result;
use crate::model::{Qwen3Model, WeightFormat};
use crate::progress::ProgressFn;
use crate::text::tokenizer::Tokenizer;
use crate::quantize::smoothing::{smooth, Overlay, Rule, Smoothed};
use crate::source::weights::TensorSource;
use candle_core::DType;
use serde::{Deserialize, Serialize};
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
    progress: Option<&ProgressFn>,
) -> Result<(Qwen3Model, CalibrationReport, Vec<StaticScales>)> {
    let started = Instant::now();
    let sequences = calibration.token_sequences(tokenizer)?;
    let alpha = calibration.smoothing()?;
    let raw_stats = {
        let model = Qwen3Model::load(cfg, src, WeightFormat::Checkpoint)?;
        calibration::collect(&model, &sequences, progress, "calibrate")?
    };
    // The static ranges need the smoothed model's per-token block maxima, which do not follow from
    // the raw ones: calibrate again.
    let Smoothed { tensors: replaced, sites: smoothed_sites, .. } = smooth(cfg, src, &raw_stats, Rule::SmoothQuant { alpha })?;
    let overlay = Overlay { base: src, replaced };
    let stats = {
        let model = Qwen3Model::load(cfg, &overlay, WeightFormat::Dense(DType::F32))?;
        calibration::collect(&model, &sequences, progress, "calibrate (smoothed)")?
    };
    let mut model = Qwen3Model::load_with_progress(cfg, &overlay, WeightFormat::Q8, progress)?;
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
