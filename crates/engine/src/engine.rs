//! The engine: a loaded model with its tokenizer, chat template and plan, the engine loop that
//! serves it (continuous batching over one paged KV pool), and the operations a runner needs.
//! `Sync`: any number of threads submit requests at once and share the batch.
use crate::acceleration::{plan_on, AccelerationConfig, CompileMode, ExecutionPlan, Quantization};
use crate::device::DeviceRequest;
use crate::error::{EngineError, Result};
use crate::gpu_device::{self, Placement};
use crate::model::backend::executor::Executor;
use crate::model::backend::gpu::GpuModel;
use crate::model::config::GenerationDefaults;
use crate::model::{ExecOptions, KvDtype, KvPool, LogitsFor, Qwen3Model, BLOCK_TOKENS};
use crate::progress::ProgressFn;
use crate::retrieval::{ModelKind, Retrieval};
use crate::quantize::static_int8::{self, CalibrationReport};
use crate::serve::grammar::GrammarCompiler;
use crate::source::prepared_cache;
use crate::serve::block_manager::BlockManager;
use crate::serve::request::GenerateOptions;
use crate::serve::scheduler::{Scheduler, SchedulerConfig, SchedulerStats};
use crate::serve::sequence::{Event, GenerateOutput, Sequence, StreamChunk};
use crate::serve::server::{Runtime, Server};
use crate::source::ModelFiles;
use crate::text::chat_template::{ChatTemplate, ChatTemplateOptions};
use crate::text::tokenizer::Tokenizer;
use nano_qwen3_kernels::pool::ThreadPool;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Serving options (load time). `None` takes the documented default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeOptions {
    /// Bytes of the KV pool. Default: the KV of `maxSeqLength` tokens, at most a quarter of the
    /// memory available at load and at most 4 GiB (see [`default_kv_bytes`]).
    pub kv_cache_memory: Option<usize>,
    /// Tokens per step (decode tokens plus prefill chunks). Default [`DEFAULT_MAX_BATCH_TOKENS`].
    pub max_batch_tokens: Option<usize>,
    /// Sequences in one step. Default [`DEFAULT_MAX_SEQUENCES`].
    pub max_concurrent_sequences: Option<usize>,
    /// Reuse the KV of cached prompt prefixes. Default on (`Some(false)` turns it off).
    pub enable_prefix_caching: Option<bool>,
}

/// Tokens per step when nothing decodes: big enough for efficient matmuls, small enough that a
/// burst of new requests gets first tokens in turn rather than all at the end of one long step.
pub const DEFAULT_MAX_BATCH_TOKENS: usize = 256;
pub const DEFAULT_MAX_SEQUENCES: usize = 64;
const DEFAULT_KV_CAP: usize = 4 << 30;

/// Bytes of memory available now (Linux: MemAvailable), if known.
fn available_memory() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The default KV pool: room for one sequence of `max_seq_length` tokens, capped at a quarter of
/// the available memory and at 4 GiB, and at least one block.
pub fn default_kv_bytes(bytes_per_token: usize, max_seq_length: usize) -> usize {
    let cap = available_memory().map_or(DEFAULT_KV_CAP, |a| (a / 4).min(DEFAULT_KV_CAP));
    (bytes_per_token * max_seq_length).min(cap).max(bytes_per_token * BLOCK_TOKENS)
}

#[derive(Clone)]
pub struct LoadOptions {
    pub device: String,
    pub acceleration: AccelerationConfig,
    pub max_seq_length: Option<usize>,
    pub threads: Option<usize>,
    /// Called during long load-time work (quantization, calibration).
    pub progress: Option<ProgressFn>,
    pub serving: ServeOptions,
    /// Keep the weights that static_int8 / int4 compute at load in a disk cache and reuse them
    /// (default true; see [`crate::source::prepared_cache`]).
    pub weight_cache: bool,
    /// Where that cache lives; None: `NANO_QWEN3_WEIGHT_CACHE_DIR`, else the user cache directory.
    pub weight_cache_dir: Option<std::path::PathBuf>,
    /// What the checkpoint is for; None: read from its files ([`crate::retrieval::kind`]).
    pub model_kind: Option<ModelKind>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: "auto".into(),
            acceleration: AccelerationConfig::default(),
            max_seq_length: None,
            threads: None,
            progress: None,
            serving: ServeOptions::default(),
            weight_cache: true,
            weight_cache_dir: None,
            model_kind: None,
        }
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
            .field("serving", &self.serving)
            .field("model_kind", &self.model_kind)
            .finish()
    }
}

