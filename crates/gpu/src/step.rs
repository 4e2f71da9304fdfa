//! A step: ops recorded (each with its params and per-step integers appended to two arenas),
//! then encoded into ONE command encoder and submitted once. Bind groups come from the
//! context's cache, keyed by the buffers' ids, so a warm step creates no buffers or bind groups.
use crate::context::GpuContext;
use crate::error::{GpuError, Result};
use crate::kernels::K;
use crate::tensor::{GpuTensor, Part};

/// Words of one dispatch's params (the uniform binding size: 64 bytes).
pub(crate) const PARAM_WORDS: usize = 16;

/// What a binding of a recorded dispatch refers to.
#[derive(Clone)]
pub(crate) enum Bind {
    Buf(wgpu::Buffer, u64),
    /// The step's integer arena (token ids, positions, slots, block tables, tiles, row lists).
    Data,
    /// The step's f32 scratch (attention partials).
    Scratch,
}

impl Bind {
    pub(crate) fn part(p: &Part) -> Bind {
        Bind::Buf(p.buffer.clone(), p.id)
    }
}

pub(crate) enum Op {
    Dispatch { k: K, binds: Vec<(u32, Bind)>, params: usize, groups: [u32; 3] },
    Copy { src: wgpu::Buffer, src_off: u64, dst_off: u64, size: u64 },
}

/// Which rows of which tensor come back after the step (see [`Step::read_f32`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadHandle(usize);

/// One forward step being recorded. Ops are methods (see `ops_*.rs`); nothing reaches the GPU
/// before [`GpuContext::run`].
pub struct Step<'c> {
    pub(crate) ctx: &'c GpuContext,
    pub(crate) ops: Vec<Op>,
    pub(crate) params: Vec<u32>,
    pub(crate) data: Vec<u32>,
    pub(crate) scratch_floats: usize,
    reads: Vec<(u64, usize)>, // staging byte offset, element count
    staging_bytes: u64,
    pub(crate) batch: Option<crate::ops_attention::BatchMeta>,
    timed: bool,
}

/// What a step read back.
#[derive(Debug, Default)]
pub struct StepOutput {
    words: Vec<Vec<u32>>,
    /// GPU time from the first dispatch's start to the last one's end, when the step asked for
    /// it ([`Step::time_gpu`]) and the adapter has timestamp queries.
    pub gpu_ns: Option<f64>,
    /// CPU time of `run` up to the submit: arenas, bind-group lookups, encoding the passes.
    pub encode_ns: u64,
}

impl StepOutput {
    pub fn f32(&self, h: ReadHandle) -> Vec<f32> {
        self.words[h.0].iter().map(|&w| f32::from_bits(w)).collect()
    }

    pub fn u32(&self, h: ReadHandle) -> &[u32] {
        &self.words[h.0]
    }
}

