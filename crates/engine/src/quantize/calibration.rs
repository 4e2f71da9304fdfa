//! Calibration for static int8 and int4: run sample texts through the model and record, at the
//! input of every linear layer, each channel's largest |activation| and mean square and how large
//! each block of 32 channels typically is per token. Smoothing (`smoothing.rs`), the static
//! activation scales and int4's importances are computed from these statistics.
use crate::error::{EngineError, Result};
use crate::model::{ExecOptions, LogitsFor, Observer, Qwen3Model};
use crate::progress::{Progress, ProgressFn};
use crate::text::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};

/// A small mixed set (prose, dialogue, code, numbers, other scripts) used when the caller gives none.
pub const BUILT_IN_TEXTS: &[&str] = &[
    "The history of the printing press shows how a single technical change can reshape a society. Before Gutenberg, books were copied by hand, slowly and at great cost; afterwards, ideas travelled faster than any authority could follow.",
    "<|im_start|>user\nCan you explain why the sky is blue?<|im_end|>\n<|im_start|>assistant\nSunlight is scattered by the molecules in the air, and shorter (blue) wavelengths are scattered much more strongly than longer (red) ones.<|im_end|>",
    "def fibonacci(n: int) -> list[int]:\n    \"\"\"Return the first n Fibonacci numbers.\"\"\"\n    out = [0, 1]\n    while len(out) < n:\n        out.append(out[-1] + out[-2])\n    return out[:n]\n\nprint(fibonacci(10))",
    "Quarterly revenue rose 12.4% to $3.82 billion, while operating costs fell from 1,204 to 1,117 million. The board approved a dividend of 0.45 per share, payable on 15 March 2025.",
    "人工智能正在改变我们的工作和生活方式。大型语言模型可以回答问题、写作和翻译，但它们也会犯错，因此需要人类的判断。",
    "Solve for x: 3x + 7 = 22. Subtract 7 from both sides to get 3x = 15, then divide by 3: x = 5. Check: 3 * 5 + 7 = 22.",
    "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}\nThe forecast for Paris: 18°C, light rain in the afternoon, wind from the west at 15 km/h.",
    "Il était une fois, dans un petit village au bord de la mer, une vieille femme qui racontait des histoires aux enfants chaque soir. Der Hund schläft unter dem Tisch, während draußen der Regen fällt.",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CalibrationConfig {
    /// Sample texts; None: [`BUILT_IN_TEXTS`].
    pub texts: Option<Vec<String>>,
    /// Tokens used from each text (longer texts are cut); default 128.
    pub max_tokens: Option<usize>,
    /// α in [0, 1] of the per-channel smoothing (0: none): SmoothQuant's migration strength for
    /// static_int8 (default 0.5), the activation-aware scaling exponent for int4 (default
    /// [`crate::quantize::int4::DEFAULT_ALPHA`]).
    pub smoothing: Option<f32>,
}

impl CalibrationConfig {
    pub const DEFAULT_MAX_TOKENS: usize = 128;
    pub const DEFAULT_SMOOTHING: f32 = 0.5;

    /// α, checked (static_int8's default when not given).
    pub fn smoothing(&self) -> Result<f32> {
        self.smoothing_or(Self::DEFAULT_SMOOTHING)
    }

    /// α, checked, or the mode's `default` when not given.
    pub fn smoothing_or(&self, default: f32) -> Result<f32> {
        match self.smoothing {
            None => Ok(default),
            Some(a) if (0.0..=1.0).contains(&a) => Ok(a),
            Some(a) => Err(EngineError::invalid_arg("calibration.smoothing", a, "a number in [0, 1]")),
        }
    }

    /// The token sequences to run, or a clear error for unusable input.
    pub fn token_sequences(&self, tok: &Tokenizer) -> Result<Vec<Vec<u32>>> {
        let max = self.max_tokens.unwrap_or(Self::DEFAULT_MAX_TOKENS);
        if max == 0 {
            return Err(EngineError::invalid_arg("calibration.maxTokens", 0, "an integer >= 1"));
        }
        let texts: Vec<&str> = match &self.texts {
            Some(t) if t.is_empty() => {
                return Err(EngineError::invalid_arg(
                    "calibration.texts",
                    "[] (empty)",
                    "at least one non-empty text, or leave it out for the built-in set",
                ))
            }
            Some(t) => t.iter().map(String::as_str).collect(),
            None => BUILT_IN_TEXTS.to_vec(),
        };
        let mut out = Vec::with_capacity(texts.len());
        for (i, t) in texts.iter().enumerate() {
            let mut ids = tok.encode(t, false)?;
            if ids.is_empty() {
                return Err(EngineError::invalid_arg(&format!("calibration.texts[{i}]"), "\"\" (no tokens)", "a non-empty text"));
            }
            ids.truncate(max);
            out.push(ids);
        }
        Ok(out)
    }
}

/// Where activations are observed, per layer: the inputs of q/k/v, o_proj, gate/up and down_proj.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    AttnIn = 0,
    OIn = 1,
    MlpIn = 2,
    DownIn = 3,
}

impl Site {
    pub const ALL: [Site; 4] = [Site::AttnIn, Site::OIn, Site::MlpIn, Site::DownIn];
    pub fn name(self) -> &'static str {
        match self {
            Site::AttnIn => "q/k/v_proj input",
            Site::OIn => "o_proj input",
            Site::MlpIn => "gate/up_proj input",
            Site::DownIn => "down_proj input",
        }
    }
}

