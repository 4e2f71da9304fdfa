//! 4-bit weights in blocks of 32 with one f16 scale: llama.cpp's Q4_0 layout byte for byte
//! (`d: f16`, 16 bytes of nibbles; element i in the low nibble of byte i, element i+16 in the high
//! nibble; value = (q - 8) * d). Activations are int8 blocks ([`crate::q8`]) at run time.
//!
//! Unlike plain Q4_0 (scale fixed by the largest value), each block's scale is chosen to minimise
//! the block's squared reconstruction error: a few candidate scales around the abs-max one are
//! tried, each refined by least squares for its rounding, and the best is kept.
use crate::q8::{block_linear, BlockMatrix, BlockQ8, BlockTile};
use crate::quant::QuantMatrix;
use crate::simd::Isa;
use half::f16;

#[cfg(target_arch = "x86_64")]
mod avx2;

pub const QK4: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4 {
    pub d: f16,
    pub qs: [u8; QK4 / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4>() == 18);

/// Round to the nearest level in [-8, 7] as llama.cpp's Q4_0 does (`(int)(x/d + 8.5)`, clamped):
/// a truncating conversion of a positive value, which vectorises (unlike `f32::round`).
fn encode(x: &[f32], d: f32) -> [i8; QK4] {
    let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut q = [0i8; QK4];
    for (q, v) in q.iter_mut().zip(x) {
        *q = ((v * inv + 8.5).max(0.0) as i32).min(15) as i8 - 8;
    }
    q
}

/// Squared error of rounding `x` with scale `d`, each element's error counted `imp[i]` times,
/// plus the least-squares statistics (Σ imp·x·q, Σ imp·q²) of that rounding. Eight partial sums so
/// that the loop vectorises.
fn evaluate(x: &[f32; QK4], imp: &[f32; QK4], d: f32) -> (f32, f32, f32) {
    let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
    let (mut err, mut num, mut den) = ([0f32; 8], [0f32; 8], [0f32; 8]);
    for i in 0..QK4 {
        let q = ((x[i] * inv + 8.5).clamp(0.0, 15.0) as i32 - 8) as f32;
        let e = x[i] - q * d;
        err[i % 8] += imp[i] * e * e;
        num[i % 8] += imp[i] * x[i] * q;
        den[i % 8] += imp[i] * q * q;
    }
    (err.iter().sum(), num.iter().sum(), den.iter().sum())
}

fn pack(q: &[i8; QK4], d: f32) -> BlockQ4 {
    let mut qs = [0u8; QK4 / 2];
    for (i, b) in qs.iter_mut().enumerate() {
        *b = ((q[i] + 8) as u8) | (((q[i + 16] + 8) as u8) << 4);
    }
    BlockQ4 { d: f16::from_f32(d), qs }
}

/// The value of largest magnitude, with its sign; the first of equal magnitudes (llama.cpp's
/// `if (amax < fabsf(v))`), so `[1, -1]` gives 1.
fn signed_extreme(x: &[f32]) -> f32 {
    x.iter().copied().fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m })
}

/// llama.cpp's own Q4_0 rule (scale = the signed extreme / -8), kept as the baseline to beat.
pub fn quantize_block_absmax(x: &[f32]) -> BlockQ4 {
    let m = signed_extreme(x);
    let d = m / -8.0;
    pack(&encode(x, d), d)
}

/// Where the extreme value lands among the 16 levels, for each candidate scale.
const CANDIDATE_STEPS: [f32; 16] = [-8.5, -8.25, -8.0, -7.75, -7.5, -7.25, -7.0, -6.75, -6.5, -6.0, 7.5, 7.25, 7.0, 6.75, 6.5, 6.0];

/// Error-minimising block quantization (see the module docs): every element counts alike.
pub fn quantize_block(x: &[f32]) -> BlockQ4 {
    quantize_block_weighted(x, &[1.0; QK4])
}

