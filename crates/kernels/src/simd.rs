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

/// A storage format the kernels read as f32 (all their arithmetic is f32): f32 itself, or f16 /
/// bf16 (dense weights, KV cache) widened on the way in. The one place each format's widening
/// lives, so the dense matmul and attention read them alike. Sealed: exactly these three.
pub trait Widen: Copy + Send + Sync + 'static + sealed::Sealed {
    /// One element.
    fn to_f32(self) -> f32;
    /// The slice itself when it already is f32 (nothing to widen).
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }
    /// `dst = src` as f32 (half's slice conversion uses F16C where the CPU has it).
    fn widen(src: &[Self], dst: &mut [f32]);
    /// Eight consecutive elements as f32 lanes.
    /// # Safety
    /// `p` points to 8 readable elements and the CPU supports AVX2 + F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

impl Widen for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    fn as_f32(s: &[f32]) -> Option<&[f32]> {
        Some(s)
    }
    fn widen(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
}

impl Widen for half::f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    fn widen(src: &[half::f16], dst: &mut [f32]) {
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(src, dst)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const half::f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

impl Widen for half::bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
    fn widen(src: &[half::bf16], dst: &mut [f32]) {
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(src, dst)
    }
    /// bf16 is the top half of an f32: zero-extend to 32 bits and shift left.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const half::bf16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
    }
}

/// Ask for the cache lines of the `bytes` bytes from `p` ahead of use: a hint, which loads
/// nothing it is not allowed to and never faults, so `p` may point anywhere (past a buffer's end
/// too). A no-op where no prefetch instruction is wired.
#[inline(always)]
pub(crate) fn prefetch_bytes<T>(p: *const T, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    for line in (0..bytes).step_by(64) {
        // SAFETY: SSE is part of x86-64, and a prefetch never faults.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>((p as *const i8).wrapping_add(line)) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, bytes);
}

/// [`prefetch_bytes`] of a slice.
#[inline(always)]
pub(crate) fn prefetch<T>(x: &[T]) {
    prefetch_bytes(x.as_ptr(), std::mem::size_of_val(x))
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
