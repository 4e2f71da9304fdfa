//! x86-64 AVX-512 VNNI entry points of the GGUF-block tiles: the shared tiles of `avx2.rs`
//! with `vpdpbusd` (unsigned codes times signed activations, 4 products into each i32 lane, no
//! intermediate i16) as the dot step. 256-bit vectors through AVX512VL, as in `repack`.
use super::act::{X32, XK};
use super::avx2::{legacy_with, q4k_with, q6k_with, Dot};
use std::arch::x86_64::*;

struct Dpbusd;

impl Dot for Dpbusd {
    #[inline(always)]
    unsafe fn dot(acc: __m256i, u: __m256i, x: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, u, x)
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn q4k<const MR: usize>(x: *const XK, w: *const u8, blocks: usize, y: *mut f32, ldy: usize, cols: usize) {
    q4k_with::<Dpbusd, MR, false>(x, w, blocks, y, ldy, cols)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn q5k<const MR: usize>(x: *const XK, w: *const u8, blocks: usize, y: *mut f32, ldy: usize, cols: usize) {
    q4k_with::<Dpbusd, MR, true>(x, w, blocks, y, ldy, cols)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn q6k<const MR: usize>(x: *const XK, w: *const u8, blocks: usize, y: *mut f32, ldy: usize, cols: usize) {
    q6k_with::<Dpbusd, MR>(x, w, blocks, y, ldy, cols)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn legacy<const MR: usize, const KIND: u8>(x: *const X32, w: *const u8, blocks: usize, y: *mut f32, ldy: usize, cols: usize) {
    legacy_with::<Dpbusd, MR, KIND>(x, w, blocks, y, ldy, cols)
}
