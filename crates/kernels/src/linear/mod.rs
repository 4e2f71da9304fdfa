//! `y[m, n] = x[m, k] · w[n, k]ᵀ`: f32 activations, f32 / bf16 / f16 weights kept in their storage
//! format (widened to f32 in registers, [`Widen`]), f32 accumulation.
//!
//! Work is split over output features (`n`) by [`crate::tiling`]: inside a task, rows of `x` are
//! taken in blocks that stay in L2 while a register tile of MR x-rows by NR w-rows is computed, so
//! each loaded weight vector feeds MR multiply-adds (prefill) and decode (m = 1) streams the
//! weights once.
use crate::simd::{Isa, Widen};
use crate::tiling::{Split, Tile};
use crate::tuning::Tiling;
use candle_core::{backend::BackendStorage, bail, CpuStorage, CustomOp2, Layout, Result, Shape};
use half::{bf16, f16};

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

/// Weight matrix `[n, k]`, row-major, in its storage format.
#[derive(Clone, Copy)]
pub enum Weights<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
    F16(&'a [f16]),
}

impl Weights<'_> {
    /// The kernel that runs these weights (tuning keys).
    pub fn kernel_name(&self) -> &'static str {
        match self {
            Weights::F32(_) => f32::KERNEL,
            Weights::Bf16(_) => bf16::KERNEL,
            Weights::F16(_) => f16::KERNEL,
        }
    }
}

/// A dense weight element ([`Widen`]: read as f32), with its kernel's name.
pub trait WeightElem: Widen {
    /// The dense kernel's name for this weight type (tuning keys).
    const KERNEL: &'static str;
    /// bf16 has paths of its own (AVX2 even/odd lanes, AVX512_BF16).
    const IS_BF16: bool = false;
}
impl WeightElem for f32 {
    const KERNEL: &'static str = "dense-f32";
}
impl WeightElem for bf16 {
    const KERNEL: &'static str = "dense-bf16";
    const IS_BF16: bool = true;
}
impl WeightElem for f16 {
    const KERNEL: &'static str = "dense-f16";
}

const MR: usize = 2; // x rows per register tile (3 spills ymm registers with bf16 conversion)
const NR: usize = 4; // w rows per register tile
/// 8 tasks per thread; 48 x rows kept hot in L2 (a multiple of MR).
pub const DEFAULT_TILING: Tiling = Tiling { tasks_per_thread: 8, m_block: 48 };

/// `y = x · wᵀ` with `x: [m, k]`, `w: [n, k]`, `y: [m, n]` (all row-major).
pub fn linear(x: &[f32], w: Weights, m: usize, k: usize, n: usize, y: &mut [f32], isa: Isa) {
    assert!(x.len() >= m * k && y.len() >= m * n, "linear: buffers too small for m={m} k={k} n={n}");
    match w {
        Weights::F32(w) => run(x, w, m, k, n, y, isa),
        Weights::Bf16(w) => run(x, w, m, k, n, y, isa),
        Weights::F16(w) => run(x, w, m, k, n, y, isa),
    }
}

thread_local! {
    /// The bf16 path's rearranged activations (see [`crate::scratch`]).
    static EVEN_ODD: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    /// The AVX512_BF16 path's activations split into bf16 hi and lo parts.
    static HI_LO: std::cell::Cell<Vec<u16>> = const { std::cell::Cell::new(Vec::new()) };
}

fn run<W: WeightElem>(x: &[f32], w: &[W], m: usize, k: usize, n: usize, y: &mut [f32], isa: Isa) {
    assert!(w.len() >= n * k, "linear: weights too small for n={n} k={k}");
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Bf16 && W::IS_BF16 {
        return crate::scratch::with_buffer(&HI_LO, 2 * m * k, 0, |hl| {
            avx512::split(&x[..m * k], hl);
            let (hi, lo) = hl.split_at(m * k);
            drive(W::KERNEL, m, n, k, y, |t| unsafe {
                let w = w.as_ptr() as *const u16; // bf16 bits
                let (hi, lo) = (hi.as_ptr().add(t.i * k), lo.as_ptr().add(t.i * k));
                if t.mr == 1 {
                    // Decode: one weight row at a time (see `tile`).
                    return for j in 0..t.nr {
                        avx512::tile(hi, lo, k, w.add((t.j + j) * k), k, t.y.add(j), n, 1, 1)
                    };
                }
                avx512::tile(hi, lo, k, w.add(t.j * k), k, t.y, n, t.mr, t.nr)
            })
        });
    }
    #[cfg(target_arch = "x86_64")]
    if isa.uses_avx2() && W::IS_BF16 {
        // bf16 rows are read 16 at a time and split into even/odd lanes by shift and mask, so x
        // is rearranged to match once per call (see avx2::tile_bf16).
        return crate::scratch::with_buffer(&EVEN_ODD, m * k, 0.0, |xp| {
            avx2::even_odd(x, m, k, xp);
            drive(W::KERNEL, m, n, k, y, |t| unsafe {
                let w = w.as_ptr() as *const u16; // bf16 bits
                avx2::tile_bf16(x.as_ptr().add(t.i * k), xp.as_ptr().add(t.i * k), w.add(t.j * k), k, t.y, n, t.mr, t.nr)
            })
        });
    }
    drive(W::KERNEL, m, n, k, y, |t| unsafe { tile(isa, x.as_ptr().add(t.i * k), w.as_ptr().add(t.j * k), k, t.y, n, t.mr, t.nr) });
}

