//! Acceleration options (the Python project's names) and the execution plan: for every requested
//! option, whether it is applied on this device and, if not, why. Nothing is credited that did
//! not run.
use crate::quantize::calibration::CalibrationConfig;
use crate::error::{EngineError, Result};
use crate::model::kv_pool::KvDtype;
use crate::model::WeightFormat;
use candle_core::DType;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Quantization {
    #[default]
    None,
    Fp32,
    Fp16,
    Bf16,
    DynamicInt8,
    StaticInt8,
    Int4,
}

impl Quantization {
    /// Every mode, in the order the docs list them: the one list of their names.
    pub const VARIANTS: [Quantization; 7] = [Self::None, Self::Fp32, Self::Fp16, Self::Bf16, Self::DynamicInt8, Self::StaticInt8, Self::Int4];

    /// "none, fp32, ...".
    pub fn all() -> String {
        Self::VARIANTS.map(Self::name).join(", ")
    }

    pub fn parse(s: &str) -> Result<Self> {
        Self::VARIANTS
            .into_iter()
            .find(|q| q.name() == s)
            .ok_or_else(|| EngineError::invalid_arg("quantization", format!("\"{s}\""), &format!("one of {}", Self::all())))
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Fp32 => "fp32",
            Self::Fp16 => "fp16",
            Self::Bf16 => "bf16",
            Self::DynamicInt8 => "dynamic_int8",
            Self::StaticInt8 => "static_int8",
            Self::Int4 => "int4",
        }
    }

    /// How weight matrices are stored (int4 with one scale per `int4_group` weights).
    /// Activations are f32 in every mode.
    fn weight_format(self, int4_group: usize, int4_lm_head: Int4LmHead) -> WeightFormat {
        match self {
            Self::None => WeightFormat::Checkpoint,
            Self::Fp32 => WeightFormat::Dense(DType::F32),
            Self::Fp16 => WeightFormat::Dense(DType::F16),
            Self::Bf16 => WeightFormat::Dense(DType::BF16),
            Self::DynamicInt8 | Self::StaticInt8 => WeightFormat::Q8,
            Self::Int4 => WeightFormat::Q4 {
                group: int4_group,
                lm_head_q8: int4_lm_head == Int4LmHead::Q8_0,
                scales: crate::quantize::int4::scales_from_env(),
            },
        }
    }
}

/// int4: the format of the output projection (lm_head, or the embedding it is tied to), the
/// matrix whose rounding the logits feel most directly. llama.cpp's quantizer keeps it at more
/// bits in its 4-bit files too (Q6_K, or Q8_0 where rows do not divide into 256s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Int4LmHead {
    #[default]
    #[serde(rename = "q8_0")]
    Q8_0,
    #[serde(rename = "q4_0")]
    Q4_0,
}

impl Int4LmHead {
    pub const VARIANTS: [Int4LmHead; 2] = [Self::Q8_0, Self::Q4_0];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CompileMode {
    #[default]
    Default,
    ReduceOverhead,
    MaxAutotune,
}

impl CompileMode {
    pub const VARIANTS: [CompileMode; 3] = [Self::Default, Self::ReduceOverhead, Self::MaxAutotune];
}

/// The allowed values of every enumerated option: the TypeScript facade validates against these
/// lists (one source of the names).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OptionValues {
    pub quantization: Vec<String>,
    pub compile_mode: Vec<String>,
    pub kv_cache_dtype: Vec<String>,
    pub int4_group_size: Vec<usize>,
    pub int4_lm_head: Vec<String>,
}

/// A serde-named unit variant's name, as it is written in JSON (the one spelling of each name).
pub fn serde_name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        other => unreachable!("a unit variant serialises to a string, not {other:?}"),
    }
}

