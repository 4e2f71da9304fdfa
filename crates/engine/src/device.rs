//! The `device` option, parsed once: what the caller asked for. Which adapter that means on this
//! machine (and whether the model fits it) is decided at load, in [`crate::gpu_device`].
use crate::error::{EngineError, Result};

/// Every accepted spelling, for errors and docs.
pub const DEVICE_NAMES: &str = "auto, cpu, gpu, gpu:N, vulkan, metal, dx12";

/// A GPU API to restrict the adapter choice to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuApi {
    Vulkan,
    Metal,
    Dx12,
}

impl GpuApi {
    pub fn name(self) -> &'static str {
        match self {
            Self::Vulkan => "vulkan",
            Self::Metal => "metal",
            Self::Dx12 => "dx12",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceRequest {
    /// A hardware GPU adapter (discrete first) when there is one and the model fits it, else the
    /// CPU; never a software adapter.
    Auto,
    Cpu,
    /// A GPU adapter, software ones (lavapipe, WARP, SwiftShader) included: `index` picks the
    /// N-th of the adapters listed (`gpu:N`), `api` restricts them to one API.
    Gpu { index: Option<usize>, api: Option<GpuApi> },
}

impl DeviceRequest {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || EngineError::invalid_arg("device", format!("\"{s}\""), &format!("one of {DEVICE_NAMES}"));
        Ok(match s {
            "auto" => Self::Auto,
            "cpu" => Self::Cpu,
            "gpu" => Self::Gpu { index: None, api: None },
            "vulkan" => Self::Gpu { index: None, api: Some(GpuApi::Vulkan) },
            "metal" => Self::Gpu { index: None, api: Some(GpuApi::Metal) },
            "dx12" => Self::Gpu { index: None, api: Some(GpuApi::Dx12) },
            s if s == "cuda" || s.starts_with("cuda:") => {
                return Err(EngineError::Unsupported(format!(
                    "device \"{s}\" is not available: this build has no CUDA backend; use device \"gpu\" (or \"vulkan\") to run on an NVIDIA card through its Vulkan driver; available devices: {DEVICE_NAMES}"
                )))
            }
            s => match s.strip_prefix("gpu:") {
                // Digits only: "gpu:+1" or "gpu: 1" are typos, not indices.
                Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => Self::Gpu { index: Some(n.parse().map_err(|_| bad())?), api: None },
                _ => return Err(bad()),
            },
        })
    }

    /// Whether this request may run on the GPU at all.
    pub fn wants_gpu(self) -> bool {
        !matches!(self, Self::Cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_parses_to_its_request() {
        assert_eq!(DeviceRequest::parse("auto").unwrap(), DeviceRequest::Auto);
        assert_eq!(DeviceRequest::parse("cpu").unwrap(), DeviceRequest::Cpu);
        assert_eq!(DeviceRequest::parse("gpu").unwrap(), DeviceRequest::Gpu { index: None, api: None });
        assert_eq!(DeviceRequest::parse("gpu:0").unwrap(), DeviceRequest::Gpu { index: Some(0), api: None });
        assert_eq!(DeviceRequest::parse("gpu:12").unwrap(), DeviceRequest::Gpu { index: Some(12), api: None });
        for (s, api) in [("vulkan", GpuApi::Vulkan), ("metal", GpuApi::Metal), ("dx12", GpuApi::Dx12)] {
            assert_eq!(DeviceRequest::parse(s).unwrap(), DeviceRequest::Gpu { index: None, api: Some(api) });
            assert_eq!(api.name(), s);
        }
    }

    #[test]
    fn bad_values_name_themselves_and_the_allowed_ones() {
        for s in ["tpu", "gpu:", "gpu:-1", "gpu:+1", "gpu: 1", "GPU", "gpu:99999999999999999999999", ""] {
            let e = DeviceRequest::parse(s).unwrap_err();
            assert_eq!(e.code(), "INVALID_ARGUMENT", "{s}");
            let m = e.to_string();
            assert!(m.contains(&format!("\"{s}\"")) && m.contains(DEVICE_NAMES), "{m}");
        }
    }

    #[test]
    fn cuda_points_at_the_gpu_device() {
        for s in ["cuda", "cuda:0", "cuda:3"] {
            let e = DeviceRequest::parse(s).unwrap_err();
            assert_eq!(e.code(), "UNSUPPORTED");
            let m = e.to_string();
            assert!(m.contains(&format!("device \"{s}\" is not available")) && m.contains("use device \"gpu\"") && m.contains(DEVICE_NAMES), "{m}");
        }
    }
}