/// The dense split ([`crate::tiling`]): MR x NR register tiles over output columns, `tile(t)`
/// computing `y[t.i.., t.j..]`. The row-major Q8_0 / Q4_0 kernels share it.
pub(crate) fn drive(kernel: &'static str, m: usize, n: usize, k: usize, y: &mut [f32], tile: impl Fn(Tile) + Sync) {
    let split = Split { kernel, m, n, k, units: n, default: DEFAULT_TILING };
    crate::tiling::drive::<MR, NR, 1>(&split, y, None, tile)
}

/// Dispatch one register tile to the ISA path with the right compile-time shape.
///
/// A one-row tile (decode) reads its weight rows one after the other, not the NR rows side by
/// side: one sequential stream instead of NR interleaved ones, which the hardware prefetchers
/// keep far better fed (measured on Zen 4, `linear_bench`'s decode step: bf16 60-75 -> 44-52 ms,
/// f16 66-82 -> 37-47 ms). Each output's sum is computed in the same order either way, so a row's
/// result does not depend on the tile it is in (alone or batched: the same bits).
#[allow(clippy::too_many_arguments)]
unsafe fn tile<W: WeightElem>(
    isa: Isa,
    x: *const f32,
    w: *const W,
    k: usize,
    y: *mut f32,
    ldy: usize,
    mr: usize,
    nr: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if isa.uses_avx2() {
        use avx2::tile as t;
        match (mr, nr) {
            (2, 4) => return avx2::tile_x4(x, w, k, y, ldy),
            (2, _) => return for j in 0..nr { t::<W, 2, 1>(x, w.add(j * k), k, y.add(j), ldy) },
            _ => return for j in 0..nr { t::<W, 1, 1>(x, w.add(j * k), k, y.add(j), ldy) },
        }
    }
    let _ = isa;
    portable_tile(x, w, k, y, ldy, mr, nr)
}

/// Plain Rust: eight partial sums per dot product (vectorisable), the reference for SIMD paths.
unsafe fn portable_tile<W: WeightElem>(x: *const f32, w: *const W, k: usize, y: *mut f32, ldy: usize, mr: usize, nr: usize) {
    for i in 0..mr {
        let xr = std::slice::from_raw_parts(x.add(i * k), k);
        for j in 0..nr {
            let wr = std::slice::from_raw_parts(w.add(j * k), k);
            let mut acc = [0f32; 8];
            let body = k / 8 * 8;
            for p in (0..body).step_by(8) {
                for l in 0..8 {
                    acc[l] += xr[p + l] * wr[p + l].to_f32();
                }
            }
            let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
            for p in body..k {
                s += xr[p] * wr[p].to_f32();
            }
            *y.add(i * ldy + j) = s;
        }
    }
}

