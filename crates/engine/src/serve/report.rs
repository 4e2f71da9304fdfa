//! Model info, measured memory, and the performance benchmark.
use crate::engine::Engine;
use crate::error::Result;
use crate::model::TensorClass;
use crate::quantize::static_int8::CalibrationReport;
use serde::Serialize;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

const MB: f64 = 1024.0 * 1024.0;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelInfo {
    pub model_path: String,
    pub architecture: &'static str,
    pub num_parameters: usize,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_seq_length: usize,
    pub tie_word_embeddings: bool,
    pub eos_token_ids: Vec<u32>,
    pub quantization: QuantizationInfo,
    /// Storage format of the weight matrices as loaded ("bf16", "q8_0", ...).
    pub dtype: String,
    /// Matrices left in the checkpoint dtype by the quantization mode, with the reason.
    pub unquantized_tensors: Vec<String>,
    pub compute_dtype: String,
    pub device: String,
    pub threads: usize,
    /// The kernels' instruction set, chosen at run time ("avx2+fma+f16c", "neon+dotprod",
    /// "portable"; `NANO_QWEN3_ISA` forces one).
    pub simd: &'static str,
    pub load_time_ms: f64,
    pub has_chat_template: bool,
    /// What compile mode max-autotune measured or read from its cache (null otherwise).
    pub autotune: Option<crate::model::autotune::AutotuneReport>,
    /// Whether static_int8 / int4 weights came from, or went to, the prepared-weights disk cache.
    pub weight_cache: crate::source::prepared_cache::WeightCacheInfo,
    /// The serving loop: KV pool, batch limits, sequences, prefix cache, preemptions.
    pub serving: ServingInfo,
}

/// The scheduler and KV pool as of the last step.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServingInfo {
    pub block_tokens: usize,
    pub blocks_total: usize,
    /// Blocks referenced by running sequences.
    pub blocks_used: usize,
    /// Free blocks that still hold a cached prefix (evicted oldest first when needed).
    pub blocks_cached: usize,
    pub kv_cache_bytes: usize,
    pub kv_cache_dtype: crate::model::KvDtype,
    pub max_batch_tokens: usize,
    pub max_concurrent_sequences: usize,
    /// Longest prefill chunk of one sequence per step (chunked prefill), null when unbounded.
    pub max_prefill_chunk: Option<usize>,
    pub prefix_caching: bool,
    /// Prompt tokens looked up in the prefix cache, how many were found, and the ratio.
    pub prefix_cache_queried_tokens: u64,
    pub prefix_cache_hit_tokens: u64,
    pub prefix_cache_hit_rate: f64,
    pub running_sequences: usize,
    pub waiting_sequences: usize,
    /// Sequences preempted (blocks freed, recomputed later) because the pool ran out.
    pub preemptions: u64,
    pub steps: u64,
}

/// Which tensors are in which format, with measured bytes.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QuantizationInfo {
    pub mode: String,
    pub tensors: Vec<TensorClass>,
    /// static_int8: the calibration's measurements and decisions.
    pub calibration: Option<CalibrationReport>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryUsage {
    /// The same parameters held in f32: what `none` costs.
    pub base_model_size_mb: f64,
    /// Bytes of the weights as loaded now, summed over the tensors.
    pub accelerated_model_size_mb: f64,
    pub memory_saved_mb: f64,
    pub memory_reduction_percent: f64,
    pub weight_bytes: usize,
    pub checkpoint_bytes: usize,
    /// KV cache held by running requests (their blocks).
    pub kv_cache_bytes: usize,
    /// The whole KV pool (`kvCacheMemory`, rounded down to whole blocks).
    pub kv_cache_pool_bytes: usize,
    pub kv_cache_bytes_per_token: usize,
    /// KV cache a single sequence of maxSeqLength tokens would need.
    pub kv_cache_bytes_at_max_seq_length: usize,
    /// Weight bytes per tensor class and format.
    pub weights_by_class: Vec<TensorClass>,
    /// This process's resident memory right after the load, and the highest it had reached by then
    /// (process-wide, so a fresh process's load peak; Linux only, null elsewhere).
    pub rss_after_load_bytes: Option<u64>,
    pub peak_rss_at_load_bytes: Option<u64>,
}