pub struct Engine {
    pub model: Arc<Qwen3Model>,
    pub tokenizer: Arc<Tokenizer>,
    pub template: Option<ChatTemplate>,
    pub generation_defaults: GenerationDefaults,
    pub plan: ExecutionPlan,
    /// Where the model was loaded from.
    pub files: ModelFiles,
    /// What it is for (generation, embeddings, reranking) and how it pools.
    pub retrieval: Retrieval,
    pub max_seq_length: usize,
    pub threads: usize,
    pub load_time_ms: f64,
    /// Whether the prepared weights came from, or went to, the disk cache.
    pub weight_cache: prepared_cache::WeightCacheInfo,
    /// (resident, peak resident) bytes of the process when the load finished (Linux).
    pub rss_at_load: Option<(u64, u64)>,
    /// static_int8: what calibration measured and decided.
    pub calibration: Option<CalibrationReport>,
    /// Which optimizations the forward pass uses.
    pub exec: ExecOptions,
    /// Chunked prefill (useGradientCheckpointing): at most this many tokens of a prompt per step.
    pub prefill_chunk: Option<usize>,
    pub kv_dtype: KvDtype,
    /// The KV pool: blocks of [`BLOCK_TOKENS`] tokens, and its bytes.
    pub kv_blocks: usize,
    pub kv_pool_bytes: usize,
    pub scheduler: SchedulerConfig,
    pub prefix_caching: bool,
    checkpoint_bytes: usize,
    /// The kernels' threads: a leader that runs each forward call and `threads - 1` workers.
    pool: Arc<ThreadPool>,
    _load_pool: rayon::ThreadPool,
    /// What compile mode max-autotune measured or read from its cache at load.
    pub autotune: Option<crate::model::autotune::AutotuneReport>,
    /// Structured outputs: the vocabulary's trie, built by the first request with a grammar.
    grammar: Arc<Mutex<Option<Arc<GrammarCompiler>>>>,
    /// The weights in GPU memory when the model runs there (computeLogits uses them too).
    pub gpu: Option<Arc<GpuModel>>,
    /// computeLogits' KV pool and buffers on the GPU, reused while they fit.
    gpu_alone: Mutex<Option<crate::model::backend::gpu::GpuRunner>>,
    /// The engine loop (declared last: dropped first, before what it uses).
    server: Server,
}

/// Tokens per forward call with chunked prefill: bounds activation memory on long prompts while
/// keeping matmuls large enough to stay efficient.
pub const PREFILL_CHUNK: usize = 256;

/// False when the matrices are already Q4_0 blocks (a Q4_0 GGUF): int4 then uses them as they are.
fn needs_quantizing(src: &dyn crate::source::weights::TensorSource) -> bool {
    src.stored_format("model.layers.0.mlp.down_proj.weight").as_deref() != Some("q4_0")
}

