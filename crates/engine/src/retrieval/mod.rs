//! Embeddings and reranking on the serving engine (Qwen3-Embedding, Qwen3-Reranker, or any Qwen3
//! causal LM asked to do either). Both are pooling sequences ([`crate::serve::sequence::Output`]):
//! they run their prompt through the same forward pass as generation, in the same steps, and read
//! one vector at its last token: the final-normed hidden state (embeddings, no lm_head), or the
//! "no"/"yes" logits (reranking). `kind` says what the checkpoint is and which pooling runs.
pub mod embed;
pub mod kind;
pub mod rerank;
mod run;

pub use embed::{EmbedInput, EmbedOptions, Embedded};
pub use kind::{ModelKind, Retrieval};
pub use rerank::{RerankOptions, Reranked, Scored};

/// Inputs one call may hold (OpenAI's limit for an embeddings request).
pub const MAX_INPUTS: usize = 2048;
