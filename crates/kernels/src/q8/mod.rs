//! W8A8 with 8-bit blocks: weights and activations in blocks of 32 int8 values with one f16 scale
//! each. The block is llama.cpp's Q8_0 byte for byte (`d: f16`, `qs: [i8; 32]`, 34 bytes), so a
//! quantized model can later be written to GGUF without conversion.
//!
//! `y = x · Wᵀ`: each x row is quantized at run time (per token, per block, abs-max), then every
//! output is `Σ_blocks d_x · d_w · Σ_i qx_i · qw_i`, the inner sum in exact integer arithmetic.
use crate::linear::drive;
use crate::quant::QuantMatrix;
use crate::simd::Isa;
use half::f16;

#[cfg(target_arch = "x86_64")]
mod avx2;

pub const QK8: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8 {
    pub d: f16,
    pub qs: [i8; QK8],
}

const _: () = assert!(std::mem::size_of::<BlockQ8>() == 34);

impl BlockQ8 {
    pub const ZERO: BlockQ8 = BlockQ8 { d: f16::ZERO, qs: [0; QK8] };
}

/// A `[n, k]` matrix as `n * k / 32` blocks, row-major.
pub struct Q8Matrix {
    pub n: usize,
    pub k: usize,
    pub blocks: Vec<BlockQ8>,
    /// Static int8: one fixed activation scale per block of 32 input features (from calibration).
    /// None: activations are quantized per token at run time (dynamic).
    pub act_scales: Option<Vec<f32>>,
}

/// Abs-max quantization of one block: scale = max|x| / 127, q = round(x / scale).
pub fn quantize_block(x: &[f32]) -> BlockQ8 {
    #[cfg(target_arch = "x86_64")]
    if x.len() == QK8 && crate::active_isa().uses_avx2() {
        // SAFETY: AVX2 was detected; 32 values.
        return unsafe { avx2::quantize_block(x) };
    }
    quantize_block_portable(x)
}

/// [`quantize_block`] in plain Rust (the reference of the AVX2 path: same bits).
pub fn quantize_block_portable(x: &[f32]) -> BlockQ8 {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; QK8];
    for (q, v) in qs.iter_mut().zip(x) {
        // Round half away from zero without a libm call (this runs on every activation).
        let r = v * inv;
        *q = (r + 0.5f32.copysign(r)) as i32 as i8;
    }
    BlockQ8 { d: f16::from_f32(d), qs }
}

/// Quantize one block with a fixed scale `d` (static int8), saturating at ±127.
pub fn quantize_block_with_scale(x: &[f32], d: f32) -> BlockQ8 {
    let d = f16::from_f32(d).to_f32(); // round with the scale the kernel will apply
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; QK8];
    for (q, v) in qs.iter_mut().zip(x) {
        let r = (v * inv).clamp(-127.0, 127.0);
        *q = (r + 0.5f32.copysign(r)) as i32 as i8;
    }
    BlockQ8 { d: f16::from_f32(d), qs }
}

/// Quantize rows of length `k` (a multiple of 32) into blocks, in parallel over rows: per block
/// abs-max (dynamic), or with fixed per-block `scales` (`len == k / 32`, static int8).
pub fn quantize_activations(x: &[f32], k: usize, scales: Option<&[f32]>) -> Vec<BlockQ8> {
    let mut out = vec![BlockQ8::ZERO; x.len() / QK8];
    quantize_activations_into(x, k, scales, &mut out);
    out
}

/// [`quantize_activations`] into `out` (`x.len() / 32` blocks).
pub fn quantize_activations_into(x: &[f32], k: usize, scales: Option<&[f32]>, out: &mut [BlockQ8]) {
    assert!(k % QK8 == 0, "q8: row length {k} is not a multiple of {QK8}");
    assert_eq!(out.len(), x.len() / QK8, "q8: output blocks for {} values", x.len());
    crate::pool::parallel_chunks_mut(out, k / QK8, |r, blocks| {
        let row = &x[r * k..(r + 1) * k];
        for (i, (b, chunk)) in blocks.iter_mut().zip(row.chunks_exact(QK8)).enumerate() {
            *b = match scales {
                Some(s) => quantize_block_with_scale(chunk, s[i]),
                None => quantize_block(chunk),
            };
        }
    });
}

