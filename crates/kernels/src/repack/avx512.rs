//! x86-64 AVX-512 VNNI tiles for the repacked int8 / int4 matrices (layouts in the `repack`
//! module docs).
//!
//! `vpdpbusd` multiplies unsigned bytes by signed bytes and adds each group of 4 products into
//! its i32 lane: one instruction replaces AVX2's `sign` + `maddubs` + `madd` + `add`, and its
//! i32 lanes cannot saturate. The tiles keep AVX2's shape (256-bit vectors through AVX512VL: one
//! vector is a whole 8-row group, so no cross-lane shuffles, and no 512-bit frequency penalty on
//! the CPUs that have one); the integer sums are exact and the f32 steps are AVX2's, so results
//! are bit-identical to the AVX2 tiles.
//!
//! - Q8: the weights are the signed operand's partner that must become unsigned: `w ^ 0x80` is
//!   `w + 128` as u8 (one xor per weight vector, shared by the MR activation rows), and
//!   `Σ (w + 128)·x - 128 Σ x = Σ w·x`, with `128 Σ x` prepared once per activation block.
//! - Q4: nibbles are already unsigned: `Σ q·x - 8 Σ x` as in AVX2.
use super::avx2::{bcast4, prefetch_next_group, q4_tile_with, scale_block, scales, store, NibbleDot};
use super::{BlockQ8x8, Q4Rows, QK8, XQ4, XQ8};
use std::arch::x86_64::*;

/// `MR` activation rows by one 8-row int8 group.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn q8_tile<const MR: usize>(x: *const XQ8, w: *const BlockQ8x8, blocks: usize, y: *mut f32, ldy: usize, cols: usize) {
    let flip = _mm256_set1_epi8(i8::MIN);
    let mut acc = [_mm256_setzero_ps(); MR];
    for b in 0..blocks {
        let wb = &*w.add(b);
        prefetch_next_group::<MR, _>(w.wrapping_add(blocks + b), std::mem::size_of::<BlockQ8x8>());
        let mut isum = [_mm256_setzero_si256(); MR];
        for s in 0..QK8 / 4 {
            let wu = _mm256_xor_si256(_mm256_loadu_si256(wb.qs.as_ptr().add(32 * s) as *const __m256i), flip);
            for (i, sum) in isum.iter_mut().enumerate() {
                *sum = _mm256_dpbusd_epi32(*sum, wu, bcast4((*x.add(i * blocks + b)).qs.as_ptr().add(4 * s)));
            }
        }
        let dw = scales(wb.d.as_ptr() as *const u16);
        for i in 0..MR {
            let xb = &*x.add(i * blocks + b);
            scale_block(&mut acc[i], _mm256_sub_epi32(isum[i], _mm256_set1_epi32(xb.sum128)), dw, xb.d);
        }
    }
    store(&acc, y, ldy, cols);
}

/// `vpdpbusd` on the unsigned nibbles: i32 lanes straight away.
struct Dpbusd;

impl NibbleDot for Dpbusd {
    #[inline(always)]
    unsafe fn step(acc: __m256i, lo: __m256i, hi: __m256i, xl: __m256i, xh: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(acc, lo, xl), hi, xh)
    }

    #[inline(always)]
    unsafe fn widen(acc: __m256i) -> __m256i {
        acc
    }
}

/// `MR` activation rows by one 8-row int4 group (the shared int4 tile with `vpdpbusd`).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn q4_tile<const MR: usize, const GB: usize>(x: *const XQ4, w: Q4Rows, blocks: usize, y: *mut f32, ldy: usize, cols: usize) {
    q4_tile_with::<Dpbusd, MR, GB>(x, w, blocks, y, ldy, cols)
}