/// [`linear`] as a candle op: `x [.., k]` (f32) with `w [n, k]` (f32 / bf16 / f16) -> `[.., n]` f32.
pub struct LinearOp;

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "nano-qwen3-linear"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (Some((xa, xb)), Some((wa, wb))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            bail!("linear: x and w must be contiguous")
        };
        let CpuStorage::F32(x) = s1 else { bail!("linear: activations must be f32, got {:?}", s1.dtype()) };
        let x = &x[xa..xb];
        let dims = l1.shape().dims();
        let k = *dims.last().unwrap_or(&0);
        let (n, wk) = l2.shape().dims2()?;
        if k != wk || k == 0 {
            bail!("linear: x has {k} features but w is [{n}, {wk}]")
        }
        let w = match s2 {
            CpuStorage::F32(v) => Weights::F32(&v[wa..wb]),
            CpuStorage::BF16(v) => Weights::Bf16(&v[wa..wb]),
            CpuStorage::F16(v) => Weights::F16(&v[wa..wb]),
            other => bail!("linear: weights of dtype {:?} are not supported", other.dtype()),
        };
        let m = x.len() / k;
        let mut y = vec![0f32; m * n];
        linear(x, w, m, k, n, &mut y, crate::simd::active_isa());
        let mut out = dims.to_vec();
        *out.last_mut().unwrap() = n;
        Ok((CpuStorage::F32(y), Shape::from(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::quant::test_data as fill;

    /// f64 reference.
    fn reference(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut y = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] = (0..k).map(|p| x[i * k + p] as f64 * w[j * k + p] as f64).sum::<f64>() as f32;
            }
        }
        y
    }

    fn max_rel_err(got: &[f32], want: &[f32]) -> f32 {
        let scale = want.iter().fold(0f32, |a, b| a.max(b.abs())).max(1e-6);
        got.iter().zip(want).map(|(g, w)| if g.is_nan() { f32::INFINITY } else { (g - w).abs() / scale }).fold(0.0, f32::max)
    }

    // Awkward shapes: odd k (SIMD tail), n not a multiple of NR, m not a multiple of MR or M_BLOCK.
    const SHAPES: [(usize, usize, usize); 7] = [(1, 8, 4), (1, 13, 7), (2, 64, 5), (3, 31, 9), (5, 100, 33), (50, 72, 18), (97, 257, 41)];

    #[test]
    fn every_dtype_and_isa_matches_the_f64_reference() {
        let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.supported()).collect();
        for (seed, &(m, k, n)) in SHAPES.iter().enumerate() {
            let x = fill(m * k, seed as u64);
            let w32 = fill(n * k, 100 + seed as u64);
            let wb: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
            let wh: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
            // Reference on the exactly-rounded weights, so only accumulation error remains.
            let cases: [(Weights, Vec<f32>); 3] = [
                (Weights::F32(&w32), w32.clone()),
                (Weights::Bf16(&wb), wb.iter().map(|v| v.to_f32()).collect()),
                (Weights::F16(&wh), wh.iter().map(|v| v.to_f32()).collect()),
            ];
            for (w, wf) in cases.iter() {
                let want = reference(&x, wf, m, k, n);
                for &isa in &isas {
                    let mut y = vec![f32::NAN; m * n];
                    linear(&x, *w, m, k, n, &mut y, isa);
                    let err = max_rel_err(&y, &want);
                    assert!(err < 1e-5, "{isa:?} m={m} k={k} n={n}: {err}");
                }
            }
        }
    }

    /// A row's outputs are the same bits alone (decode) or among other rows (a batch): the
    /// serving engine's "same tokens alone or batched" rests on it.
    #[test]
    fn a_row_gives_the_same_bits_alone_or_batched() {
        let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.supported()).collect();
        for &(m, k, n) in &[(2usize, 64usize, 9usize), (3, 100, 37), (7, 1024, 70), (16, 257, 41)] {
            let x = fill(m * k, 41);
            let w32 = fill(n * k, 42);
            let wb: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
            let wh: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
            for w in [Weights::F32(&w32), Weights::Bf16(&wb), Weights::F16(&wh)] {
                for &isa in &isas {
                    let mut batch = vec![0f32; m * n];
                    linear(&x, w, m, k, n, &mut batch, isa);
                    for i in 0..m {
                        let mut alone = vec![0f32; n];
                        linear(&x[i * k..(i + 1) * k], w, 1, k, n, &mut alone, isa);
                        let same = alone.iter().zip(&batch[i * n..(i + 1) * n]).all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "{} {isa:?} m={m} k={k} n={n}: row {i} differs alone", w.kernel_name());
                    }
                }
            }
        }
    }

    #[test]
    fn simd_path_agrees_with_portable_path() {
        if !Isa::Avx2.supported() {
            return;
        }
        let (m, k, n) = (37, 1024, 70);
        let x = fill(m * k, 7);
        let w: Vec<bf16> = fill(n * k, 8).iter().map(|&v| bf16::from_f32(v)).collect();
        let (mut a, mut b) = (vec![0f32; m * n], vec![0f32; m * n]);
        linear(&x, Weights::Bf16(&w), m, k, n, &mut a, Isa::Portable);
        linear(&x, Weights::Bf16(&w), m, k, n, &mut b, Isa::Avx2);
        assert!(max_rel_err(&b, &a) < 1e-6);
    }

    #[test]
    fn candle_op_matches_matmul() {
        use candle_core::{DType, Device, Tensor};
        let x = Tensor::from_vec(fill(2 * 3 * 40, 1), (2, 3, 40), &Device::Cpu).unwrap();
        let w = Tensor::from_vec(fill(24 * 40, 2), (24, 40), &Device::Cpu).unwrap();
        let want = x.broadcast_matmul(&w.t().unwrap()).unwrap();
        for dt in [DType::F32, DType::BF16, DType::F16] {
            let wd = w.to_dtype(dt).unwrap();
            let got = x.apply_op2_no_bwd(&wd, &LinearOp).unwrap();
            assert_eq!(got.dims(), &[2, 3, 24]);
            let want = x.broadcast_matmul(&wd.to_dtype(DType::F32).unwrap().t().unwrap()).unwrap();
            let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-4, "{dt:?}: {diff}");
        }
        let _ = want;
    }
}
