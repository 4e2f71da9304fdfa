//! Activation-aware int4: weights rounded where the activations they multiply make the error cheap.
//! 1. calibrate the model as stored: each linear input channel's root mean square;
//! 2. activation-aware scaling (`calibration.smoothing` = α, default [`DEFAULT_ALPHA`]; 0 skips
//!    it, [`crate::quantize::smoothing`]): columns of the weights that meet large activations are
//!    scaled up, the inverse folded into the preceding operation (same f32 function);
//! 3. the scaled model's mean square of every input channel (the raw one divided by its factor
//!    squared: the scaled activations are the raw ones divided by the factors, so no second
//!    calibration pass runs) is the importance with which each weight's rounding error is weighed
//!    when every group's scale is searched ([`nano_qwen3_kernels::q4`]).
use crate::error::Result;
use crate::model::config::ModelConfig;
use crate::model::{Qwen3Model, WeightFormat};
use crate::progress::ProgressFn;
use crate::quantize::calibration::{self, CalibrationConfig};
use crate::quantize::smoothing::{smooth, Overlay, Rule};
use crate::source::weights::TensorSource;
use crate::text::tokenizer::Tokenizer;

/// The int4 scale rule: `NANO_QWEN3_Q4_SCALES=absmax` asks for llama.cpp's own Q4_0 rule (what
/// `npm run quality` exports as "llama.cpp's Q4_0" of the same weights), anything else for the
/// search. The loader reads it; the quantizers take the rule as a parameter.
pub fn scales_from_env() -> nano_qwen3_kernels::Q4Scales {
    match std::env::var("NANO_QWEN3_Q4_SCALES").as_deref() {
        Ok("absmax") => nano_qwen3_kernels::Q4Scales::Absmax,
        _ => nano_qwen3_kernels::Q4Scales::Searched,
    }
}

/// α of the activation-aware scaling when `calibration.smoothing` is not given. On the real
/// Qwen2.5-Coder-0.5B (8,192 tokens of `npm run quality -- --real`), mean KL from f32 with the
/// Q8_0 lm_head: α 0 5.73e-2, 0.25 4.55e-2, 0.35 4.57e-2, 0.5 4.81e-2 (perplexity 6.91, 6.62,
/// 6.57, 6.53): 0.35 keeps most of the KL gain and most of the perplexity gain.
pub const DEFAULT_ALPHA: f32 = 0.35;

/// Load `src` as int4 in `format` (a [`WeightFormat::Q4`]) through the steps of the module docs.
pub fn load(
    cfg: &ModelConfig,
    src: &dyn TensorSource,
    tokenizer: &Tokenizer,
    calibration: &CalibrationConfig,
    format: WeightFormat,
    progress: Option<&ProgressFn>,
) -> Result<Qwen3Model> {
    let sequences = calibration.token_sequences(tokenizer)?;
    let alpha = calibration.smoothing_or(DEFAULT_ALPHA)?;
    let raw = {
        let model = Qwen3Model::load(cfg, src, WeightFormat::Checkpoint)?;
        calibration::collect(&model, &sequences, progress, "calibrate")?
    };
    let tied = cfg.tie_word_embeddings;
    if alpha == 0.0 {
        return Qwen3Model::load_full(cfg, src, format, progress, Some(&raw.importance_by_weight(tied, None)));
    }
    let smoothed = smooth(cfg, src, &raw, Rule::ActivationAware { alpha })?;
    let importance = raw.importance_by_weight(tied, Some(&smoothed.factors));
    let scaled = Overlay { base: src, replaced: smoothed.tensors };
    Qwen3Model::load_full(cfg, &scaled, format, progress, Some(&importance))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::weights::Checkpoint;
    use candle_core::DType;

    /// The importances derived from the raw statistics and the scaling factors are those a second
    /// calibration pass over the scaled model measures (up to f32 rounding), on both fixture
    /// architectures (Qwen2's v bias included).
    #[test]
    fn scaled_importances_follow_from_the_raw_statistics() {
        for fixture in ["qwen3-tiny", "qwen2-tiny"] {
            let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures").join(fixture);
            let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
            let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
            let ckpt = Checkpoint::open(&dir).unwrap();
            let seqs = CalibrationConfig::default().token_sequences(&tok).unwrap();
            let plain = Qwen3Model::load(&cfg, &ckpt, WeightFormat::Dense(DType::F32)).unwrap();
            let raw = calibration::collect(&plain, &seqs, None, "calibrate").unwrap();
            let smoothed = smooth(&cfg, &ckpt, &raw, Rule::ActivationAware { alpha: 0.5 }).unwrap();
            let derived = raw.importance_by_weight(false, Some(&smoothed.factors));
            let scaled = Qwen3Model::load(&cfg, &Overlay { base: &ckpt, replaced: smoothed.tensors }, WeightFormat::Dense(DType::F32)).unwrap();
            let measured = calibration::collect(&scaled, &seqs, None, "calibrate").unwrap().importance_by_weight(false, None);
            assert_eq!(derived.len(), measured.len());
            let unscaled = raw.importance_by_weight(false, None);
            let mut moved = 0;
            for (name, want) in &measured {
                let got = &derived[name];
                let top = want.iter().fold(0f32, |m, x| m.max(*x));
                for (j, (g, w)) in got.iter().zip(want).enumerate() {
                    assert!((g - w).abs() <= 1e-4 * top, "{fixture} {name}[{j}]: derived {g}, measured {w}");
                }
                moved += usize::from(unscaled[name].iter().zip(want).any(|(u, w)| (u - w).abs() > 1e-2 * top));
            }
            // The factors changed the importances (so the comparison above is not trivially true).
            assert!(moved > measured.len() / 2, "{fixture}: only {moved} of {} matrices changed", measured.len());
        }
    }
}