/// Activation-aware [`quantize_block`]: the scale minimises Σ imp_i (x_i - q_i d)², where imp_i is
/// the mean square of the activation that weight i multiplies (from calibration), so the error
/// lands where it costs the layer's output least.
pub fn quantize_block_weighted(x: &[f32], imp: &[f32]) -> BlockQ4 {
    let mut out = [BlockQ4 { d: f16::ZERO, qs: [0; QK4 / 2] }];
    quantize_group_weighted(x, imp, &mut out);
    out[0]
}

/// [`quantize_block_weighted`] for a group of whole blocks sharing one scale (`x.len()` = 32 ×
/// `out.len()`): the search scores the whole group, and every block stores the same scale, so
/// the group is plain Q4_0 that the repacked kernels store with one scale per group.
pub fn quantize_group_weighted(x: &[f32], imp: &[f32], out: &mut [BlockQ4]) {
    assert!(x.len() == QK4 * out.len() && imp.len() == x.len(), "q4: a group is 32 values per block, one importance each");
    let m = signed_extreme(x);
    if m == 0.0 {
        out.fill(pack(&[0; QK4], 0.0));
        return;
    }
    let evaluate_block = |x: &[f32; QK4], imp: &[f32; QK4], d: f32| {
        #[cfg(target_arch = "x86_64")]
        if crate::simd::active_isa().uses_avx2() {
            // SAFETY: AVX2+FMA support checked by active_isa.
            return unsafe { avx2::evaluate(x, imp, d) };
        }
        evaluate(x, imp, d)
    };
    let evaluate = |d: f32| {
        let mut total = (0f32, 0f32, 0f32);
        for (x, imp) in x.chunks_exact(QK4).zip(imp.chunks_exact(QK4)) {
            let (e, num, den) = evaluate_block(x.try_into().unwrap(), imp.try_into().unwrap(), d);
            total = (total.0 + e, total.1 + num, total.2 + den);
        }
        total
    };
    // Candidate scales: the extreme mapped to -8 (as Q4_0) or to +7, and slightly smaller ones
    // that clip the extreme but resolve the bulk of the values more finely. Each candidate's
    // rounding also gives its least-squares scale, which is tried too.
    let mut best = (f32::INFINITY, 0f32);
    for steps in CANDIDATE_STEPS {
        let d0 = m / steps;
        let (e0, num, den) = evaluate(d0);
        if e0 < best.0 {
            best = (e0, d0);
        }
        if den > 0.0 {
            let d1 = num / den;
            let (e1, _, _) = evaluate(d1);
            if e1 < best.0 {
                best = (e1, d1);
            }
        }
    }
    // Store the scale as f16 and round with the stored value, so the decoder sees what we scored.
    let d = f16::from_f32(best.1).to_f32();
    for (b, x) in out.iter_mut().zip(x.chunks_exact(QK4)) {
        *b = pack(&encode(x, d), d);
    }
}

/// Weights per int4 scale the quantizer offers: 32 is Q4_0; 64 and 128 share one scale over 2 or
/// 4 blocks (4.25 and 4.125 bits per weight instead of 4.5, in the repacked layout).
pub const GROUP_SIZES: [usize; 3] = [32, 64, 128];

/// How the int4 quantizer chooses each scale.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Q4Scales {
    /// This crate's error-minimising search (activation-aware with importances), per group.
    #[default]
    Searched,
    /// llama.cpp's own Q4_0 rule, per block of 32 (no search, no importances, no shared groups):
    /// what `npm run quality` exports as "llama.cpp's Q4_0" of the same weights.
    Absmax,
}

/// A `[n, k]` matrix as Q4_0 blocks, row-major.
pub struct Q4Matrix {
    pub n: usize,
    pub k: usize,
    pub blocks: Vec<BlockQ4>,
}

impl Q4Matrix {
    /// Quantize `w: [n, k]` (f32), `k` a multiple of 32, in parallel over rows.
    pub fn quantize(w: &[f32], n: usize, k: usize) -> Self {
        Self::quantize_with(w, n, k, None, QK4, Q4Scales::Searched)
    }

