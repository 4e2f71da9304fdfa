//! The typed objects the binding returns: `#[napi(object)]`, so `index.d.ts` declares real
//! interfaces and the TypeScript layer takes its types from there instead of writing them again.
//!
//! Each mirrors one engine struct field for field (JS numbers for counts and bytes: exact below
//! 2^53; absent values are `null`, as the engine's JSON wrote them, except in streamed output,
//! where a field the request did not ask for is left out). Every conversion destructures the engine struct completely, so a field added there does
//! not compile here until it is carried across.
use napi::bindgen_prelude::Float32Array;
use napi_derive::napi;
use nano_qwen3_engine as engine;
use nano_qwen3_engine::acceleration::serde_name as name;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A count or byte size as a JS number.
fn num(n: impl TryInto<u64>) -> f64 {
    n.try_into().map_or(f64::NAN, |n: u64| n as f64)
}

fn path(p: Option<PathBuf>) -> Option<String> {
    p.map(|p| p.display().to_string())
}

/// The allowed values of every enumerated acceleration option.
#[napi(object)]
pub struct OptionValues {
    pub quantization: Vec<String>,
    pub compile_mode: Vec<String>,
    pub kv_cache_dtype: Vec<String>,
    pub int4_group_size: Vec<u32>,
    pub int4_lm_head: Vec<String>,
}

impl From<engine::acceleration::OptionValues> for OptionValues {
    fn from(v: engine::acceleration::OptionValues) -> Self {
        let engine::acceleration::OptionValues { quantization, compile_mode, kv_cache_dtype, int4_group_size, int4_lm_head } = v;
        let int4_group_size = int4_group_size.into_iter().map(|g| g as u32).collect();
        Self { quantization, compile_mode, kv_cache_dtype, int4_group_size, int4_lm_head }
    }
}

/// One option of the execution plan: what was asked, whether it applies, and why.
#[napi(object)]
pub struct PlanItem {
    pub option: String,
    pub requested: String,
    pub applied: bool,
    pub detail: String,
}

/// The GPU a plan runs on: the adapter, the features the kernels use, and what runs where.
#[napi(object)]
pub struct GpuPlan {
    pub adapter: String,
    /// "vulkan", "metal" or "dx12".
    pub backend: String,
    pub driver: String,
    pub driver_info: String,
    /// "discrete", "integrated", "virtual", "cpu" or "other".
    pub device_type: String,
    /// A software adapter (lavapipe, WARP, SwiftShader): correct, not fast.
    pub software: bool,
    pub features_used: Vec<String>,
    /// Smallest and largest subgroup size the adapter reports.
    pub subgroup_sizes: Vec<u32>,
    pub max_storage_binding: f64,
    pub on_gpu: Vec<String>,
    pub on_cpu: Vec<String>,
}

/// What a config does on a device: each option applied or skipped (with the reason).
#[napi(object)]
pub struct ExecutionPlan {
    /// "cpu" or "gpu".
    pub device: String,
    /// Which device and why (the adapter; or why `auto` took the CPU).
    pub device_detail: String,
    pub gpu: Option<GpuPlan>,
    /// One of `optionValues().quantization`.
    pub quantization: String,
    pub compute_dtype: String,
    /// Storage of the weight matrices the mode asks for ("checkpoint", "f16", "bf16", "q8_0", "q4_0", ...).
    pub weight_dtype: String,
    pub items: Vec<PlanItem>,
    pub applied_optimizations: Vec<String>,
    pub skipped_optimizations: Vec<String>,
}

impl From<engine::ExecutionPlan> for ExecutionPlan {
    fn from(p: engine::ExecutionPlan) -> Self {
        let engine::ExecutionPlan { device, device_detail, gpu, quantization, compute_dtype, weight_dtype, items, applied_optimizations, skipped_optimizations } = p;
        Self {
            device,
            device_detail,
            gpu: gpu.map(|g| {
                let engine::acceleration::GpuPlan {
                    adapter, backend, driver, driver_info, device_type, software, features_used, subgroup_sizes, max_storage_binding, on_gpu, on_cpu,
                } = g;
                GpuPlan {
                    adapter, backend, driver, driver_info, device_type, software, features_used,
                    subgroup_sizes: subgroup_sizes.to_vec(),
                    max_storage_binding: num(max_storage_binding),
                    on_gpu, on_cpu,
                }
            }),
            quantization: quantization.name().to_string(),
            compute_dtype,
            weight_dtype,
            items: items
                .into_iter()
                .map(|i| {
                    let engine::acceleration::PlanItem { option, requested, applied, detail } = i;
                    PlanItem { option, requested, applied, detail }
                })
                .collect(),
            applied_optimizations,
            skipped_optimizations,
        }
    }
}

