//! Progress of long load-time work (quantizing weights, calibrating), reported to a callback.
use serde::Serialize;
use std::sync::Arc;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// "quantize", "calibrate", "calibrate (smoothed)".
    pub stage: &'static str,
    pub done: usize,
    pub total: usize,
    /// What `done` and `total` count ("tensors", "tokens").
    pub unit: &'static str,
}

pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;
