//! aarch64 NEON + dotprod tiles for the GGUF-block units (layouts in [`super::layout`]), the
//! same steps as the x86 ones (`avx2.rs`): a 32-byte unit vector is two 16-byte registers (rows
//! 0-3, rows 4-7), and `sdot` adds 4 products per i32 lane (codes are at most 63, so they are
//! valid signed bytes).
use super::act::{X32, XK};
use crate::repack::neon::{bcast4, f16x4_to_f32, sdot, store};
use std::arch::aarch64::*;

/// 8 i32 lanes (rows 0-3, 4-7).
type I8x = (int32x4_t, int32x4_t);
/// 8 f32 lanes.
type F8x = (float32x4_t, float32x4_t);
/// 32 bytes (rows 0-3, 4-7).
type U8x = (uint8x16_t, uint8x16_t);

#[inline(always)]
unsafe fn zero() -> I8x {
    (vdupq_n_s32(0), vdupq_n_s32(0))
}

#[inline(always)]
unsafe fn load(p: *const u8) -> U8x {
    (vld1q_u8(p), vld1q_u8(p.add(16)))
}

#[inline(always)]
unsafe fn dot(acc: I8x, u: U8x, x: int8x16_t) -> I8x {
    (sdot(acc.0, vreinterpretq_s8_u8(u.0), x), sdot(acc.1, vreinterpretq_s8_u8(u.1), x))
}

#[inline(always)]
unsafe fn add(a: I8x, b: I8x) -> I8x {
    (vaddq_s32(a.0, b.0), vaddq_s32(a.1, b.1))
}

#[inline(always)]
unsafe fn mul(a: I8x, b: I8x) -> I8x {
    (vmulq_s32(a.0, b.0), vmulq_s32(a.1, b.1))
}

#[inline(always)]
unsafe fn sub_n(a: I8x, n: i32) -> I8x {
    (vsubq_s32(a.0, vdupq_n_s32(n)), vsubq_s32(a.1, vdupq_n_s32(n)))
}

/// 8 bytes (one per row) widened to i32, unsigned or signed.
#[inline(always)]
unsafe fn bytes_u(p: *const u8) -> I8x {
    let w = vmovl_u8(vld1_u8(p));
    (vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(w))), vreinterpretq_s32_u32(vmovl_high_u16(w)))
}

#[inline(always)]
unsafe fn bytes_i(p: *const u8) -> I8x {
    let w = vmovl_s8(vld1_s8(p as *const i8));
    (vmovl_s16(vget_low_s16(w)), vmovl_high_s16(w))
}

/// The 8 f16 row scales at `p`.
#[inline(always)]
unsafe fn scales(p: *const u8) -> F8x {
    let p = p as *const u16;
    (f16x4_to_f32(vld1_u16(p)), f16x4_to_f32(vld1_u16(p.add(4))))
}

/// `acc + s · (d · dx)` (or minus, `neg`).
#[inline(always)]
unsafe fn fma(acc: F8x, s: I8x, d: F8x, dx: f32, neg: bool) -> F8x {
    let (a, b) = (vmulq_n_f32(d.0, dx), vmulq_n_f32(d.1, dx));
    let (s0, s1) = (vcvtq_f32_s32(s.0), vcvtq_f32_s32(s.1));
    if neg {
        (vfmsq_f32(acc.0, s0, a), vfmsq_f32(acc.1, s1, b))
    } else {
        (vfmaq_f32(acc.0, s0, a), vfmaq_f32(acc.1, s1, b))
    }
}

#[inline(always)]
unsafe fn nibbles(p: U8x) -> (U8x, U8x) {
    let mask = vdupq_n_u8(0xF);
    ((vandq_u8(p.0, mask), vandq_u8(p.1, mask)), (vshrq_n_u8::<4>(p.0), vshrq_n_u8::<4>(p.1)))
}

