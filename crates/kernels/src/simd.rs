//! Run-time instruction-set choice: one binary, the best path each CPU supports.
//! `NANO_QWEN3_ISA=portable` (or `avx2`, `avx512-vnni`, `avx512-bf16`, `neon-dotprod`) forces a
//! path, so tests can compare them. A kernel without a path for the chosen ISA runs its portable
//! code, except that the AVX-512 paths run the AVX2 code wherever they have no kernel of their own
//! (every such CPU has AVX2), and `Avx512Bf16` runs the VNNI int8 / int4 tiles.
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Plain Rust; the reference every SIMD path is tested against.
    Portable,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX2 + FMA + F16C plus AVX-512 (F, BW, VL) with VNNI (Ice Lake, Tiger Lake, Sapphire
    /// Rapids, Zen 4 and later): `vpdpbusd` in the int8 and int4 matmuls, AVX2 elsewhere.
    Avx512Vnni,
    /// Avx512Vnni plus AVX512_BF16 (Sapphire Rapids, Zen 4 and later): `vdpbf16ps` for bf16 weights.
    Avx512Bf16,
    /// aarch64 NEON with the int8 dot product (`sdot`, Armv8.4 / Apple M1 / Graviton 2 and later):
    /// the int8 and int4 matmuls.
    NeonDotprod,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2+fma+f16c",
            Isa::Avx512Vnni => "avx512vnni+avx2+fma+f16c",
            Isa::Avx512Bf16 => "avx512bf16+avx512vnni+avx2+fma+f16c",
            Isa::NeonDotprod => "neon+dotprod",
        }
    }

    /// The `NANO_QWEN3_ISA` spelling: "portable", "avx2", "avx512-vnni", "avx512-bf16", "neon-dotprod".
    pub fn parse(name: &str) -> Option<Isa> {
        Self::ALL.into_iter().find(|i| i.env_name() == name)
    }

    pub const ALL: [Isa; 5] = [Isa::Portable, Isa::Avx2, Isa::Avx512Vnni, Isa::Avx512Bf16, Isa::NeonDotprod];

    /// Whether kernels without a path of their own for `self` run their AVX2 code.
    pub fn uses_avx2(self) -> bool {
        matches!(self, Isa::Avx2 | Isa::Avx512Vnni | Isa::Avx512Bf16)
    }

    /// Whether the int8 / int4 tiles use AVX-512 VNNI.
    pub fn uses_vnni(self) -> bool {
        matches!(self, Isa::Avx512Vnni | Isa::Avx512Bf16)
    }

    pub fn env_name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512-vnni",
            Isa::Avx512Bf16 => "avx512-bf16",
            Isa::NeonDotprod => "neon-dotprod",
        }
    }

    /// Every SIMD path this CPU can run, best first (tests compare each with the portable one).
    pub fn simd_paths() -> Vec<Isa> {
        [Isa::Avx512Bf16, Isa::Avx512Vnni, Isa::Avx2, Isa::NeonDotprod].into_iter().filter(|i| i.supported()).collect()
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
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                Isa::Avx2.supported()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx512Vnni => false,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16 => Isa::Avx512Vnni.supported() && is_x86_feature_detected!("avx512bf16"),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx512Bf16 => false,
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDotprod => std::arch::is_aarch64_feature_detected!("dotprod"),
            #[cfg(not(target_arch = "aarch64"))]
            Isa::NeonDotprod => false,
        }
    }
}

/// The path used by default: the env override if set and supported, else the best detected.
pub fn active_isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let forced = std::env::var("NANO_QWEN3_ISA").ok().and_then(|v| Isa::parse(&v));
        match forced {
            Some(isa) if isa.supported() => isa,
            _ => Isa::simd_paths().first().copied().unwrap_or(Isa::Portable),
        }
    })
}

/// Small AVX2 helpers shared by the kernels.
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    /// Sum of the eight lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// One f16 to f32 with the F16C instruction (the `half` crate converts in software here).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn f16_to_f32(h: half::f16) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h.to_bits() as i32)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test scripts name the paths their machine must have (`NANO_QWEN3_REQUIRE_ISA=neon-dotprod`
    /// under QEMU), so a missed detection cannot pass as "portable only", and the path it must
    /// choose (`NANO_QWEN3_EXPECT_ISA=avx2` on an AVX-512 CPU without VNNI), so a false one can't.
    #[test]
    fn required_simd_paths_are_detected() {
        let required = std::env::var("NANO_QWEN3_REQUIRE_ISA").unwrap_or_default();
        for name in required.split(',').filter(|s| !s.is_empty()) {
            let isa = Isa::parse(name).unwrap_or_else(|| panic!("unknown ISA {name:?}"));
            assert!(isa.supported(), "{name} is required but not detected");
        }
        if let Ok(name) = std::env::var("NANO_QWEN3_EXPECT_ISA") {
            assert_eq!(active_isa().env_name(), name, "the chosen path");
        }
        for isa in Isa::ALL {
            assert_eq!(Isa::parse(isa.env_name()), Some(isa));
        }
    }
}
