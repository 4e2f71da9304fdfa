//! bf16 weights on CPUs with AVX512_BF16 (Sapphire Rapids, Zen 4 and later): `vdpbf16ps` multiplies
//! 32 bf16 pairs and adds each pair's sum into one of 16 f32 lanes, 32 multiply-adds per
//! instruction with no widening of the weights.
//!
//! The instruction takes bf16 on both sides. Rounding the activations to bf16 would cost their
//! last 16 bits, so each is split into `hi = bf16(x)` and `lo = bf16(x - hi)`: `hi + lo` keeps ~16
//! significant bits (relative error ≤ 2^-17), each product of a bf16 weight with hi or lo is exact
//! in f32, and two `vdpbf16ps` per 32 features give `w·x` within f32 accumulation error of the
//! other paths (tested against the same f64 reference).
use half::bf16;
use std::arch::x86_64::*;

/// `x` (m × k, f32) as `hi` then `lo` bf16 bits, each m × k, into `out` (2 m k).
pub fn split(x: &[f32], out: &mut [u16]) {
    let (hi, lo) = out.split_at_mut(x.len());
    for ((v, h), l) in x.iter().zip(hi).zip(lo) {
        let b = bf16::from_f32(*v);
        *h = b.to_bits();
        *l = bf16::from_f32(v - b.to_f32()).to_bits();
    }
}

/// The `mr` × `nr` (≤ 2 × 4) tile `y[i, j] = Σ_p (hi + lo)[i, p] · w[j, p]`: rows of hi / lo at
/// stride `ldx`, weight rows (bf16 bits) at stride `k`, outputs at stride `ldy`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile(hi: *const u16, lo: *const u16, ldx: usize, w: *const u16, k: usize, y: *mut f32, ldy: usize, mr: usize, nr: usize) {
    let mut acc = [[_mm512_setzero_ps(); 4]; 2];
    let mut p = 0;
    while p < k {
        // The tail loads only the remaining features (masked lanes read as zero).
        let mask: __mmask32 = if k - p >= 32 { !0 } else { (1u32 << (k - p)) - 1 };
        let load = |ptr: *const u16| _mm512_maskz_loadu_epi16(mask, ptr.add(p) as *const i16);
        let mut wv = [_mm512_setzero_si512(); 4];
        for (j, v) in wv.iter_mut().enumerate().take(nr) {
            *v = load(w.add(j * k));
        }
        for (i, row) in acc.iter_mut().enumerate().take(mr) {
            let (xh, xl) = (load(hi.add(i * ldx)), load(lo.add(i * ldx)));
            for (a, v) in row.iter_mut().zip(&wv).take(nr) {
                *a = _mm512_dpbf16_ps(*a, std::mem::transmute::<__m512i, __m512bh>(xh), std::mem::transmute::<__m512i, __m512bh>(*v));
                *a = _mm512_dpbf16_ps(*a, std::mem::transmute::<__m512i, __m512bh>(xl), std::mem::transmute::<__m512i, __m512bh>(*v));
            }
        }
        p += 32;
    }
    for (i, row) in acc.iter().enumerate().take(mr) {
        for (j, a) in row.iter().enumerate().take(nr) {
            *y.add(i * ldy + j) = _mm512_reduce_add_ps(*a);
        }
    }
}
