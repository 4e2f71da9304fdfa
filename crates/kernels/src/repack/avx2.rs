//! x86-64 AVX2 tiles for the repacked int8 / int4 matrices (layouts and integer tricks in the
//! module docs), plus the helpers the AVX-512 VNNI tiles share: one 256-bit vector is a whole
//! 8-row group, and every tile finishes its blocks with the same f32 steps.
use super::{q4_unit, BlockQ8x8, Q4Rows, QK8, XQ4, XQ8, ROWS};
use std::arch::x86_64::*;

/// The 4 bytes at `p` in all 8 lanes (one `vpbroadcastd` from memory).
#[inline(always)]
pub(crate) unsafe fn bcast4<T>(p: *const T) -> __m256i {
    _mm256_set1_epi32(std::ptr::read_unaligned(p as *const i32))
}

/// Prefetch `*p` (this block of the next 8-row group) when the tile has several rows. A batch of
/// rows computes longer on each group, so its weights arrive in bursts that the hardware
/// prefetcher alone leaves the next group's first tile waiting for (16 decode rows: a step ~20%
/// faster, `batch_profile`); one row streams steadily and needs no help.
#[inline(always)]
pub(crate) fn prefetch_next_group<const MR: usize, T>(p: *const T, bytes: usize) {
    if MR >= 2 {
        // Past the matrix's end (the last group) the hint loads nothing.
        crate::simd::prefetch_bytes(p, bytes);
    }
}

/// Store the accumulators of `MR` rows, only the first `cols` columns (padded rows are
/// never written).
#[inline(always)]
pub(crate) unsafe fn store<const MR: usize>(acc: &[__m256; MR], y: *mut f32, ldy: usize, cols: usize) {
    for (i, a) in acc.iter().enumerate() {
        if cols == ROWS {
            _mm256_storeu_ps(y.add(i * ldy), *a);
        } else {
            let mut t = [0f32; ROWS];
            _mm256_storeu_ps(t.as_mut_ptr(), *a);
            std::ptr::copy_nonoverlapping(t.as_ptr(), y.add(i * ldy), cols);
        }
    }
}

/// `acc += s · (dw · dx)`: one convert and FMA finish a block for 8 rows (the row scales
/// times the block's x scale). Every x86 tile ends its blocks with it, so all give these bits.
#[inline(always)]
pub(super) unsafe fn scale_block(acc: &mut __m256, s: __m256i, dw: __m256, dx: f32) {
    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, _mm256_set1_ps(dx)), *acc);
}

/// The 8 f16 row scales at `p` as f32 (one F16C instruction).
#[inline(always)]
pub(crate) unsafe fn scales(p: *const u16) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
}

/// `MR` activation rows by one 8-row group: each weight vector (4 elements of 8 rows) feeds MR
/// rows. Per 32 products: sign, maddubs, madd, add, plus two broadcast loads.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q8_tile<const MR: usize>(x: *const XQ8, w: *const BlockQ8x8, blocks: usize, y: *mut f32, ldy: usize, cols: usize) {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); MR];
    for b in 0..blocks {
        let wb = &*w.add(b);
        prefetch_next_group::<MR, _>(w.wrapping_add(blocks + b), std::mem::size_of::<BlockQ8x8>());
        let mut isum = [_mm256_setzero_si256(); MR];
        for s in 0..QK8 / 4 {
            let wv = _mm256_loadu_si256(wb.qs.as_ptr().add(32 * s) as *const __m256i);
            for (i, sum) in isum.iter_mut().enumerate() {
                let xb = x.add(i * blocks + b);
                let xv = bcast4((*xb).qs.as_ptr().add(4 * s));
                let ax = bcast4((*xb).abs.as_ptr().add(4 * s));
                let p = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(wv, xv));
                *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(p, ones));
            }
        }
        let dw = scales(wb.d.as_ptr() as *const u16);
        for i in 0..MR {
            scale_block(&mut acc[i], isum[i], dw, (*x.add(i * blocks + b)).d);
        }
    }
    store(&acc, y, ldy, cols);
}