    /// With `importance` (len k: the mean square of each input feature), activation-aware.
    pub fn quantize_weighted(w: &[f32], n: usize, k: usize, importance: Option<&[f32]>) -> Self {
        Self::quantize_with(w, n, k, importance, QK4, Q4Scales::Searched)
    }

    /// [`Self::quantize_weighted`] with one scale per `group` weights (one of [`GROUP_SIZES`],
    /// dividing `k`), chosen by `scales` ([`Q4Scales::Absmax`] ignores the group and importances:
    /// it is llama.cpp's Q4_0 rule, per block).
    pub fn quantize_with(w: &[f32], n: usize, k: usize, importance: Option<&[f32]>, group: usize, scales: Q4Scales) -> Self {
        use rayon::prelude::*;
        assert!(GROUP_SIZES.contains(&group), "q4: group size {group} is not one of {GROUP_SIZES:?}");
        assert!(k % group == 0 && w.len() == n * k, "q4: bad shape [{n}, {k}] for groups of {group}");
        let ones = vec![1.0f32; group];
        let imp = |c: usize| importance.map_or(&ones[..], |i| &i[c * group..(c + 1) * group]);
        let mut blocks = vec![BlockQ4 { d: f16::ZERO, qs: [0; 16] }; n * k / QK4];
        blocks.par_chunks_mut(k / QK4).zip(w.par_chunks(k)).for_each(|(bs, row)| {
            for (c, (out, x)) in bs.chunks_exact_mut(group / QK4).zip(row.chunks_exact(group)).enumerate() {
                match scales {
                    Q4Scales::Absmax => out.iter_mut().zip(x.chunks_exact(QK4)).for_each(|(b, x)| *b = quantize_block_absmax(x)),
                    Q4Scales::Searched => quantize_group_weighted(x, imp(c), out),
                }
            }
        });
        Self { n, k, blocks }
    }

    /// The most consecutive blocks (4, 2 or 1) whose scales are equal, bit for bit, in every
    /// group of every row: what [`Self::quantize_with`] made, or a Q4_0 file exported from it.
    pub fn shared_scale_blocks(&self) -> usize {
        let bpr = self.k / QK4;
        [4, 2].into_iter()
            .find(|&g| {
                bpr % g == 0
                    && self.blocks.chunks_exact(g).all(|grp| grp.iter().all(|b| b.d.to_bits() == grp[0].d.to_bits()))
            })
            .unwrap_or(1)
    }

}

impl QuantMatrix for Q4Matrix {
    fn name(&self) -> &'static str {
        "nano-qwen3-q4-linear"
    }

    fn n(&self) -> usize {
        self.n
    }

    fn k(&self) -> usize {
        self.k
    }

    fn bytes(&self) -> usize {
        self.blocks.len() * std::mem::size_of::<BlockQ4>()
    }

    fn dequantize_row(&self, j: usize, out: &mut [f32]) {
        let bpr = self.k / QK4;
        for (b, chunk) in self.blocks[j * bpr..(j + 1) * bpr].iter().zip(out.chunks_exact_mut(QK4)) {
            let d = b.d.to_f32();
            for i in 0..16 {
                chunk[i] = ((b.qs[i] & 0xF) as i32 - 8) as f32 * d;
                chunk[i + 16] = ((b.qs[i] >> 4) as i32 - 8) as f32 * d;
            }
        }
    }

    /// x is quantized to int8 blocks per row at run time.
    fn linear(&self, x: &[f32], m: usize, y: &mut [f32], isa: Isa) {
        #[cfg(target_arch = "x86_64")]
        let tiles: Option<[BlockTile<BlockQ4>; 2]> = isa.uses_avx2().then_some([avx2::tile::<1>, avx2::tile::<2>]);
        #[cfg(not(target_arch = "x86_64"))]
        let tiles: Option<[BlockTile<_>; 2]> = None;
        let w = BlockMatrix { name: self.name(), blocks: &self.blocks, n: self.n, k: self.k };
        block_linear(&w, x, m, y, None, tiles, dot, isa)
    }
}

