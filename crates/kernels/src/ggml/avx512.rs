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

    #[inline(always)]
    unsafe fn pairs(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        _mm256_dpwssd_epi32(acc, a, b)
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

// 512-bit tiles: two 8-row groups (16 output rows) per instruction, so each activation
// broadcast and each `vpdpbusd` / `vpmulld` serves twice the weights of the 256-bit tiles above
// (same integer sums and f32 steps per lane, hence the same bits). `stride`: bytes from a unit of
// the first group to the same block's unit of the second.

/// The 32-byte vectors at `p` (first group) and `p + stride` (second) as one 512-bit vector.
#[inline(always)]
unsafe fn load2(p: *const u8, stride: usize) -> __m512i {
    let lo = _mm256_loadu_si256(p as *const __m256i);
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), _mm256_loadu_si256(p.add(stride) as *const __m256i))
}

/// 8 bytes of each group (one per row) widened to 16 i32 lanes, unsigned or signed.
#[inline(always)]
unsafe fn bytes2(p: *const u8, stride: usize, signed: bool) -> __m512i {
    let b = _mm_unpacklo_epi64(_mm_loadl_epi64(p as *const __m128i), _mm_loadl_epi64(p.add(stride) as *const __m128i));
    if signed {
        _mm512_cvtepi8_epi32(b)
    } else {
        _mm512_cvtepu8_epi32(b)
    }
}

/// The 8 f16 row scales of each group as 16 f32.
#[inline(always)]
unsafe fn scales2(p: *const u8, stride: usize) -> __m512 {
    let lo = _mm_loadu_si128(p as *const __m128i);
    _mm512_cvtph_ps(_mm256_inserti128_si256::<1>(_mm256_castsi128_si256(lo), _mm_loadu_si128(p.add(stride) as *const __m128i)))
}

#[inline(always)]
unsafe fn bcast(p: *const i8) -> __m512i {
    _mm512_set1_epi32(std::ptr::read_unaligned(p as *const i32))
}

#[inline(always)]
unsafe fn store2<const MR: usize>(acc: &[__m512; MR], y: *mut f32, ldy: usize, cols: usize) {
    for (i, a) in acc.iter().enumerate() {
        if cols == 16 {
            _mm512_storeu_ps(y.add(i * ldy), *a);
        } else {
            let mut t = [0f32; 16];
            _mm512_storeu_ps(t.as_mut_ptr(), *a);
            std::ptr::copy_nonoverlapping(t.as_ptr(), y.add(i * ldy), cols);
        }
    }
}

