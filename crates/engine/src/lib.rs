//! nano-qwen3 engine: Qwen3 inference on candle, usable from Rust without Node.
//!
//! ```no_run
//! use nano_qwen3_engine::{Engine, LoadOptions, GenerateRequest};
//! use std::sync::atomic::AtomicBool;
//! let engine = Engine::load("./Qwen3-0.6B".as_ref(), &LoadOptions::default())?;
//! let prompt = engine.tokenizer.encode("Hello", false)?;
//! let opts = GenerateRequest { max_tokens: Some(32.0), ..Default::default() }.resolve(&engine.generation_defaults)?;
//! let out = engine.generate(&prompt, &opts, &AtomicBool::new(false), &mut |c| print!("{}", c.text))?;
//! # Ok::<(), nano_qwen3_engine::EngineError>(())
//! ```
pub mod acceleration;
pub mod autotune;
pub mod calibration;
pub mod chat_template;
pub mod config;
pub mod engine;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod gguf_export;
pub mod gguf_meta;
pub mod fast_forward;
pub mod kv_cache;
pub mod linear;
pub mod model;
pub mod progress;
pub mod report;
pub mod sampler;
pub mod source;
pub mod static_int8;
pub mod tokenizer;
pub mod weights;

pub use acceleration::{plan, AccelerationConfig, ExecutionPlan, Quantization};
pub use chat_template::ChatTemplateOptions;
pub use engine::{Engine, GenerateOutput, LoadOptions, StreamChunk};
pub use progress::{Progress, ProgressFn};
pub use static_int8::CalibrationReport;
pub use calibration::CalibrationConfig;
pub use error::{EngineError, Result};
pub use generate::{FinishReason, GenerateOptions, GenerateRequest};
