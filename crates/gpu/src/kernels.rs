//! Every compute pipeline, compiled once when the context is created: WGSL sources composed from
//! the small files in `wgsl/` (a kernel + the weight or KV format it reads).
use crate::tensor::DType;
use std::collections::HashMap;

/// KV pool element types (the engine's `KvDtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvDtype {
    F32,
    F16,
    Bf16,
}

impl KvDtype {
    pub fn size(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            _ => 2,
        }
    }
}

/// Weight formats the matmul and embedding kernels read.
pub const WEIGHT_FORMATS: [DType; 5] = [DType::F32, DType::F16, DType::Bf16, DType::Q8_0, DType::Q4_0];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum K {
    Matvec(DType),
    MatvecSwiglu(DType),
    Tiled(DType),
    Embed(DType),
    RmsNorm,
    AddRmsNorm,
    Add,
    Swiglu,
    Argmax,
    HeadNormRope,
    KvWrite(KvDtype),
    Attention(KvDtype),
    AttnMerge,
}

pub(crate) struct Kernel {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    /// Storage bindings as (index, read_write).
    pub binds: Vec<(u32, bool)>,
}

pub(crate) struct Kernels {
    pub map: HashMap<K, Kernel>,
}

fn weights_src(d: DType) -> String {
    let bytes = include_str!("wgsl/bytes.wgsl");
    match d {
        DType::F32 => include_str!("wgsl/weights_f32.wgsl").to_string(),
        DType::F16 => include_str!("wgsl/weights_f16.wgsl").to_string(),
        DType::Bf16 => include_str!("wgsl/weights_bf16.wgsl").to_string(),
        DType::Q8_0 => format!("{bytes}\n{}", include_str!("wgsl/weights_q8_0.wgsl")),
        DType::Q4_0 => format!("{bytes}\n{}", include_str!("wgsl/weights_q4_0.wgsl")),
        DType::U32 => unreachable!("u32 is not a weight format"),
    }
}

fn kv_src(d: KvDtype, write: bool) -> String {
    let access = if write { "read_write" } else { "read" };
    let (read, put) = match d {
        KvDtype::F32 => (include_str!("wgsl/kv_f32.wgsl"), include_str!("wgsl/kv_put_f32.wgsl")),
        KvDtype::F16 => (include_str!("wgsl/kv_f16.wgsl"), include_str!("wgsl/kv_put_f16.wgsl")),
        KvDtype::Bf16 => (include_str!("wgsl/kv_bf16.wgsl"), include_str!("wgsl/kv_put_bf16.wgsl")),
    };
    let read = read.replace("ACCESS", access);
    if write {
        format!("{read}\n{put}")
    } else {
        read
    }
}

/// The matvec's subgroup reduction, or its stand-in where the adapter has no subgroups (one
/// "subgroup" per invocation: the same code then sums 64 slots instead of 64 / size).
fn with_subgroups(src: &str, subgroups: bool) -> String {
    if subgroups {
        src.replace(
            "/*SG_ARGS*/",
            ", @builtin(subgroup_id) sg_id: u32, @builtin(subgroup_invocation_id) sg_inv: u32, @builtin(num_subgroups) nsg: u32, @builtin(subgroup_size) sg_size: u32",
        )
        .replace("sg_add(", "subgroupAdd(")
        .replace("/*SG_LETS*/", "")
    } else {
        src.replace("/*SG_ARGS*/", "").replace("/*SG_LETS*/", "let sg_id = lid; let sg_inv = 0u; let nsg = WG; let sg_size = 1u;").replace("sg_add(", "(")
    }
}

/// (source, storage bindings as (index, read_write)) of a kernel. Binding 0 is always the
/// params uniform (dynamic offset).
pub(crate) fn source(k: K, subgroups: bool) -> (String, Vec<(u32, bool)>) {
    let wg_sum = include_str!("wgsl/wg_sum.wgsl");
    let weight_kernel = |body: &str, d: DType| (format!("{}\n{body}", weights_src(d)), vec![(1, false), (2, false), (3, true)]);
    match k {
        K::Matvec(d) => weight_kernel(&with_subgroups(include_str!("wgsl/matvec.wgsl"), subgroups), d),
        K::MatvecSwiglu(d) => weight_kernel(&with_subgroups(include_str!("wgsl/matvec_swiglu.wgsl"), subgroups), d),
        K::Tiled(d) => weight_kernel(include_str!("wgsl/matmul_tiled.wgsl"), d),
        K::Embed(d) => weight_kernel(include_str!("wgsl/embedding.wgsl"), d),
        K::RmsNorm => (format!("{wg_sum}\n{}", include_str!("wgsl/rms_norm.wgsl")), vec![(1, false), (2, false), (3, false), (4, true)]),
        K::AddRmsNorm => (format!("{wg_sum}\n{}", include_str!("wgsl/add_rms_norm.wgsl")), vec![(1, true), (2, false), (3, false), (4, true)]),
        K::Add => (include_str!("wgsl/add.wgsl").to_string(), vec![(1, true), (2, false)]),
        K::Swiglu => (include_str!("wgsl/swiglu.wgsl").to_string(), vec![(1, false), (2, false), (3, true)]),
        K::Argmax => (include_str!("wgsl/argmax.wgsl").to_string(), vec![(1, false), (2, true)]),
        K::HeadNormRope => (
            format!("{wg_sum}\n{}", include_str!("wgsl/head_norm_rope.wgsl")),
            vec![(1, true), (2, false), (3, false), (4, false), (5, false)],
        ),
        K::KvWrite(d) => (
            format!("{}\n{}", kv_src(d, true), include_str!("wgsl/kv_write.wgsl")),
            vec![(1, true), (2, true), (3, false), (4, false), (5, false)],
        ),
        K::Attention(d) => (
            format!("{}\n{}", kv_src(d, false), include_str!("wgsl/attention.wgsl")),
            vec![(1, false), (2, false), (3, false), (4, false), (5, true)],
        ),
        K::AttnMerge => (include_str!("wgsl/attn_merge.wgsl").to_string(), vec![(1, false), (2, false), (3, true)]),
    }
}

pub(crate) fn all() -> Vec<K> {
    let mut ks = vec![K::RmsNorm, K::AddRmsNorm, K::Add, K::Swiglu, K::Argmax, K::HeadNormRope, K::AttnMerge];
    for d in WEIGHT_FORMATS {
        ks.extend([K::Matvec(d), K::MatvecSwiglu(d), K::Tiled(d), K::Embed(d)]);
    }
    for d in [KvDtype::F32, KvDtype::F16, KvDtype::Bf16] {
        ks.extend([K::KvWrite(d), K::Attention(d)]);
    }
    ks
}

pub(crate) fn build(device: &wgpu::Device, subgroups: bool) -> Kernels {
    let mut map = HashMap::new();
    for k in all() {
        let (src, binds) = source(k, subgroups);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(&format!("{k:?}")),
            source: wgpu::ShaderSource::Wgsl(src.into()),
        });
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer { ty: wgpu::BufferBindingType::Uniform, has_dynamic_offset: true, min_binding_size: None },
            count: None,
        }];
        for &(b, rw) in &binds {
            entries.push(wgpu::BindGroupLayoutEntry {
                binding: b,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: !rw },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            });
        }
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: None, entries: &entries });
        let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: None,
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&format!("{k:?}")),
            layout: Some(&pl),
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        map.insert(k, Kernel { pipeline, layout, binds });
    }
    Kernels { map }
}
