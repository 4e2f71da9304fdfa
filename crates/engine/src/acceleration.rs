//! Acceleration options (the Python project's names) and the execution plan: for every requested
//! option, whether it is applied on this device and, if not, why. Nothing is credited that did
//! not run.
use crate::quantize::calibration::CalibrationConfig;
use crate::error::{EngineError, Result};
use crate::model::kv_pool::KvDtype;
use crate::model::WeightFormat;
use crate::device::DeviceRequest;
use crate::gpu_device::Placement;
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
    /// "cpu" or "gpu".
    pub device: String,
    /// Which device, and why (the adapter; or why `auto` took the CPU).
    pub device_detail: String,
    /// The adapter and what runs on it, when the device is a GPU.
    pub gpu: Option<GpuPlan>,
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

/// What each option does when the forward runs on the GPU (the CPU texts replaced).
fn on_the_gpu(cfg: &AccelerationConfig, kv: &str, items: &mut [PlanItem]) {
    for i in items.iter_mut() {
        let (applied, detail): (bool, String) = match i.option.as_str() {
            "quantization" => (true, match cfg.quantization {
                Quantization::None => "weights uploaded in the checkpoint's dtype (f32 / f16 / bf16, or GGUF Q8_0 / Q4_0 blocks as stored; a GGUF's Q4_K / Q5_K / Q6_K / Q5_0 / Q4_1 / Q5_1 matrices dequantized to f32 for the upload: the GPU has no kernels for them, so they take 4 bytes per weight there; quantization 'int4' or 'dynamic_int8' keeps them small), widened to f32 in the matmul kernels; f32 activations and accumulation".into(),
                Quantization::Fp32 | Quantization::Fp16 | Quantization::Bf16 => format!("{} weights in GPU memory, f32 activations and accumulation", cfg.quantization.name()),
                Quantization::DynamicInt8 => "int8 weights as Q8_0 blocks in GPU memory, dequantized in the matmul kernels; activations stay f32 on the GPU (not quantized per token as on the CPU)".into(),
                Quantization::StaticInt8 => "int8 weights (SmoothQuant-folded, as Q8_0 blocks) in GPU memory; the calibrated activation scales are not used on the GPU: activations stay f32".into(),
                Quantization::Int4 => "4-bit weights as Q4_0 blocks (each group's scale repeated per 32 weights) in GPU memory; f32 activations (no int8 activations on the GPU)".into(),
            }),
            "useFlashAttention" => (cfg.use_flash_attention, if cfg.use_flash_attention {
                format!("paged attention kernel over the block tables with online softmax (GQA: one workgroup per KV head and tile of query rows), split over the KV length every 256 keys and merged; KV cache in {kv} in GPU memory")
            } else {
                format!("off requested, but the GPU has one attention kernel (tiled online softmax over the block tables) and it runs; KV cache in {kv}")
            }),
            "useFusedKernels" => (cfg.use_fused_kernels, if cfg.use_fused_kernels {
                "stacked q/k/v and gate/up weights (one matmul each), residual add + RMSNorm and q/k RMSNorm + RoPE one kernel each, SwiGLU one kernel after the gate/up matmul".into()
            } else {
                "off requested, but the GPU backend has only its fused kernels (stacked q/k/v and gate/up, residual add + RMSNorm, q/k RMSNorm + RoPE) and they run".into()
            }),
            "useChannelsLast" => (false, "not on the GPU: its matmul kernels read row-major weights (the interleaved layout is the CPU kernels')".into()),
            "useTorchCompile" if cfg.use_torch_compile => match cfg.compile_mode {
                CompileMode::ReduceOverhead => (true, "weights, KV pool and activation buffers created once at load and reused; a warm step records into one command encoder with cached bind groups (no GPU buffers or bind groups created) and submits once".into()),
                CompileMode::MaxAutotune => (false, "max-autotune tunes the CPU matmul tilings; nothing is tuned on the GPU".into()),
                CompileMode::Default => (false, "compile mode default: nothing to plan".into()),
            },
            _ => continue,
        };
        i.applied = applied;
        i.detail = detail;
    }
}

