//! napi-rs binding: argument conversion, work on libuv worker threads, streaming, errors.
//! Results are typed objects ([`types`]: real interfaces in `index.d.ts`); inputs the engine
//! validates (configs, requests) cross as JSON.
#![deny(clippy::all)]
mod types;

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use nano_qwen3_engine::{
    AccelerationConfig, ChatTemplateOptions, Engine, EngineError, Event, GenerateRequest, LoadOptions, ModelKind, ProgressFn, ServeOptions,
};
use serde_json::Value;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};

/// Errors cross as "[CODE] message"; the TypeScript layer turns the code into `error.code`.
fn to_napi(e: EngineError) -> Error {
    Error::new(Status::GenericFailure, format!("[{}] {}", e.code(), e))
}

fn bad_json(what: &str, e: serde_json::Error) -> Error {
    to_napi(EngineError::invalid_arg(what, e, "see the API reference"))
}

/// Run engine work, turning a Rust panic into a JS error instead of a crash.
fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
        Err(Error::new(Status::GenericFailure, format!("[INTERNAL] engine panicked: {}", msg.unwrap_or_default())))
    })
}

#[napi(object)]
pub struct NativeLoadOptions {
    pub device: Option<String>,
    /// AccelerationConfig as camelCase JSON.
    pub acceleration: Option<Value>,
    pub max_seq_length: Option<u32>,
    pub threads: Option<u32>,
    /// Bytes of the KV cache pool.
    pub kv_cache_memory: Option<f64>,
    /// Tokens per engine step (decode tokens plus prefill chunks).
    pub max_batch_tokens: Option<u32>,
    pub max_concurrent_sequences: Option<u32>,
    pub enable_prefix_caching: Option<bool>,
    /// Reuse static_int8 / int4 weights prepared by an earlier load (default true).
    pub weight_cache: Option<bool>,
    /// "auto" (default: read from the checkpoint), "generate", "embedding" or "reranker".
    pub model_kind: Option<String>,
}

/// A byte count from JS: a whole number that fits this machine's address space.
fn bytes(name: &str, v: f64) -> Result<usize> {
    if v.is_finite() && v.fract() == 0.0 && v >= 1.0 && v <= (usize::MAX >> 1) as f64 {
        Ok(v as usize)
    } else {
        Err(to_napi(EngineError::invalid_arg(name, v, "a whole number of bytes >= 1")))
    }
}

fn load_options(o: NativeLoadOptions, on_progress: Option<ProgressCallback>) -> Result<LoadOptions> {
    let acceleration: AccelerationConfig = match o.acceleration {
        Some(v) => serde_json::from_value(v).map_err(|e| bad_json("accelerationConfig", e))?,
        None => AccelerationConfig::default(),
    };
    Ok(LoadOptions {
        device: o.device.unwrap_or_else(|| "auto".into()),
        acceleration,
        max_seq_length: o.max_seq_length.map(|n| n as usize),
        threads: o.threads.map(|n| n as usize),
        serving: ServeOptions {
            kv_cache_memory: o.kv_cache_memory.map(|b| bytes("kvCacheMemory", b)).transpose()?,
            max_batch_tokens: o.max_batch_tokens.map(|n| n as usize),
            max_concurrent_sequences: o.max_concurrent_sequences.map(|n| n as usize),
            enable_prefix_caching: o.enable_prefix_caching,
        },
        weight_cache: o.weight_cache.unwrap_or(true),
        weight_cache_dir: None,
        model_kind: match o.model_kind.as_deref() {
            None | Some("auto") => None,
            Some(k) => Some(ModelKind::parse(k).map_err(to_napi)?),
        },
        progress: on_progress.map(|cb| -> ProgressFn {
            Arc::new(move |p| {
                cb.call(p.into(), ThreadsafeFunctionCallMode::NonBlocking);
            })
        }),
    })
}

/// The allowed values of every enumerated acceleration option (the engine's lists).
#[napi]
pub fn option_values() -> types::OptionValues {
    nano_qwen3_engine::acceleration::option_values().into()
}

/// The execution plan for a config on a device, without loading a model.
#[napi]
pub fn plan_acceleration(acceleration: Value, device: String) -> Result<types::ExecutionPlan> {
    let cfg: AccelerationConfig = serde_json::from_value(acceleration).map_err(|e| bad_json("accelerationConfig", e))?;
    Ok(nano_qwen3_engine::plan(&cfg, &device).map_err(to_napi)?.into())
}

