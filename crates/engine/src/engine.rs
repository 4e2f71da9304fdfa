//! The engine: a loaded model with its tokenizer, chat template and plan, and the operations a
//! runner needs. Immutable after load and `Sync`: concurrent requests each bring their own KV cache.
use crate::acceleration::{plan, AccelerationConfig, CompileMode, ExecutionPlan, Quantization};
use crate::fast_forward::ExecOptions;
use crate::kv_cache::KvDtype;
use crate::progress::ProgressFn;
use crate::static_int8::{self, CalibrationReport};
use crate::chat_template::{ChatTemplate, ChatTemplateOptions};
use crate::config::GenerationDefaults;
use crate::error::{EngineError, Result};
use crate::generate::{FinishReason, GenerateOptions, StopMatcher, StopScan};
use crate::kv_cache::KvCache;
use crate::model::{LogitsFor, Qwen3Model, SequenceInput};
use crate::sampler::Sampler;
use nano_qwen3_kernels::pool::ThreadPool;
use crate::tokenizer::{StreamDecoder, Tokenizer};
use crate::source::ModelFiles;
use candle_core::Device;
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone)]
pub struct LoadOptions {
    pub device: String,
    pub acceleration: AccelerationConfig,
    pub max_seq_length: Option<usize>,
    pub threads: Option<usize>,
    /// Called during long load-time work (quantization, calibration).
    pub progress: Option<ProgressFn>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { device: "auto".into(), acceleration: AccelerationConfig::default(), max_seq_length: None, threads: None, progress: None }
    }
}

impl std::fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("device", &self.device)
            .field("acceleration", &self.acceleration)
            .field("max_seq_length", &self.max_seq_length)
            .field("threads", &self.threads)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

pub struct Engine {
    pub model: Qwen3Model,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    pub generation_defaults: GenerationDefaults,
    pub plan: ExecutionPlan,
    /// Where the model was loaded from.
    pub files: ModelFiles,
    pub max_seq_length: usize,
    pub threads: usize,
    pub load_time_ms: f64,
    /// static_int8: what calibration measured and decided.
    pub calibration: Option<CalibrationReport>,
    /// Which optimizations the forward pass uses.
    pub exec: ExecOptions,
    /// Chunked prefill (useGradientCheckpointing): tokens per forward call.
    pub prefill_chunk: Option<usize>,
    pub kv_dtype: KvDtype,
    checkpoint_bytes: usize,
    /// The kernels' threads: a leader that runs each forward call and `threads - 1` workers.
    pool: ThreadPool,
    _load_pool: rayon::ThreadPool,
    /// What compile mode max-autotune measured or read from its cache at load.
    pub autotune: Option<crate::autotune::AutotuneReport>,
    live_kv_bytes: Arc<AtomicUsize>,
}

/// One piece of streamed output.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamChunk {
    pub text: String,
    pub token_ids: Vec<u32>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Timings {
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub prefill_tokens_per_second: f64,
    pub decode_tokens_per_second: f64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateOutput {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub timings: Timings,
}

/// Tokens per forward call with chunked prefill: bounds activation memory on long prompts while
/// keeping matmuls large enough to stay efficient.
pub const PREFILL_CHUNK: usize = 256;

/// False when the matrices are already Q4_0 blocks (a Q4_0 GGUF): int4 then uses them as they are.
fn needs_quantizing(src: &dyn crate::weights::TensorSource) -> bool {
    src.stored_format("model.layers.0.mlp.down_proj.weight").as_deref() != Some("q4_0")
}

fn per_second(n: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        n as f64 * 1000.0 / ms
    } else {
        0.0
    }
}