/// How an int4 tile turns unsigned nibbles times int8 activations into per-lane sums: the
/// one step that differs between AVX2 (`maddubs`) and VNNI (`vpdpbusd`).
pub(super) trait NibbleDot {
    /// Adds `lo · xl + hi · xh` (4 products per i32 lane of the result) into `acc`.
    unsafe fn step(acc: __m256i, lo: __m256i, hi: __m256i, xl: __m256i, xh: __m256i) -> __m256i;
    /// A block's accumulator as 8 i32 sums.
    unsafe fn widen(acc: __m256i) -> __m256i;
}

/// AVX2: pair sums are at most 2·15·128, so a block's 8 groups add up in i16 (see the module
/// docs) and are widened to i32 once per block.
pub(super) struct Maddubs;

impl NibbleDot for Maddubs {
    #[inline(always)]
    unsafe fn step(acc: __m256i, lo: __m256i, hi: __m256i, xl: __m256i, xh: __m256i) -> __m256i {
        _mm256_add_epi16(acc, _mm256_add_epi16(_mm256_maddubs_epi16(lo, xl), _mm256_maddubs_epi16(hi, xh)))
    }

    #[inline(always)]
    unsafe fn widen(acc: __m256i) -> __m256i {
        _mm256_madd_epi16(acc, _mm256_set1_epi16(1))
    }
}

/// The int4 tile for either [`NibbleDot`]: one 32-byte load gives elements 4v..4v+4 (low
/// nibbles) and 16+4v.. (high) of 8 rows; a scale group's scales are read once, and
/// `Σ q·x - 8 Σ x = Σ (q - 8)·x` is taken per block, exactly. Inlined into each ISA's
/// `#[target_feature]` entry point.
#[inline(always)]
pub(super) unsafe fn q4_tile_with<D: NibbleDot, const MR: usize, const GB: usize>(
    x: *const XQ4,
    w: Q4Rows,
    blocks: usize,
    y: *mut f32,
    ldy: usize,
    cols: usize,
) {
    let mask = _mm256_set1_epi8(0xF);
    let mut acc = [_mm256_setzero_ps(); MR];
    for sg in 0..blocks / GB {
        // The scale group's 8 scales sit before its GB blocks of nibbles.
        let group = w.p.add(sg * q4_unit(GB));
        prefetch_next_group::<MR, _>(group.wrapping_add(blocks / GB * q4_unit(GB)), 2 * q4_unit(GB));
        let dw = scales(group);
        for b in sg * GB..(sg + 1) * GB {
            let qs = group.add(ROWS + 64 * (b - sg * GB)) as *const u8;
            let mut isum = [_mm256_setzero_si256(); MR];
            for v in 0..4 {
                let p = _mm256_loadu_si256(qs.add(32 * v) as *const __m256i);
                let lo = _mm256_and_si256(p, mask);
                let hi = _mm256_and_si256(_mm256_srli_epi16(p, 4), mask);
                for (i, sum) in isum.iter_mut().enumerate() {
                    let xq = (*x.add(i * blocks + b)).qs.as_ptr();
                    *sum = D::step(*sum, lo, hi, bcast4(xq.add(4 * v)), bcast4(xq.add(16 + 4 * v)));
                }
            }
            for i in 0..MR {
                let xb = &*x.add(i * blocks + b);
                scale_block(&mut acc[i], _mm256_sub_epi32(D::widen(isum[i]), _mm256_set1_epi32(xb.sum8)), dw, xb.d);
            }
        }
    }
    store(&acc, y, ldy, cols);
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q4_tile<const MR: usize, const GB: usize>(x: *const XQ4, w: Q4Rows, blocks: usize, y: *mut f32, ldy: usize, cols: usize) {
    q4_tile_with::<Maddubs, MR, GB>(x, w, blocks, y, ldy, cols)
}