pub struct LoadTask {
    dir: String,
    options: LoadOptions,
}

impl Task for LoadTask {
    type Output = Engine;
    type JsValue = NativeEngine;
    fn compute(&mut self) -> Result<Engine> {
        guarded(|| Engine::load(self.dir.as_ref(), &self.options).map_err(to_napi))
    }
    fn resolve(&mut self, _: Env, engine: Engine) -> Result<NativeEngine> {
        Ok(NativeEngine { engine: RwLock::new(Some(Arc::new(engine))), cancels: Default::default() })
    }
}

/// Load a model folder or .gguf file on a worker thread. `onProgress` receives load-time progress
/// (quantization, calibration).
#[napi(ts_return_type = "Promise<NativeEngine>")]
pub fn load_engine(
    dir: String,
    options: NativeLoadOptions,
    #[napi(ts_arg_type = "((progress: LoadProgress) => void) | undefined | null")] on_progress: Option<ProgressCallback>,
) -> Result<AsyncTask<LoadTask>> {
    Ok(AsyncTask::new(LoadTask { dir, options: load_options(options, on_progress)? }))
}

#[napi]
pub struct NativeEngine {
    engine: RwLock<Option<Arc<Engine>>>,
    cancels: Arc<Mutex<HashMap<u32, Arc<AtomicBool>>>>,
}

type ProgressCallback = ThreadsafeFunction<types::LoadProgress, (), types::LoadProgress, Status, false>;
type EventCallback = ThreadsafeFunction<types::GenerateEvent, (), types::GenerateEvent, Status, false>;
type EmbedCallback = ThreadsafeFunction<types::EmbedEvent, (), types::EmbedEvent, Status, false>;
type RerankCallback = ThreadsafeFunction<types::RerankEvent, (), types::RerankEvent, Status, false>;

/// A whole number >= 1 from JS.
fn count(name: &str, v: f64) -> Result<usize> {
    if v.is_finite() && v.fract() == 0.0 && v >= 1.0 && v <= u32::MAX as f64 {
        Ok(v as usize)
    } else {
        Err(to_napi(EngineError::invalid_arg(name, v, "an integer >= 1")))
    }
}

pub struct LogitsTask {
    engine: Arc<Engine>,
    ids: Vec<u32>,
    all: bool,
}

impl Task for LogitsTask {
    type Output = Vec<f32>;
    type JsValue = Float32Array;
    fn compute(&mut self) -> Result<Vec<f32>> {
        guarded(|| self.engine.compute_logits(&self.ids, self.all).map_err(to_napi))
    }
    fn resolve(&mut self, _: Env, v: Vec<f32>) -> Result<Float32Array> {
        Ok(Float32Array::new(v))
    }
}

pub struct ExportTask {
    engine: Arc<Engine>,
    path: String,
}

impl Task for ExportTask {
    type Output = f64;
    type JsValue = f64;
    fn compute(&mut self) -> Result<f64> {
        guarded(|| self.engine.export_gguf(self.path.as_ref()).map(|n| n as f64).map_err(to_napi))
    }
    fn resolve(&mut self, _: Env, n: f64) -> Result<f64> {
        Ok(n)
    }
}

pub struct BenchTask {
    engine: Arc<Engine>,
    text: String,
    iterations: u32,
    decode_tokens: u32,
}

impl Task for BenchTask {
    type Output = types::BenchmarkReport;
    type JsValue = types::BenchmarkReport;
    fn compute(&mut self) -> Result<types::BenchmarkReport> {
        guarded(|| {
            let r = self.engine.benchmark(&self.text, self.iterations as usize, self.decode_tokens as usize);
            Ok(r.map_err(to_napi)?.into())
        })
    }
    fn resolve(&mut self, _: Env, v: types::BenchmarkReport) -> Result<types::BenchmarkReport> {
        Ok(v)
    }
}

#[napi]
impl NativeEngine {
    fn get(&self) -> Result<Arc<Engine>> {
        self.engine
            .read()
            .unwrap()
            .clone()
            .ok_or_else(|| Error::new(Status::GenericFailure, "[DISPOSED] this runner has been disposed".to_string()))
    }

