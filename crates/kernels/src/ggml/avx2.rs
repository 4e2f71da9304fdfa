//! x86-64 tiles for the GGUF-block units (layouts in [`super::layout`]), written once for
//! both integer dot steps ([`Dot`]: AVX2 `maddubs` + `madd`, or AVX-512 VNNI `vpdpbusd`, see
//! `avx512.rs`). One 256-bit vector is a whole 8-row group, so a block ends with one convert
//! and FMA per activation row for 8 outputs, and no horizontal sums.
//!
//! Integer ranges: codes are unsigned (at most 63) and activations at most 127 in magnitude, so
//! `maddubs` pair sums stay within 2·63·127 (no i16 saturation); a k-quant sub-block's sum
//! times its 6-bit (or i8) scale, over 256 values, stays far inside i32.
use super::act::{X32, XK};
use crate::repack::avx2::{bcast4, scales, store};
use std::arch::x86_64::*;

/// How far ahead of the unit in use the tiles ask for weights: a task's units are contiguous
/// (groups one after the other), and the unpacking keeps too few loads in flight for the
/// hardware prefetcher alone to stream them.
const AHEAD: usize = 2048;

/// Ask for the `unit` bytes [`AHEAD`] past `u` (a hint: past the matrix's end it loads nothing).
#[inline(always)]
pub(super) fn prefetch_ahead(u: *const u8, unit: usize) {
    crate::simd::prefetch_bytes(u.wrapping_add(AHEAD), unit)
}

/// `acc + Σ u·x` per 32-bit lane (4 products each): `u` unsigned codes, `x` signed activations.
pub(super) trait Dot {
    unsafe fn dot(acc: __m256i, u: __m256i, x: __m256i) -> __m256i;
    /// `acc + a·b` over i16 pairs per 32-bit lane (`pmaddwd`; VNNI: `vpdpwssd`).
    unsafe fn pairs(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
    }
}

pub(super) struct Maddubs;

impl Dot for Maddubs {
    #[inline(always)]
    unsafe fn dot(acc: __m256i, u: __m256i, x: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1)))
    }
}

/// 8 bytes at `p` (one per row) widened to i32 lanes, unsigned or signed.
#[inline(always)]
unsafe fn bytes_u(p: *const u8) -> __m256i {
    _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i))
}

#[inline(always)]
unsafe fn bytes_i(p: *const u8) -> __m256i {
    _mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i))
}