/// Fifth bits (see `avx2::fifth_bits`): `h` already shifted right by the vector's index.
#[inline(always)]
unsafe fn with_fifth(lo: U8x, hi: U8x, h: U8x) -> (U8x, U8x) {
    let bit4 = vdupq_n_u8(0x10);
    let part = |h: uint8x16_t| {
        let up = vreinterpretq_u8_u32(vshlq_n_u32::<4>(vreinterpretq_u32_u8(h)));
        (vandq_u8(up, bit4), vandq_u8(h, bit4))
    };
    let ((l0, h0), (l1, h1)) = (part(h.0), part(h.1));
    ((vorrq_u8(lo.0, l0), vorrq_u8(lo.1, l1)), (vorrq_u8(hi.0, h0), vorrq_u8(hi.1, h1)))
}

#[inline(always)]
unsafe fn shr1(h: U8x) -> U8x {
    let s = |v: uint8x16_t| vreinterpretq_u8_u32(vshrq_n_u32::<1>(vreinterpretq_u32_u8(v)));
    (s(h.0), s(h.1))
}

/// Q4_K (`FIVE = false`) or Q5_K units.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn q4k<const MR: usize, const FIVE: bool>(x: *const XK, w: *const u8, blocks: usize, y: *mut f32, ldy: usize, cols: usize) {
    let unit = if FIVE { 1440 } else { 1184 };
    let fz = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    let mut acc = [fz; MR];
    for b in 0..blocks {
        let u = w.add(b * unit);
        let mut isum = [zero(); MR];
        for g in 0..4 {
            let (sc_lo, sc_hi) = (bytes_u(u.add(32 + 16 * g)), bytes_u(u.add(40 + 16 * g)));
            let (mut a_lo, mut a_hi) = ([zero(); MR], [zero(); MR]);
            let mut h = (vdupq_n_u8(0), vdupq_n_u8(0));
            for v in 0..8 {
                if FIVE && v % 4 == 0 {
                    h = load(u.add(1184 + 32 * (2 * g + v / 4)));
                }
                let (mut lo, mut hi) = nibbles(load(u.add(160 + 32 * (8 * g + v))));
                if FIVE {
                    (lo, hi) = with_fifth(lo, hi, h);
                    h = shr1(h);
                }
                for i in 0..MR {
                    let xq = (*x.add(i * blocks + b)).qs.as_ptr().add(64 * g + 4 * v);
                    a_lo[i] = dot(a_lo[i], lo, bcast4(xq));
                    a_hi[i] = dot(a_hi[i], hi, bcast4(xq.add(32)));
                }
            }
            for i in 0..MR {
                isum[i] = add(isum[i], add(mul(a_lo[i], sc_lo), mul(a_hi[i], sc_hi)));
            }
        }
        let (dw, dm) = (scales(u), scales(u.add(16)));
        // Mins in pairs of sub-blocks (`[pair][row][2]`): de-interleaved into each sub-block's 8 rows.
        let mut mins = [zero(); 8];
        for p in 0..4 {
            let pair = vld2_u8(u.add(96 + 16 * p));
            for (j, v) in [(2 * p, pair.0), (2 * p + 1, pair.1)] {
                let w = vmovl_u8(v);
                mins[j] = (vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(w))), vreinterpretq_s32_u32(vmovl_high_u16(w)));
            }
        }
        for i in 0..MR {
            let xb = &*x.add(i * blocks + b);
            let mut imin = zero();
            for (j, mn) in mins.iter().enumerate() {
                let s = vdupq_n_s32(xb.s32[j]);
                imin = add(imin, mul(*mn, (s, s)));
            }
            acc[i] = fma(acc[i], isum[i], dw, xb.d, false);
            acc[i] = fma(acc[i], imin, dm, xb.d, true);
        }
    }
    store(&acc, y, ldy, cols);
}

