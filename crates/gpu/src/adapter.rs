//! Adapter enumeration and selection: which GPU a request means, and what it offers.
use crate::error::{GpuError, Result};

/// Which adapter to run on (the engine's `device` option maps onto this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    /// A hardware adapter, discrete before integrated before anything else; never a software one
    /// (lavapipe / llvmpipe, SwiftShader, WARP): those are for tests, not speed.
    Auto,
    /// `'gpu'` (None: the first in [`Auto`](Self::Auto)'s order, software included) or `'gpu:N'`
    /// (the N-th of [`list_adapters`]). This is how tests reach lavapipe.
    Any(Option<usize>),
    /// The best adapter of one backend (hardware first, software accepted).
    Backend(GpuBackend),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuBackend {
    Vulkan,
    Metal,
    Dx12,
}

impl GpuBackend {
    fn wgpu(self) -> wgpu::Backend {
        match self {
            GpuBackend::Vulkan => wgpu::Backend::Vulkan,
            GpuBackend::Metal => wgpu::Backend::Metal,
            GpuBackend::Dx12 => wgpu::Backend::Dx12,
        }
    }
}

/// What an adapter is, and (once a context exists) what of it the kernels use.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterReport {
    pub name: String,
    /// "vulkan", "metal", "dx12".
    pub backend: String,
    pub driver: String,
    pub driver_info: String,
    /// "discrete", "integrated", "virtual", "cpu", "other".
    pub device_type: String,
    /// A CPU rasteriser (lavapipe, llvmpipe, SwiftShader, WARP): correct, not fast.
    pub software: bool,
    /// Device features enabled among "shader-f16", "subgroups", "timestamp-query" (all that
    /// the adapter offers). Subgroups: the matvec reductions (a shared-memory stand-in
    /// without); timestamps: [`crate::Step::time_gpu`]; shader-f16 is enabled for future f16
    /// arithmetic, today's kernels widen f16 / bf16 to f32 in registers without it.
    pub features: Vec<String>,
    pub subgroup_min_size: u32,
    pub subgroup_max_size: u32,
    /// Largest storage binding (bytes) the kernels assume: the adapter's, or a lower test override.
    pub max_storage_binding: u64,
    pub max_buffer_size: u64,
}

impl AdapterReport {
    pub(crate) fn of(adapter: &wgpu::Adapter) -> Self {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let offered = adapter.features();
        let features = [
            (wgpu::Features::SHADER_F16, "shader-f16"),
            (wgpu::Features::SUBGROUP, "subgroups"),
            (wgpu::Features::TIMESTAMP_QUERY, "timestamp-query"),
        ]
        .iter()
        .filter(|(f, _)| offered.contains(*f))
        .map(|(_, n)| n.to_string())
        .collect();
        AdapterReport {
            software: is_software(&info),
            name: info.name.clone(),
            backend: info.backend.to_str().to_string(),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            device_type: match info.device_type {
                wgpu::DeviceType::DiscreteGpu => "discrete",
                wgpu::DeviceType::IntegratedGpu => "integrated",
                wgpu::DeviceType::VirtualGpu => "virtual",
                wgpu::DeviceType::Cpu => "cpu",
                wgpu::DeviceType::Other => "other",
            }
            .to_string(),
            features,
            subgroup_min_size: info.subgroup_min_size,
            subgroup_max_size: info.subgroup_max_size,
            max_storage_binding: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
        }
    }

    pub fn uses(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }

    fn one_line(&self) -> String {
        format!("{} ({}, {}{})", self.name, self.backend, self.device_type, if self.software { ", software" } else { "" })
    }
}

/// Software rasterisers report `DeviceType::Cpu`, but not always (WARP says "Microsoft Basic
/// Render Driver" as an integrated GPU on some Windows builds): check the names too.
fn is_software(info: &wgpu::AdapterInfo) -> bool {
    let name = info.name.to_lowercase();
    info.device_type == wgpu::DeviceType::Cpu
        || ["llvmpipe", "lavapipe", "swiftshader", "microsoft basic render driver", "warp"].iter().any(|s| name.contains(s))
}

/// Order of preference: discrete, integrated, virtual, other, software last.
fn rank(r: &AdapterReport) -> u8 {
    if r.software {
        return 4;
    }
    match r.device_type.as_str() {
        "discrete" => 0,
        "integrated" => 1,
        "virtual" => 2,
        _ => 3,
    }
}

pub(crate) fn instance() -> wgpu::Instance {
    // WGPU_BACKEND (e.g. "vulkan") narrows the backends, as in wgpu's own tests.
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends &= wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12;
    wgpu::Instance::new(desc)
}

/// Every adapter wgpu sees (in its order: the indices of `'gpu:N'`), with its report.
pub fn list_adapters() -> Vec<AdapterReport> {
    let inst = instance();
    pollster::block_on(inst.enumerate_adapters(wgpu::Backends::all())).iter().map(AdapterReport::of).collect()
}

/// The adapter a request means.
pub(crate) fn select(inst: &wgpu::Instance, req: DeviceRequest) -> Result<wgpu::Adapter> {
    let adapters = pollster::block_on(inst.enumerate_adapters(wgpu::Backends::all()));
    let reports: Vec<AdapterReport> = adapters.iter().map(AdapterReport::of).collect();
    let found: Vec<String> = reports.iter().map(AdapterReport::one_line).collect();
    let mut order: Vec<usize> = (0..adapters.len()).collect();
    order.sort_by_key(|&i| rank(&reports[i])); // stable: wgpu's order within a rank
    let pick = match req {
        DeviceRequest::Auto => order.into_iter().find(|&i| !reports[i].software),
        DeviceRequest::Any(None) => order.into_iter().next(),
        DeviceRequest::Any(Some(n)) => {
            if n >= adapters.len() {
                return Err(GpuError::BadAdapterIndex { index: n, found });
            }
            Some(n)
        }
        DeviceRequest::Backend(b) => order.into_iter().find(|&i| adapters[i].get_info().backend == b.wgpu()),
    };
    let request = match req {
        DeviceRequest::Auto => "'auto' (a hardware GPU; software adapters are never picked automatically)".to_string(),
        DeviceRequest::Any(None) => "'gpu'".to_string(),
        DeviceRequest::Any(Some(n)) => format!("'gpu:{n}'"),
        DeviceRequest::Backend(b) => format!("'{}'", b.wgpu().to_str()),
    };
    match pick {
        Some(i) => Ok(adapters.into_iter().nth(i).unwrap()),
        None => Err(GpuError::NoAdapter { request, found }),
    }
}