/// One class of tensors as loaded, e.g. all `q_proj` matrices in q8_0, with measured bytes.
#[napi(object)]
pub struct TensorClass {
    pub class: String,
    pub format: String,
    pub count: f64,
    pub bytes: f64,
}

impl From<engine::model::TensorClass> for TensorClass {
    fn from(t: engine::model::TensorClass) -> Self {
        let engine::model::TensorClass { class, format, count, bytes } = t;
        Self { class, format, count: num(count), bytes: num(bytes) }
    }
}

fn classes(v: Vec<engine::model::TensorClass>) -> Vec<TensorClass> {
    v.into_iter().map(Into::into).collect()
}

/// One calibrated activation site and whether it kept a static scale.
#[napi(object)]
pub struct SiteDecision {
    /// "layers.3.down_proj input", "lm_head input".
    pub site: String,
    /// Static range / typical token's range (geometric mean over blocks of 32 channels).
    pub range_ratio: f64,
    pub is_static: bool,
}

/// static_int8 calibration: what was measured and which activation sites kept dynamic scales.
#[napi(object)]
pub struct CalibrationReport {
    pub texts: f64,
    pub tokens: f64,
    pub alpha: f64,
    /// Sites whose outlier channels SmoothQuant migrated into the weights.
    pub smoothed_sites: Vec<String>,
    pub max_range_ratio: f64,
    pub static_sites: f64,
    /// Sites left with dynamic (per-token) activation scales, each with the reason.
    pub dynamic_sites: Vec<String>,
    pub sites: Vec<SiteDecision>,
    pub time_ms: f64,
}

impl From<engine::quantize::static_int8::CalibrationReport> for CalibrationReport {
    fn from(r: engine::quantize::static_int8::CalibrationReport) -> Self {
        let engine::quantize::static_int8::CalibrationReport {
            texts,
            tokens,
            alpha,
            smoothed_sites,
            max_range_ratio,
            static_sites,
            dynamic_sites,
            sites,
            time_ms,
        } = r;
        Self {
            texts: num(texts),
            tokens: num(tokens),
            alpha: alpha as f64,
            smoothed_sites,
            max_range_ratio,
            static_sites: num(static_sites),
            dynamic_sites,
            sites: sites
                .into_iter()
                .map(|s| {
                    let engine::quantize::static_int8::SiteDecision { site, range_ratio, is_static } = s;
                    SiteDecision { site, range_ratio, is_static }
                })
                .collect(),
            time_ms,
        }
    }
}

/// The quantization mode as loaded: which tensors are in which format.
#[napi(object, use_nullable = true)]
pub struct QuantizationInfo {
    /// One of `optionValues().quantization`.
    pub mode: String,
    pub tensors: Vec<TensorClass>,
    /// static_int8: the calibration's measurements and decisions.
    pub calibration: Option<CalibrationReport>,
}

/// What compile mode max-autotune measured or read from its cache.
#[napi(object, use_nullable = true)]
pub struct AutotuneReport {
    /// Shapes tuned (decode and prefill count separately).
    pub shapes: f64,
    pub measured: f64,
    pub from_cache: f64,
    pub ms: f64,
    pub cache_file: Option<String>,
    /// Why the cache could not be read or written (tuning still applies to this process).
    pub cache_error: Option<String>,
    /// Chosen tilings: "kernel nxk decode|prefill" -> "tasks/thread x row block".
    pub chosen: BTreeMap<String, String>,
}

impl From<engine::model::autotune::AutotuneReport> for AutotuneReport {
    fn from(r: engine::model::autotune::AutotuneReport) -> Self {
        let engine::model::autotune::AutotuneReport { shapes, measured, from_cache, ms, cache_file, cache_error, chosen } = r;
        Self { shapes: num(shapes), measured: num(measured), from_cache: num(from_cache), ms, cache_file: path(cache_file), cache_error, chosen }
    }
}