#[inline(always)]
unsafe fn load(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// The fifth bits of nibble vector `t` of a fifth-bit vector `h` already shifted right by `t`
/// (layout docs): bit `8e` to bit 4 of byte e for the low nibbles, bit `8e + 4` for the high.
#[inline(always)]
unsafe fn fifth_bits(h: __m256i) -> (__m256i, __m256i) {
    let bit4 = _mm256_set1_epi8(0x10);
    (_mm256_and_si256(_mm256_slli_epi32(h, 4), bit4), _mm256_and_si256(h, bit4))
}

/// Q4_K (`FIVE = false`) or Q5_K units: MR activation rows by one 8-row group.
#[inline(always)]
pub(super) unsafe fn q4k_with<D: Dot, const MR: usize, const FIVE: bool>(
    x: *const XK,
    w: *const u8,
    blocks: usize,
    y: *mut f32,
    ldy: usize,
    cols: usize,
) {
    let unit = if FIVE { 1440 } else { 1184 };
    let mask = _mm256_set1_epi8(0xF);
    let zero = _mm256_setzero_si256();
    let mut acc = [_mm256_setzero_ps(); MR];
    for b in 0..blocks {
        let u = w.add(b * unit);
        prefetch_ahead(u, unit);
        let mut isum = [zero; MR];
        for g in 0..4 {
            let (sc_lo, sc_hi) = (bytes_u(u.add(32 + 16 * g)), bytes_u(u.add(40 + 16 * g)));
            let (mut a_lo, mut a_hi) = ([zero; MR], [zero; MR]);
            let mut h = zero;
            for v in 0..8 {
                if FIVE && v % 4 == 0 {
                    h = load(u.add(1184 + 32 * (2 * g + v / 4)));
                }
                let p = load(u.add(160 + 32 * (8 * g + v)));
                let (mut lo, mut hi) = (_mm256_and_si256(p, mask), _mm256_and_si256(_mm256_srli_epi16(p, 4), mask));
                if FIVE {
                    let (hl, hh) = fifth_bits(h);
                    (lo, hi) = (_mm256_or_si256(lo, hl), _mm256_or_si256(hi, hh));
                    h = _mm256_srli_epi32(h, 1);
                }
                for i in 0..MR {
                    let xq = (*x.add(i * blocks + b)).qs.as_ptr().add(64 * g + 4 * v);
                    a_lo[i] = D::dot(a_lo[i], lo, bcast4(xq));
                    a_hi[i] = D::dot(a_hi[i], hi, bcast4(xq.add(32)));
                }
            }
            for i in 0..MR {
                let s = _mm256_add_epi32(_mm256_mullo_epi32(a_lo[i], sc_lo), _mm256_mullo_epi32(a_hi[i], sc_hi));
                isum[i] = _mm256_add_epi32(isum[i], s);
            }
        }
        let (dw, dm) = (scales(u as *const u16), scales(u.add(16) as *const u16));
        let mins: [__m256i; 4] = std::array::from_fn(|p| _mm256_cvtepu8_epi16(_mm_loadu_si128(u.add(96 + 16 * p) as *const __m128i)));
        for i in 0..MR {
            let xb = &*x.add(i * blocks + b);
            let mut imin = zero;
            for (p, &pair) in xb.s32_pairs.iter().enumerate() {
                imin = D::pairs(imin, mins[p], _mm256_set1_epi32(pair));
            }
            let dx = _mm256_set1_ps(xb.d);
            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[i]), _mm256_mul_ps(dw, dx), acc[i]);
            acc[i] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(imin), _mm256_mul_ps(dm, dx), acc[i]);
        }
    }
    store(&acc, y, ldy, cols);
}

/// Q6_K units: MR activation rows by one 8-row group; per sub-block of 16 the two nibble
/// vectors and the high-bit vector give 4 vectors of 6-bit codes.
#[inline(always)]
pub(super) unsafe fn q6k_with<D: Dot, const MR: usize>(x: *const XK, w: *const u8, blocks: usize, y: *mut f32, ldy: usize, cols: usize) {
    const UNIT: usize = 1680;
    let mask = _mm256_set1_epi8(0xF);
    let m30 = _mm256_set1_epi8(0x30);
    let zero = _mm256_setzero_si256();
    let mut acc = [_mm256_setzero_ps(); MR];
    for b in 0..blocks {
        let u = w.add(b * UNIT);
        prefetch_ahead(u, UNIT);
        let mut isum = [zero; MR];
        for j in 0..16 {
            let sc = bytes_i(u.add(16 + 8 * j));
            let base = u.add(144 + 96 * j);
            let (l0, l1, h) = (load(base), load(base.add(32)), load(base.add(64)));
            let q = [
                _mm256_or_si256(_mm256_and_si256(l0, mask), _mm256_and_si256(_mm256_slli_epi16(h, 4), m30)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), mask), _mm256_and_si256(_mm256_slli_epi16(h, 2), m30)),
                _mm256_or_si256(_mm256_and_si256(l1, mask), _mm256_and_si256(h, m30)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), mask), _mm256_and_si256(_mm256_srli_epi16(h, 2), m30)),
            ];
            for (i, isum) in isum.iter_mut().enumerate() {
                let xb = &*x.add(i * blocks + b);
                let xq = xb.qs.as_ptr().add(16 * j);
                let mut a = zero;
                for (t, q) in q.iter().enumerate() {
                    a = D::dot(a, *q, bcast4(xq.add(4 * t)));
                }
                let a = _mm256_sub_epi32(a, _mm256_set1_epi32(32 * xb.s16[j]));
                *isum = _mm256_add_epi32(*isum, _mm256_mullo_epi32(a, sc));
            }
        }
        let dw = scales(u as *const u16);
        for i in 0..MR {
            let dx = _mm256_set1_ps((*x.add(i * blocks + b)).d);
            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[i]), _mm256_mul_ps(dw, dx), acc[i]);
        }
    }
    store(&acc, y, ldy, cols);
}