/// Q4_K: MR activation rows by two 8-row groups (`cols` of their 16 rows written).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn q4k_x2<const MR: usize>(x: *const XK, w: *const u8, blocks: usize, y: *mut f32, ldy: usize, cols: usize) {
    const UNIT: usize = 1184;
    let stride = blocks * UNIT;
    let mask = _mm512_set1_epi8(0xF);
    let zero = _mm512_setzero_si512();
    let mut acc = [_mm512_setzero_ps(); MR];
    for b in 0..blocks {
        let u = w.add(b * UNIT);
        super::avx2::prefetch_ahead(u, UNIT);
        super::avx2::prefetch_ahead(u.add(stride), UNIT);
        let mut isum = [zero; MR];
        for g in 0..4 {
            let (sc_lo, sc_hi) = (bytes2(u.add(32 + 16 * g), stride, false), bytes2(u.add(40 + 16 * g), stride, false));
            let (mut a_lo, mut a_hi) = ([zero; MR], [zero; MR]);
            for v in 0..8 {
                let p = load2(u.add(160 + 32 * (8 * g + v)), stride);
                let (lo, hi) = (_mm512_and_si512(p, mask), _mm512_and_si512(_mm512_srli_epi16::<4>(p), mask));
                for i in 0..MR {
                    let xq = (*x.add(i * blocks + b)).qs.as_ptr().add(64 * g + 4 * v);
                    a_lo[i] = _mm512_dpbusd_epi32(a_lo[i], lo, bcast(xq));
                    a_hi[i] = _mm512_dpbusd_epi32(a_hi[i], hi, bcast(xq.add(32)));
                }
            }
            for i in 0..MR {
                let s = _mm512_add_epi32(_mm512_mullo_epi32(a_lo[i], sc_lo), _mm512_mullo_epi32(a_hi[i], sc_hi));
                isum[i] = _mm512_add_epi32(isum[i], s);
            }
        }
        let (dw, dm) = (scales2(u, stride), scales2(u.add(16), stride));
        // Each group's 16 bytes of min pairs widened to i16 (layout docs: `[pair][row][2]`).
        let mins: [__m512i; 4] = std::array::from_fn(|p| {
            let m = |at: usize| _mm256_cvtepu8_epi16(_mm_loadu_si128(u.add(at + 96 + 16 * p) as *const __m128i));
            _mm512_inserti64x4::<1>(_mm512_castsi256_si512(m(0)), m(stride))
        });
        for i in 0..MR {
            let xb = &*x.add(i * blocks + b);
            let mut imin = zero;
            for (p, &pair) in xb.s32_pairs.iter().enumerate() {
                imin = _mm512_dpwssd_epi32(imin, mins[p], _mm512_set1_epi32(pair));
            }
            let dx = _mm512_set1_ps(xb.d);
            acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[i]), _mm512_mul_ps(dw, dx), acc[i]);
            acc[i] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(imin), _mm512_mul_ps(dm, dx), acc[i]);
        }
    }
    store2(&acc, y, ldy, cols);
}

/// Q6_K: MR activation rows by two 8-row groups.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn q6k_x2<const MR: usize>(x: *const XK, w: *const u8, blocks: usize, y: *mut f32, ldy: usize, cols: usize) {
    const UNIT: usize = 1680;
    let stride = blocks * UNIT;
    let mask = _mm512_set1_epi8(0xF);
    let m30 = _mm512_set1_epi8(0x30);
    let zero = _mm512_setzero_si512();
    let mut acc = [_mm512_setzero_ps(); MR];
    for b in 0..blocks {
        let u = w.add(b * UNIT);
        super::avx2::prefetch_ahead(u, UNIT);
        super::avx2::prefetch_ahead(u.add(stride), UNIT);
        let mut isum = [zero; MR];
        for j in 0..16 {
            let sc = bytes2(u.add(16 + 8 * j), stride, true);
            let base = u.add(144 + 96 * j);
            let (l0, l1, h) = (load2(base, stride), load2(base.add(32), stride), load2(base.add(64), stride));
            let or_and = |a: __m512i, m: __m512i, b: __m512i| _mm512_or_si512(_mm512_and_si512(a, mask), _mm512_and_si512(b, m));
            let q = [
                or_and(l0, m30, _mm512_slli_epi16::<4>(h)),
                or_and(_mm512_srli_epi16::<4>(l0), m30, _mm512_slli_epi16::<2>(h)),
                or_and(l1, m30, h),
                or_and(_mm512_srli_epi16::<4>(l1), m30, _mm512_srli_epi16::<2>(h)),
            ];
            for (i, isum) in isum.iter_mut().enumerate() {
                let xb = &*x.add(i * blocks + b);
                let xq = xb.qs.as_ptr().add(16 * j);
                let mut a = zero;
                for (t, q) in q.iter().enumerate() {
                    a = _mm512_dpbusd_epi32(a, *q, bcast(xq.add(4 * t)));
                }
                let a = _mm512_sub_epi32(a, _mm512_set1_epi32(32 * xb.s16[j]));
                *isum = _mm512_add_epi32(*isum, _mm512_mullo_epi32(a, sc));
            }
        }
        let dw = scales2(u, stride);
        for i in 0..MR {
            let dx = _mm512_set1_ps((*x.add(i * blocks + b)).d);
            acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[i]), _mm512_mul_ps(dw, dx), acc[i]);
        }
    }
    store2(&acc, y, ldy, cols);
}