/// What the prepared-weights disk cache did for this load (static_int8 and int4 compute at load).
#[napi(object, use_nullable = true)]
pub struct WeightCacheInfo {
    /// "hit", "written", "rebuilt", "off", "not used" or "error".
    pub status: String,
    pub path: Option<String>,
    pub error: Option<String>,
}

impl From<engine::source::prepared_cache::WeightCacheInfo> for WeightCacheInfo {
    fn from(w: engine::source::prepared_cache::WeightCacheInfo) -> Self {
        let engine::source::prepared_cache::WeightCacheInfo { status, path: p, error } = w;
        Self { status: status.to_string(), path: path(p), error }
    }
}

/// The serving loop as of its last step: KV pool, batch limits, sequences, prefix cache.
#[napi(object, use_nullable = true)]
pub struct ServingInfo {
    pub block_tokens: f64,
    pub blocks_total: f64,
    /// Blocks referenced by running requests.
    pub blocks_used: f64,
    /// Free blocks still holding a cached prefix (evicted oldest first when needed).
    pub blocks_cached: f64,
    pub kv_cache_bytes: f64,
    /// One of `optionValues().kvCacheDtype`.
    pub kv_cache_dtype: String,
    pub max_batch_tokens: f64,
    pub max_concurrent_sequences: f64,
    /// Longest prefill chunk of one request per step (chunked prefill); null when unbounded.
    pub max_prefill_chunk: Option<f64>,
    pub prefix_caching: bool,
    pub prefix_cache_queried_tokens: f64,
    pub prefix_cache_hit_tokens: f64,
    pub prefix_cache_hit_rate: f64,
    pub running_sequences: f64,
    pub waiting_sequences: f64,
    /// Requests preempted (blocks freed, recomputed later) because the pool ran out.
    pub preemptions: f64,
    pub steps: f64,
}

impl From<engine::serve::report::ServingInfo> for ServingInfo {
    fn from(s: engine::serve::report::ServingInfo) -> Self {
        let engine::serve::report::ServingInfo {
            block_tokens,
            blocks_total,
            blocks_used,
            blocks_cached,
            kv_cache_bytes,
            kv_cache_dtype,
            max_batch_tokens,
            max_concurrent_sequences,
            max_prefill_chunk,
            prefix_caching,
            prefix_cache_queried_tokens,
            prefix_cache_hit_tokens,
            prefix_cache_hit_rate,
            running_sequences,
            waiting_sequences,
            preemptions,
            steps,
        } = s;
        Self {
            block_tokens: num(block_tokens),
            blocks_total: num(blocks_total),
            blocks_used: num(blocks_used),
            blocks_cached: num(blocks_cached),
            kv_cache_bytes: num(kv_cache_bytes),
            kv_cache_dtype: name(&kv_cache_dtype),
            max_batch_tokens: num(max_batch_tokens),
            max_concurrent_sequences: num(max_concurrent_sequences),
            max_prefill_chunk: max_prefill_chunk.map(num),
            prefix_caching,
            prefix_cache_queried_tokens: num(prefix_cache_queried_tokens),
            prefix_cache_hit_tokens: num(prefix_cache_hit_tokens),
            prefix_cache_hit_rate,
            running_sequences: num(running_sequences),
            waiting_sequences: num(waiting_sequences),
            preemptions: num(preemptions),
            steps: num(steps),
        }
    }
}

/// The loaded model: shapes, formats, threads, load time, caches and the serving loop.
#[napi(object, use_nullable = true)]
pub struct ModelInfo {
    pub model_path: String,
    pub architecture: String,
    pub num_parameters: f64,
    pub vocab_size: f64,
    pub hidden_size: f64,
    pub intermediate_size: f64,
    pub num_layers: f64,
    pub num_attention_heads: f64,
    pub num_key_value_heads: f64,
    pub head_dim: f64,
    pub max_seq_length: f64,
    pub tie_word_embeddings: bool,
    pub eos_token_ids: Vec<u32>,
    pub quantization: QuantizationInfo,
    /// Storage format of the weight matrices as loaded ("bf16", "q8_0", ...).
    pub dtype: String,
    /// Matrices left in the checkpoint dtype by the quantization mode, with the reason.
    pub unquantized_tensors: Vec<String>,
    pub compute_dtype: String,
    pub device: String,
    pub threads: f64,
    /// The kernels' instruction set, chosen at run time ("avx2+fma+f16c", "neon+dotprod", "portable").
    pub simd: String,
    pub load_time_ms: f64,
    pub has_chat_template: bool,
    /// What compile mode max-autotune measured or read from its cache (null otherwise).
    pub autotune: Option<AutotuneReport>,
    /// Whether static_int8 / int4 weights came from, or went to, the prepared-weights disk cache.
    pub weight_cache: WeightCacheInfo,
    pub serving: ServingInfo,
}