impl Engine {
    /// Load a Hugging Face model folder or a `.gguf` file.
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Self> {
        let started = Instant::now();
        let plan = plan(&opts.acceleration, &opts.device)?;
        let format = opts.acceleration.weight_format()?;
        let opened = crate::source::open(path)?;
        let config = opened.config;
        let max_seq_length = match opts.max_seq_length {
            None => config.max_position_embeddings,
            Some(n) if n >= 1 && n <= config.max_position_embeddings => n,
            Some(n) => {
                return Err(EngineError::invalid_arg(
                    "maxSeqLength",
                    n,
                    &format!("1 ..= {} (max_position_embeddings)", config.max_position_embeddings),
                ))
            }
        };
        let threads = match opts.threads {
            None => num_cpus::get_physical().max(1),
            Some(0) => return Err(EngineError::invalid_arg("threads", 0, "an integer >= 1")),
            Some(n) => n,
        };
        let cannot_start = |e: &dyn std::fmt::Display| EngineError::Unsupported(format!("cannot start {threads} threads: {e}"));
        let pool = ThreadPool::new(threads).map_err(|e| cannot_start(&e))?;
        let tensors = opened.tensors;
        let progress = opts.progress.as_ref();
        let calib = opts.acceleration.calibration.clone().unwrap_or_default();
        let acc = &opts.acceleration;
        // Loading and calibration also run rayon loops (quantizers, candle): same thread count.
        // The pool is kept (its threads sleep): threads exiting later would run their
        // destructors in the middle of serving.
        let load_pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("nano-qwen3-load-{i}"))
            .build()
            .map_err(|e| cannot_start(&e))?;
        let (model, calibration, tuned) = load_pool.install(|| pool.enter(|| -> Result<_> {
            let (mut model, calibration) = if opts.acceleration.quantization == Quantization::StaticInt8 {
                let (m, r) = static_int8::load(&config, tensors.as_ref(), &opened.tokenizer, &calib, &Device::Cpu, progress)?;
                (m, Some(r))
            } else if opts.acceleration.quantization == Quantization::Int4 && needs_quantizing(tensors.as_ref()) {
                let importance = crate::calibration::importance(&config, tensors.as_ref(), &opened.tokenizer, &calib, progress)?;
                (Qwen3Model::load_full(&config, tensors.as_ref(), format, &Device::Cpu, progress, Some(&importance))?, None)
            } else {
                (Qwen3Model::load_with_progress(&config, tensors.as_ref(), format, &Device::Cpu, progress)?, None)
            };
            if acc.use_fused_kernels {
                model.fuse_projections();
            }
            if acc.use_channels_last {
                model.repack_weights();
            }
            // Tiling is tuned last: it depends on the final formats and layouts.
            let tuned = (acc.use_torch_compile && acc.compile_mode == CompileMode::MaxAutotune)
                .then(|| crate::autotune::autotune(&model, threads, progress));
            Ok((model, calibration, tuned))
        }))?;
        let mut plan = plan;
        if let Some(t) = &tuned {
            plan.describe_autotune(t);
        }
        let exec = ExecOptions {
            flash_attention: acc.use_flash_attention,
            fused: acc.use_fused_kernels,
            reuse_buffers: acc.use_torch_compile && acc.compile_mode == CompileMode::ReduceOverhead,
        };
        Ok(Self {
            exec,
            prefill_chunk: acc.use_gradient_checkpointing.then_some(PREFILL_CHUNK),
            kv_dtype: acc.kv_cache_dtype,
            checkpoint_bytes: tensors.stored_bytes(),
            model,
            tokenizer: opened.tokenizer,
            template: opened.template,
            generation_defaults: opened.generation_defaults,
            plan,
            files: opened.files,
            max_seq_length,
            threads,
            load_time_ms: started.elapsed().as_secs_f64() * 1000.0,
            calibration,
            pool,
            _load_pool: load_pool,
            autotune: tuned,
            live_kv_bytes: Arc::new(AtomicUsize::new(0)),
        })
    }

    pub fn new_cache(&self) -> KvCache {
        let c = &self.model.config;
        KvCache::new(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, self.kv_dtype, self.live_kv_bytes.clone())
    }

    pub fn apply_chat_template(&self, messages: &serde_json::Value, opts: &ChatTemplateOptions) -> Result<String> {
        self.template
            .as_ref()
            .ok_or_else(|| EngineError::Template("this model has no chat template (none in tokenizer_config.json or the GGUF metadata)".into()))?
            .render(messages, opts)
    }

    fn check_prompt(&self, ids: &[u32]) -> Result<()> {
        if ids.is_empty() {
            return Err(EngineError::invalid_arg("prompt", "[] (empty)", "at least one token"));
        }
        let vocab = self.model.config.vocab_size as u32;
        if let Some(bad) = ids.iter().find(|&&i| i >= vocab) {
            return Err(EngineError::invalid_arg("token id", bad, &format!("0 <= id < {vocab}")));
        }
        if ids.len() > self.max_seq_length {
            return Err(EngineError::ContextOverflow { prompt_tokens: ids.len(), context: self.max_seq_length });
        }
        Ok(())
    }

    /// Logits (f32) for the last position, or for every position (row-major [n, vocab]).
    pub fn compute_logits(&self, ids: &[u32], all_positions: bool) -> Result<Vec<f32>> {
        self.check_prompt(ids)?;
        let mut cache = self.new_cache();
        let which = if all_positions { LogitsFor::AllTokens } else { LogitsFor::LastToken };
        let mut logits = Vec::new();
        self.forward(ids, &mut cache, which, &mut logits)?;
        Ok(logits)
    }

    fn eos_ids(&self, opts: &GenerateOptions) -> Vec<u32> {
        let mut ids = opts.stop_token_ids.clone();
        if !opts.ignore_eos {
            ids.extend(&self.generation_defaults.eos_token_ids);
            ids.extend(&self.model.config.eos_token_ids);
        }
        ids
    }

    /// Generate from `prompt`. `on_chunk` receives text as it becomes final (stop strings trimmed,
    /// no split characters); `cancel` is checked before every decode step.
    pub fn generate(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        cancel: &AtomicBool,
        on_chunk: &mut dyn FnMut(StreamChunk),
    ) -> Result<GenerateOutput> {
        self.check_prompt(prompt)?;
        let budget = opts.max_tokens.min(self.max_seq_length - prompt.len());
        let stop_ids = self.eos_ids(opts);
        let stops = StopMatcher::new(opts.stop.clone());
        let mut sampler = Sampler::new(opts.sampling.clone(), prompt);
        let mut decoder = StreamDecoder::new(true);
        let mut cache = self.new_cache();
        if self.exec.reuse_buffers {
            // reduce-overhead plans the whole request: the cache is sized once, not doubled.
            cache.reserve(prompt.len() + budget);
        }
        let (mut text, mut released, mut pending_ids) = (String::new(), 0usize, Vec::new());
        let mut tokens = Vec::new();
        let mut finish = FinishReason::Length;
        let mut trimmed_at_stop_string = false;

        let t0 = Instant::now();
        let mut logits = Vec::new();
        self.forward(prompt, &mut cache, LogitsFor::LastToken, &mut logits)?;
        let prefill_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let t1 = Instant::now();
        while tokens.len() < budget {
            if cancel.load(Ordering::Relaxed) {
                return Err(EngineError::Aborted);
            }
            // Padding rows of the lm_head have no token: never sample them.
            if let Some(pad) = logits.get_mut(self.tokenizer.vocab_size()..) {
                pad.fill(f32::NEG_INFINITY);
            }
            let next = sampler.sample(&mut logits);
            sampler.observe(next);
            if stop_ids.contains(&next) {
                finish = FinishReason::Stop;
                break;
            }
            tokens.push(next);
            pending_ids.push(next);
            let from = text.len();
            text.push_str(&decoder.push(&self.tokenizer, next)?);
            let safe = match stops.scan(&text, from) {
                StopScan::Hit(at) => {
                    text.truncate(at);
                    finish = FinishReason::Stop;
                    trimmed_at_stop_string = true;
                    break;
                }
                StopScan::SafeUpTo(s) => s,
            };
            if safe > released {
                on_chunk(StreamChunk { text: text[released..safe].to_string(), token_ids: std::mem::take(&mut pending_ids) });
                released = safe;
            }
            if tokens.len() < budget {
                if cancel.load(Ordering::Relaxed) {
                    return Err(EngineError::Aborted);
                }
                self.forward(&[next], &mut cache, LogitsFor::LastToken, &mut logits)?;
            }
        }
        if !trimmed_at_stop_string {
            // Text held back for an incomplete character can still complete a stop string.
            let from = text.len();
            text.push_str(&decoder.flush(&self.tokenizer)?);
            if let StopScan::Hit(at) = stops.scan(&text, from) {
                text.truncate(at.max(released));
                finish = FinishReason::Stop;
            }
        }
        if text.len() > released || !pending_ids.is_empty() {
            on_chunk(StreamChunk { text: text.get(released..).unwrap_or("").to_string(), token_ids: pending_ids });
        }
        let decode_ms = t1.elapsed().as_secs_f64() * 1000.0;
        Ok(GenerateOutput {
            text,
            usage: Usage { prompt_tokens: prompt.len(), completion_tokens: tokens.len(), total_tokens: prompt.len() + tokens.len() },
            timings: Timings {
                prefill_ms,
                decode_ms,
                prefill_tokens_per_second: per_second(prompt.len(), prefill_ms),
                // The first token comes from the prefill logits: decode produced tokens - 1 forwards.
                decode_tokens_per_second: per_second(tokens.len().saturating_sub(1), decode_ms),
            },
            token_ids: tokens,
            finish_reason: finish,
        })
    }

    /// Forward `tokens` of one sequence (appended to `cache`) on the engine's threads; `logits`
    /// is replaced by the last position's logits or every position's (row-major `[n, vocab]`).
    /// Prompts run in chunks of at most `prefill_chunk` tokens when chunked prefill is on
    /// (activation memory bounded by the chunk, and other requests' steps run between chunks).
    /// With reduce-overhead, a reserved cache and a reused `logits`, a decode step allocates nothing.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, which: LogitsFor, logits: &mut Vec<f32>) -> Result<()> {
        let chunk = self.prefill_chunk.unwrap_or(usize::MAX).max(1);
        // The cache grows by doubling; sized once here, chunks don't pay for (and hold) the copies.
        cache.reserve(tokens.len());
        logits.clear();
        for part in tokens.chunks(chunk) {
            if which == LogitsFor::LastToken {
                logits.clear(); // only the last chunk's last row is wanted
            }
            // One hand-off to the pool's leader per chunk: the engine's calls take turns there.
            self.pool.install(|| {
                self.model.forward_fast_into(&mut [SequenceInput { tokens: part, cache: &mut *cache }], which, &self.exec, logits)
            })?;
        }
        Ok(())
    }

    pub fn live_kv_bytes(&self) -> usize {
        self.live_kv_bytes.load(Ordering::Relaxed)
    }

    pub fn checkpoint_bytes(&self) -> usize {
        self.checkpoint_bytes
    }
}
