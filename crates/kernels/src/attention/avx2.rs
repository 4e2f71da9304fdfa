//! AVX2 + FMA kernels (head_dim % 8 == 0): register tiles of up to 4 rows so each loaded K or V
//! vector feeds several FMAs; f16 widened by F16C, bf16 by a 16-bit shift.
use super::{KvElem, KV_TILE};
use crate::simd::x86::hsum;
use std::arch::x86_64::*;

/// Calls `kernel::<T, R, W>` for each block of R <= 4 rows, with W = 8 / R (rounded down to
/// 2 for R = 3) keys or column-vectors per register tile, so every tile keeps about 8
/// accumulators: fewer rows (decode, small groups) get wider tiles.
macro_rules! by_rows {
    ($rows:expr, |$r:ident| $kernel:ident::<$t:ty>($($arg:expr),*)) => {{
        let mut $r = 0;
        while $r < $rows {
            let n = ($rows - $r).min(4);
            match n {
                4 => $kernel::<$t, 4, 2>($($arg),*),
                3 => $kernel::<$t, 3, 2>($($arg),*),
                2 => $kernel::<$t, 2, 4>($($arg),*),
                _ => $kernel::<$t, 1, 8>($($arg),*),
            }
            $r += n;
        }
    }};
}

/// See `Problem::scores`. # Safety: slices as described there, head_dim % 8 == 0, AVX2 + F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn scores<T: KvElem>(q: &[f32], rows: usize, hd: usize, k: &[T], nk: usize, p: &mut [f32]) {
    let (q, k, p) = (q.as_ptr(), k.as_ptr(), p.as_mut_ptr());
    by_rows!(rows, |r| score_rows::<T>(q.add(r * hd), hd, k, nk, p.add(r * KV_TILE)))
}

/// R query rows against the tile's keys, J keys at a time, then one at a time.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn score_rows<T: KvElem, const R: usize, const J: usize>(q: *const f32, hd: usize, k: *const T, nk: usize, p: *mut f32) {
    let mut j = 0;
    while j + J <= nk {
        score_block::<T, R, J>(q, hd, k.add(j * hd), p.add(j));
        j += J;
    }
    for j in j..nk {
        score_block::<T, R, 1>(q, hd, k.add(j * hd), p.add(j));
    }
}

/// R × J dot products over head_dim: each K load feeds R FMAs, each Q load J.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn score_block<T: KvElem, const R: usize, const J: usize>(q: *const f32, hd: usize, k: *const T, p: *mut f32) {
    let mut a = [[_mm256_setzero_ps(); J]; R];
    for d in (0..hd).step_by(8) {
        let mut qv = [_mm256_setzero_ps(); R];
        for (r, qv) in qv.iter_mut().enumerate() {
            *qv = _mm256_loadu_ps(q.add(r * hd + d));
        }
        for jj in 0..J {
            let x = T::load8(k.add(jj * hd + d));
            for r in 0..R {
                a[r][jj] = _mm256_fmadd_ps(qv[r], x, a[r][jj]);
            }
        }
    }
    if R * J == 8 {
        let mut v = [_mm256_setzero_ps(); 8];
        for r in 0..R {
            v[r * J..][..J].copy_from_slice(&a[r]);
        }
        let mut sums = [0f32; 8];
        _mm256_storeu_ps(sums.as_mut_ptr(), hsum8(v));
        for r in 0..R {
            std::ptr::copy_nonoverlapping(sums.as_ptr().add(r * J), p.add(r * KV_TILE), J);
        }
    } else {
        for r in 0..R {
            for jj in 0..J {
                *p.add(r * KV_TILE + jj) = hsum(a[r][jj]);
            }
        }
    }
}

