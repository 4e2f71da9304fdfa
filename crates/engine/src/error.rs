//! One error type for the whole engine. Each variant carries a stable `code()` so the binding can
//! turn it into a typed JS error without parsing messages.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model not found: {0}")]
    ModelNotFound(String),
    #[error("{path}: {reason}")]
    InvalidModelFile { path: PathBuf, reason: String },
    #[error("invalid config {path}: {reason}")]
    InvalidConfig { path: PathBuf, reason: String },
    #[error("invalid {name} = {value}: {allowed}")]
    InvalidArgument { name: String, value: String, allowed: String },
    #[error("prompt is {prompt_tokens} tokens but the context holds {context} tokens")]
    ContextOverflow { prompt_tokens: usize, context: usize },
    /// Known before encoding: the text is too long for any tokenization to fit.
    #[error("prompt is at least {min_tokens} tokens ({bytes} bytes) but the context holds {context} tokens")]
    ContextOverflowAtLeast { min_tokens: usize, bytes: usize, context: usize },
    #[error("prompt is {prompt_tokens} tokens but the KV cache pool holds {pool_tokens} tokens (kvCacheMemory = {pool_bytes} bytes); raise kvCacheMemory")]
    KvPoolOverflow { prompt_tokens: usize, pool_tokens: usize, pool_bytes: usize },
    #[error("{0}")]
    Unsupported(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// The GPU failed (device lost, out of memory, a refused op): the requests in the step fail.
    #[error("GPU: {0}")]
    Gpu(String),
    #[error("generation aborted")]
    Aborted,
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("tensor computation failed: {0}")]
    Compute(#[from] candle_core::Error),
    #[error("io error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl EngineError {
    /// Stable machine-readable code, used as the JS error's `code`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::ModelNotFound(_) => "MODEL_NOT_FOUND",
            Self::InvalidModelFile { .. } => "INVALID_MODEL_FILE",
            Self::InvalidConfig { .. } => "INVALID_CONFIG",
            Self::InvalidArgument { .. } => "INVALID_ARGUMENT",
            Self::ContextOverflow { .. } | Self::ContextOverflowAtLeast { .. } | Self::KvPoolOverflow { .. } => "CONTEXT_OVERFLOW",
            Self::Unsupported(_) => "UNSUPPORTED",
            Self::Internal(_) => "INTERNAL",
            Self::Gpu(_) => "GPU_ERROR",
            Self::Aborted => "ABORTED",
            Self::Tokenizer(_) => "TOKENIZER_ERROR",
            Self::Template(_) => "TEMPLATE_ERROR",
            Self::Compute(_) => "COMPUTE_ERROR",
            Self::Io { .. } => "IO_ERROR",
        }
    }

    pub fn invalid_arg(name: &str, value: impl std::fmt::Display, allowed: &str) -> Self {
        Self::InvalidArgument { name: name.into(), value: value.to_string(), allowed: allowed.into() }
    }

    pub fn bad_file(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::InvalidModelFile { path: path.into(), reason: reason.into() }
    }
}

pub type Result<T> = std::result::Result<T, EngineError>;