impl GpuContext {
    /// Start recording a step.
    pub fn step(&self) -> Step<'_> {
        Step { ctx: self, ops: Vec::new(), params: Vec::new(), data: Vec::new(), scratch_floats: 0, reads: Vec::new(), staging_bytes: 0, batch: None, timed: false }
    }

    /// Encode the step into one command encoder, submit it once, wait, and return what it read
    /// back. Device errors (validation, out of memory, lost device) come back as errors.
    pub fn run(&self, step: Step<'_>) -> Result<StepOutput> {
        let started = std::time::Instant::now();
        let mut st = self.state.lock().unwrap();
        let st = &mut *st;
        let align = self.uniform_align as usize / 4;
        self.purge_dead(&mut st.bind_groups);
        self.ensure(&mut st.params, (step.params.len().max(align) * 4) as u64, &mut st.bind_groups)?;
        self.ensure(&mut st.data, (step.data.len().max(1) * 4) as u64, &mut st.bind_groups)?;
        self.ensure(&mut st.scratch, (step.scratch_floats.max(1) * 4) as u64, &mut st.bind_groups)?;
        if step.staging_bytes > 0 {
            self.ensure(&mut st.staging, step.staging_bytes, &mut st.bind_groups)?;
        }
        if !step.params.is_empty() {
            self.queue.write_buffer(st.params.buffer.as_ref().unwrap(), 0, bytemuck::cast_slice(&step.params));
        }
        if !step.data.is_empty() {
            self.queue.write_buffer(st.data.buffer.as_ref().unwrap(), 0, bytemuck::cast_slice(&step.data));
        }
        let timed = step.timed && self.report().uses("timestamp-query");
        if timed && st.timer.is_none() {
            let queries = self.device.create_query_set(&wgpu::QuerySetDescriptor { label: None, ty: wgpu::QueryType::Timestamp, count: 2 });
            let resolve = self.create_buffer(16, wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC, None)?;
            let read = self.create_buffer(16, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST, None)?;
            st.timer = Some(crate::context::Timer { queries, resolve, read });
        }
        let n_dispatch = step.dispatch_count();
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("step") });
        // Bind groups first (the cache needs the state mutably), then the commands.
        let groups: Vec<Option<wgpu::BindGroup>> = step
            .ops
            .iter()
            .map(|op| match op {
                Op::Dispatch { k, binds, .. } => Some(self.bind_group(st, *k, binds)),
                Op::Copy { .. } => None,
            })
            .collect();
        // Runs of dispatches share one compute pass: WebGPU orders every dispatch's writes before
        // the next dispatch's reads inside a pass (wgpu puts the barriers in), and a pass per
        // dispatch cost ~5 us of CPU each. Copies (readbacks) go between passes.
        let mut dispatches = 0;
        let mut i = 0;
        while i < step.ops.len() {
            if let Op::Copy { src, src_off, dst_off, size } = &step.ops[i] {
                enc.copy_buffer_to_buffer(src, *src_off, st.staging.buffer.as_ref().unwrap(), *dst_off, *size);
                i += 1;
                continue;
            }
            let run_end = (i..step.ops.len()).find(|&j| matches!(step.ops[j], Op::Copy { .. })).unwrap_or(step.ops.len());
            let in_run = run_end - i;
            let timestamp_writes = match &st.timer {
                Some(t) if timed && (dispatches == 0 || dispatches + in_run == n_dispatch) => Some(wgpu::ComputePassTimestampWrites {
                    query_set: &t.queries,
                    beginning_of_pass_write_index: (dispatches == 0).then_some(0),
                    end_of_pass_write_index: (dispatches + in_run == n_dispatch).then_some(1),
                }),
                _ => None,
            };
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes });
            for (op, bg) in step.ops[i..run_end].iter().zip(&groups[i..run_end]) {
                if let (Op::Dispatch { k, params, groups: g, .. }, Some(bg)) = (op, bg) {
                    pass.set_pipeline(&self.kernels.map[k].pipeline);
                    pass.set_bind_group(0, bg, &[(*params * 4) as u32]);
                    pass.dispatch_workgroups(g[0], g[1], g[2]);
                    dispatches += 1;
                }
            }
            drop(pass);
            i = run_end;
        }
        let timer = st.timer.as_ref().filter(|_| timed && n_dispatch > 0);
        if let Some(t) = timer {
            enc.resolve_query_set(&t.queries, 0..2, &t.resolve, 0);
            enc.copy_buffer_to_buffer(&t.resolve, 0, &t.read, 0, 16);
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let cmd = enc.finish();
        let encode_ns = started.elapsed().as_nanos() as u64;
        self.queue.submit([cmd]);
        self.count_submit(dispatches as u64);
        let mut out = StepOutput { encode_ns, ..Default::default() };
        if !step.reads.is_empty() {
            let staging = st.staging.buffer.as_ref().unwrap();
            let slice = staging.slice(..step.staging_bytes);
            slice.map_async(wgpu::MapMode::Read, |_| {});
            self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| GpuError::Device(e.to_string()))?;
            {
                let bytes = slice.get_mapped_range().map_err(|e| GpuError::Device(format!("mapping the readback: {e}")))?;
                for &(off, n) in &step.reads {
                    let w: &[u32] = bytemuck::cast_slice(&bytes[off as usize..off as usize + 4 * n]);
                    out.words.push(w.to_vec());
                }
            }
            staging.unmap();
        } else {
            self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| GpuError::Device(e.to_string()))?;
        }
        if let Some(t) = timer {
            let slice = t.read.slice(..);
            slice.map_async(wgpu::MapMode::Read, |_| {});
            self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| GpuError::Device(e.to_string()))?;
            {
                let v = slice.get_mapped_range().map_err(|e| GpuError::Device(format!("mapping the timestamps: {e}")))?;
                let ts: &[u64] = bytemuck::cast_slice(&v);
                out.gpu_ns = Some(ts[1].wrapping_sub(ts[0]) as f64 * self.queue.get_timestamp_period() as f64);
            }
            t.read.unmap();
        }
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(GpuError::Device(e.to_string()));
        }
        if let Some(e) = self.take_errors() {
            return Err(GpuError::Device(e));
        }
        Ok(out)
    }

    fn bind_group(&self, st: &mut crate::context::State, k: K, binds: &[(u32, Bind)]) -> wgpu::BindGroup {
        let id = |b: &Bind| match b {
            Bind::Buf(_, id) => *id,
            Bind::Data => st.data.id,
            Bind::Scratch => st.scratch.id,
        };
        let mut ids = [0u64; 6];
        ids[0] = st.params.id;
        for (slot, (_, b)) in ids[1..].iter_mut().zip(binds) {
            *slot = id(b);
        }
        let key = (k, ids);
        if let Some(bg) = st.bind_groups.get(&key) {
            return bg.clone();
        }
        let buf = |b: &Bind| match b {
            Bind::Buf(buf, _) => buf.clone(),
            Bind::Data => st.data.buffer.clone().unwrap(),
            Bind::Scratch => st.scratch.buffer.clone().unwrap(),
        };
        let params = st.params.buffer.clone().unwrap();
        let bufs: Vec<(u32, wgpu::Buffer)> = binds.iter().map(|(i, b)| (*i, buf(b))).collect();
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: &params, offset: 0, size: std::num::NonZeroU64::new((PARAM_WORDS * 4) as u64) }),
        }];
        for (i, b) in &bufs {
            entries.push(wgpu::BindGroupEntry { binding: *i, resource: b.as_entire_binding() });
        }
        let bg = self.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &self.kernels.map[&k].layout, entries: &entries });
        self.count_bind_group();
        st.bind_groups.insert(key, bg.clone());
        bg
    }
}