impl From<engine::serve::report::ModelInfo> for ModelInfo {
    fn from(m: engine::serve::report::ModelInfo) -> Self {
        let engine::serve::report::ModelInfo {
            model_path,
            architecture,
            num_parameters,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_seq_length,
            tie_word_embeddings,
            eos_token_ids,
            quantization,
            dtype,
            unquantized_tensors,
            compute_dtype,
            device,
            threads,
            simd,
            load_time_ms,
            has_chat_template,
            autotune,
            weight_cache,
            serving,
        } = m;
        let engine::serve::report::QuantizationInfo { mode, tensors, calibration } = quantization;
        Self {
            model_path,
            architecture: architecture.to_string(),
            num_parameters: num(num_parameters),
            vocab_size: num(vocab_size),
            hidden_size: num(hidden_size),
            intermediate_size: num(intermediate_size),
            num_layers: num(num_layers),
            num_attention_heads: num(num_attention_heads),
            num_key_value_heads: num(num_key_value_heads),
            head_dim: num(head_dim),
            max_seq_length: num(max_seq_length),
            tie_word_embeddings,
            eos_token_ids,
            quantization: QuantizationInfo { mode, tensors: classes(tensors), calibration: calibration.map(Into::into) },
            dtype,
            unquantized_tensors,
            compute_dtype,
            device,
            threads: num(threads),
            simd: simd.to_string(),
            load_time_ms,
            has_chat_template,
            autotune: autotune.map(Into::into),
            weight_cache: weight_cache.into(),
            serving: serving.into(),
        }
    }
}

/// Measured bytes: weights as loaded, the KV pool and what running requests hold of it.
#[napi(object, use_nullable = true)]
pub struct MemoryUsage {
    /// The same parameters held in f32: what `none` costs.
    pub base_model_size_mb: f64,
    /// Bytes of the weights as loaded now, summed over the tensors.
    pub accelerated_model_size_mb: f64,
    pub memory_saved_mb: f64,
    pub memory_reduction_percent: f64,
    pub weight_bytes: f64,
    pub checkpoint_bytes: f64,
    /// KV cache held by running requests (their blocks).
    pub kv_cache_bytes: f64,
    /// The whole KV pool (kvCacheMemory rounded down to whole blocks).
    pub kv_cache_pool_bytes: f64,
    pub kv_cache_bytes_per_token: f64,
    /// KV cache a single sequence of maxSeqLength tokens would need.
    pub kv_cache_bytes_at_max_seq_length: f64,
    /// Measured weight bytes per tensor class and storage format.
    pub weights_by_class: Vec<TensorClass>,
    /// This process's resident memory right after the load, and the highest it had reached by
    /// then (process-wide: a fresh process's load peak; Linux only, null elsewhere).
    pub rss_after_load_bytes: Option<f64>,
    pub peak_rss_at_load_bytes: Option<f64>,
}

impl From<engine::serve::report::MemoryUsage> for MemoryUsage {
    fn from(m: engine::serve::report::MemoryUsage) -> Self {
        let engine::serve::report::MemoryUsage {
            base_model_size_mb,
            accelerated_model_size_mb,
            memory_saved_mb,
            memory_reduction_percent,
            weight_bytes,
            checkpoint_bytes,
            kv_cache_bytes,
            kv_cache_pool_bytes,
            kv_cache_bytes_per_token,
            kv_cache_bytes_at_max_seq_length,
            weights_by_class,
            rss_after_load_bytes,
            peak_rss_at_load_bytes,
        } = m;
        Self {
            base_model_size_mb,
            accelerated_model_size_mb,
            memory_saved_mb,
            memory_reduction_percent,
            weight_bytes: num(weight_bytes),
            checkpoint_bytes: num(checkpoint_bytes),
            kv_cache_bytes: num(kv_cache_bytes),
            kv_cache_pool_bytes: num(kv_cache_pool_bytes),
            kv_cache_bytes_per_token: num(kv_cache_bytes_per_token),
            kv_cache_bytes_at_max_seq_length: num(kv_cache_bytes_at_max_seq_length),
            weights_by_class: classes(weights_by_class),
            rss_after_load_bytes: rss_after_load_bytes.map(num),
            peak_rss_at_load_bytes: peak_rss_at_load_bytes.map(num),
        }
    }
}

