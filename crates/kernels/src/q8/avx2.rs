//! AVX2 paths of the row-major Q8_0 kernels: the block quantizer (the portable one's bits) and
//! the int8 dot products (`maddubs` on |x| and w carrying x's sign).
use super::BlockQ8;
use crate::simd::x86::{f16_to_f32, hsum};
use half::f16;
use std::arch::x86_64::*;

/// [`super::quantize_block_portable`] on 32 values, 8 at a time: the same operations per
/// value (abs-max, one division, multiply, round half away from zero, truncate), so the same bits.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_block(x: &[f32]) -> BlockQ8 {
    let p = x.as_ptr();
    let v = [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)), _mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24))];
    let sign = _mm256_set1_ps(-0.0);
    let abs = |v| _mm256_andnot_ps(sign, v);
    let m = _mm256_max_ps(_mm256_max_ps(abs(v[0]), abs(v[1])), _mm256_max_ps(abs(v[2]), abs(v[3])));
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
    let d = amax / 127.0;
    let inv = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
    let half = _mm256_set1_ps(0.5);
    let q = v.map(|v| {
        let r = _mm256_mul_ps(v, inv);
        _mm256_cvttps_epi32(_mm256_add_ps(r, _mm256_or_ps(_mm256_and_ps(r, sign), half)))
    });
    // Packing works per 128-bit lane: put the 4-byte groups back in order.
    let packed = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    let ordered = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    let mut qs = [0i8; 32];
    _mm256_storeu_si256(qs.as_mut_ptr() as *mut __m256i, ordered);
    BlockQ8 { d: f16::from_f32(d), qs }
}

/// 32 int8 products per instruction pair: |x| (unsigned) times w carrying x's sign, summed
/// pairwise to i16 by maddubs (|127·127·2| fits), then to i32 by madd with ones.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot(x: *const BlockQ8, w: *const BlockQ8, blocks: usize) -> f32 {
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    for b in 0..blocks {
        let (xb, wb) = (x.add(b), w.add(b));
        let xv = _mm256_loadu_si256((*xb).qs.as_ptr() as *const __m256i);
        let wv = _mm256_loadu_si256((*wb).qs.as_ptr() as *const __m256i);
        let ax = _mm256_sign_epi8(xv, xv);
        let sw = _mm256_sign_epi8(wv, xv);
        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sw), ones);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(scale(xb) * scale(wb)), acc);
    }
    hsum(acc)
}


#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scale(b: *const BlockQ8) -> f32 {
    f16_to_f32((*b).d)
}

/// M (1 or 2) activation rows by 4 weight rows: each loaded weight block feeds M dot products,
/// each activation block (and its absolute value) feeds 4.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn tile<const M: usize>(x: *const BlockQ8, w: *const BlockQ8, blocks: usize, y: *mut f32, ldy: usize) {
    let ones = _mm256_set1_epi16(1);
    let z = _mm256_setzero_ps();
    let mut acc = [[z; 4]; M];
    for b in 0..blocks {
        let mut xv = [_mm256_setzero_si256(); M];
        let mut ax = [_mm256_setzero_si256(); M];
        let mut dx = [0f32; M];
        for i in 0..M {
            let xb = x.add(i * blocks + b);
            xv[i] = _mm256_loadu_si256((*xb).qs.as_ptr() as *const __m256i);
            ax[i] = _mm256_sign_epi8(xv[i], xv[i]);
            dx[i] = scale(xb);
        }
        for j in 0..4 {
            let wb = w.add(j * blocks + b);
            let wv = _mm256_loadu_si256((*wb).qs.as_ptr() as *const __m256i);
            let dw = scale(wb);
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