/// The GPU a plan runs on and what of the work it does.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuPlan {
    pub adapter: String,
    /// "vulkan", "metal", "dx12".
    pub backend: String,
    pub driver: String,
    pub driver_info: String,
    /// "discrete", "integrated", "virtual", "cpu", "other".
    pub device_type: String,
    /// A CPU rasteriser (lavapipe, WARP, SwiftShader): correct, not fast.
    pub software: bool,
    /// Device features the kernels use ("shader-f16", "subgroups", "timestamp-query").
    pub features_used: Vec<String>,
    pub subgroup_sizes: [u32; 2],
    pub max_storage_binding: u64,
    pub on_gpu: Vec<String>,
    pub on_cpu: Vec<String>,
}

impl GpuPlan {
    fn of(a: &nano_qwen3_gpu::AdapterReport) -> Self {
        GpuPlan {
            adapter: a.name.clone(),
            backend: a.backend.clone(),
            driver: a.driver.clone(),
            driver_info: a.driver_info.clone(),
            device_type: a.device_type.clone(),
            software: a.software,
            features_used: a.features.clone(),
            subgroup_sizes: [a.subgroup_min_size, a.subgroup_max_size],
            max_storage_binding: a.max_storage_binding,
            on_gpu: vec![
                "token embedding".into(),
                "every layer: RMSNorm (+ residual add), q/k/v matmul (+ Qwen2 bias), q/k RMSNorm + RoPE, KV write into the paged pool, paged attention, o_proj, gate/up matmul + SwiGLU, down_proj".into(),
                "final norm and lm_head of the rows whose logits are wanted".into(),
                "weights (uploaded once at load) and the paged KV pool (kvCacheMemory)".into(),
            ],
            on_cpu: vec![
                "tokenizer, chat template, scheduler, block manager and prefix cache".into(),
                "sampling, on the logits rows read back after each step".into(),
                "RoPE cos/sin tables (computed once at load, as the CPU path computes them)".into(),
                "embeddings: refused on a GPU engine (pooled rows are not read from the GPU yet); rerank scores come from the logits read back".into(),
            ],
        }
    }
}

fn item(option: &str, requested: impl ToString, applied: bool, detail: &str) -> PlanItem {
    PlanItem { option: option.into(), requested: requested.to_string(), applied, detail: detail.into() }
}

/// Decide what runs. Errors for options that cannot run at all (unknown device, quantization
/// mode not built yet); boolean options that this device does not implement are listed as skipped.
pub fn plan(cfg: &AccelerationConfig, device: &str) -> Result<ExecutionPlan> {
    let req = DeviceRequest::parse(device)?;
    plan_on(cfg, device, &crate::gpu_device::place(req)?)
}

/// [`plan`] for a device already placed (`requested`: the device option as given).
pub fn plan_on(cfg: &AccelerationConfig, requested: &str, placement: &Placement) -> Result<ExecutionPlan> {
    let gpu = placement.adapter();
    let format = cfg.weight_format()?;
    let q = cfg.quantization.name();
    let calibration = cfg.calibration.clone().unwrap_or_default();
    let mut items = vec![match cfg.quantization {
        Quantization::None => item("quantization", q, true, "weights kept as stored: the checkpoint's dtype (f32 activations and accumulation), or a GGUF's blocks (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K) in the block kernels with activations rounded to int8 per block (f32 accumulation); Q2_K / Q3_K dequantized to f32 at load"),
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
    if gpu.is_some() {
        on_the_gpu(cfg, &kv, &mut items);
    }
    let applied = items.iter().filter(|i| i.applied).map(|i| format!("{}={}", i.option, i.requested)).collect();
    let skipped = items
        .iter()
        .filter(|i| !i.applied && i.requested != "false")
        .map(|i| format!("{}: {}", i.option, i.detail))
        .collect();
    let device_detail = match (placement, gpu) {
        (_, Some(a)) => format!(
            "device \"{requested}\": {} ({}, {}{}, driver {} {})",
            a.name,
            a.backend,
            a.device_type,
            if a.software { ", a software adapter: correct, not fast" } else { "" },
            a.driver,
            a.driver_info
        ),
        (Placement::Cpu { why: Some(why) }, None) => format!("device \"{requested}\": the CPU ({why})"),
        (Placement::Cpu { why: None }, None) => format!("device \"{requested}\": the CPU"),
        (Placement::Gpu(_), None) => unreachable!("a GPU placement has an adapter"),
    };
    Ok(ExecutionPlan {
        device: if gpu.is_some() { "gpu" } else { "cpu" }.into(),
        device_detail,
        gpu: gpu.map(GpuPlan::of),
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