/// The lane sums of eight vectors, in order, in one vector: two rounds of pairwise adds within
/// 128-bit halves, then the halves added (far fewer shuffles than eight separate sums).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum8(v: [__m256; 8]) -> __m256 {
    let (a, b) = (_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    let (c, d) = (_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
    let (ab, cd) = (_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    _mm256_add_ps(_mm256_permute2f128_ps(ab, cd, 0x20), _mm256_permute2f128_ps(ab, cd, 0x31))
}

/// See `Problem::accumulate`. # Safety: as [`scores`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn accumulate<T: KvElem>(p: &[f32], corr: &[f32], rows: usize, hd: usize, v: &[T], nk: usize, acc: &mut [f32]) {
    let (p, corr, v, acc) = (p.as_ptr(), corr.as_ptr(), v.as_ptr(), acc.as_mut_ptr());
    by_rows!(rows, |r| accumulate_rows::<T>(p.add(r * KV_TILE), corr.add(r), hd, v, nk, acc.add(r * hd)))
}

/// R rows, 8C columns at a time, then 8 at a time.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn accumulate_rows<T: KvElem, const R: usize, const C: usize>(p: *const f32, corr: *const f32, hd: usize, v: *const T, nk: usize, acc: *mut f32) {
    let mut d = 0;
    while d + 8 * C <= hd {
        axpy_block::<T, R, C>(p, corr, hd, v.add(d), nk, acc.add(d));
        d += 8 * C;
    }
    for d in (d..hd).step_by(8) {
        axpy_block::<T, R, 1>(p, corr, hd, v.add(d), nk, acc.add(d));
    }
}

/// An R × 8C block of accumulators kept in registers across the whole key tile: rescaled
/// once, then one FMA per (row, key, 8 columns); each V load feeds R FMAs.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_block<T: KvElem, const R: usize, const C: usize>(p: *const f32, corr: *const f32, hd: usize, v: *const T, nk: usize, acc: *mut f32) {
    let mut a = [[_mm256_setzero_ps(); C]; R];
    for r in 0..R {
        let c = _mm256_set1_ps(*corr.add(r));
        for (i, a) in a[r].iter_mut().enumerate() {
            *a = _mm256_mul_ps(_mm256_loadu_ps(acc.add(r * hd + 8 * i)), c);
        }
    }
    for j in 0..nk {
        let mut w = [_mm256_setzero_ps(); R];
        for (r, w) in w.iter_mut().enumerate() {
            *w = _mm256_set1_ps(*p.add(r * KV_TILE + j));
        }
        for i in 0..C {
            let x = T::load8(v.add(j * hd + 8 * i));
            for r in 0..R {
                a[r][i] = _mm256_fmadd_ps(w[r], x, a[r][i]);
            }
        }
    }
    for r in 0..R {
        for (i, a) in a[r].iter().enumerate() {
            _mm256_storeu_ps(acc.add(r * hd + 8 * i), *a);
        }
    }
}

/// `s[i] = exp(s[i] - m)`, returning the sum; 8 lanes at a time, scalar tail.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn exp_sum(s: &mut [f32], m: f32) -> f32 {
    let (mv, mut sum) = (_mm256_set1_ps(m), _mm256_setzero_ps());
    let mut chunks = s.chunks_exact_mut(8);
    for c in &mut chunks {
        let e = exp(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), mv));
        _mm256_storeu_ps(c.as_mut_ptr(), e);
        sum = _mm256_add_ps(sum, e);
    }
    let mut total = hsum(sum);
    for x in chunks.into_remainder() {
        *x = (*x - m).exp();
        total += *x;
    }
    total
}

/// The largest of `init` and the elements of `s`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn max(s: &[f32], init: f32) -> f32 {
    let mut m = _mm256_set1_ps(init);
    let chunks = s.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        m = _mm256_max_ps(m, _mm256_loadu_ps(c.as_ptr()));
    }
    let h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    let h = _mm_max_ss(h, _mm_movehdup_ps(h));
    tail.iter().fold(_mm_cvtss_f32(h), |a, &b| a.max(b))
}

/// `e^x` for `x <= 0` to about 2 ulp: `x = n ln2 + r` with `|r| <= ln2 / 2`, `e^r` by a
/// degree-6 polynomial (Cephes' `expf` coefficients), `2^n` built in the exponent bits. Inputs
/// below -87 give `e^-87` (about 1.6e-38) rather than 0, keeping `2^n` a normal number.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn exp(x: __m256) -> __m256 {
    let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
    let n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    // ln 2 in two parts so that n * LN2_HI is exact.
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut y = _mm256_set1_ps(1.987_569_1e-4);
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.000_000_1e-1] {
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
    }
    let one = _mm256_set1_ps(1.0);
    let y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, one));
    let pow2n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    _mm256_mul_ps(y, _mm256_castsi256_ps(pow2n))
}