/// Sampling defaults the checkpoint ships in `generation_config.json`.
#[napi(object, use_nullable = true)]
pub struct GenerationDefaults {
    pub do_sample: bool,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<f64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub eos_token_ids: Vec<u32>,
}

impl From<engine::model::config::GenerationDefaults> for GenerationDefaults {
    fn from(d: engine::model::config::GenerationDefaults) -> Self {
        let engine::model::config::GenerationDefaults { do_sample, temperature, top_p, top_k, min_p, repetition_penalty, eos_token_ids } = d;
        Self { do_sample, temperature, top_p, top_k: top_k.map(num), min_p, repetition_penalty, eos_token_ids }
    }
}

/// avg / min / max / p50 / p90 of a series.
#[napi(object)]
pub struct Stats {
    pub avg: f64,
    pub min: f64,
    pub max: f64,
    pub p50: f64,
    pub p90: f64,
}

impl From<engine::serve::report::Stats> for Stats {
    fn from(s: engine::serve::report::Stats) -> Self {
        let engine::serve::report::Stats { avg, min, max, p50, p90 } = s;
        Self { avg, min, max, p50, p90 }
    }
}

/// `benchmarkPerformance`: warm-up, then iterations of one prefill and N decode steps.
#[napi(object)]
pub struct BenchmarkReport {
    pub num_iterations: f64,
    /// The same count under the seed guide's key.
    pub iterations: f64,
    pub warmup_iterations: f64,
    pub prompt_tokens: f64,
    pub decode_tokens: f64,
    /// Seconds per iteration (one prefill plus `decodeTokens` decode steps).
    pub avg_inference_time: f64,
    /// Fastest and slowest iteration, and all timed iterations together (seconds).
    pub min_inference_time: f64,
    pub max_inference_time: f64,
    pub total_time: f64,
    /// Decode tokens per second (average).
    pub tokens_per_second: f64,
    pub prefill_tokens_per_second: Stats,
    pub decode_tokens_per_second: Stats,
    pub prefill_latency_ms: Stats,
    pub decode_token_latency_ms: Stats,
    pub applied_optimizations: Vec<String>,
    pub skipped_optimizations: Vec<String>,
    pub threads: f64,
}

impl From<engine::serve::report::BenchmarkReport> for BenchmarkReport {
    fn from(r: engine::serve::report::BenchmarkReport) -> Self {
        let engine::serve::report::BenchmarkReport {
            num_iterations,
            iterations,
            warmup_iterations,
            prompt_tokens,
            decode_tokens,
            avg_inference_time,
            min_inference_time,
            max_inference_time,
            total_time,
            tokens_per_second,
            prefill_tokens_per_second,
            decode_tokens_per_second,
            prefill_latency_ms,
            decode_token_latency_ms,
            applied_optimizations,
            skipped_optimizations,
            threads,
        } = r;
        Self {
            num_iterations: num(num_iterations),
            iterations: num(iterations),
            warmup_iterations: num(warmup_iterations),
            prompt_tokens: num(prompt_tokens),
            decode_tokens: num(decode_tokens),
            avg_inference_time,
            min_inference_time,
            max_inference_time,
            total_time,
            tokens_per_second,
            prefill_tokens_per_second: prefill_tokens_per_second.into(),
            decode_tokens_per_second: decode_tokens_per_second.into(),
            prefill_latency_ms: prefill_latency_ms.into(),
            decode_token_latency_ms: decode_token_latency_ms.into(),
            applied_optimizations,
            skipped_optimizations,
            threads: num(threads),
        }
    }
}