/// Q6_K units.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn q6k<const MR: usize>(x: *const XK, w: *const u8, blocks: usize, y: *mut f32, ldy: usize, cols: usize) {
    const UNIT: usize = 1680;
    let (mask, m30) = (vdupq_n_u8(0xF), vdupq_n_u8(0x30));
    let fz = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    let mut acc = [fz; MR];
    for b in 0..blocks {
        let u = w.add(b * UNIT);
        let mut isum = [zero(); MR];
        for j in 0..16 {
            let sc = bytes_i(u.add(16 + 8 * j));
            let base = u.add(144 + 96 * j);
            let (l0, l1, h) = (load(base), load(base.add(32)), load(base.add(64)));
            let code = |l: uint8x16_t, hb: uint8x16_t, t: usize| {
                let low = if t % 2 == 0 { vandq_u8(l, mask) } else { vshrq_n_u8::<4>(l) };
                let high = match t {
                    0 => vshlq_n_u8::<4>(hb),
                    1 => vshlq_n_u8::<2>(hb),
                    2 => hb,
                    _ => vshrq_n_u8::<2>(hb),
                };
                vorrq_u8(low, vandq_u8(high, m30))
            };
            let q = [
                (code(l0.0, h.0, 0), code(l0.1, h.1, 0)),
                (code(l0.0, h.0, 1), code(l0.1, h.1, 1)),
                (code(l1.0, h.0, 2), code(l1.1, h.1, 2)),
                (code(l1.0, h.0, 3), code(l1.1, h.1, 3)),
            ];
            for i in 0..MR {
                let xb = &*x.add(i * blocks + b);
                let xq = xb.qs.as_ptr().add(16 * j);
                let mut a = zero();
                for (t, q) in q.iter().enumerate() {
                    a = dot(a, *q, bcast4(xq.add(4 * t)));
                }
                isum[i] = add(isum[i], mul(sub_n(a, 32 * xb.s16[j]), sc));
            }
        }
        let dw = scales(u);
        for i in 0..MR {
            acc[i] = fma(acc[i], isum[i], dw, (*x.add(i * blocks + b)).d, false);
        }
    }
    store(&acc, y, ldy, cols);
}

pub(super) const Q5_0: u8 = 0;
pub(super) const Q4_1: u8 = 1;
pub(super) const Q5_1: u8 = 2;

/// Q5_0 / Q4_1 / Q5_1 units (blocks of 32).
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn legacy<const MR: usize, const KIND: u8>(x: *const X32, w: *const u8, blocks: usize, y: *mut f32, ldy: usize, cols: usize) {
    let (unit, high, qs) = match KIND {
        Q5_0 => (176, 16, 48),
        Q4_1 => (160, 0, 32),
        _ => (192, 32, 64),
    };
    let fz = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    let mut acc = [fz; MR];
    for b in 0..blocks {
        let u = w.add(b * unit);
        let mut h = if high > 0 { load(u.add(high)) } else { (vdupq_n_u8(0), vdupq_n_u8(0)) };
        let mut s = [zero(); MR];
        for v in 0..4 {
            let (mut lo, mut hi) = nibbles(load(u.add(qs + 32 * v)));
            if high > 0 {
                (lo, hi) = with_fifth(lo, hi, h);
                h = shr1(h);
            }
            for (i, s) in s.iter_mut().enumerate() {
                let xq = (*x.add(i * blocks + b)).qs.as_ptr().add(4 * v);
                *s = dot(dot(*s, lo, bcast4(xq)), hi, bcast4(xq.add(16)));
            }
        }
        let dw = scales(u);
        for i in 0..MR {
            let xb = &*x.add(i * blocks + b);
            if KIND == Q5_0 {
                acc[i] = fma(acc[i], sub_n(s[i], 16 * xb.sum), dw, xb.d, false);
            } else {
                acc[i] = fma(acc[i], s[i], dw, xb.d, false);
                let sum = vdupq_n_s32(xb.sum);
                acc[i] = fma(acc[i], (sum, sum), scales(u.add(16)), xb.d, false);
            }
        }
    }
    store(&acc, y, ldy, cols);
}