impl Engine {
    /// Load a Hugging Face model folder or a `.gguf` file.
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Self> {
        let started = Instant::now();
        // Where the model runs: decided here, once (an adapter opened, or the CPU).
        let device = DeviceRequest::parse(&opts.device)?;
        let mut placement = gpu_device::place(device)?;
        let format = opts.acceleration.weight_format()?;
        let opened = crate::source::open(path)?;
        let config = opened.config;
        let retrieval = crate::retrieval::kind::detect(&opened.files, opts.model_kind)?;
        // Pooled rows (embeddings) are not read from the GPU yet: `auto` keeps embedding models on
        // the CPU (rerank scores come from logits, which the GPU reads back).
        if let (DeviceRequest::Auto, Placement::Gpu(c)) = (device, &placement) {
            if retrieval.kind == crate::retrieval::kind::ModelKind::Embedding {
                let why = format!("{} not used: embedding models run on the CPU (pooled rows are not read from the GPU yet)", c.report().name);
                placement = Placement::Cpu { why: Some(why) };
            }
        }
        let plan = plan_on(&opts.acceleration, &opts.device, &placement)?;
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
        // The prepared-weights cache: where, under which key, and whether an entry is there.
        let cacheable = prepared_cache::applies(acc, !needs_quantizing(tensors.as_ref()));
        let cache_dir = (opts.weight_cache && cacheable)
            .then(|| opts.weight_cache_dir.clone().or_else(prepared_cache::dir_from_env))
            .flatten();
        // A checkpoint whose identity cannot be read (permissions, a vanished shard) loads uncached.
        let (cache_key, key_error) = match cache_dir.as_ref().map(|_| prepared_cache::key(&opened.files, acc, format)) {
            Some(Ok(k)) => (Some(k), None),
            Some(Err(e)) => (None, Some(e.to_string())),
            None => (None, None),
        };
        let lookup = match (&cache_dir, &cache_key) {
            (Some(dir), Some((key, ..))) => Some(prepared_cache::lookup(dir, key)),
            _ => None,
        };
        let mut static_scales = Vec::new();
        let (model, calibration, tuned) = load_pool.install(|| pool.enter(|| -> Result<_> {
            let (mut model, calibration) = if let Some(prepared_cache::Lookup::Hit(entry)) = lookup.as_ref() {
                let src = crate::source::gguf::GgufFile::open(&entry.gguf)?;
                let mut m = Qwen3Model::load_with_progress(&config, &src, format, progress)?;
                static_int8::apply_static_scales(&mut m, &entry.sidecar.static_scales)?;
                (m, entry.sidecar.calibration.clone())
            } else if opts.acceleration.quantization == Quantization::StaticInt8 {
                let (m, r, scales) = static_int8::load(&config, tensors.as_ref(), &opened.tokenizer, &calib, progress)?;
                static_scales = scales;
                (m, Some(r))
            } else if opts.acceleration.quantization == Quantization::Int4 && needs_quantizing(tensors.as_ref()) {
                (crate::quantize::int4::load(&config, tensors.as_ref(), &opened.tokenizer, &calib, format, progress)?, None)
            } else {
                (Qwen3Model::load_with_progress(&config, tensors.as_ref(), format, progress)?, None)
            };
            if acc.use_fused_kernels {
                model.fuse_projections();
            }
            // The GPU reads row-major weights; the CPU's layouts and tilings are for CPU runs.
            let on_cpu = placement.adapter().is_none();
            if acc.use_channels_last && on_cpu {
                model.repack_weights();
            }
            // Tiling is tuned last: it depends on the final formats and layouts.
            let tuned = (on_cpu && acc.use_torch_compile && acc.compile_mode == CompileMode::MaxAutotune)
                .then(|| crate::model::autotune::autotune(&model, threads, progress));
            Ok((model, calibration, tuned))
        }))?;
        let mut model = model;
        let mut plan = plan;
        plan.items.push(crate::retrieval::kind::plan_item(&retrieval));
        if let Some(t) = &tuned {
            plan.describe_autotune(t);
        }
        let exec = ExecOptions {
            flash_attention: acc.use_flash_attention,
            fused: acc.use_fused_kernels,
            reuse_buffers: acc.use_torch_compile && acc.compile_mode == CompileMode::ReduceOverhead,
        };
        let serving = &opts.serving;
        let block_bytes = KvPool::block_bytes(config.num_hidden_layers, config.num_key_value_heads, config.head_dim, acc.kv_cache_dtype);
        let kv_bytes = match serving.kv_cache_memory {
            None => default_kv_bytes(block_bytes / BLOCK_TOKENS, max_seq_length),
            Some(b) if b >= block_bytes => b,
            Some(b) => {
                let allowed = format!("at least one block of {BLOCK_TOKENS} tokens: {block_bytes} bytes for this model and kvCacheDtype");
                return Err(EngineError::invalid_arg("kvCacheMemory", b, &allowed));
            }
        };
        let positive = |name: &str, v: Option<usize>, default: usize| match v {
            Some(0) => Err(EngineError::invalid_arg(name, 0, "an integer >= 1")),
            v => Ok(v.unwrap_or(default)),
        };
        let prefill_chunk = acc.use_gradient_checkpointing.then_some(PREFILL_CHUNK);
        let scheduler = SchedulerConfig {
            max_batch_tokens: positive("maxBatchTokens", serving.max_batch_tokens, DEFAULT_MAX_BATCH_TOKENS)?,
            max_sequences: positive("maxConcurrentSequences", serving.max_concurrent_sequences, DEFAULT_MAX_SEQUENCES)?,
            max_chunk: prefill_chunk.unwrap_or(usize::MAX),
        };
        let prefix_caching = serving.enable_prefix_caching.unwrap_or(true);
        let kv_blocks = kv_bytes / block_bytes;
        let c = &config;
        // On the GPU: weights and the KV pool uploaded now. `auto` takes the CPU when they do
        // not fit (the plan says why); an explicit GPU request fails with what does not fit.
        let mut gpu = None;
        if let Placement::Gpu(ctx) = &placement {
            match gpu_device::upload(ctx, &model, acc.kv_cache_dtype, block_bytes, kv_blocks, max_seq_length, scheduler.max_batch_tokens.max(scheduler.max_sequences)) {
                Ok(g) => gpu = Some(g),
                Err(e) if device == DeviceRequest::Auto => {
                    placement = Placement::Cpu { why: Some(format!("{} was not used: {e}", ctx.report().name)) };
                    if acc.use_channels_last {
                        load_pool.install(|| pool.enter(|| model.repack_weights()));
                    }
                    // The CPU's plan, with the items added since (model kind) kept.
                    let mut cpu = plan_on(acc, &opts.device, &placement)?;
                    let extra: Vec<_> = plan.items.drain(..).filter(|i| cpu.items.iter().all(|p| p.option != i.option)).collect();
                    cpu.items.extend(extra);
                    plan = cpu;
                }
                Err(e) => return Err(e),
            }
        }
        let (gpu_model, executor) = match gpu {
            Some((g, runner)) => (Some(g), Executor::Gpu(runner)),
            None => (None, Executor::cpu(KvPool::new(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, acc.kv_cache_dtype, kv_blocks))),
        };
        let model = Arc::new(model);
        let pool = Arc::new(pool);
        let tokenizer = Arc::new(opened.tokenizer);
        let runtime = Runtime { model: model.clone(), pool: pool.clone(), tokenizer: tokenizer.clone(), exec };
        let server = Server::start(runtime, executor, Scheduler::new(scheduler, BlockManager::new(kv_blocks, prefix_caching)))
            .map_err(|e| cannot_start(&e))?;
        let mut engine = Self {
            weight_cache: prepared_cache::WeightCacheInfo::status("not used"),
            rss_at_load: None,
            gpu: gpu_model,
            gpu_alone: Mutex::new(None),
            exec,
            prefill_chunk,
            kv_dtype: acc.kv_cache_dtype,
            kv_blocks,
            kv_pool_bytes: kv_blocks * block_bytes,
            scheduler,
            prefix_caching,
            checkpoint_bytes: tensors.stored_bytes(),
            model,
            tokenizer,
            template: opened.template,
            generation_defaults: opened.generation_defaults,
            plan,
            files: opened.files,
            retrieval,
            max_seq_length,
            threads,
            load_time_ms: started.elapsed().as_secs_f64() * 1000.0,
            calibration,
            pool,
            _load_pool: load_pool,
            autotune: tuned,
            grammar: Default::default(),
            server,
        };
        engine.weight_cache = match (lookup, cache_dir, cache_key) {
            (Some(prepared_cache::Lookup::Hit(entry)), ..) => prepared_cache::WeightCacheInfo { status: "hit", path: Some(entry.gguf), error: None },
            (Some(found), Some(dir), Some((key, source, options))) => {
                let stored = prepared_cache::store(&dir, (&key, &source, &options), |p| engine.export_gguf(p), static_scales, engine.calibration.clone());
                let status = if matches!(found, prepared_cache::Lookup::Damaged(_)) { "rebuilt" } else { "written" };
                match stored {
                    Ok(path) => prepared_cache::WeightCacheInfo { status, path: Some(path), error: None },
                    Err(e) => prepared_cache::WeightCacheInfo { status: "error", path: Some(dir), error: Some(e.to_string()) },
                }
            }
            (None, Some(dir), None) => prepared_cache::WeightCacheInfo { status: "error", path: Some(dir), error: key_error },
            _ if !opts.weight_cache || !cacheable => {
                prepared_cache::WeightCacheInfo::status(if opts.weight_cache { "not used" } else { "off" })
            }
            _ => prepared_cache::WeightCacheInfo::status("off"), // NANO_QWEN3_WEIGHT_CACHE=0, or no cache directory
        };
        engine.load_time_ms = started.elapsed().as_secs_f64() * 1000.0;
        engine.rss_at_load = crate::serve::report::process_rss();
        Ok(engine)
    }