/// A token and its log-probability under the model (before penalties, bias, grammar and temperature).
#[napi(object)]
pub struct TokenAlternative {
    pub token_id: u32,
    pub token: String,
    /// The token's bytes (a token may end inside a UTF-8 character).
    pub bytes: Vec<u32>,
    pub logprob: f64,
}

impl From<engine::serve::logprobs::Alternative> for TokenAlternative {
    fn from(a: engine::serve::logprobs::Alternative) -> Self {
        let engine::serve::logprobs::Alternative { token_id, token, bytes, logprob } = a;
        Self { token_id, token, bytes: bytes.into_iter().map(u32::from).collect(), logprob: logprob as f64 }
    }
}

/// The chosen token with the most likely alternatives at its step.
#[napi(object)]
pub struct TokenLogprob {
    pub token_id: u32,
    pub token: String,
    pub bytes: Vec<u32>,
    pub logprob: f64,
    /// The most likely tokens at this step, most likely first.
    pub top: Vec<TokenAlternative>,
}

impl From<engine::serve::logprobs::TokenLogprob> for TokenLogprob {
    fn from(t: engine::serve::logprobs::TokenLogprob) -> Self {
        let engine::serve::logprobs::TokenLogprob { chosen, top } = t;
        let TokenAlternative { token_id, token, bytes, logprob } = chosen.into();
        Self { token_id, token, bytes, logprob, top: top.into_iter().map(Into::into).collect() }
    }
}

fn logprobs(v: Option<Vec<engine::serve::logprobs::TokenLogprob>>) -> Option<Vec<TokenLogprob>> {
    v.map(|v| v.into_iter().map(Into::into).collect())
}

/// One piece of streamed output: text never splits a UTF-8 character.
#[napi(object)]
pub struct StreamChunk {
    pub text: String,
    pub token_ids: Vec<u32>,
    /// One per token id, when the request asked for logprobs.
    pub logprobs: Option<Vec<TokenLogprob>>,
}

impl From<engine::StreamChunk> for StreamChunk {
    fn from(c: engine::StreamChunk) -> Self {
        let engine::StreamChunk { text, token_ids, logprobs: l } = c;
        Self { text, token_ids, logprobs: logprobs(l) }
    }
}

#[napi(object)]
pub struct Usage {
    pub prompt_tokens: f64,
    pub completion_tokens: f64,
    pub total_tokens: f64,
    /// Prompt tokens whose KV came from the prefix cache (not computed for this request).
    pub cached_tokens: f64,
}

#[napi(object)]
pub struct Timings {
    /// Submission to the first engine step that ran this request (waiting for a place in the batch).
    pub queued_ms: f64,
    /// First step to the first token (the prompt's prefill, sharing steps with other requests).
    pub prefill_ms: f64,
    /// First token to the last.
    pub decode_ms: f64,
    pub prefill_tokens_per_second: f64,
    pub decode_tokens_per_second: f64,
}

/// A finished generation, with the number of chunks streamed before it.
#[napi(object)]
pub struct GenerateResult {
    pub text: String,
    pub token_ids: Vec<u32>,
    /// "stop" (EOS, a stop token id or a stop string) or "length" (maxTokens or the context length).
    pub finish_reason: String,
    /// One per generated token, when `logprobs` was set.
    pub logprobs: Option<Vec<TokenLogprob>>,
    pub usage: Usage,
    pub timings: Timings,
    pub chunk_count: u32,
}

impl GenerateResult {
    pub fn new(o: engine::GenerateOutput, chunk_count: u32) -> Self {
        let engine::GenerateOutput { text, token_ids, finish_reason, logprobs: l, usage, timings, pooled: _ } = o;
        let engine::serve::sequence::Usage { prompt_tokens, completion_tokens, total_tokens, cached_tokens } = usage;
        let engine::serve::sequence::Timings { queued_ms, prefill_ms, decode_ms, prefill_tokens_per_second, decode_tokens_per_second } = timings;
        Self {
            text,
            token_ids,
            finish_reason: name(&finish_reason),
            logprobs: logprobs(l),
            usage: Usage {
                prompt_tokens: num(prompt_tokens),
                completion_tokens: num(completion_tokens),
                total_tokens: num(total_tokens),
                cached_tokens: num(cached_tokens),
            },
            timings: Timings { queued_ms, prefill_ms, decode_ms, prefill_tokens_per_second, decode_tokens_per_second },
            chunk_count,
        }
    }
}

