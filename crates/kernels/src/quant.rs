//! What the quantized formats share: the matrix interface the model uses, its candle op, and the
//! test data generator.
use crate::simd::{active_isa, Isa};
use std::sync::Arc;

/// A quantized `[n, k]` weight matrix.
pub trait QuantMatrix: Send + Sync + 'static {
    /// The kernel's name (the candle op's name, error messages).
    fn name(&self) -> &'static str;
    fn n(&self) -> usize;
    fn k(&self) -> usize;
    fn bytes(&self) -> usize;
    /// Row `j` as f32 into `out` (len k): the embedding lookup of a quantized tied matrix.
    fn dequantize_row(&self, j: usize, out: &mut [f32]);
    /// The whole matrix as f32, row-major.
    fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.n() * self.k()];
        for (j, row) in out.chunks_exact_mut(self.k().max(1)).enumerate() {
            self.dequantize_row(j, row);
        }
        out
    }
    /// `y[m, n] = x[m, k] · Wᵀ`.
    fn linear(&self, x: &[f32], m: usize, y: &mut [f32], isa: Isa);

    /// For gate and up stacked as rows `[gate; up]` (`n = 2 inter`): `gu = x · Wᵀ` as
    /// [`QuantMatrix::linear`], and `act[i, j] = silu(gu[i, j]) * gu[i, inter + j]`. Kernels with a
    /// SwiGLU epilogue do the second part in the matmul's tasks; the rest run it after.
    fn linear_swiglu(&self, x: &[f32], m: usize, gu: &mut [f32], act: &mut [f32], isa: Isa) {
        swiglu_unfused(self, x, m, gu, act, isa)
    }
}

/// [`QuantMatrix::linear_swiglu`] as a matmul, then a separate SwiGLU pass.
pub fn swiglu_unfused<Q: QuantMatrix + ?Sized>(q: &Q, x: &[f32], m: usize, gu: &mut [f32], act: &mut [f32], isa: Isa) {
    q.linear(x, m, gu, isa);
    let inter = q.n() / 2;
    crate::fused::silu_mul(&gu[..m * q.n()], inter, &mut act[..m * inter]);
}

/// [`QuantMatrix::linear`] as a candle op on `x [.., k]` (f32) -> `[.., n]` f32.
pub struct QuantLinearOp(pub Arc<dyn QuantMatrix>);

impl candle_core::CustomOp1 for QuantLinearOp {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn cpu_fwd(&self, s: &candle_core::CpuStorage, l: &candle_core::Layout) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::{bail, CpuStorage, Shape};
        let Some((a, b)) = l.contiguous_offsets() else { bail!("{}: x must be contiguous", self.0.name()) };
        let CpuStorage::F32(x) = s else { bail!("{}: activations must be f32", self.0.name()) };
        let dims = l.shape().dims();
        let (k, n) = (self.0.k(), self.0.n());
        if dims.last() != Some(&k) {
            bail!("{}: x has shape {dims:?}, weights expect {k} features", self.0.name())
        }
        let m = (b - a) / k;
        let mut y = vec![0f32; m * n];
        self.0.linear(&x[a..b], m, &mut y, active_isa());
        let mut out = dims.to_vec();
        *out.last_mut().unwrap() = n;
        Ok((CpuStorage::F32(y), Shape::from(out)))
    }
}

/// Deterministic values in [-1, 1) for kernel tests (fresh data per seed).
#[cfg(test)]
pub(crate) fn test_data(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}
