//! The device: adapter + queue + every pipeline (compiled here, once), the step arenas and the
//! bind-group cache, and counters of what was created (a warm step should create nothing).
use crate::adapter::{self, AdapterReport, DeviceRequest};
use crate::error::{GpuError, Result};
use crate::kernels::{self, KvDtype, Kernels, K};
use crate::tensor::{rows_per_part, DType, GpuTensor, Part, PartGuard};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Options for [`GpuContext::with_options`].
#[derive(Debug, Clone, Default)]
pub struct ContextOptions {
    /// Split tensors at this many bytes per binding instead of the adapter's limit (tests use a
    /// tiny value to exercise splitting on tiny tensors).
    pub max_storage_binding: Option<u64>,
    /// Pretend the adapter has no subgroups (tests the fallback reduction).
    pub disable_subgroups: bool,
}

/// What the context created so far: GPU buffers and bind groups (a warm decode step adds none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub buffers_created: u64,
    /// Bytes of the GPU buffers alive now: tensors (weights, KV, activations) and step arenas.
    pub live_bytes: u64,
    pub bind_groups_created: u64,
    pub submits: u64,
    pub dispatches: u64,
}

/// A growable buffer reused by every step (params, per-step integers, scratch, readback).
pub(crate) struct Arena {
    pub buffer: Option<wgpu::Buffer>,
    pub id: u64,
    pub size: u64,
    usage: wgpu::BufferUsages,
}

pub(crate) struct State {
    pub params: Arena,
    pub data: Arena,
    pub scratch: Arena,
    pub staging: Arena,
    pub bind_groups: HashMap<BindKey, wgpu::BindGroup>,
    /// Two GPU timestamps per timed step (made on the first timed step).
    pub timer: Option<Timer>,
}

/// A bind group's identity: the kernel and the ids of the buffers at its bindings (params
/// first; unused slots 0). A fixed array, so a lookup allocates nothing.
pub(crate) type BindKey = (K, [u64; 6]);

pub(crate) struct Timer {
    pub queries: wgpu::QuerySet,
    pub resolve: wgpu::Buffer,
    pub read: wgpu::Buffer,
}

pub struct GpuContext {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) kernels: Kernels,
    pub(crate) state: Mutex<State>,
    report: AdapterReport,
    pub(crate) uniform_align: u32,
    errors: Arc<Mutex<Vec<String>>>,
    /// Ids of tensor parts dropped since the last step: their cached bind groups go.
    pub(crate) dead: Arc<Mutex<Vec<u64>>>,
    next_id: AtomicU64,
    buffers: AtomicU64,
    pub(crate) live: Arc<AtomicU64>,
    bind_groups: AtomicU64,
    submits: AtomicU64,
    dispatches: AtomicU64,
}

impl GpuContext {
    /// Select the adapter, open the device with every feature the kernels can use that it
    /// offers (f16, subgroups, timestamps) and its full limits, and compile every kernel.
    pub fn new(req: DeviceRequest) -> Result<Self> {
        Self::with_options(req, ContextOptions::default())
    }

