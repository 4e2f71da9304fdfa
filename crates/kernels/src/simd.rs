//! Run-time instruction-set choice: one binary, the best path each CPU supports.
//! `NANO_QWEN3_ISA=portable` (or `avx2`) forces a path, so tests can compare them.
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Plain Rust; the reference every SIMD path is tested against.
    Portable,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2+fma+f16c",
        }
    }

    /// Whether this CPU can run `self`.
    pub fn supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 => false,
        }
    }
}

/// The path used by default: the env override if set and supported, else the best detected.
pub fn active_isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let forced = match std::env::var("NANO_QWEN3_ISA").as_deref() {
            Ok("portable") => Some(Isa::Portable),
            Ok("avx2") => Some(Isa::Avx2),
            _ => None,
        };
        match forced {
            Some(isa) if isa.supported() => isa,
            _ if Isa::Avx2.supported() => Isa::Avx2,
            _ => Isa::Portable,
        }
    })
}
