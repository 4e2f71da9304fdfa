//! What the serving loop runs its steps on: the host KV pool and the CPU kernels, or the GPU's
//! KV pool and kernels. Chosen once at load ([`crate::gpu_device`]); one match per step.
use super::gpu::GpuRunner;
use crate::error::Result;
use crate::model::forward::{ExecOptions, SeqChunk, Stepper};
use crate::model::kv_pool::KvPool;
use crate::model::Qwen3Model;

pub enum Executor {
    Cpu { kv: KvPool, stepper: Stepper },
    Gpu(GpuRunner),
}

impl Executor {
    pub fn cpu(kv: KvPool) -> Self {
        Executor::Cpu { kv, stepper: Stepper::default() }
    }

    /// One forward step over `batch`, the wanted logits rows appended to `logits`.
    pub fn step(&mut self, model: &Qwen3Model, batch: &[SeqChunk], opts: &ExecOptions, logits: &mut Vec<f32>) -> Result<()> {
        match self {
            Executor::Cpu { kv, stepper } => stepper.step(model, kv, batch, opts, logits),
            Executor::Gpu(g) => g.forward(model, batch, logits),
        }
    }

    /// The host KV pool, when the steps run on the CPU.
    pub fn cpu_kv(&mut self) -> Option<&mut KvPool> {
        match self {
            Executor::Cpu { kv, .. } => Some(kv),
            Executor::Gpu(_) => None,
        }
    }
}
