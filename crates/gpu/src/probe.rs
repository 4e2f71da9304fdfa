//! What subgroup size the kernels actually run with (the adapter reports a range; llvmpipe's
//! report follows LP_NATIVE_VECTOR_WIDTH, but the compute shaders may not).
use crate::context::GpuContext;
use crate::error::{GpuError, Result};

impl GpuContext {
    /// (subgroup size, subgroups) of a 64-invocation workgroup, or None without subgroups.
    pub fn probe_subgroups(&self) -> Result<Option<(u32, u32)>> {
        if !self.report().uses("subgroups") {
            return Ok(None);
        }
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("subgroup probe"),
            source: wgpu::ShaderSource::Wgsl(include_str!("wgsl/subgroup_probe.wgsl").into()),
        });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: None,
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let out = self.create_buffer(8, usage, None)?;
        let read = self.create_buffer(8, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST, None)?;
        let bg = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[wgpu::BindGroupEntry { binding: 0, resource: out.as_entire_binding() }],
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bg, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        }
        enc.copy_buffer_to_buffer(&out, 0, &read, 0, 8);
        self.queue.submit([enc.finish()]);
        read.slice(..).map_async(wgpu::MapMode::Read, |_| {});
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| GpuError::Device(e.to_string()))?;
        let v = read.slice(..).get_mapped_range().map_err(|e| GpuError::Device(e.to_string()))?;
        let w: &[u32] = bytemuck::cast_slice(&v);
        let seen = (w[0], w[1]);
        // The probe's two buffers go with this function.
        self.live.fetch_sub(out.size() + read.size(), std::sync::atomic::Ordering::Relaxed);
        Ok(Some(seen))
    }
}
