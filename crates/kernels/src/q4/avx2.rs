//! AVX2 paths of the row-major Q4_0 kernels: the scale search's error evaluation, and the int8
//! dot products on nibbles unpacked to [-8, 7].
use super::{BlockQ4, BlockQ8, QK4};
use crate::simd::x86::{f16_to_f32, hsum};
use std::arch::x86_64::*;

/// [`super::evaluate`] eight lanes at a time (same rounding: clamp to [0, 15], truncate).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn evaluate(x: &[f32; QK4], imp: &[f32; QK4], d: f32) -> (f32, f32, f32) {
    let inv = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
    let dv = _mm256_set1_ps(d);
    let (zero, fifteen, half, eight) = (_mm256_setzero_ps(), _mm256_set1_ps(15.0), _mm256_set1_ps(8.5), _mm256_set1_ps(8.0));
    let (mut err, mut num, mut den) = (zero, zero, zero);
    for c in 0..QK4 / 8 {
        let v = _mm256_loadu_ps(x.as_ptr().add(c * 8));
        let w = _mm256_loadu_ps(imp.as_ptr().add(c * 8));
        let t = _mm256_min_ps(_mm256_max_ps(_mm256_fmadd_ps(v, inv, half), zero), fifteen);
        let q = _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_cvttps_epi32(t)), eight);
        let e = _mm256_fnmadd_ps(q, dv, v);
        let wq = _mm256_mul_ps(w, q);
        err = _mm256_fmadd_ps(_mm256_mul_ps(w, e), e, err);
        num = _mm256_fmadd_ps(wq, v, num);
        den = _mm256_fmadd_ps(wq, q, den);
    }
    (hsum(err), hsum(num), hsum(den))
}

/// Nibbles widened to int8 in [-8, 7]: low nibbles are elements 0..16, high 16..32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack(b: &BlockQ4) -> __m256i {
    let packed = _mm_loadu_si128(b.qs.as_ptr() as *const __m128i);
    let low = _mm_set1_epi8(0xF);
    let lo = _mm_and_si128(packed, low);
    let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low);
    _mm256_sub_epi8(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(8))
}

/// M (1 or 2) activation rows by 4 weight rows: each block is unpacked once and feeds M dot
/// products; each activation block (and its absolute value) feeds 4.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn tile<const M: usize>(x: *const BlockQ8, w: *const BlockQ4, blocks: usize, y: *mut f32, ldy: usize) {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); 4]; M];
    for b in 0..blocks {
        let mut xv = [_mm256_setzero_si256(); M];
        let mut ax = [_mm256_setzero_si256(); M];
        let mut dx = [0f32; M];
        for i in 0..M {
            let xb = &*x.add(i * blocks + b);
            xv[i] = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
            ax[i] = _mm256_sign_epi8(xv[i], xv[i]);
            dx[i] = f16_to_f32(xb.d);
        }
        for j in 0..4 {
            let wb = &*w.add(j * blocks + b);
            let wv = unpack(wb);
            let dw = f16_to_f32(wb.d);
            for i in 0..M {
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(ax[i], _mm256_sign_epi8(wv, xv[i])), ones);
                acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dx[i] * dw), acc[i][j]);
            }
        }
    }
    for i in 0..M {
        for j in 0..4 {
            *y.add(i * ldy + j) = hsum(acc[i][j]);
        }
    }
}

/// The same signed int8 dot product as Q8, on unpacked nibbles.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot(x: *const BlockQ8, w: *const BlockQ4, blocks: usize) -> f32 {
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    for b in 0..blocks {
        let (xb, wb) = (&*x.add(b), &*w.add(b));
        let wv = unpack(wb);
        let xv = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(xv, xv), _mm256_sign_epi8(wv, xv)), ones);
        let d = f16_to_f32(xb.d) * f16_to_f32(wb.d);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d), acc);
    }
    hsum(acc)
}