/// (resident, peak resident) bytes of this process, from /proc/self/status.
pub fn process_rss() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].trim().trim_end_matches("kB").trim().parse::<u64>().ok().map(|kb| kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub avg: f64,
    pub min: f64,
    pub max: f64,
    pub p50: f64,
    pub p90: f64,
}

impl Stats {
    pub fn of(values: &[f64]) -> Self {
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| -> f64 {
            if v.is_empty() {
                return 0.0;
            }
            let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
            v[idx]
        };
        let n = v.len().max(1) as f64;
        Self {
            avg: v.iter().sum::<f64>() / n,
            min: v.first().copied().unwrap_or(0.0),
            max: v.last().copied().unwrap_or(0.0),
            p50: pct(50.0),
            p90: pct(90.0),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BenchmarkReport {
    pub num_iterations: usize,
    /// The same count under the seed guide's key.
    pub iterations: usize,
    pub warmup_iterations: usize,
    pub prompt_tokens: usize,
    pub decode_tokens: usize,
    /// Seconds per iteration (one prefill plus `decode_tokens` decode steps).
    pub avg_inference_time: f64,
    /// Fastest and slowest iteration, and all timed iterations together (seconds).
    pub min_inference_time: f64,
    pub max_inference_time: f64,
    pub total_time: f64,
    /// Decode tokens per second (average), the figure users usually mean.
    pub tokens_per_second: f64,
    pub prefill_tokens_per_second: Stats,
    pub decode_tokens_per_second: Stats,
    pub prefill_latency_ms: Stats,
    pub decode_token_latency_ms: Stats,
    pub applied_optimizations: Vec<String>,
    pub skipped_optimizations: Vec<String>,
    pub threads: usize,
}

impl Engine {
    pub fn model_info(&self) -> ModelInfo {
        let c = &self.model.config;
        ModelInfo {
            model_path: self.files.path().display().to_string(),
            architecture: c.architecture.hf_class(),
            num_parameters: c.num_parameters(),
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_layers: c.num_hidden_layers,
            num_attention_heads: c.num_attention_heads,
            num_key_value_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            max_seq_length: self.max_seq_length,
            tie_word_embeddings: c.tie_word_embeddings,
            eos_token_ids: {
                let mut e = self.generation_defaults.eos_token_ids.clone();
                e.extend(c.eos_token_ids.iter().filter(|x| !self.generation_defaults.eos_token_ids.contains(x)));
                e
            },
            quantization: QuantizationInfo {
                mode: self.plan.quantization.name().into(),
                tensors: self.model.tensor_classes(),
                calibration: self.calibration.clone(),
            },
            dtype: self.model.weight_format.clone(),
            unquantized_tensors: self.model.unquantized.clone(),
            compute_dtype: self.plan.compute_dtype.clone(),
            device: self.plan.device.clone(),
            threads: self.threads,
            load_time_ms: self.load_time_ms,
            has_chat_template: self.template.is_some(),
            autotune: self.autotune.clone(),
            weight_cache: self.weight_cache.clone(),
            simd: nano_qwen3_kernels::active_isa().name(),
            serving: self.serving_info(),
        }
    }

    pub fn serving_info(&self) -> ServingInfo {
        let s = self.serving_stats();
        ServingInfo {
            block_tokens: crate::model::BLOCK_TOKENS,
            blocks_total: s.blocks_total,
            blocks_used: s.blocks_used,
            blocks_cached: s.blocks_cached,
            kv_cache_bytes: self.kv_pool_bytes,
            kv_cache_dtype: self.kv_dtype,
            max_batch_tokens: self.scheduler.max_batch_tokens,
            max_concurrent_sequences: self.scheduler.max_sequences,
            max_prefill_chunk: self.prefill_chunk,
            prefix_caching: self.prefix_caching,
            prefix_cache_queried_tokens: s.prefix.queried_tokens,
            prefix_cache_hit_tokens: s.prefix.hit_tokens,
            prefix_cache_hit_rate: if s.prefix.queried_tokens > 0 { s.prefix.hit_tokens as f64 / s.prefix.queried_tokens as f64 } else { 0.0 },
            running_sequences: s.running,
            waiting_sequences: s.waiting,
            preemptions: s.preemptions,
            steps: s.steps,
        }
    }

    pub fn memory_usage(&self) -> MemoryUsage {
        let base = self.model.config.num_parameters() * 4;
        let now = self.model.weight_bytes();
        let per_token = self.model.kv_bytes_per_token(self.kv_dtype.size());
        MemoryUsage {
            base_model_size_mb: base as f64 / MB,
            accelerated_model_size_mb: now as f64 / MB,
            memory_saved_mb: (base as f64 - now as f64) / MB,
            memory_reduction_percent: 100.0 * (1.0 - now as f64 / base as f64),
            weight_bytes: now,
            checkpoint_bytes: self.checkpoint_bytes(),
            kv_cache_bytes: self.serving_stats().blocks_used * self.kv_pool_bytes / self.kv_blocks.max(1),
            kv_cache_pool_bytes: self.kv_pool_bytes,
            kv_cache_bytes_per_token: per_token,
            kv_cache_bytes_at_max_seq_length: per_token * self.max_seq_length,
            weights_by_class: self.model.tensor_classes(),
            rss_after_load_bytes: self.rss_at_load.map(|r| r.0),
            peak_rss_at_load_bytes: self.rss_at_load.map(|r| r.1),
        }
    }

    /// Warm up once, then time `iterations` runs of: prefill `sample_text`, then greedy-decode
    /// `decode_tokens` tokens with EOS ignored. Prefill and decode are reported separately.
    pub fn benchmark(&self, sample_text: &str, iterations: usize, decode_tokens: usize) -> Result<BenchmarkReport> {
        let prompt = self.tokenizer.encode(sample_text, false)?;
        let opts = crate::serve::request::GenerateOptions {
            sampling: Default::default(),
            max_tokens: decode_tokens.max(1),
            stop: vec![],
            stop_token_ids: vec![],
            ignore_eos: true,
            logprobs: None,
            grammar: None,
        };
        let never = AtomicBool::new(false);
        let warmup = 1;
        let (mut prefill_tps, mut decode_tps, mut prefill_ms, mut token_ms, mut total_s) = (vec![], vec![], vec![], vec![], vec![]);
        for i in 0..warmup + iterations.max(1) {
            let t = Instant::now();
            let out = self.generate(&prompt, &opts, &never, &mut |_| {})?;
            if i < warmup {
                continue;
            }
            total_s.push(t.elapsed().as_secs_f64());
            prefill_tps.push(out.timings.prefill_tokens_per_second);
            prefill_ms.push(out.timings.prefill_ms);
            if out.usage.completion_tokens > 1 {
                decode_tps.push(out.timings.decode_tokens_per_second);
                token_ms.push(out.timings.decode_ms / (out.usage.completion_tokens - 1) as f64);
            }
        }
        let decode = Stats::of(&decode_tps);
        let runs = Stats::of(&total_s);
        Ok(BenchmarkReport {
            num_iterations: iterations.max(1),
            iterations: iterations.max(1),
            warmup_iterations: warmup,
            prompt_tokens: prompt.len(),
            decode_tokens: opts.max_tokens,
            avg_inference_time: runs.avg,
            min_inference_time: runs.min,
            max_inference_time: runs.max,
            total_time: total_s.iter().sum(),
            tokens_per_second: decode.avg,
            prefill_tokens_per_second: Stats::of(&prefill_tps),
            decode_tokens_per_second: decode,
            prefill_latency_ms: Stats::of(&prefill_ms),
            decode_token_latency_ms: Stats::of(&token_ms),
            applied_optimizations: self.plan.applied_optimizations.clone(),
            skipped_optimizations: self.plan.skipped_optimizations.clone(),
            threads: self.threads,
        })
    }
}