/// Which legacy format a [`legacy_with`] tile runs.
pub(super) const Q5_0: u8 = 0;
pub(super) const Q4_1: u8 = 1;
pub(super) const Q5_1: u8 = 2;

/// Q5_0 / Q4_1 / Q5_1 units (blocks of 32): MR activation rows by one 8-row group.
#[inline(always)]
pub(super) unsafe fn legacy_with<D: Dot, const MR: usize, const KIND: u8>(
    x: *const X32,
    w: *const u8,
    blocks: usize,
    y: *mut f32,
    ldy: usize,
    cols: usize,
) {
    let (unit, high, qs) = match KIND {
        Q5_0 => (176, 16, 48),
        Q4_1 => (160, 0, 32),
        _ => (192, 32, 64),
    };
    let mask = _mm256_set1_epi8(0xF);
    let zero = _mm256_setzero_si256();
    let mut acc = [_mm256_setzero_ps(); MR];
    for b in 0..blocks {
        let u = w.add(b * unit);
        prefetch_ahead(u, unit);
        let mut h = if high > 0 { load(u.add(high)) } else { zero };
        let mut s = [zero; MR];
        for v in 0..4 {
            let p = load(u.add(qs + 32 * v));
            let (mut lo, mut hi) = (_mm256_and_si256(p, mask), _mm256_and_si256(_mm256_srli_epi16(p, 4), mask));
            if high > 0 {
                let (hl, hh) = fifth_bits(h);
                (lo, hi) = (_mm256_or_si256(lo, hl), _mm256_or_si256(hi, hh));
                h = _mm256_srli_epi32(h, 1);
            }
            for (i, s) in s.iter_mut().enumerate() {
                let xq = (*x.add(i * blocks + b)).qs.as_ptr().add(4 * v);
                *s = D::dot(D::dot(*s, lo, bcast4(xq)), hi, bcast4(xq.add(16)));
            }
        }
        let dw = scales(u as *const u16);
        for i in 0..MR {
            let xb = &*x.add(i * blocks + b);
            let dx = _mm256_set1_ps(xb.d);
            if KIND == Q5_0 {
                let s = _mm256_sub_epi32(s[i], _mm256_set1_epi32(16 * xb.sum));
                acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, dx), acc[i]);
            } else {
                let dm = scales(u.add(16) as *const u16);
                acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[i]), _mm256_mul_ps(dw, dx), acc[i]);
                acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(xb.sum as f32), _mm256_mul_ps(dm, dx), acc[i]);
            }
        }
    }
    store(&acc, y, ldy, cols);
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4k<const MR: usize>(x: *const XK, w: *const u8, blocks: usize, y: *mut f32, ldy: usize, cols: usize) {
    q4k_with::<Maddubs, MR, false>(x, w, blocks, y, ldy, cols)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q5k<const MR: usize>(x: *const XK, w: *const u8, blocks: usize, y: *mut f32, ldy: usize, cols: usize) {
    q4k_with::<Maddubs, MR, true>(x, w, blocks, y, ldy, cols)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q6k<const MR: usize>(x: *const XK, w: *const u8, blocks: usize, y: *mut f32, ldy: usize, cols: usize) {
    q6k_with::<Maddubs, MR>(x, w, blocks, y, ldy, cols)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn legacy<const MR: usize, const KIND: u8>(x: *const X32, w: *const u8, blocks: usize, y: *mut f32, ldy: usize, cols: usize) {
    legacy_with::<Maddubs, MR, KIND>(x, w, blocks, y, ldy, cols)
}