    #[napi]
    pub fn tokenize(&self, text: String, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.get()?.tokenizer.encode(&text, add_special_tokens).map_err(to_napi)
    }

    /// A prompt's ids: refused at once when the text cannot fit the context (see `Engine::encode_prompt`).
    #[napi]
    pub fn encode_prompt(&self, text: String) -> Result<Vec<u32>> {
        self.get()?.encode_prompt(&text).map_err(to_napi)
    }

    #[napi]
    pub fn detokenize(&self, ids: Vec<u32>, skip_special_tokens: bool) -> Result<String> {
        self.get()?.tokenizer.decode(&ids, skip_special_tokens).map_err(to_napi)
    }

    #[napi]
    pub fn apply_chat_template(
        &self,
        messages: Value,
        add_generation_prompt: bool,
        enable_thinking: Option<bool>,
        tools: Option<Value>,
    ) -> Result<String> {
        let opts = ChatTemplateOptions { add_generation_prompt, enable_thinking, tools };
        self.get()?.apply_chat_template(&messages, &opts).map_err(to_napi)
    }

    #[napi(ts_return_type = "Promise<Float32Array>")]
    pub fn compute_logits(&self, ids: Vec<u32>, all_positions: bool) -> Result<AsyncTask<LogitsTask>> {
        Ok(AsyncTask::new(LogitsTask { engine: self.get()?, ids, all: all_positions }))
    }

    /// Queue a generation on the engine loop (no libuv thread waits for it: any number run at
    /// once, in one batch). `onEvent` receives, in order, a `chunk` event for each streamed piece,
    /// then one `done` (the result, with the number of chunks before it) or `error`
    /// ("[CODE] message"). Bad input throws here, before anything runs.
    #[napi]
    pub fn generate(
        &self,
        prompt: Vec<u32>,
        request: Value,
        request_id: u32,
        #[napi(ts_arg_type = "(event: GenerateEvent) => void")] on_event: EventCallback,
    ) -> Result<()> {
        let request: GenerateRequest = serde_json::from_value(request).map_err(|e| bad_json("generation params", e))?;
        let engine = self.get()?;
        let opts = request.resolve(&engine.generation_defaults).map_err(to_napi)?;
        let cancels = self.cancels.clone();
        let mut chunks = 0u32;
        let send = move |kind: &str, chunk, result, error| {
            let event = types::GenerateEvent { kind: kind.into(), chunk, result, error };
            on_event.call(event, ThreadsafeFunctionCallMode::NonBlocking);
        };
        let sink = Box::new(move |e: Event| match e {
            Event::Chunk(c) => {
                chunks += 1;
                send("chunk", Some(c.into()), None, None);
            }
            Event::Done(out) => {
                cancels.lock().unwrap().remove(&request_id);
                match out {
                    Ok(o) => send("done", None, Some(types::GenerateResult::new(o, chunks)), None),
                    Err(e) => send("error", None, None, Some(format!("[{}] {}", e.code(), e))),
                }
            }
        });
        // Registered before submitting: an abort may come as soon as the request exists.
        let mut cancels = self.cancels.lock().unwrap();
        let cancel = engine.submit(prompt, &opts, sink).map_err(to_napi)?;
        cancels.insert(request_id, cancel);
        Ok(())
    }