pub fn option_values() -> OptionValues {
    fn names<T: Serialize>(v: &[T]) -> Vec<String> {
        v.iter().map(serde_name).collect()
    }
    OptionValues {
        quantization: Quantization::VARIANTS.map(|q| q.name().to_string()).to_vec(),
        compile_mode: names(&CompileMode::VARIANTS),
        kv_cache_dtype: names(&KvDtype::VARIANTS),
        int4_group_size: nano_qwen3_kernels::q4::GROUP_SIZES.to_vec(),
        int4_lm_head: names(&Int4LmHead::VARIANTS),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccelerationConfig {
    pub quantization: Quantization,
    pub use_flash_attention: bool,
    pub use_torch_compile: bool,
    pub compile_mode: CompileMode,
    pub use_channels_last: bool,
    pub use_gradient_checkpointing: bool,
    pub use_fused_kernels: bool,
    /// Calibration for `static_int8` and activation-aware `int4` (ignored by the other modes).
    pub calibration: Option<CalibrationConfig>,
    /// Element type of the KV cache: f32 (exact), f16 or bf16 (half the memory).
    pub kv_cache_dtype: KvDtype,
    /// int4: weights sharing one scale, 32 (Q4_0), 64 or 128 (fewer bytes, a little more error).
    pub int4_group_size: usize,
    /// int4: the lm_head's (or tied embedding's) format, Q8_0 (default) or Q4_0 (smallest).
    pub int4_lm_head: Int4LmHead,
}

impl AccelerationConfig {
    /// How weight matrices are stored; an unsupported int4 group size is an error.
    pub fn weight_format(&self) -> Result<WeightFormat> {
        use nano_qwen3_kernels::q4::GROUP_SIZES;
        if !GROUP_SIZES.contains(&self.int4_group_size) {
            let allowed = GROUP_SIZES.map(|g| g.to_string()).join(", ");
            return Err(EngineError::invalid_arg("int4GroupSize", self.int4_group_size, &format!("one of {allowed}")));
        }
        Ok(self.quantization.weight_format(self.int4_group_size, self.int4_lm_head))
    }
}

impl Default for AccelerationConfig {
    fn default() -> Self {
        Self {
            quantization: Quantization::None,
            use_flash_attention: true,
            use_torch_compile: false,
            compile_mode: CompileMode::Default,
            use_channels_last: true,
            use_gradient_checkpointing: false,
            use_fused_kernels: true,
            calibration: None,
            kv_cache_dtype: KvDtype::F32,
            int4_group_size: 32,
            int4_lm_head: Int4LmHead::Q8_0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
}

impl DeviceKind {
    /// `auto` picks the best device this build supports; asking for one it lacks is an error.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "auto" | "cpu" => Ok(Self::Cpu),
            s if s == "cuda" || s.starts_with("cuda:") || s == "metal" => Err(EngineError::Unsupported(format!(
                "device \"{s}\" is not available: this build was compiled without CUDA/Metal support; available devices: cpu, auto"
            ))),
            s => Err(EngineError::invalid_arg("device", format!("\"{s}\""), "one of auto, cpu, cuda, cuda:N, metal")),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanItem {
    pub option: String,
    pub requested: String,
    pub applied: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionPlan {
    pub device: String,
    pub quantization: Quantization,
    pub compute_dtype: String,
    /// "checkpoint" when weights keep the checkpoint's dtype.
    pub weight_dtype: String,
    pub items: Vec<PlanItem>,
    pub applied_optimizations: Vec<String>,
    pub skipped_optimizations: Vec<String>,
}

impl ExecutionPlan {
    /// Add what max-autotune did at load to its plan item.
    pub fn describe_autotune(&mut self, t: &crate::model::autotune::AutotuneReport) {
        if let Some(i) = self.items.iter_mut().find(|i| i.option == "useTorchCompile") {
            let cache = match (&t.cache_file, &t.cache_error) {
                (_, Some(e)) => format!("cache not used: {e}"),
                (Some(f), None) => format!("cache {}", f.display()),
                (None, None) => "no cache".into(),
            };
            i.detail = format!(
                "{}: {} shapes, {} measured and {} from the cache in {:.0} ms ({cache})",
                i.detail, t.shapes, t.measured, t.from_cache, t.ms
            );
        }
    }
}

fn item(option: &str, requested: impl ToString, applied: bool, detail: &str) -> PlanItem {
    PlanItem { option: option.into(), requested: requested.to_string(), applied, detail: detail.into() }
}

/// Decide what runs. Errors for options that cannot run at all (unknown device, quantization
/// mode not built yet); boolean options that this device does not implement are listed as skipped.
pub fn plan(cfg: &AccelerationConfig, device: &str) -> Result<ExecutionPlan> {
    let _dev = DeviceKind::parse(device)?;
    let format = cfg.weight_format()?;
    let q = cfg.quantization.name();
    let calibration = cfg.calibration.clone().unwrap_or_default();
    let mut items = vec![match cfg.quantization {
        Quantization::None => item("quantization", q, true, "weights kept in the checkpoint's dtype, f32 activations and accumulation"),
        Quantization::Fp32 => item("quantization", q, true, "every matrix widened or dequantized to f32 at load, f32 activations and accumulation"),
        Quantization::DynamicInt8 => item(
            "quantization",
            q,
            true,
            "int8 weights in blocks of 32 with f16 scales (Q8_0 layout); activations quantized per token and block at run time; exact int8 dot products, f32 scale application",
        ),
        Quantization::Int4 => item(
            "quantization",
            if cfg.int4_group_size == 32 { q.to_string() } else { format!("{q} (groups of {})", cfg.int4_group_size) },
            true,
            &format!(
                "4-bit weights in Q4_0 blocks of 32; when quantized at load, after activation-aware scaling with alpha {} (calibration.smoothing; 0: none; weight columns that meet large activations scaled up, the inverse folded into the RMSNorm / v_proj / up_proj weights), one f16 scale per {} weights chosen to minimise the group's activation-weighted squared error (stored once per group when repacked; exported as Q4_0 with the scale repeated); lm_head {}; int8 activations at run time, int8 dot products",
                calibration.smoothing_or(crate::quantize::int4::DEFAULT_ALPHA)?,
                cfg.int4_group_size,
                match cfg.int4_lm_head {
                    Int4LmHead::Q8_0 => "(or the embedding it is tied to) in Q8_0",
                    Int4LmHead::Q4_0 => "in Q4_0 too",
                }
            ),
        ),
        Quantization::StaticInt8 => item(
            "quantization",
            q,
            true,
            &format!(
                "int8 weights in blocks of 32 (Q8_0 layout) after SmoothQuant (alpha {}, folded into the RMSNorm / v_proj / up_proj weights); activation scales fixed by calibration per block of 32 channels; sites whose calibrated range is too wide keep per-token scales (see getModelInfo().calibration)",
                calibration.smoothing()?
            ),
        ),
        _ => item("quantization", q, true, &format!("{q} weights converted to f32 in registers, f32 activations and accumulation")),
    }];
    let kv = format!("{:?}", cfg.kv_cache_dtype).to_lowercase();
    let on_off = |name: &str, on: bool, applied: &str, off: &str| {
        if on {
            item(name, true, true, applied)
        } else {
            item(name, false, false, off)
        }
    };
    items.push(on_off(
        "useFlashAttention",
        cfg.use_flash_attention,
        &format!("tiled online-softmax attention read through each sequence's block table (paged KV; GQA: each KV tile read once per query group; decode splits the KV length across threads), KV cache in {kv}"),
        &format!("off: scores materialised per head, then softmax (KV cache in {kv})"),
    ));
    items.push(on_off(
        "useFusedKernels",
        cfg.use_fused_kernels,
        "stacked q/k/v and gate/up weights (one matmul each), residual add + RMSNorm, q/k RMSNorm + RoPE and SiLU*up each in one pass",
        "off: one matmul per projection, one pass per elementwise op",
    ));
    items.push(on_off(
        "useChannelsLast",
        cfg.use_channels_last,
        "int8 / int4 weights repacked at load 8 rows interleaved (8 outputs accumulate in one register; f32 row scales); dense weights keep their layout",
        "off: int8 / int4 weights in row-major Q8_0 / Q4_0 blocks",
    ));
    items.push(on_off(
        "useGradientCheckpointing",
        cfg.use_gradient_checkpointing,
        "chunked prefill (inference has no gradients): computeLogits runs prompts in chunks of 256 tokens, and a serving step takes at most 256 tokens of a prompt, so activation memory is bounded by the chunk; serving already cuts prompts to maxBatchTokens (256 by default), so there it changes something only with a larger maxBatchTokens",
        "off",
    ));
    let compile = serde_json::to_value(cfg.compile_mode).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    items.push(match (cfg.use_torch_compile, cfg.compile_mode) {
        (false, _) => item("useTorchCompile", false, false, "off"),
        (true, CompileMode::ReduceOverhead) => item(
            "useTorchCompile",
            format!("true ({compile})"),
            true,
            "the serving step is planned: activation buffers kept between steps, the KV pool allocated once at load, kernel scratch reused; a warm decode step of a steady batch allocates nothing",
        ),
        (true, CompileMode::MaxAutotune) => item(
            "useTorchCompile",
            format!("true ({compile})"),
            true,
            "matmul tilings (tasks per thread, activation rows per L2 block) timed per shape at load; winners cached on disk by CPU model, threads and shape",
        ),
        (true, CompileMode::Default) => item("useTorchCompile", "true (default)", false, "compile mode default: nothing to plan on CPU"),
    });
    let applied = items.iter().filter(|i| i.applied).map(|i| format!("{}={}", i.option, i.requested)).collect();
    let skipped = items
        .iter()
        .filter(|i| !i.applied && i.requested != "false")
        .map(|i| format!("{}: {}", i.option, i.detail))
        .collect();
    Ok(ExecutionPlan {
        device: "cpu".into(),
        quantization: cfg.quantization,
        compute_dtype: "f32".into(),
        weight_dtype: match format {
            WeightFormat::Checkpoint => "checkpoint".into(),
            WeightFormat::Dense(d) => format!("{d:?}").to_lowercase(),
            WeightFormat::Q8 => "q8_0".into(),
            WeightFormat::Q4 { .. } => "q4_0".into(),
        },
        items,
        applied_optimizations: applied,
        skipped_optimizations: skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_unbuilt_modes_are_errors() {
        let e = Quantization::parse("int3").unwrap_err().to_string();
        assert!(e.contains("int3") && e.contains("dynamic_int8"), "{e}");
        for q in [Quantization::DynamicInt8, Quantization::StaticInt8, Quantization::Int4] {
            assert!(plan(&AccelerationConfig { quantization: q, ..Default::default() }, "cpu").unwrap().items[0].applied);
        }
        assert!(plan(&AccelerationConfig::default(), "cuda").is_err());
    }

    #[test]
    fn flags_that_do_nothing_are_reported_not_credited() {
        let cfg = AccelerationConfig { use_torch_compile: true, compile_mode: CompileMode::Default, ..Default::default() };
        let p = plan(&cfg, "auto").unwrap();
        assert_eq!(
            p.applied_optimizations,
            vec!["quantization=none", "useFlashAttention=true", "useFusedKernels=true", "useChannelsLast=true"]
        );
        assert!(p.skipped_optimizations.iter().any(|s| s.starts_with("useTorchCompile") && s.contains("nothing to plan")));
        for mode in [CompileMode::ReduceOverhead, CompileMode::MaxAutotune] {
            let cfg = AccelerationConfig { use_torch_compile: true, compile_mode: mode, ..Default::default() };
            let p = plan(&cfg, "auto").unwrap();
            assert!(p.applied_optimizations.iter().any(|s| s.starts_with("useTorchCompile")), "{mode:?}");
        }
    }
}
