//! Activation-aware int4: weights rounded where the activations they multiply make the error cheap.
//! 1. calibrate the model as stored: each linear input channel's root mean square;
//! 2. activation-aware scaling (`calibration.smoothing` = α, default [`DEFAULT_ALPHA`]; 0 skips
//!    it, [`crate::quantize::smoothing`]): columns of the weights that meet large activations are
//!    scaled up, the inverse folded into the preceding operation (same f32 function);
//! 3. calibrate the scaled model: the mean square of every input channel is the importance with
//!    which each weight's rounding error is weighed when every group's scale is searched
//!    ([`nano_qwen3_kernels::q4`]).
use crate::error::Result;
use crate::model::config::ModelConfig;
use crate::model::{Qwen3Model, WeightFormat};
use crate::progress::ProgressFn;
use crate::quantize::calibration::{self, CalibrationConfig};
use crate::quantize::smoothing::{smooth, Overlay, Rule};
use crate::source::weights::TensorSource;
use crate::text::tokenizer::Tokenizer;
use candle_core::DType;

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
    if alpha == 0.0 {
        return Qwen3Model::load_full(cfg, src, format, progress, Some(&raw.importance_by_weight(cfg.tie_word_embeddings)));
    }
    let (replaced, _) = smooth(cfg, src, &raw, Rule::ActivationAware { alpha })?;
    let scaled = Overlay { base: src, replaced };
    let importance = {
        let model = Qwen3Model::load(cfg, &scaled, WeightFormat::Dense(DType::F32))?;
        calibration::collect(&model, &sequences, progress, "calibrate (scaled)")?.importance_by_weight(cfg.tie_word_embeddings)
    };
    Qwen3Model::load_full(cfg, &scaled, format, progress, Some(&importance))
}