/// Statistics of one activation site.
#[derive(Clone, Debug, Default)]
pub struct SiteStats {
    /// Largest |x| seen per channel.
    pub channel_max: Vec<f32>,
    /// Per block of 32 channels: sum over tokens of that token's largest |x| in the block.
    pub block_token_max_sum: Vec<f64>,
    /// Per channel: sum over tokens of x².
    pub channel_sq_sum: Vec<f64>,
    pub tokens: usize,
}

impl SiteStats {
    fn observe(&mut self, v: &[f32], t: usize) {
        let c = v.len() / t.max(1);
        if self.channel_max.is_empty() {
            self.channel_max = vec![0.0; c];
            self.block_token_max_sum = vec![0.0; c.div_ceil(32)];
            self.channel_sq_sum = vec![0.0; c];
        }
        for row in v.chunks_exact(c) {
            for ((m, sq), x) in self.channel_max.iter_mut().zip(self.channel_sq_sum.iter_mut()).zip(row) {
                *m = m.max(x.abs());
                *sq += (*x as f64) * (*x as f64);
            }
            for (s, block) in self.block_token_max_sum.iter_mut().zip(row.chunks(32)) {
                *s += block.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
            }
        }
        self.tokens += t;
    }

    /// Mean x² per channel: how much an error in the weight that multiplies it costs.
    pub fn mean_square(&self) -> Vec<f32> {
        let n = self.tokens.max(1) as f64;
        self.channel_sq_sum.iter().map(|s| (s / n) as f32).collect()
    }

    /// Per block of 32 channels: the largest |x| seen (the static range).
    pub fn block_max(&self) -> Vec<f32> {
        self.channel_max.chunks(32).map(|b| b.iter().copied().fold(0f32, f32::max)).collect()
    }

    /// How much wider the static range is than a typical token's, per block (geometric mean over
    /// blocks). A ratio r leaves a typical token about 8 - log2(r) bits of the int8 range.
    pub fn range_ratio(&self) -> f64 {
        let tokens = self.tokens.max(1) as f64;
        let logs: Vec<f64> = self
            .block_max()
            .iter()
            .zip(&self.block_token_max_sum)
            .filter(|(m, s)| **m > 0.0 && **s > 0.0)
            .map(|(m, s)| (*m as f64 / (s / tokens)).ln())
            .collect();
        if logs.is_empty() {
            return 1.0;
        }
        (logs.iter().sum::<f64>() / logs.len() as f64).exp()
    }
}

/// Statistics of every site of every layer, plus the lm_head input.
#[derive(Clone, Debug)]
pub struct ActivationStats {
    pub layers: Vec<[SiteStats; 4]>,
    pub lm_head_in: SiteStats,
}

impl ActivationStats {
    pub fn new(layers: usize) -> Self {
        Self { layers: vec![Default::default(); layers], lm_head_in: SiteStats::default() }
    }

}

impl Observer for ActivationStats {
    fn observe(&mut self, layer: Option<usize>, site: Site, x: &[f32], rows: usize) {
        match layer {
            Some(l) => self.layers[l][site as usize].observe(x, rows),
            None => self.lm_head_in.observe(x, rows),
        }
    }
}

impl ActivationStats {
    /// For each weight matrix (HF name), the mean square of each input feature it multiplies:
    /// the importances of activation-aware int4.
    /// `divided_by`: per layer and site, the factors each channel's activation has been divided by
    /// since these statistics were taken ([`crate::quantize::smoothing::Smoothed::factors`]): the
    /// mean squares are then those of the smoothed model, mean square / s².
    pub fn importance_by_weight(&self, tied: bool, divided_by: Option<&[[Vec<f32>; 4]]>) -> std::collections::HashMap<String, Vec<f32>> {
        let mut out = std::collections::HashMap::new();
        for (i, st) in self.layers.iter().enumerate() {
            for (site, names) in [
                (Site::AttnIn, &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"][..]),
                (Site::OIn, &["self_attn.o_proj"][..]),
                (Site::MlpIn, &["mlp.gate_proj", "mlp.up_proj"][..]),
                (Site::DownIn, &["mlp.down_proj"][..]),
            ] {
                let mut ms = st[site as usize].mean_square();
                if let Some(f) = divided_by {
                    ms.iter_mut().zip(&f[i][site as usize]).for_each(|(m, s)| *m /= s * s);
                }
                for n in names {
                    out.insert(format!("model.layers.{i}.{n}.weight"), ms.clone());
                }
            }
        }
        // A tied matrix is also the embedding table, whose rows feed every channel alike: only an
        // untied lm_head gets importances.
        if !tied {
            out.insert("lm_head.weight".to_string(), self.lm_head_in.mean_square());
        }
        out
    }
}

/// Run every sequence through `model` and collect the statistics (the lm_head input of every
/// token included). `stage` names the pass in progress reports.
pub fn collect(
    model: &Qwen3Model,
    sequences: &[Vec<u32>],
    progress: Option<&ProgressFn>,
    stage: &'static str,
) -> Result<ActivationStats> {
    let mut stats = ActivationStats::new(model.config.num_hidden_layers);
    let total: usize = sequences.iter().map(Vec::len).sum();
    let mut done = 0;
    for seq in sequences {
        // Plain f32 ops: the statistics describe the model, not an optimization.
        let exec = ExecOptions { flash_attention: true, fused: false, reuse_buffers: false };
        model.run_alone(seq, LogitsFor::Nothing, &exec, Default::default(), None, Some(&mut stats))?;
        done += seq.len();
        if let Some(p) = progress {
            p(&Progress { stage, done, total, unit: "tokens" });
        }
    }
    Ok(stats)
}
