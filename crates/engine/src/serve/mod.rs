//! Serving: requests, the continuous-batching scheduler over the paged KV pool, the prefix cache,
//! sampling, streaming, the engine loop, and the reports.
pub mod block_manager;
pub mod grammar;
pub mod logprobs;
pub mod pooled;
pub mod report;
pub mod request;
pub mod sampler;
pub mod scheduler;
pub mod sequence;
pub mod server;
pub mod step_cost;