/// What `generate`'s callback receives, in order: a `chunk` event per streamed piece, then one
/// `done` (with the result) or `error` ("[CODE] message").
#[napi(object)]
pub struct GenerateEvent {
    /// "chunk", "done" or "error".
    #[napi(ts_type = "'chunk' | 'done' | 'error'")]
    pub kind: String,
    pub chunk: Option<StreamChunk>,
    pub result: Option<GenerateResult>,
    pub error: Option<String>,
}

/// Progress of long load-time work (weight quantization, calibration passes).
#[napi(object)]
pub struct LoadProgress {
    /// "quantize", "calibrate", "calibrate (smoothed)".
    pub stage: String,
    pub done: f64,
    pub total: f64,
    /// What `done` and `total` count: "tensors" or "tokens".
    pub unit: String,
}

impl From<&engine::Progress> for LoadProgress {
    fn from(p: &engine::Progress) -> Self {
        let engine::Progress { stage, done, total, unit } = p;
        Self { stage: stage.to_string(), done: num(*done), total: num(*total), unit: unit.to_string() }
    }
}

/// Embeddings of one `embed` call: `count` vectors of `dims` values, row after row in `data`.
#[napi(object)]
pub struct EmbedResult {
    pub data: Float32Array,
    pub dims: u32,
    pub count: u32,
    /// Tokens of all inputs together.
    pub prompt_tokens: f64,
}

impl From<engine::Embedded> for EmbedResult {
    fn from(e: engine::Embedded) -> Self {
        let engine::Embedded { embeddings, prompt_tokens } = e;
        let dims = embeddings.first().map_or(0, Vec::len);
        let count = embeddings.len();
        Self { data: Float32Array::new(embeddings.concat()), dims: dims as u32, count: count as u32, prompt_tokens: num(prompt_tokens) }
    }
}

#[napi(object)]
pub struct RerankItem {
    /// The document's position in the call.
    pub index: u32,
    /// softmax([no, yes])[1] at the last position, in [0, 1].
    pub score: f64,
}

/// A ranking, best first (equal scores keep the documents' order), cut to `topN`.
#[napi(object)]
pub struct RerankResult {
    pub results: Vec<RerankItem>,
    pub prompt_tokens: f64,
}

impl From<engine::Reranked> for RerankResult {
    fn from(r: engine::Reranked) -> Self {
        let engine::Reranked { results, prompt_tokens } = r;
        let item = |engine::Scored { index, score }| RerankItem { index: index as u32, score };
        Self { results: results.into_iter().map(item).collect(), prompt_tokens: num(prompt_tokens) }
    }
}

/// What `embed` / `rerank`'s callback receives, once: the result, or an error ("[CODE] message").
#[napi(object)]
pub struct EmbedEvent {
    pub result: Option<EmbedResult>,
    pub error: Option<String>,
}

#[napi(object)]
pub struct RerankEvent {
    pub result: Option<RerankResult>,
    pub error: Option<String>,
}

/// What the checkpoint is for and how it pools (see the plan's `modelKind` item).
#[napi(object, use_nullable = true)]
pub struct RetrievalInfo {
    #[napi(ts_type = "'generate' | 'embedding' | 'reranker'")]
    pub kind: String,
    /// Which file (or the modelKind option) said so.
    pub detected_from: String,
    /// The pooling the checkpoint asks for; only "last_token" embeds.
    pub pooling: String,
    /// Whether the checkpoint's own pipeline L2-normalises.
    pub normalize: bool,
    /// Named prompt prefixes (config_sentence_transformers.json), e.g. `query`.
    pub prompts: std::collections::HashMap<String, String>,
    /// A token appended to every embedded text (GGUF add_eos_token), if any.
    pub append_eos: Option<u32>,
}

impl From<&engine::Retrieval> for RetrievalInfo {
    fn from(r: &engine::Retrieval) -> Self {
        let engine::Retrieval { kind, detected_from, pooling, normalize, prompts, append_eos } = r.clone();
        Self {
            kind: name(&kind),
            detected_from,
            pooling,
            normalize,
            prompts: prompts.into_iter().collect(),
            append_eos,
        }
    }
}