    pub fn apply_chat_template(&self, messages: &serde_json::Value, opts: &ChatTemplateOptions) -> Result<String> {
        self.template
            .as_ref()
            .ok_or_else(|| EngineError::Template("this model has no chat template (none in tokenizer_config.json or the GGUF metadata)".into()))?
            .render(messages, opts)
    }

    /// A text prompt's token ids; a text too long for the context fails before it is encoded.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let ids = self.encode_checked(text, false)?;
        self.check_prompt(&ids)?;
        Ok(ids)
    }

    /// `text`'s ids, refused before encoding when no tokenization of it could fit the context.
    pub(crate) fn encode_checked(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let min_tokens = self.tokenizer.min_tokens(text);
        if min_tokens > self.max_seq_length {
            return Err(EngineError::ContextOverflowAtLeast { min_tokens, bytes: text.len(), context: self.max_seq_length });
        }
        self.tokenizer.encode(text, add_special_tokens)
    }

    /// A pooling prompt (embedding, rerank pair) fits the context and the KV pool.
    pub(crate) fn check_pooled(&self, prompt: &[u32]) -> Result<()> {
        self.check_prompt(prompt)?;
        if prompt.len() > self.kv_pool_tokens() {
            return Err(EngineError::KvPoolOverflow { prompt_tokens: prompt.len(), pool_tokens: self.kv_pool_tokens(), pool_bytes: self.kv_pool_bytes });
        }
        Ok(())
    }

    /// Queue a checked sequence on the engine loop.
    pub(crate) fn submit_sequence(&self, seq: Sequence) {
        self.server.submit(seq);
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

    /// Logits (f32) for the last position, or for every position (row-major [n, vocab]). Runs
    /// the forward pass in a KV pool of its own, between the serving steps.
    pub fn compute_logits(&self, ids: &[u32], all_positions: bool) -> Result<Vec<f32>> {
        self.check_prompt(ids)?;
        let which = if all_positions { LogitsFor::AllTokens } else { LogitsFor::LastToken };
        if let Some(g) = &self.gpu {
            let chunk = self.prefill_chunk.unwrap_or(self.scheduler.max_batch_tokens);
            let mut slot = self.gpu_alone.lock().unwrap();
            return crate::model::backend::gpu::run_alone(g, &self.model, &mut slot, ids, which, self.kv_dtype, chunk);
        }
        self.pool.install(|| self.model.run_alone(ids, which, &self.exec, self.kv_dtype, self.prefill_chunk, None))
    }

    fn eos_ids(&self, opts: &GenerateOptions) -> Vec<u32> {
        let mut ids = opts.stop_token_ids.clone();
        if !opts.ignore_eos {
            ids.extend(&self.generation_defaults.eos_token_ids);
            ids.extend(&self.model.config.eos_token_ids);
        }
        ids
    }

    /// Tokens the KV pool holds.
    pub fn kv_pool_tokens(&self) -> usize {
        self.kv_blocks * BLOCK_TOKENS
    }

    /// Start generating from `prompt`: the request joins the batch at the next step and `sink`
    /// hears its chunks (text that is final: stop strings trimmed, no split characters) then its
    /// end. Returns the flag that aborts it (checked at every step). Bad input is refused here,
    /// before anything is queued.
    pub fn submit(&self, prompt: Vec<u32>, opts: &GenerateOptions, sink: Box<dyn FnMut(Event) + Send>) -> Result<Arc<AtomicBool>> {
        self.check_prompt(&prompt)?;
        // The prompt and the first generated token must fit the pool, alone.
        if prompt.len() + 1 > self.kv_pool_tokens() {
            return Err(EngineError::KvPoolOverflow { prompt_tokens: prompt.len(), pool_tokens: self.kv_pool_tokens(), pool_bytes: self.kv_pool_bytes });
        }
        let vocab = self.tokenizer.vocab_size();
        if let Some((id, _)) = opts.sampling.logit_bias.iter().find(|(id, _)| *id as usize >= vocab) {
            return Err(EngineError::invalid_arg("logitBias key", id, &format!("a token id 0 <= id < {vocab}")));
        }
        let budget = opts.max_tokens.min(self.max_seq_length - prompt.len());
        let seq = Sequence::new(prompt, opts, budget, self.eos_ids(opts), None, sink);
        let cancel = seq.cancel.clone();
        let Some(spec) = opts.grammar.clone() else {
            self.server.submit(seq);
            return Ok(cancel);
        };
        // Compiling a grammar can take hundreds of milliseconds (a long choice list, a large
        // schema, within llguidance's limits): not on the caller's thread (Node's event loop) nor
        // on the serving loop. The request joins the batch once it is ready; a grammar the engine
        // cannot use ends it with the error before it is ever queued. The vocabulary's trie, built
        // by the first such request (about a second for Qwen3's), is built there too.
        let (slot, tokenizer, eos, queue) = (self.grammar.clone(), self.tokenizer.clone(), self.grammar_eos(), self.server.queue());
        std::thread::Builder::new()
            .name("nq3-grammar".into())
            .spawn(move || match grammar_compiler(&slot, &tokenizer, eos).and_then(|c| c.matcher(&spec)) {
                Ok(m) => crate::serve::server::queue(queue.as_ref(), seq.with_grammar(m)),
                Err(e) => seq.fail(e),
            })
            .map_err(|e| EngineError::Internal(format!("cannot start a grammar thread: {e}")))?;
        Ok(cancel)
    }

    /// The token a finished grammar allows: the first end-of-sequence token.
    fn grammar_eos(&self) -> u32 {
        self.generation_defaults.eos_token_ids.first().or(self.model.config.eos_token_ids.first()).copied().unwrap_or(0)
    }

    /// [`Self::submit`] and wait for the end, passing chunks to `on_chunk`; `cancel` aborts.
    pub fn generate(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        cancel: &AtomicBool,
        on_chunk: &mut dyn FnMut(StreamChunk),
    ) -> Result<GenerateOutput> {
        let (tx, rx) = mpsc::channel();
        let abort = self.submit(prompt.to_vec(), opts, Box::new(move |e| drop(tx.send(e))))?;
        // Once the caller cancels, nothing more reaches it and the request ends as aborted.
        let cancelled = || {
            let c = cancel.load(Ordering::Relaxed);
            if c {
                abort.store(true, Ordering::Relaxed);
            }
            c
        };
        loop {
            match rx.recv_timeout(Duration::from_millis(5)) {
                Ok(Event::Chunk(c)) => {
                    if !cancelled() {
                        on_chunk(c);
                    }
                }
                Ok(Event::Done(out)) => return if cancelled() { Err(EngineError::Aborted) } else { out },
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    cancelled();
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(EngineError::Aborted),
            }
        }
    }

    /// The scheduler and KV pool as of the last step.
    pub fn serving_stats(&self) -> SchedulerStats {
        self.server.stats()
    }

    pub fn checkpoint_bytes(&self) -> usize {
        self.checkpoint_bytes
    }
}

/// The engine's grammar compiler, built by the first caller (the others wait for it).
fn grammar_compiler(slot: &Mutex<Option<Arc<GrammarCompiler>>>, tokenizer: &Tokenizer, eos: u32) -> Result<Arc<GrammarCompiler>> {
    let mut slot = slot.lock().unwrap();
    if slot.is_none() {
        *slot = Some(Arc::new(GrammarCompiler::new(tokenizer, eos)?));
    }
    Ok(slot.as_ref().unwrap().clone())
}