impl<'c> Step<'c> {
    /// Record one dispatch with its params (at most [`PARAM_WORDS`] words).
    pub(crate) fn dispatch(&mut self, k: K, binds: Vec<(u32, Bind)>, params: &[u32], groups: [u32; 3]) -> Result<()> {
        assert!(params.len() <= PARAM_WORDS && binds.len() <= 5, "a dispatch has at most 16 param words and 5 storage bindings");
        // A buffer written by the op may not also be bound elsewhere in it (wgpu refuses it).
        let rw = &self.ctx.kernels.map[&k].binds;
        let id = |b: &Bind| match b {
            Bind::Buf(_, id) => Some(*id),
            _ => None,
        };
        for (i, (bi, b)) in binds.iter().enumerate() {
            let writes = rw.iter().any(|&(j, w)| j == *bi && w);
            if writes && binds.iter().enumerate().any(|(j, (_, c))| j != i && id(c).is_some() && id(c) == id(b)) {
                return Err(GpuError::Shape(format!("{k:?}: the output tensor is also one of the inputs; use a separate buffer")));
            }
        }
        let align = (self.ctx.uniform_align as usize / 4).max(PARAM_WORDS);
        let at = self.params.len().div_ceil(align) * align;
        self.params.resize(at, 0);
        self.params.extend_from_slice(params);
        self.params.resize(at + align, 0);
        if groups.iter().all(|&g| g > 0) {
            self.ops.push(Op::Dispatch { k, binds, params: at, groups });
        }
        Ok(())
    }

    /// Append integers to the step's data arena; returns their word offset.
    pub(crate) fn push_data(&mut self, words: &[u32]) -> u32 {
        let at = self.data.len() as u32;
        self.data.extend_from_slice(words);
        at
    }

    /// Read back `len` f32 (or u32) elements of an unsplit tensor from element `first` on.
    pub fn read_f32(&mut self, t: &GpuTensor, first: usize, len: usize) -> Result<ReadHandle> {
        if t.parts.len() != 1 || first + len > t.len() || t.dtype.row_bytes(1) != 4 {
            return Err(GpuError::Shape(format!("read of {len} elements at {first} from a {:?} tensor of {} in {} part(s)", t.dtype, t.len(), t.parts.len())));
        }
        let size = 4 * len as u64;
        let dst_off = self.staging_bytes;
        self.ops.push(Op::Copy { src: t.single().buffer.clone(), src_off: 4 * first as u64, dst_off, size });
        self.staging_bytes += size.div_ceil(256) * 256;
        self.reads.push((dst_off, len));
        Ok(ReadHandle(self.reads.len() - 1))
    }

    /// The whole of an unsplit tensor as raw 32-bit words (any element type; a KV pool in tests).
    pub fn read_words(&mut self, t: &GpuTensor) -> Result<ReadHandle> {
        if t.parts.len() != 1 {
            return Err(GpuError::Shape("read_words: the tensor is split".into()));
        }
        let len = t.bytes().div_ceil(4);
        let dst_off = self.staging_bytes;
        self.ops.push(Op::Copy { src: t.single().buffer.clone(), src_off: 0, dst_off, size: 4 * len as u64 });
        self.staging_bytes += (4 * len as u64).div_ceil(256) * 256;
        self.reads.push((dst_off, len));
        Ok(ReadHandle(self.reads.len() - 1))
    }

    /// Same as [`Step::read_f32`]; the output's `u32` accessor gives the words.
    pub fn read_u32(&mut self, t: &GpuTensor, first: usize, len: usize) -> Result<ReadHandle> {
        self.read_f32(t, first, len)
    }

    /// Measure this step's GPU time ([`StepOutput::gpu_ns`]; None without timestamp queries).
    pub fn time_gpu(&mut self) {
        self.timed = true;
    }

    /// Dispatches recorded so far.
    pub fn dispatch_count(&self) -> usize {
        self.ops.iter().filter(|o| matches!(o, Op::Dispatch { .. })).count()
    }
}

/// Workgroups for `n` items spread over x and y (each at most 65,535): (x, y).
pub(crate) fn grid2(n: u32) -> (u32, u32) {
    if n <= 65535 {
        (n, 1)
    } else {
        (65535, n.div_ceil(65535))
    }
}