thread_local! {
    /// Quantized activations of the current linear call (see [`crate::scratch`]).
    pub(crate) static ACT_BLOCKS: std::cell::Cell<Vec<BlockQ8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs `f` on `x` quantized into this thread's reusable block buffer.
pub(crate) fn with_quantized<R>(x: &[f32], k: usize, scales: Option<&[f32]>, f: impl FnOnce(&[BlockQ8]) -> R) -> R {
    crate::scratch::with_buffer(&ACT_BLOCKS, x.len() / QK8, BlockQ8::ZERO, |xq| {
        quantize_activations_into(x, k, scales, xq);
        f(xq)
    })
}

/// Dynamic [`quantize_activations`] (also how weights are quantized).
pub fn quantize_rows(x: &[f32], k: usize) -> Vec<BlockQ8> {
    quantize_activations(x, k, None)
}

impl Q8Matrix {
    /// Quantize `w: [n, k]` (f32). `k` must be a multiple of 32.
    pub fn quantize(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k);
        Self { n, k, blocks: quantize_rows(w, k), act_scales: None }
    }

    pub fn from_blocks(n: usize, k: usize, blocks: Vec<BlockQ8>) -> Self {
        assert!(k % QK8 == 0 && blocks.len() == n * k / QK8, "q8: {} blocks for [{n}, {k}]", blocks.len());
        Self { n, k, blocks, act_scales: None }
    }

    /// Fix the activation scales (static int8): one per block of 32 input features.
    pub fn with_static_scales(mut self, scales: Vec<f32>) -> Self {
        assert_eq!(scales.len(), self.k / QK8, "q8: one activation scale per input block");
        self.act_scales = Some(scales);
        self
    }

}

impl QuantMatrix for Q8Matrix {
    fn name(&self) -> &'static str {
        "nano-qwen3-q8-linear"
    }

    fn n(&self) -> usize {
        self.n
    }

    fn k(&self) -> usize {
        self.k
    }

    fn bytes(&self) -> usize {
        self.blocks.len() * std::mem::size_of::<BlockQ8>()
    }

    fn dequantize_row(&self, j: usize, out: &mut [f32]) {
        let bpr = self.k / QK8;
        for (b, chunk) in self.blocks[j * bpr..(j + 1) * bpr].iter().zip(out.chunks_exact_mut(QK8)) {
            let d = b.d.to_f32();
            for (o, q) in chunk.iter_mut().zip(b.qs) {
                *o = q as f32 * d;
            }
        }
    }

    /// x is quantized per row at run time, or with the static scales when calibrated.
    fn linear(&self, x: &[f32], m: usize, y: &mut [f32], isa: Isa) {
        #[cfg(target_arch = "x86_64")]
        let tiles: Option<[BlockTile<BlockQ8>; 2]> = isa.uses_avx2().then_some([avx2::tile::<1>, avx2::tile::<2>]);
        #[cfg(not(target_arch = "x86_64"))]
        let tiles: Option<[BlockTile<_>; 2]> = None;
        let w = BlockMatrix { name: self.name(), blocks: &self.blocks, n: self.n, k: self.k };
        block_linear(&w, x, m, y, self.act_scales.as_deref(), tiles, dot, isa)
    }
}

/// A register tile of the row-major block kernels: 1 or 2 activation rows by 4 weight rows.
pub(crate) type BlockTile<W> = unsafe fn(*const BlockQ8, *const W, usize, *mut f32, usize);
/// One activation row's dot product with one weight row, `blocks` blocks long.
pub(crate) type Dot<W> = unsafe fn(Isa, *const BlockQ8, *const W, usize) -> f32;

/// A row-major block matrix as [`block_linear`] reads it.
pub(crate) struct BlockMatrix<'a, W> {
    pub name: &'static str,
    pub blocks: &'a [W],
    pub n: usize,
    pub k: usize,
}

