//! Typed errors: each names what was asked, what was found, and what would work instead.
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum GpuError {
    /// No adapter matched the request; `found` lists every adapter seen (name, backend, type).
    NoAdapter { request: String, found: Vec<String> },
    /// `gpu:N` past the end of the adapter list.
    BadAdapterIndex { index: usize, found: Vec<String> },
    /// The driver refused the device (features / limits / lost at creation).
    DeviceRequest(String),
    /// A tensor or shape the kernels cannot take (which op, what was wrong).
    Shape(String),
    /// One row (or one whole non-matrix tensor) is larger than a storage binding may be.
    TooLargeForBinding { what: String, bytes: u64, limit: u64 },
    /// A buffer past the adapter's maximum buffer size, or an allocation the driver refused.
    OutOfMemory(String),
    /// Submission, mapping or validation failed on the device (lost device included).
    Device(String),
}

impl fmt::Display for GpuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuError::NoAdapter { request, found } if found.is_empty() => {
                write!(f, "no GPU adapter for {request}: none found (is a Vulkan, Metal or DX12 driver installed?)")
            }
            GpuError::NoAdapter { request, found } => write!(f, "no GPU adapter for {request}; found: {}", found.join("; ")),
            GpuError::BadAdapterIndex { index, found } => {
                write!(f, "gpu:{index} does not exist: {} adapter(s) found: {}", found.len(), found.join("; "))
            }
            GpuError::DeviceRequest(m) => write!(f, "GPU device request failed: {m}"),
            GpuError::Shape(m) => write!(f, "GPU op: {m}"),
            GpuError::TooLargeForBinding { what, bytes, limit } => {
                write!(f, "{what}: {bytes} bytes cannot be split under the adapter's storage binding limit of {limit} bytes")
            }
            GpuError::OutOfMemory(m) => write!(f, "GPU out of memory: {m}"),
            GpuError::Device(m) => write!(f, "GPU device error: {m}"),
        }
    }
}

impl std::error::Error for GpuError {}

pub type Result<T> = std::result::Result<T, GpuError>;
