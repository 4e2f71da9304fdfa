//! aarch64 NEON + dotprod tiles for the repacked int8 / int4 matrices (layouts in the `repack`
//! module docs). `sdot` multiplies 16 signed bytes by 16 and adds each group of 4 products into
//! one of 4 i32 lanes; a weight vector holds the same 4 input features of 4 rows, so one `sdot`
//! against the broadcast activations advances 4 rows and two cover the 8-row group.
//! (`vdotq_s32` is not stable Rust yet, hence the one-instruction `asm!`.)
use super::{q4_unit, BlockQ8x8, Q4Rows, QK8, XQ4, XQ8, ROWS};
use std::arch::aarch64::*;

/// `acc += dot4(a, b)` per lane.
#[inline(always)]
pub(crate) unsafe fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    std::arch::asm!("sdot {0:v}.4s, {1:v}.16b, {2:v}.16b", inout(vreg) acc, in(vreg) a, in(vreg) b, options(pure, nomem, nostack));
    acc
}

/// The 4 bytes at `p` in all 4 lanes.
#[inline(always)]
pub(crate) unsafe fn bcast4<T>(p: *const T) -> int8x16_t {
    vreinterpretq_s8_s32(vdupq_n_s32(std::ptr::read_unaligned(p as *const i32)))
}

/// 4 finite f16 scales to f32 without the (unstable) f16 vector types: the exponent and mantissa
/// moved into f32 position, rescaled by 2^112 (exact for normals and subnormals), sign restored.
#[inline(always)]
pub(crate) unsafe fn f16x4_to_f32(h: uint16x4_t) -> float32x4_t {
    let h = vmovl_u16(h);
    let sign = vshlq_n_u32::<16>(vandq_u32(h, vdupq_n_u32(0x8000)));
    let em = vshlq_n_u32::<13>(vandq_u32(h, vdupq_n_u32(0x7fff)));
    let f = vmulq_f32(vreinterpretq_f32_u32(em), vdupq_n_f32(f32::from_bits(0x7780_0000)));
    vreinterpretq_f32_u32(vorrq_u32(vreinterpretq_u32_f32(f), sign))
}

/// The 8 row scales of a block as two f32 vectors (rows 0-3, 4-7).
#[inline(always)]
unsafe fn scales(d: &[half::f16; ROWS]) -> (float32x4_t, float32x4_t) {
    let p = d.as_ptr() as *const u16;
    (f16x4_to_f32(vld1_u16(p)), f16x4_to_f32(vld1_u16(p.add(4))))
}

/// Store the accumulators of `MR` rows, only the first `cols` columns.
#[inline(always)]
pub(crate) unsafe fn store<const MR: usize>(acc: &[(float32x4_t, float32x4_t); MR], y: *mut f32, ldy: usize, cols: usize) {
    for (i, (lo, hi)) in acc.iter().enumerate() {
        let mut t = [0f32; ROWS];
        vst1q_f32(t.as_mut_ptr(), *lo);
        vst1q_f32(t.as_mut_ptr().add(4), *hi);
        std::ptr::copy_nonoverlapping(t.as_ptr(), y.add(i * ldy), cols);
    }
}

/// `MR` activation rows by one 8-row int8 group.
#[target_feature(enable = "neon,dotprod")]
pub(super) unsafe fn q8_tile<const MR: usize>(x: *const XQ8, w: *const BlockQ8x8, blocks: usize, y: *mut f32, ldy: usize, cols: usize) {
    let zero = vdupq_n_f32(0.0);
    let mut acc = [(zero, zero); MR];
    for b in 0..blocks {
        let wb = &*w.add(b);
        let mut isum = [(vdupq_n_s32(0), vdupq_n_s32(0)); MR];
        for s in 0..QK8 / 4 {
            let lo = vld1q_s8(wb.qs.as_ptr().add(32 * s));
            let hi = vld1q_s8(wb.qs.as_ptr().add(32 * s + 16));
            for (i, sum) in isum.iter_mut().enumerate() {
                let xv = bcast4((*x.add(i * blocks + b)).qs.as_ptr().add(4 * s));
                *sum = (sdot(sum.0, lo, xv), sdot(sum.1, hi, xv));
            }
        }
        let (d_lo, d_hi) = scales(&wb.d);
        for (i, (a, s)) in acc.iter_mut().zip(&isum).enumerate() {
            let dx = (*x.add(i * blocks + b)).d;
            *a = (
                vfmaq_f32(a.0, vcvtq_f32_s32(s.0), vmulq_n_f32(d_lo, dx)),
                vfmaq_f32(a.1, vcvtq_f32_s32(s.1), vmulq_n_f32(d_hi, dx)),
            );
        }
    }
    store(&acc, y, ldy, cols);
}

/// `MR` activation rows by one 8-row int4 group: the unsigned nibbles are dotted as they are
/// (0..15 fit a signed byte) and the `-8` offset is taken off once per block as `8 Σx`.
#[target_feature(enable = "neon,dotprod")]
pub(super) unsafe fn q4_tile<const MR: usize, const GB: usize>(x: *const XQ4, w: Q4Rows, blocks: usize, y: *mut f32, ldy: usize, cols: usize) {
    let zero = vdupq_n_f32(0.0);
    let mask = vdupq_n_u8(0x0F);
    let mut acc = [(zero, zero); MR];
    for sg in 0..blocks / GB {
        let group = w.p.add(sg * q4_unit(GB));
        let (d_lo, d_hi) = scales(&*(group as *const [half::f16; ROWS]));
        for b in sg * GB..(sg + 1) * GB {
            let qs = group.add(ROWS + 64 * (b - sg * GB)) as *const u8;
            let mut isum = [(vdupq_n_s32(0), vdupq_n_s32(0)); MR];
            for s in 0..4 {
                let (lo, hi) = (vld1q_u8(qs.add(32 * s)), vld1q_u8(qs.add(32 * s + 16)));
                // Low nibbles hold features 4s..4s+3, high nibbles 16+4s..16+4s+3 (rows 0-3 | 4-7).
                let (lo_l, lo_h) = (vreinterpretq_s8_u8(vandq_u8(lo, mask)), vreinterpretq_s8_u8(vshrq_n_u8::<4>(lo)));
                let (hi_l, hi_h) = (vreinterpretq_s8_u8(vandq_u8(hi, mask)), vreinterpretq_s8_u8(vshrq_n_u8::<4>(hi)));
                for (i, sum) in isum.iter_mut().enumerate() {
                    let xb = &*x.add(i * blocks + b);
                    let (xl, xh) = (bcast4(xb.qs.as_ptr().add(4 * s)), bcast4(xb.qs.as_ptr().add(16 + 4 * s)));
                    *sum = (sdot(sdot(sum.0, lo_l, xl), lo_h, xh), sdot(sdot(sum.1, hi_l, xl), hi_h, xh));
                }
            }
            for (i, (a, s)) in acc.iter_mut().zip(&isum).enumerate() {
                let xb = &*x.add(i * blocks + b);
                let off = vdupq_n_s32(xb.sum8);
                *a = (
                    vfmaq_f32(a.0, vcvtq_f32_s32(vsubq_s32(s.0, off)), vmulq_n_f32(d_lo, xb.d)),
                    vfmaq_f32(a.1, vcvtq_f32_s32(vsubq_s32(s.1, off)), vmulq_n_f32(d_hi, xb.d)),
                );
            }
        }
    }
    store(&acc, y, ldy, cols);
}