/// `y = x · Wᵀ` for row-major Q8_0 or Q4_0 weights: x quantized into Q8 blocks (with static
/// `scales`, or per token), `tiles[mr - 1]` on full 4-row tiles of 1-2 rows when the ISA has
/// them, `dot` everywhere else.
#[allow(clippy::too_many_arguments)]
pub(crate) fn block_linear<W: Sync>(
    w: &BlockMatrix<W>,
    x: &[f32],
    m: usize,
    y: &mut [f32],
    scales: Option<&[f32]>,
    tiles: Option<[BlockTile<W>; 2]>,
    dot: Dot<W>,
    isa: Isa,
) {
    let (n, k, bpr) = (w.n, w.k, w.k / QK8);
    assert!(x.len() >= m * k && y.len() >= m * n, "{}: buffers too small", w.name);
    with_quantized(&x[..m * k], k, scales, |xq| {
        drive(w.name, m, n, k, y, |t| unsafe {
            let (xb, wb) = (xq.as_ptr(), w.blocks.as_ptr());
            if let (Some(f), 4, 1..=2) = (tiles, t.nr, t.mr) {
                return f[t.mr - 1](xb.add(t.i * bpr), wb.add(t.j * bpr), bpr, t.y, n);
            }
            for a in 0..t.mr {
                for b in 0..t.nr {
                    *t.y.add(a * n + b) = dot(isa, xb.add((t.i + a) * bpr), wb.add((t.j + b) * bpr), bpr);
                }
            }
        });
    })
}

unsafe fn dot(isa: Isa, x: *const BlockQ8, w: *const BlockQ8, blocks: usize) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa.uses_avx2() {
        return avx2::dot(x, w, blocks);
    }
    let _ = isa;
    portable_dot(x, w, blocks)
}