    pub fn with_options(req: DeviceRequest, opts: ContextOptions) -> Result<Self> {
        let inst = adapter::instance();
        let adapter = adapter::select(&inst, req)?;
        let mut report = AdapterReport::of(&adapter);
        let offered = adapter.features();
        let mut wanted = wgpu::Features::SHADER_F16 | wgpu::Features::TIMESTAMP_QUERY;
        if !opts.disable_subgroups {
            wanted |= wgpu::Features::SUBGROUP;
        }
        let features = offered & wanted;
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("nano-qwen3-gpu"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| GpuError::DeviceRequest(format!("{} ({}): {e}", report.name, report.backend)))?;
        // Errors outside our scopes are collected and returned by the next run, never a panic.
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| sink.lock().unwrap().push(e.to_string())));
        let sink = errors.clone();
        device.set_device_lost_callback(move |reason, msg| sink.lock().unwrap().push(format!("device lost ({reason:?}): {msg}")));
        report.features.retain(|f| match f.as_str() {
            "shader-f16" => features.contains(wgpu::Features::SHADER_F16),
            "subgroups" => features.contains(wgpu::Features::SUBGROUP),
            "timestamp-query" => features.contains(wgpu::Features::TIMESTAMP_QUERY),
            _ => false,
        });
        if let Some(m) = opts.max_storage_binding {
            report.max_storage_binding = report.max_storage_binding.min(m);
        }
        let subgroups = features.contains(wgpu::Features::SUBGROUP);
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let kernels = kernels::build(&device, subgroups);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(GpuError::Device(format!("compiling the kernels on {}: {e}", report.name)));
        }
        let arena = |usage| Arena { buffer: None, id: 0, size: 0, usage };
        let st = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        Ok(GpuContext {
            state: Mutex::new(State {
                params: arena(wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST),
                data: arena(st),
                scratch: arena(st),
                staging: arena(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
                bind_groups: HashMap::new(),
                timer: None,
            }),
            uniform_align: limits.min_uniform_buffer_offset_alignment,
            device,
            queue,
            kernels,
            report,
            errors,
            dead: Arc::new(Mutex::new(Vec::new())),
            next_id: AtomicU64::new(1),
            buffers: AtomicU64::new(0),
            live: Arc::new(AtomicU64::new(0)),
            bind_groups: AtomicU64::new(0),
            submits: AtomicU64::new(0),
            dispatches: AtomicU64::new(0),
        })
    }

    pub fn report(&self) -> &AdapterReport {
        &self.report
    }

    pub fn counters(&self) -> Counters {
        Counters {
            buffers_created: self.buffers.load(Ordering::Relaxed),
            live_bytes: self.live.load(Ordering::Relaxed),
            bind_groups_created: self.bind_groups.load(Ordering::Relaxed),
            submits: self.submits.load(Ordering::Relaxed),
            dispatches: self.dispatches.load(Ordering::Relaxed),
        }
    }

    /// Drop every cached bind group (those of dropped tensors go by themselves at the next run).
    pub fn clear_bind_group_cache(&self) {
        self.state.lock().unwrap().bind_groups.clear();
    }

    /// Bind groups in the cache (each keeps its buffers alive).
    pub fn cached_bind_groups(&self) -> usize {
        self.state.lock().unwrap().bind_groups.len()
    }

    /// Forget the bind groups of tensor parts dropped since the last call.
    pub(crate) fn purge_dead(&self, cache: &mut HashMap<BindKey, wgpu::BindGroup>) {
        let dead: Vec<u64> = std::mem::take(&mut *self.dead.lock().unwrap());
        if !dead.is_empty() {
            cache.retain(|key, _| !key.1.iter().any(|id| dead.contains(id)));
        }
    }

    pub(crate) fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn count_bind_group(&self) {
        self.bind_groups.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_submit(&self, dispatches: u64) {
        self.submits.fetch_add(1, Ordering::Relaxed);
        self.dispatches.fetch_add(dispatches, Ordering::Relaxed);
    }

    pub(crate) fn take_errors(&self) -> Option<String> {
        let mut e = self.errors.lock().unwrap();
        if e.is_empty() {
            None
        } else {
            Some(e.drain(..).collect::<Vec<_>>().join("; "))
        }
    }

    /// A buffer of `size` bytes (rounded up to 4); out-of-memory is an error, not a panic.
    pub(crate) fn create_buffer(&self, size: u64, usage: wgpu::BufferUsages, contents: Option<&[u8]>) -> Result<wgpu::Buffer> {
        let size = size.max(4).div_ceil(4) * 4;
        if size > self.report.max_buffer_size {
            return Err(GpuError::OutOfMemory(format!(
                "a buffer of {size} bytes is over the adapter's maximum buffer size of {} bytes",
                self.report.max_buffer_size
            )));
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor { label: None, size, usage, mapped_at_creation: contents.is_some() });
        if let Some(bytes) = contents {
            let mut view = buf.slice(..).get_mapped_range_mut().map_err(|e| GpuError::OutOfMemory(format!("mapping a new buffer: {e}")))?;
            view.slice(..bytes.len()).copy_from_slice(bytes);
            drop(view);
            buf.unmap();
        }
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(GpuError::OutOfMemory(format!("allocating {size} bytes: {e}")));
        }
        self.buffers.fetch_add(1, Ordering::Relaxed);
        self.live.fetch_add(size, Ordering::Relaxed);
        Ok(buf)
    }

    /// Grow `arena` to hold at least `size` bytes (doubling, so growth is rare); the bind groups
    /// that held the old buffer are dropped with it.
    pub(crate) fn ensure(&self, arena: &mut Arena, size: u64, cache: &mut HashMap<BindKey, wgpu::BindGroup>) -> Result<()> {
        if arena.buffer.is_some() && arena.size >= size {
            return Ok(());
        }
        let old = arena.id;
        cache.retain(|key, _| !key.1.contains(&old));
        let size = size.max(arena.size * 2).max(1024).div_ceil(256) * 256;
        let buffer = self.create_buffer(size, arena.usage, None)?;
        if arena.buffer.replace(buffer).is_some() {
            self.live.fetch_sub(arena.size, Ordering::Relaxed);
        }
        arena.id = self.new_id();
        arena.size = size;
        Ok(())
    }

    /// Upload a `[rows, cols]` tensor from its bytes (GGML block layout for Q8_0 / Q4_0; the
    /// engine's int8 and int4 weights are those blocks). A tensor over the binding limit is split
    /// into parts of whole rows; a single row over the limit is an error.
    pub fn upload(&self, dtype: DType, rows: usize, cols: usize, bytes: &[u8]) -> Result<GpuTensor> {
        self.make(dtype, rows, cols, Some(bytes))
    }

    pub fn upload_f32(&self, rows: usize, cols: usize, data: &[f32]) -> Result<GpuTensor> {
        self.upload(DType::F32, rows, cols, bytemuck::cast_slice(data))
    }

    pub fn upload_u32(&self, rows: usize, cols: usize, data: &[u32]) -> Result<GpuTensor> {
        self.upload(DType::U32, rows, cols, bytemuck::cast_slice(data))
    }

    /// A zeroed tensor (activations, outputs).
    pub fn zeros(&self, dtype: DType, rows: usize, cols: usize) -> Result<GpuTensor> {
        self.make(dtype, rows, cols, None)
    }

    /// One layer's K and V pools: `blocks` blocks of `[kv_heads][16][head_dim]` each.
    pub fn kv_layer(&self, dtype: KvDtype, blocks: usize, kv_heads: usize, head_dim: usize) -> Result<KvLayer> {
        let d = match dtype {
            KvDtype::F32 => DType::F32,
            KvDtype::F16 => DType::F16,
            KvDtype::Bf16 => DType::Bf16,
        };
        let (rows, cols) = (blocks, kv_heads * crate::BLOCK_TOKENS * head_dim);
        let k = self.make(d, rows, cols, None)?;
        let v = self.make(d, rows, cols, None)?;
        if k.parts.len() > 1 {
            return Err(GpuError::TooLargeForBinding {
                what: format!("KV pool of {blocks} blocks ({} bytes per layer)", k.bytes()),
                bytes: k.bytes() as u64,
                limit: self.report.max_storage_binding,
            });
        }
        Ok(KvLayer { k, v, dtype, blocks, kv_heads, head_dim })
    }

    /// How many buffers a `[rows, cols]` tensor would take here, without allocating: the load
    /// checks every weight before uploading any (a row over the binding limit is an error).
    pub fn parts_needed(&self, dtype: DType, rows: usize, cols: usize) -> Result<usize> {
        if dtype.is_block() && !cols.is_multiple_of(32) {
            return Err(GpuError::Shape(format!("{dtype:?} rows must be a multiple of 32 values, got {cols}")));
        }
        let row_bytes = dtype.row_bytes(cols);
        let limit = self.report.max_storage_binding.min(self.report.max_buffer_size);
        match rows_per_part(row_bytes, limit) {
            0 => Err(GpuError::TooLargeForBinding { what: format!("a row of [{rows}, {cols}] {dtype:?}"), bytes: row_bytes as u64, limit }),
            per => Ok(rows.div_ceil(per).max(1)),
        }
    }

    fn make(&self, dtype: DType, rows: usize, cols: usize, bytes: Option<&[u8]>) -> Result<GpuTensor> {
        if dtype.is_block() && !cols.is_multiple_of(32) {
            return Err(GpuError::Shape(format!("{dtype:?} rows must be a multiple of 32 values, got {cols}")));
        }
        let row_bytes = dtype.row_bytes(cols);
        if let Some(b) = bytes {
            if b.len() != rows * row_bytes {
                return Err(GpuError::Shape(format!(
                    "upload of [{rows}, {cols}] {dtype:?}: expected {} bytes, got {}",
                    rows * row_bytes,
                    b.len()
                )));
            }
        }
        let limit = self.report.max_storage_binding.min(self.report.max_buffer_size);
        let per = rows_per_part(row_bytes, limit);
        if per == 0 {
            return Err(GpuError::TooLargeForBinding { what: format!("a row of [{rows}, {cols}] {dtype:?}"), bytes: row_bytes as u64, limit });
        }
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
        let mut parts = Vec::new();
        let mut first = 0;
        loop {
            let n = per.min(rows - first);
            let range = first * row_bytes..(first + n) * row_bytes;
            let buffer = self.create_buffer((n * row_bytes) as u64, usage, bytes.map(|b| &b[range]))?;
            let id = self.new_id();
            let guard = PartGuard { id, bytes: buffer.size(), dead: self.dead.clone(), live: self.live.clone() };
            parts.push(Part { buffer, id, first_row: first, rows: n, _guard: Arc::new(guard) });
            first += n;
            if first >= rows {
                break;
            }
        }
        Ok(GpuTensor { dtype, rows, cols, parts })
    }

    /// Overwrite a whole unsplit tensor's bytes (runs before the next step's commands).
    pub fn write(&self, t: &GpuTensor, bytes: &[u8]) -> Result<()> {
        if t.parts.len() != 1 || bytes.len() != t.bytes() {
            return Err(GpuError::Shape(format!("write: {} bytes into a tensor of {} bytes in {} part(s)", bytes.len(), t.bytes(), t.parts.len())));
        }
        if bytes.len().is_multiple_of(4) {
            self.queue.write_buffer(&t.parts[0].buffer, 0, bytes);
        } else {
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().div_ceil(4) * 4, 0);
            self.queue.write_buffer(&t.parts[0].buffer, 0, &padded);
        }
        Ok(())
    }
}

/// One layer's paged KV storage in GPU memory (the layout of the engine's `KvPool`).
#[derive(Debug, Clone)]
pub struct KvLayer {
    pub k: GpuTensor,
    pub v: GpuTensor,
    pub dtype: KvDtype,
    pub blocks: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}
