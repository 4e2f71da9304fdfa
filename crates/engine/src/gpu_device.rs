//! The one place that decides where a model runs: the `device` request, the adapters this
//! machine has, and (for `auto`) whether the model fits the adapter. The forward recipe never
//! asks; the serving loop gets an [`Executor`](crate::model::backend::executor::Executor) of one kind.
use crate::device::{DeviceRequest, GpuApi};
use crate::error::{EngineError, Result};
use nano_qwen3_gpu::{AdapterReport, GpuContext, GpuError};
use std::sync::{Arc, OnceLock};

/// Where the model goes, before it is loaded.
pub enum Placement {
    /// The CPU; `why` says why `auto` did not take a GPU.
    Cpu { why: Option<String> },
    Gpu(Arc<GpuContext>),
}

impl Placement {
    pub fn adapter(&self) -> Option<&AdapterReport> {
        match self {
            Placement::Gpu(c) => Some(c.report()),
            Placement::Cpu { .. } => None,
        }
    }
}

fn gpu_request(req: DeviceRequest) -> nano_qwen3_gpu::DeviceRequest {
    use nano_qwen3_gpu::{DeviceRequest as G, GpuBackend as B};
    match req {
        DeviceRequest::Auto => G::Auto,
        DeviceRequest::Cpu => unreachable!("the CPU needs no adapter"),
        DeviceRequest::Gpu { api: Some(GpuApi::Vulkan), .. } => G::Backend(B::Vulkan),
        DeviceRequest::Gpu { api: Some(GpuApi::Metal), .. } => G::Backend(B::Metal),
        DeviceRequest::Gpu { api: Some(GpuApi::Dx12), .. } => G::Backend(B::Dx12),
        DeviceRequest::Gpu { index, api: None } => G::Any(index),
    }
}

/// Open the adapter a request means. `auto` without a hardware adapter (or with one whose
/// device cannot be opened) is the CPU, and says why; an explicit GPU request that finds none is
/// an error naming what was found.
pub fn place(req: DeviceRequest) -> Result<Placement> {
    // `auto` that found no hardware adapter once does not look again in this process: every
    // load would pay the enumeration (40-200 ms with lavapipe installed).
    static NO_HARDWARE: OnceLock<String> = OnceLock::new();
    if req == DeviceRequest::Cpu {
        return Ok(Placement::Cpu { why: None });
    }
    if let (DeviceRequest::Auto, Some(why)) = (req, NO_HARDWARE.get()) {
        return Ok(Placement::Cpu { why: Some(why.clone()) });
    }
    match GpuContext::new(gpu_request(req)) {
        Ok(c) => Ok(Placement::Gpu(Arc::new(c))),
        Err(e) if req == DeviceRequest::Auto => {
            let why = match e {
                GpuError::NoAdapter { found, .. } if found.is_empty() => NO_HARDWARE.get_or_init(|| "no GPU adapter found".into()).clone(),
                GpuError::NoAdapter { found, .. } => NO_HARDWARE.get_or_init(|| format!("no hardware GPU adapter (found: {})", found.join("; "))).clone(),
                e => e.to_string(),
            };
            Ok(Placement::Cpu { why: Some(why) })
        }
        Err(e) => Err(EngineError::Unsupported(format!("device: {e}"))),
    }
}

/// Check what the adapter's limits say before uploading: each layer's K (and V) pool is one
/// binding, so `kv_blocks` must fit one; weights are split by rows, so only a single row past
/// the limit cannot be placed. Says what does not fit and what would.
pub fn check_fit(a: &AdapterReport, m: &crate::model::Qwen3Model, kv_block_bytes: usize, kv_blocks: usize) -> Result<()> {
    let c = &m.config;
    crate::model::backend::gpu::check_shapes(m)?;
    let layer_kv = kv_blocks as u64 * (kv_block_bytes / (2 * c.num_hidden_layers)) as u64;
    if layer_kv > a.max_storage_binding {
        let most = a.max_storage_binding / (kv_block_bytes / (2 * c.num_hidden_layers)) as u64 * kv_block_bytes as u64;
        return Err(EngineError::Unsupported(format!(
            "the KV pool does not fit {} ({}): one layer's K pool would be {layer_kv} bytes, over its storage binding limit of {} bytes; use kvCacheMemory <= {most} bytes (or kvCacheDtype f16)",
            a.name, a.backend, a.max_storage_binding
        )));
    }
    Ok(())
}

/// Upload the model and make the serving pool on the GPU (weights, KV pool of `kv_blocks`,
/// activations for steps of `step_tokens`).
pub fn upload(
    ctx: &Arc<GpuContext>,
    m: &crate::model::Qwen3Model,
    kv: crate::model::KvDtype,
    kv_block_bytes: usize,
    kv_blocks: usize,
    max_positions: usize,
    step_tokens: usize,
) -> Result<(Arc<crate::model::backend::gpu::GpuModel>, crate::model::backend::gpu::GpuRunner)> {
    use crate::model::backend::gpu::{GpuModel, GpuRunner};
    let a = ctx.report();
    check_fit(a, m, kv_block_bytes, kv_blocks)?;
    let what = |e: EngineError| {
        EngineError::Unsupported(format!(
            "the model ({} bytes of weights) and its KV pool ({} bytes) do not fit {} ({}): {e}; a smaller format (int4) or a smaller kvCacheMemory would need less",
            m.weight_bytes(),
            kv_blocks * kv_block_bytes,
            a.name,
            a.backend
        ))
    };
    let g = Arc::new(GpuModel::upload(ctx.clone(), m, max_positions).map_err(what)?);
    let runner = GpuRunner::new(g.clone(), m, kv, kv_blocks, step_tokens).map_err(what)?;
    Ok((g, runner))
}
