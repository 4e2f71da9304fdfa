//! nano-qwen3 engine: Qwen3 inference and serving on CPU kernels, usable from Rust without Node.
//!
//! ```no_run
//! use nano_qwen3_engine::{Engine, LoadOptions, GenerateRequest};
//! use std::sync::atomic::AtomicBool;
//! let engine = Engine::load("./Qwen3-0.6B".as_ref(), &LoadOptions::default())?;
//! let prompt = engine.tokenizer.encode("Hello", false)?;
//! let opts = GenerateRequest { max_tokens: Some(32.0), ..Default::default() }.resolve(&engine.generation_defaults)?;
//! // Any number of threads may call generate (or submit) at once: they share one batch.
//! let out = engine.generate(&prompt, &opts, &AtomicBool::new(false), &mut |c| print!("{}", c.text))?;
//! # Ok::<(), nano_qwen3_engine::EngineError>(())
//! ```
//!
//! Layout: `source/` reads model files (safetensors, GGUF) and writes GGUF; `text/` tokenizes and
//! renders chat templates; `model/` holds the weights, THE forward pass and the paged KV pool;
//! `quantize/` calibrates (static int8, SmoothQuant, int4 importances); `serve/` schedules,
//! samples, streams and reports; `engine.rs` ties them together at load.
pub mod acceleration;
pub mod cache_dir;
pub mod device;
pub mod engine;
pub mod error;
pub mod gpu_device;
pub mod model;
pub mod progress;
pub mod quantize;
pub mod retrieval;
pub mod serve;
pub mod source;
pub mod text;

pub use acceleration::{plan, AccelerationConfig, ExecutionPlan, Int4LmHead, Quantization};
pub use engine::{Engine, LoadOptions, ServeOptions};
pub use error::{EngineError, Result};
pub use progress::{Progress, ProgressFn};
pub use quantize::calibration::CalibrationConfig;
pub use retrieval::{EmbedInput, EmbedOptions, Embedded, ModelKind, RerankOptions, Reranked, Retrieval, Scored};
pub use quantize::static_int8::CalibrationReport;
pub use serve::request::{FinishReason, GenerateOptions, GenerateRequest};
pub use serve::sequence::{Event, GenerateOutput, StreamChunk};
pub use text::chat_template::ChatTemplateOptions;