unsafe fn dot(isa: Isa, x: *const BlockQ8, w: *const BlockQ4, blocks: usize) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa.uses_avx2() {
        return avx2::dot(x, w, blocks);
    }
    let _ = isa;
    let mut acc = 0f32;
    for b in 0..blocks {
        let (xb, wb) = (&*x.add(b), &*w.add(b));
        let mut s = 0i32;
        for i in 0..16 {
            s += xb.qs[i] as i32 * ((wb.qs[i] & 0xF) as i32 - 8);
            s += xb.qs[i + 16] as i32 * ((wb.qs[i] >> 4) as i32 - 8);
        }
        acc += s as f32 * (xb.d.to_f32() * wb.d.to_f32());
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Roughly bell-shaped, like trained weights: the mean of three uniform streams, in [-1, 1).
    fn fill(len: usize, seed: u64) -> Vec<f32> {
        let [a, b, c] = [0, 1, 2].map(|i| crate::quant::test_data(len, seed * 3 + i));
        (0..len).map(|i| (a[i] + b[i] + c[i]) / 3.0).collect()
    }

    fn rmse(x: &[f32], b: &BlockQ4) -> f32 {
        let m = Q4Matrix { n: 1, k: 32, blocks: vec![*b] };
        let mut out = [0f32; 32];
        m.dequantize_row(0, &mut out);
        (x.iter().zip(&out).map(|(a, b)| (a - b).powi(2)).sum::<f32>() / 32.0).sqrt()
    }

    #[test]
    fn error_minimising_scales_beat_plain_q4_0() {
        let x = fill(32 * 2000, 5);
        let (mut ours, mut plain) = (0f64, 0f64);
        for block in x.chunks_exact(32) {
            let (a, b) = (rmse(block, &quantize_block(block)), rmse(block, &quantize_block_absmax(block)));
            assert!(a <= b * 1.0001, "never worse than Q4_0's rule: {a} > {b}");
            ours += a as f64;
            plain += b as f64;
        }
        assert!(ours < 0.95 * plain, "mean RMSE {ours} vs Q4_0 {plain}");
    }

    /// With unequal importances, the weighted search lowers the importance-weighted error (what
    /// the layer's output feels) against the unweighted search.
    #[test]
    fn activation_aware_scales_lower_the_weighted_error() {
        let x = fill(32 * 2000, 7);
        let imp: Vec<f32> = fill(32, 8).iter().map(|v| (4.0 * v).exp()).collect(); // spread ~e^±4
        let werr = |x: &[f32], b: &BlockQ4| {
            let m = Q4Matrix { n: 1, k: 32, blocks: vec![*b] };
            let mut out = [0f32; 32];
            m.dequantize_row(0, &mut out);
            x.iter().zip(&out).zip(&imp).map(|((a, b), w)| w * (a - b).powi(2)).sum::<f32>()
        };
        let (mut weighted, mut plain) = (0f64, 0f64);
        for block in x.chunks_exact(32) {
            let (a, b) = (werr(block, &quantize_block_weighted(block, &imp)), werr(block, &quantize_block(block)));
            weighted += a as f64;
            plain += b as f64;
        }
        assert!(weighted < 0.9 * plain, "weighted error {weighted} vs unweighted search {plain}");
    }

    /// A shared scale per 64 or 128 weights: stored in every block, never worse than the group's
    /// abs-max scale, and costing little over per-block scales on bell-shaped weights.
    #[test]
    fn grouped_scales_are_shared_and_searched() {
        let (n, k) = (16, 1024);
        let w = fill(n * k, 13);
        let rmse = |q: &Q4Matrix| (q.dequantize().iter().zip(&w).map(|(a, b)| (a - b).powi(2)).sum::<f32>() / w.len() as f32).sqrt();
        let per_block = rmse(&Q4Matrix::quantize(&w, n, k));
        assert_eq!(Q4Matrix::quantize(&w, n, k).shared_scale_blocks(), 1);
        for (group, blocks) in [(64, 2), (128, 4)] {
            let q = Q4Matrix::quantize_with(&w, n, k, None, group, Q4Scales::Searched);
            assert_eq!(q.shared_scale_blocks(), blocks);
            for g in w.chunks_exact(group) {
                let mut ours = vec![BlockQ4 { d: f16::ZERO, qs: [0; 16] }; blocks];
                quantize_group_weighted(g, &vec![1.0; group], &mut ours);
                // The abs-max rule over the whole group (Q4_0's rule, one scale).
                let m = signed_extreme(g);
                let d = f16::from_f32(m / -8.0).to_f32();
                let absmax: Vec<BlockQ4> = g.chunks_exact(QK4).map(|x| pack(&encode(x, d), d)).collect();
                let err = |bs: &[BlockQ4]| {
                    let m = Q4Matrix { n: 1, k: group, blocks: bs.to_vec() };
                    m.dequantize().iter().zip(g).map(|(a, b)| (a - b).powi(2)).sum::<f32>()
                };
                assert!(err(&ours) <= err(&absmax) * 1.0001, "group {group}: {} > abs-max {}", err(&ours), err(&absmax));
            }
            let e = rmse(&q);
            assert!(e > per_block && e < 1.25 * per_block, "group {group}: rmse {e} vs per-block {per_block}");
        }
    }

    #[test]
    fn the_first_extreme_wins_a_tie() {
        assert_eq!(signed_extreme(&[0.5, 1.0, -1.0]), 1.0);
        assert_eq!(signed_extreme(&[-1.0, 0.5, 1.0]), -1.0);
        assert_eq!(signed_extreme(&[0.25, -2.0, 1.0]), -2.0);
        assert_eq!(signed_extreme(&[0.0; 4]), 0.0);
        // The scale's sign follows it: 1 first -> d = 1 / -8 (1 -> level -8, -1 -> level 7).
        let mut x = [0f32; 32];
        (x[3], x[9]) = (1.0, -1.0);
        let b = quantize_block_absmax(&x);
        assert_eq!(b.d.to_f32(), -0.125);
        assert_eq!((b.qs[3] & 0xF, b.qs[9] & 0xF, b.qs[0] & 0xF), (0, 15, 8));
    }

    /// The search's outcome on fixed data, to 4 significant digits: a change to its candidates,
    /// its least-squares step or its group totals moves this (bump the prepared-weights cache's
    /// FORMAT_VERSION with it: cached int4 weights hold this search's output). Paths that sum in
    /// another order (AVX2, portable) differ by 2.5e-5 of it (measured).
    #[test]
    fn the_searched_error_on_fixed_data_is_pinned() {
        let x = fill(32 * 4000, 29);
        let imp: Vec<f32> = fill(128, 30).iter().map(|v| (2.0 * v).exp()).collect();
        let mut got = Vec::new();
        for group in GROUP_SIZES {
            let (mut total, blocks) = (0f64, group / QK4);
            for g in x.chunks_exact(group) {
                let mut out = vec![BlockQ4 { d: f16::ZERO, qs: [0; 16] }; blocks];
                quantize_group_weighted(g, &imp[..group], &mut out);
                let m = Q4Matrix { n: 1, k: group, blocks: out };
                total += m.dequantize().iter().zip(g).zip(&imp).map(|((a, b), w)| (w * (a - b) * (a - b)) as f64).sum::<f64>();
            }
            got.push(total / x.len() as f64);
        }
        let want = [5.9644062e-4, 7.5168774e-4, 1.01017417e-3];
        for ((g, w), group) in got.iter().zip(want).zip(GROUP_SIZES) {
            assert!((g - w).abs() <= 1e-4 * w, "group {group}: mean weighted error {g:e}, pinned {w:e}");
        }
    }

    /// The memory report's figure: 18 bytes (an f16 scale and 32 nibbles) per 32 weights.
    #[test]
    fn bytes_are_18_per_32_weights() {
        let (n, k) = (3, 128);
        assert_eq!(Q4Matrix::quantize(&fill(n * k, 3), n, k).bytes(), n * k / 32 * 18);
    }

    /// A matrix takes, for each group of a row, the importances of that group's input features.
    #[test]
    fn each_group_is_searched_with_its_own_features_importances() {
        let (n, k) = (3, 256);
        let w = fill(n * k, 31);
        let imp: Vec<f32> = fill(k, 32).iter().map(|v| (3.0 * v).exp()).collect();
        for group in GROUP_SIZES {
            let q = Q4Matrix::quantize_with(&w, n, k, Some(&imp), group, Q4Scales::Searched);
            let mut want = Vec::new();
            for row in w.chunks_exact(k) {
                for (x, i) in row.chunks_exact(group).zip(imp.chunks_exact(group)) {
                    let mut out = vec![BlockQ4 { d: f16::ZERO, qs: [0; 16] }; group / QK4];
                    quantize_group_weighted(x, i, &mut out);
                    want.extend(out);
                }
            }
            assert!(q.blocks == want, "group {group}");
        }
    }

    /// llama.cpp's rule, asked for by parameter: every block is [`quantize_block_absmax`] of its
    /// 32 weights, whatever the group and the importances.
    #[test]
    fn absmax_rule_is_llama_cpp_q4_0_per_block() {
        let (n, k) = (4, 256);
        let w = fill(n * k, 17);
        let imp: Vec<f32> = fill(k, 18).iter().map(|v| v.abs() + 0.1).collect();
        let want: Vec<BlockQ4> = w.chunks_exact(QK4).map(quantize_block_absmax).collect();
        for group in GROUP_SIZES {
            assert_eq!(Q4Matrix::quantize_with(&w, n, k, Some(&imp), group, Q4Scales::Absmax).blocks, want, "group {group}");
        }
    }

    #[test]
    fn weighted_evaluation_paths_agree() {
        #[cfg(target_arch = "x86_64")]
        if Isa::Avx2.supported() {
            let x = fill(32 * 50, 11);
            let imp: Vec<f32> = fill(32, 12).iter().map(|v| v.abs() + 0.1).collect();
            let imp: &[f32; QK4] = imp.as_slice().try_into().unwrap();
            for block in x.chunks_exact(32) {
                let b: &[f32; QK4] = block.try_into().unwrap();
                let (a, c) = (evaluate(b, imp, 0.07), unsafe { avx2::evaluate(b, imp, 0.07) });
                for (p, q) in [(a.0, c.0), (a.1, c.1), (a.2, c.2)] {
                    assert!((p - q).abs() <= 1e-4 * (1.0 + p.abs()), "portable {p} vs avx2 {q}");
                }
            }
        }
    }

    #[test]
    fn layout_is_q4_0() {
        let x: Vec<f32> = (0..32).map(|i| i as f32 - 16.0).collect();
        let b = quantize_block_absmax(&x);
        // extreme -16 -> d = 2, q(-16) = -8 -> nibble 0; element 16 (value 0) -> nibble 8 in the high half
        assert_eq!(b.d.to_f32(), 2.0);
        assert_eq!(b.qs[0] & 0xF, 0);
        assert_eq!(b.qs[0] >> 4, 8);
    }

    #[test]
    fn matmul_matches_reference_and_paths_agree() {
        for &(m, k, n) in &[(1usize, 32usize, 1usize), (1, 1024, 37), (3, 96, 9), (50, 256, 33)] {
            let x = fill(m * k, 1);
            let w = fill(n * k, 2);
            let q = Q4Matrix::quantize(&w, n, k);
            // Reference: f64 products of the dequantized weights with the exact activations.
            let mut wd = vec![0f32; n * k];
            for j in 0..n {
                q.dequantize_row(j, &mut wd[j * k..(j + 1) * k]);
            }
            let mut portable = vec![0f32; m * n];
            q.linear(&x, m, &mut portable, Isa::Portable);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k).map(|p| x[i * k + p] as f64 * wd[j * k + p] as f64).sum();
                    let norm: f64 = (0..k).map(|p| (x[i * k + p] as f64 * wd[j * k + p] as f64).abs()).sum();
                    // Only the int8 activation rounding remains: < 1% of the sum of |products|.
                    assert!((portable[i * n + j] as f64 - want).abs() <= 0.01 * norm + 1e-6, "m={m} k={k} n={n}");
                }
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
