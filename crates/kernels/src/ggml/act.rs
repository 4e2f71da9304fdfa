//! Activations quantized to int8 for the GGUF-block kernels, one f32 scale per block:
//! blocks of 256 for the k-quants (llama.cpp's Q8_K idea) with the sums the formats' offsets
//! need per 16 and per 32 values, and blocks of 32 for the legacy formats.
//!
//! Each value is `q = round(x / d)` (half away from zero) with `d = max|x| / 127`, so
//! `|x - d·q| <= d / 2`: the error bound the kernel tests state.
use crate::scratch::with_buffer;
use std::cell::Cell;

pub const QK_K: usize = 256;
pub const QK32: usize = 32;

/// 256 activations: scale, values, and the value sums per 16 (Q6_K's `-32` offset) and per 32
/// (Q4_K / Q5_K mins).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct XK {
    pub d: f32,
    pub s32: [i32; 8],
    pub s16: [i32; 16],
    /// `s32[2p]` and `s32[2p + 1]` as the low and high i16 of one i32 (|sum| <= 32·127 fits).
    pub s32_pairs: [i32; 4],
    pub qs: [i8; QK_K],
}

/// 32 activations: scale, sum of the values (offsets and mins), values.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct X32 {
    pub d: f32,
    pub sum: i32,
    pub qs: [i8; QK32],
}

impl XK {
    pub const ZERO: XK = XK { d: 0.0, s32: [0; 8], s16: [0; 16], s32_pairs: [0; 4], qs: [0; QK_K] };
}

impl X32 {
    pub const ZERO: X32 = X32 { d: 0.0, sum: 0, qs: [0; QK32] };
}

/// Abs-max scale and rounded values of one block (`qs.len() == x.len()`); returns the scale.
fn quantize(x: &[f32], qs: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (q, v) in qs.iter_mut().zip(x) {
        let r = v * inv;
        *q = (r + 0.5f32.copysign(r)) as i32 as i8;
    }
    d
}

pub fn quantize_k(x: &[f32]) -> XK {
    let mut b = XK::ZERO;
    b.d = quantize(x, &mut b.qs);
    for (s, q) in b.s16.iter_mut().zip(b.qs.chunks_exact(16)) {
        *s = q.iter().map(|&v| v as i32).sum();
    }
    for (j, s) in b.s32.iter_mut().enumerate() {
        *s = b.s16[2 * j] + b.s16[2 * j + 1];
    }
    for (p, s) in b.s32_pairs.iter_mut().enumerate() {
        *s = (b.s32[2 * p] as u16 as u32 | (b.s32[2 * p + 1] as u16 as u32) << 16) as i32;
    }
    b
}

pub fn quantize_32(x: &[f32]) -> X32 {
    let mut b = X32::ZERO;
    b.d = quantize(x, &mut b.qs);
    b.sum = b.qs.iter().map(|&v| v as i32).sum();
    b
}

/// An activation block type and its quantizer.
pub trait ActBlock: Copy + Send + Sync + 'static {
    const LEN: usize;
    const ZERO: Self;
    fn quantize(x: &[f32]) -> Self;
    /// This thread's reusable buffer of blocks.
    fn slot() -> &'static std::thread::LocalKey<Cell<Vec<Self>>>;
}

thread_local! {
    static XK_BUF: Cell<Vec<XK>> = const { Cell::new(Vec::new()) };
    static X32_BUF: Cell<Vec<X32>> = const { Cell::new(Vec::new()) };
}

impl ActBlock for XK {
    const LEN: usize = QK_K;
    const ZERO: XK = XK::ZERO;
    fn quantize(x: &[f32]) -> XK {
        quantize_k(x)
    }
    fn slot() -> &'static std::thread::LocalKey<Cell<Vec<XK>>> {
        &XK_BUF
    }
}

impl ActBlock for X32 {
    const LEN: usize = QK32;
    const ZERO: X32 = X32::ZERO;
    fn quantize(x: &[f32]) -> X32 {
        quantize_32(x)
    }
    fn slot() -> &'static std::thread::LocalKey<Cell<Vec<X32>>> {
        &X32_BUF
    }
}

/// Runs `f` on the rows of `x` (length `k`, a multiple of `A::LEN`) quantized block by block, in
/// this thread's reusable buffer (quantized in parallel over rows).
pub(crate) fn with_quantized<A: ActBlock, R>(x: &[f32], k: usize, f: impl FnOnce(&[A]) -> R) -> R {
    assert!(k.is_multiple_of(A::LEN) && x.len().is_multiple_of(k.max(1)), "activations: row length {k} is not a multiple of {}", A::LEN);
    with_buffer(A::slot(), x.len() / A::LEN, A::ZERO, |out| {
        crate::pool::parallel_chunks_mut(out, k / A::LEN, |r, blocks| {
            for (b, chunk) in blocks.iter_mut().zip(x[r * k..(r + 1) * k].chunks_exact(A::LEN)) {
                *b = A::quantize(chunk);
            }
        });
        f(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Half a step at most, sums that match the values, and an all-zero block that stays zero.
    #[test]
    fn rounding_error_is_at_most_half_a_step_and_sums_match() {
        let x: Vec<f32> = crate::quant::test_data(QK_K, 4).iter().map(|v| v * 3.0).collect();
        let b = quantize_k(&x);
        for (q, v) in b.qs.iter().zip(&x) {
            assert!((*q as f32 * b.d - v).abs() <= b.d * 0.5 * (1.0 + 1e-6), "{q} {v}");
        }
        assert_eq!(b.s32.iter().sum::<i32>(), b.qs.iter().map(|&q| q as i32).sum::<i32>());
        assert_eq!(b.s16[3], b.qs[48..64].iter().map(|&q| q as i32).sum::<i32>());
        let z = quantize_32(&[0.0; 32]);
        assert!(z.d == 0.0 && z.sum == 0 && z.qs.iter().all(|&q| q == 0));
        let b32 = quantize_32(&x[..32]);
        assert_eq!(b32.qs.iter().map(|q| q.unsigned_abs()).max(), Some(127), "a block of 32 is scaled by its own max");
        assert_eq!(b32.sum, b32.qs.iter().map(|&q| q as i32).sum::<i32>());
    }
}