    /// Queue embeddings of `inputs` (strings or token-id arrays) on the engine loop; they share
    /// steps with everything else running. `onDone` hears the result or the error once. Bad input
    /// throws here, before anything runs; `cancel(requestId)` aborts.
    #[napi]
    pub fn embed(
        &self,
        inputs: Value,
        options: Value,
        request_id: u32,
        #[napi(ts_arg_type = "(event: EmbedEvent) => void")] on_done: EmbedCallback,
    ) -> Result<()> {
        let inputs: Vec<nano_qwen3_engine::EmbedInput> =
            serde_json::from_value(inputs).map_err(|e| bad_json("input (strings or arrays of token ids)", e))?;
        let o: nano_qwen3_engine::retrieval::embed::EmbedRequest = serde_json::from_value(options).map_err(|e| bad_json("embed options", e))?;
        let opts = nano_qwen3_engine::EmbedOptions {
            instruction: o.instruction,
            dimensions: o.dimensions.map(|d| count("dimensions", d)).transpose()?,
            normalize: o.normalize,
        };
        let engine = self.get()?;
        let cancels = self.cancels.clone();
        let done = Box::new(move |r: nano_qwen3_engine::Result<nano_qwen3_engine::Embedded>| {
            cancels.lock().unwrap().remove(&request_id);
            let event = match r {
                Ok(e) => types::EmbedEvent { result: Some(e.into()), error: None },
                Err(e) => types::EmbedEvent { result: None, error: Some(format!("[{}] {}", e.code(), e)) },
            };
            on_done.call(event, ThreadsafeFunctionCallMode::NonBlocking);
        });
        let mut cancels = self.cancels.lock().unwrap();
        let cancel = guarded(|| engine.submit_embed(&inputs, &opts, done).map_err(to_napi))?;
        cancels.insert(request_id, cancel);
        Ok(())
    }

    /// Queue every (query, document) pair (Qwen3-Reranker's template) on the engine loop;
    /// `onDone` hears the ranking (best first, cut to `topN`) or the error once.
    #[napi]
    pub fn rerank(
        &self,
        query: String,
        documents: Vec<String>,
        instruction: Option<String>,
        top_n: Option<f64>,
        request_id: u32,
        #[napi(ts_arg_type = "(event: RerankEvent) => void")] on_done: RerankCallback,
    ) -> Result<()> {
        let opts = nano_qwen3_engine::RerankOptions { instruction, top_n: top_n.map(|n| count("topN", n)).transpose()? };
        let engine = self.get()?;
        let cancels = self.cancels.clone();
        let done = Box::new(move |r: nano_qwen3_engine::Result<nano_qwen3_engine::Reranked>| {
            cancels.lock().unwrap().remove(&request_id);
            let event = match r {
                Ok(e) => types::RerankEvent { result: Some(e.into()), error: None },
                Err(e) => types::RerankEvent { result: None, error: Some(format!("[{}] {}", e.code(), e)) },
            };
            on_done.call(event, ThreadsafeFunctionCallMode::NonBlocking);
        });
        let mut cancels = self.cancels.lock().unwrap();
        let cancel = guarded(|| engine.submit_rerank(&query, &documents, &opts, done).map_err(to_napi))?;
        cancels.insert(request_id, cancel);
        Ok(())
    }

    #[napi]
    pub fn retrieval_info(&self) -> Result<types::RetrievalInfo> {
        Ok((&self.get()?.retrieval).into())
    }

    /// Ask a running generation to stop before its next token.
    #[napi]
    pub fn cancel(&self, request_id: u32) {
        if let Some(c) = self.cancels.lock().unwrap().get(&request_id) {
            c.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[napi(ts_return_type = "Promise<BenchmarkReport>")]
    pub fn benchmark(&self, sample_text: String, iterations: u32, decode_tokens: u32) -> Result<AsyncTask<BenchTask>> {
        Ok(AsyncTask::new(BenchTask { engine: self.get()?, text: sample_text, iterations, decode_tokens }))
    }

    /// Write the loaded model as GGUF; resolves to the bytes written.
    #[napi(ts_return_type = "Promise<number>")]
    pub fn export_gguf(&self, path: String) -> Result<AsyncTask<ExportTask>> {
        Ok(AsyncTask::new(ExportTask { engine: self.get()?, path }))
    }

    #[napi]
    pub fn model_info(&self) -> Result<types::ModelInfo> {
        Ok(self.get()?.model_info().into())
    }

    #[napi]
    pub fn acceleration_info(&self) -> Result<types::ExecutionPlan> {
        Ok(self.get()?.plan.clone().into())
    }

    #[napi]
    pub fn memory_usage(&self) -> Result<types::MemoryUsage> {
        Ok(self.get()?.memory_usage().into())
    }

    #[napi]
    pub fn generation_defaults(&self) -> Result<types::GenerationDefaults> {
        Ok(self.get()?.generation_defaults.clone().into())
    }

    /// Drop the model; running requests keep their own reference and finish first.
    #[napi]
    pub fn dispose(&self) {
        for c in self.cancels.lock().unwrap().values() {
            c.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.engine.write().unwrap().take();
    }
}