/// Plain Rust reference: exact integer block sums, f32 scale application.
unsafe fn portable_dot(x: *const BlockQ8, w: *const BlockQ8, blocks: usize) -> f32 {
    let mut acc = 0f32;
    for b in 0..blocks {
        let (xb, wb) = (&*x.add(b), &*w.add(b));
        let s: i32 = xb.qs.iter().zip(&wb.qs).map(|(&a, &c)| a as i32 * c as i32).sum();
        acc += s as f32 * (xb.d.to_f32() * wb.d.to_f32());
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::quant::test_data as fill;

    /// The memory report's figure: 34 bytes (an f16 scale and 32 int8) per 32 weights.
    #[test]
    fn bytes_are_34_per_32_weights() {
        let (n, k) = (3, 96);
        let q = Q8Matrix::quantize(&crate::quant::test_data(n * k, 3), n, k);
        assert_eq!(q.bytes(), n * k / 32 * 34);
    }

    /// The AVX2 quantizer gives the portable bits: random blocks at several magnitudes, exact
    /// half-step ties (rounded away from zero), zeros, negative zeros and a lone outlier.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_quantize_matches_portable() {
        if !crate::Isa::Avx2.supported() {
            return;
        }
        let mut blocks: Vec<Vec<f32>> = (0..200).map(|s| fill(32, s).iter().map(|v| v * 10f32.powi(s as i32 % 7 - 3)).collect()).collect();
        blocks.push((0..32).map(|i| (i as f32 - 16.0) + 0.5).collect()); // amax 16.5: ties at r = k + 0.5
        blocks.push((0..32).map(|i| if i % 2 == 0 { 127.0 } else { -63.5 }).collect());
        blocks.push(vec![0.0; 32]);
        blocks.push((0..32).map(|i| if i == 7 { 1e4 } else { -0.0 }).collect());
        for (i, b) in blocks.iter().enumerate() {
            let want = quantize_block_portable(b);
            let got = unsafe { avx2::quantize_block(b) };
            assert_eq!(got, want, "block {i}: {b:?}");
        }
    }

    #[test]
    fn round_trip_error_is_at_most_half_a_step() {
        let x = fill(64 * 32, 3);
        let q = Q8Matrix::quantize(&x, 64, 32);
        let mut row = vec![0f32; 32];
        for j in 0..64 {
            q.dequantize_row(j, &mut row);
            let d = q.blocks[j].d.to_f32();
            for (a, b) in row.iter().zip(&x[j * 32..(j + 1) * 32]) {
                // half a step, plus the f16 rounding of the scale (relative 2^-11 of |x| <= 127 d)
                assert!((a - b).abs() <= d * 0.5 + 127.0 * d * 1e-3, "{a} vs {b}");
            }
        }
        // An all-zero block stays zero (no division by zero).
        assert!(quantize_block(&[0.0; 32]).qs.iter().all(|&q| q == 0));
    }

    /// Both activation quantizers round to nearest, ties away from zero, exactly (truncation or
    /// ties-to-even would stay within the model-level tolerances, so it is pinned here).
    #[test]
    fn activation_quantizers_round_half_away_from_zero_exactly() {
        // Scale 1 (abs-max 127, and 1.0 is exact in f16): q must be the rounded value itself.
        let offsets = [0.0f32, 0.25, 0.49, 0.5, 0.51, 0.75];
        let x: Vec<f32> = (0..32).map(|i| if i == 0 { 127.0 } else { let v = (i as f32 * 3.0 - 48.0) + offsets[i % 6]; v.clamp(-126.0, 126.0) }).collect();
        let want: Vec<i8> = x.iter().map(|v| v.round() as i8).collect(); // f32::round: half away from zero
        for (name, b) in [("dynamic", quantize_block(&x)), ("dynamic portable", quantize_block_portable(&x)), ("static", quantize_block_with_scale(&x, 1.0))] {
            assert_eq!(b.qs.to_vec(), want, "{name}: {x:?}");
            assert_eq!(b.d.to_f32(), 1.0, "{name}");
        }
        // Static with a scale of 0.25 (exact in f16): ties at k + 0.5 steps go away from zero.
        let x: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) * 0.25 + if i % 2 == 0 { 0.125 } else { 0.0625 }).collect();
        let b = quantize_block_with_scale(&x, 0.25);
        let want: Vec<i8> = x.iter().map(|v| (v / 0.25).round() as i8).collect();
        assert_eq!(b.qs.to_vec(), want);
    }

    #[test]
    fn static_scales_saturate_and_match_dynamic_when_equal() {
        let x = fill(4 * 64, 9);
        // With each block's own abs-max scale, static quantization is the dynamic one.
        let own: Vec<f32> = x[..64].chunks(32).map(|c| c.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0).collect();
        let st = quantize_activations(&x[..64], 64, Some(&own));
        let dy = quantize_rows(&x[..64], 64);
        for (a, b) in st.iter().zip(&dy) {
            let diff = a.qs.iter().zip(&b.qs).map(|(p, q)| (*p as i32 - *q as i32).abs()).max().unwrap();
            assert!(diff <= 1, "static vs dynamic differ by {diff} levels");
        }
        // A scale too small saturates at ±127 instead of wrapping.
        let b = quantize_block_with_scale(&[1.0; 32], 1.0 / 1000.0);
        assert!(b.qs.iter().all(|&q| q == 127));
        let b = quantize_block_with_scale(&[-1.0; 32], 1.0 / 1000.0);
        assert!(b.qs.iter().all(|&q| q == -127));
        // And the matmul uses them: a static matrix agrees with the dynamic one on in-range data.
        let w = fill(8 * 64, 10);
        let dynm = Q8Matrix::quantize(&w, 8, 64);
        let wide = vec![1.0f32 / 127.0; 2];
        let stat = Q8Matrix::quantize(&w, 8, 64).with_static_scales(wide);
        let (mut a, mut b) = (vec![0f32; 4 * 8], vec![0f32; 4 * 8]);
        dynm.linear(&x, 4, &mut a, Isa::Portable);
        stat.linear(&x, 4, &mut b, Isa::Portable);
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() < 0.05 * 8.0, "{p} vs {q}");
        }
    }

    #[test]
    fn matmul_matches_f32_reference_and_paths_agree() {
        for &(m, k, n) in &[(1usize, 32usize, 1usize), (1, 1024, 37), (3, 96, 9), (50, 256, 33)] {
            let x = fill(m * k, 1);
            let w = fill(n * k, 2);
            let q = Q8Matrix::quantize(&w, n, k);
            let mut want = vec![0f64; m * n];
            for i in 0..m {
                for j in 0..n {
                    want[i * n + j] = (0..k).map(|p| x[i * k + p] as f64 * w[j * k + p] as f64).sum();
                }
            }
            let scale = (k as f64).sqrt(); // random ±1 inputs: outputs grow like sqrt(k)
            let mut portable = vec![0f32; m * n];
            q.linear(&x, m, &mut portable, Isa::Portable);
            for (g, r) in portable.iter().zip(&want) {
                // W8A8 error: two 8-bit roundings per product, ~1% of the output's natural size.
                assert!(((*g as f64) - r).abs() < 0.02 * scale, "m={m} k={k} n={n}: {g} vs {r}");
            }
            if Isa::Avx2.supported() {
                let mut simd = vec![0f32; m * n];
                q.linear(&x, m, &mut simd, Isa::Avx2);
                for (a, b) in simd.iter().zip(&portable) {
                    assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "avx2 {a} vs portable {b}");
                }
            }
        }
    }
}
