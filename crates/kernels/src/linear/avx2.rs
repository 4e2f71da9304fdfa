//! AVX2 + FMA + F16C dense tiles: MR x NR register tiles whose weight vectors are widened to f32
//! as they are loaded ([`crate::simd::Widen`]), and bf16's own tile (16 weights per load, split
//! into even / odd lanes by shift and mask).
use super::WeightElem;
use crate::simd::x86::hsum;
use half::bf16;
use std::arch::x86_64::*;

/// Dot product tail (k not a multiple of 8) plus the horizontal sum.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn finish<W: WeightElem>(acc: __m256, x: *const f32, w: *const W, body: usize, k: usize) -> f32 {
    let mut s = hsum(acc);
    for q in body..k {
        s += *x.add(q) * (*w.add(q)).to_f32();
    }
    s
}

/// The hot prefill tile: 2 x-rows by 4 w-rows, named accumulators so that they stay in ymm
/// registers (arrays of __m256 got spilled). Decode (one x-row) takes [`tile`] row by row.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn tile_x4<W: WeightElem>(x: *const f32, w: *const W, k: usize, y: *mut f32, ldy: usize) {
    let (w0, w1, w2, w3) = (w, w.add(k), w.add(2 * k), w.add(3 * k));
    let (x0, x1) = (x, x.add(k));
    let z = _mm256_setzero_ps();
    let (mut a00, mut a01, mut a02, mut a03) = (z, z, z, z);
    let (mut a10, mut a11, mut a12, mut a13) = (z, z, z, z);
    let body = k / 8 * 8;
    let mut p = 0;
    while p < body {
        let v0 = _mm256_loadu_ps(x0.add(p));
        let v1 = _mm256_loadu_ps(x1.add(p));
        let b = W::load8(w0.add(p));
        a00 = _mm256_fmadd_ps(v0, b, a00);
        a10 = _mm256_fmadd_ps(v1, b, a10);
        let b = W::load8(w1.add(p));
        a01 = _mm256_fmadd_ps(v0, b, a01);
        a11 = _mm256_fmadd_ps(v1, b, a11);
        let b = W::load8(w2.add(p));
        a02 = _mm256_fmadd_ps(v0, b, a02);
        a12 = _mm256_fmadd_ps(v1, b, a12);
        let b = W::load8(w3.add(p));
        a03 = _mm256_fmadd_ps(v0, b, a03);
        a13 = _mm256_fmadd_ps(v1, b, a13);
        p += 8;
    }
    let rows = [(x0, [a00, a01, a02, a03]), (x1, [a10, a11, a12, a13])];
    for (i, (xr, acc)) in rows.iter().enumerate() {
        for (j, wr) in [w0, w1, w2, w3].iter().enumerate() {
            *y.add(i * ldy + j) = finish(acc[j], *xr, *wr, body, k);
        }
    }
}

/// x rearranged for [`tile_bf16`]: in each block of 16, the 8 even then the 8 odd elements.
pub fn even_odd(x: &[f32], m: usize, k: usize, out: &mut [f32]) {
    out.copy_from_slice(&x[..m * k]);
    for row in out.chunks_exact_mut(k) {
        for block in row.chunks_exact_mut(16) {
            let src: [f32; 16] = block.try_into().unwrap();
            for l in 0..8 {
                block[l] = src[2 * l];
                block[8 + l] = src[2 * l + 1];
            }
        }
    }
}

/// bf16 weights, MR (1..=2) x NR (1..=4) tile. One 256-bit load brings 16 weights: shifting
/// left by 16 gives the even ones as f32, masking the low half gives the odd ones, matched by
/// the even/odd halves of `xp`. No widening shuffles, one load per 16 weights.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile_bf16(x: *const f32, xp: *const f32, w: *const u16, k: usize, y: *mut f32, ldy: usize, mr: usize, nr: usize) {
    match (mr, nr) {
        (2, 4) => bf16_tile::<2, 4>(x, xp, w, k, y, ldy),
        // One x-row (decode): weight rows one at a time, below (see `super::tile`).
        _ => {
            for i in 0..mr {
                for j in 0..nr {
                    bf16_tile::<1, 1>(x.add(i * k), xp.add(i * k), w.add(j * k), k, y.add(i * ldy + j), ldy);
                }
            }
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bf16_tile<const M: usize, const N: usize>(x: *const f32, xp: *const f32, w: *const u16, k: usize, y: *mut f32, ldy: usize) {
    let mask = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
    let z = _mm256_setzero_ps();
    let mut acc = [[z; N]; M];
    let body = k / 16 * 16;
    let mut p = 0;
    while p < body {
        for j in 0..N {
            let wv = _mm256_loadu_si256(w.add(j * k + p) as *const __m256i);
            let even = _mm256_castsi256_ps(_mm256_slli_epi32(wv, 16));
            let odd = _mm256_castsi256_ps(_mm256_and_si256(wv, mask));
            for i in 0..M {
                let xe = _mm256_loadu_ps(xp.add(i * k + p));
                let xo = _mm256_loadu_ps(xp.add(i * k + p + 8));
                acc[i][j] = _mm256_fmadd_ps(xo, odd, _mm256_fmadd_ps(xe, even, acc[i][j]));
            }
        }
        p += 16;
    }
    for i in 0..M {
        for j in 0..N {
            let mut s = hsum(acc[i][j]);
            for q in body..k {
                s += *x.add(i * k + q) * bf16::from_bits(*w.add(j * k + q)).to_f32();
            }
            *y.add(i * ldy + j) = s;
        }
    }
}

/// General MR x NR tile, used for the few leftover columns.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn tile<W: WeightElem, const M: usize, const N: usize>(
    x: *const f32,
    w: *const W,
    k: usize,
    y: *mut f32,
    ldy: usize,
) {
    let mut acc = [[_mm256_setzero_ps(); N]; M];
    let body = k / 8 * 8;
    let mut p = 0;
    while p < body {
        let mut xv = [_mm256_setzero_ps(); M];
        for (i, v) in xv.iter_mut().enumerate() {
            *v = _mm256_loadu_ps(x.add(i * k + p));
        }
        for j in 0..N {
            let wv = W::load8(w.add(j * k + p));
            for i in 0..M {
                acc[i][j] = _mm256_fmadd_ps(xv[i], wv, acc[i][j]);
            }
        }
        p += 8;
    }
    for i in 0..M {
        for j in 0..N {
            *y.add(i * ldy + j) = finish(acc[i][j], x.add(i * k), w.add(j * k), body, k);
        }
    }
}
