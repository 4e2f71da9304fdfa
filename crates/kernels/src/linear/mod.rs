//! `y[m, n] = x[m, k] · w[n, k]ᵀ`: f32 activations, f32 / bf16 / f16 weights kept in their storage
//! format (converted to f32 in registers), f32 accumulation.
//!
//! Work is split over output features (`n`) across the current kernel pool ([`crate::pool`]). Inside a task, rows of
//! `x` are taken in blocks that stay in L2 while a register tile of MR x-rows by NR w-rows is
//! computed, so each loaded weight vector feeds MR multiply-adds (prefill) and decode (m = 1) streams
//! the weights once.
use crate::simd::Isa;
use crate::tuning::{chunk_len, tiling_for, ShapeKey, Tiling};
use candle_core::{backend::BackendStorage, bail, CpuStorage, CustomOp2, Layout, Result, Shape};
use half::{bf16, f16};

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

/// A weight element that converts to f32.
pub trait WeightElem: Copy + Send + Sync + 'static {
    /// The dense kernel's name for this weight type (tuning keys).
    const KERNEL: &'static str;
    fn to_f32(self) -> f32;
}
impl WeightElem for f32 {
    const KERNEL: &'static str = "dense-f32";
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}
impl WeightElem for bf16 {
    const KERNEL: &'static str = "dense-bf16";
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}
impl WeightElem for f16 {
    const KERNEL: &'static str = "dense-f16";
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

const MR: usize = 2; // x rows per register tile (3 spills ymm registers with bf16 conversion)
const NR: usize = 4; // w rows per register tile
/// 8 tasks per thread; 48 x rows kept hot in L2 (a multiple of MR).
pub const DEFAULT_TILING: Tiling = Tiling { tasks_per_thread: 8, m_block: 48 };

/// Raw output pointer shared by tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

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

fn run<W: WeightElem + simd_load::Load8>(x: &[f32], w: &[W], m: usize, k: usize, n: usize, y: &mut [f32], isa: Isa) {
    assert!(w.len() >= n * k, "linear: weights too small for n={n} k={k}");
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Bf16 && W::IS_BF16 {
        return crate::scratch::with_buffer(&HI_LO, 2 * m * k, 0, |hl| {
            avx512::split(&x[..m * k], hl);
            let (hi, lo) = hl.split_at(m * k);
            drive(W::KERNEL, m, n, k, y, |i, j, mr, nr, out| unsafe {
                let w = w.as_ptr() as *const u16; // bf16 bits
                avx512::tile(hi.as_ptr().add(i * k), lo.as_ptr().add(i * k), k, w.add(j * k), k, out, n, mr, nr)
            })
        });
    }
    #[cfg(target_arch = "x86_64")]
    if isa.uses_avx2() && W::IS_BF16 {
        // bf16 rows are read 16 at a time and split into even/odd lanes by shift and mask, so x
        // is rearranged to match once per call (see avx2::tile_bf16).
        return crate::scratch::with_buffer(&EVEN_ODD, m * k, 0.0, |xp| {
            avx2::even_odd(x, m, k, xp);
            drive(W::KERNEL, m, n, k, y, |i, j, mr, nr, out| unsafe {
                let w = w.as_ptr() as *const u16; // bf16 bits
                avx2::tile_bf16(x.as_ptr().add(i * k), xp.as_ptr().add(i * k), w.add(j * k), k, out, n, mr, nr)
            })
        });
    }
    drive(W::KERNEL, m, n, k, y, |i, j, mr, nr, out| unsafe { tile(isa, x.as_ptr().add(i * k), w.as_ptr().add(j * k), k, out, n, mr, nr) });
}

/// Split output columns across the pool; each task sweeps x in L2-sized row blocks and calls
/// `tile(i, j, mr, nr, &mut y[i, j])` for MR x NR tiles.
/// `kernel` and `k` name the shape for its tuned [`Tiling`] (compile mode max-autotune).
pub(crate) fn drive(kernel: &'static str, m: usize, n: usize, k: usize, y: &mut [f32], tile: impl Fn(usize, usize, usize, usize, *mut f32) + Sync) {
    let threads = crate::pool::current_threads();
    let key = ShapeKey { kernel, n, k, threads, decode: m == 1 };
    let tiling = tiling_for(key, DEFAULT_TILING);
    // Enough chunks for load balance, each a multiple of NR rows.
    let chunk = chunk_len(n, threads, tiling, NR);
    let m_block = tiling.m_block.next_multiple_of(MR);
    let out = OutPtr(y.as_mut_ptr());
    crate::pool::parallel_for(n.div_ceil(chunk), |c| {
        let out = out;
        let (j0, j1) = (c * chunk, ((c + 1) * chunk).min(n));
        for i0 in (0..m).step_by(m_block) {
            let i1 = (i0 + m_block).min(m);
            let mut j = j0;
            while j < j1 {
                let nr = (j1 - j).min(NR);
                let mut i = i0;
                while i < i1 {
                    let mr = (i1 - i).min(MR);
                    // SAFETY: the tile is in bounds (asserts in `linear`) and this task alone
                    // writes columns j0..j1.
                    tile(i, j, mr, nr, unsafe { out.0.add(i * n + j) });
                    i += mr;
                }
                j += nr;
            }
        }
    });
}

/// Dispatch one register tile to the ISA path with the right compile-time shape.
#[allow(clippy::too_many_arguments)]
unsafe fn tile<W: WeightElem + simd_load::Load8>(
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
            (2, 4) => return avx2::tile_x4::<W, 2>(x, w, k, y, ldy),
            (1, 4) => return avx2::tile_x4::<W, 1>(x, w, k, y, ldy),
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

/// Loading 8 weights as f32 lanes, per storage format.
pub mod simd_load {
    pub trait Load8: Sized {
        const IS_BF16: bool = false;
        /// # Safety
        /// `p` must point to 8 readable elements and the CPU must support AVX2+F16C.
        #[cfg(target_arch = "x86_64")]
        unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
    }

    // Elsewhere the dense kernels are portable only: nothing to load.
    #[cfg(not(target_arch = "x86_64"))]
    impl Load8 for f32 {}
    #[cfg(not(target_arch = "x86_64"))]
    impl Load8 for half::bf16 {}
    #[cfg(not(target_arch = "x86_64"))]
    impl Load8 for half::f16 {}
}

#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::simd_load::Load8;
    use super::WeightElem;
    use crate::simd::x86::hsum;
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    impl Load8 for f32 {
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn load8(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
    }
    impl Load8 for bf16 {
        const IS_BF16: bool = true;
        // bf16 is the top half of an f32: widen to 32 bits and shift.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn load8(p: *const bf16) -> __m256 {
            let h = _mm_loadu_si128(p as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
        }
    }
    impl Load8 for f16 {
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn load8(p: *const f16) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
        }
    }


    /// Dot product tail (k not a multiple of 8) plus the horizontal sum.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn finish<W: WeightElem>(acc: __m256, x: *const f32, w: *const W, body: usize, k: usize) -> f32 {
        let mut s = hsum(acc);
        for q in body..k {
            s += *x.add(q) * (*w.add(q)).to_f32();
        }
        s
    }

    /// The hot tile: M (1 or 2) x-rows by 4 w-rows, named accumulators so that they stay in ymm
    /// registers (arrays of __m256 got spilled).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile_x4<W: WeightElem + Load8, const M: usize>(x: *const f32, w: *const W, k: usize, y: *mut f32, ldy: usize) {
        let (w0, w1, w2, w3) = (w, w.add(k), w.add(2 * k), w.add(3 * k));
        let x0 = x;
        let x1 = if M > 1 { x.add(k) } else { x };
        let z = _mm256_setzero_ps();
        let (mut a00, mut a01, mut a02, mut a03) = (z, z, z, z);
        let (mut a10, mut a11, mut a12, mut a13) = (z, z, z, z);
        let body = k / 8 * 8;
        let mut p = 0;
        while p < body {
            let v0 = _mm256_loadu_ps(x0.add(p));
            let v1 = if M > 1 { _mm256_loadu_ps(x1.add(p)) } else { z };
            let b = W::load8(w0.add(p));
            a00 = _mm256_fmadd_ps(v0, b, a00);
            if M > 1 { a10 = _mm256_fmadd_ps(v1, b, a10) }
            let b = W::load8(w1.add(p));
            a01 = _mm256_fmadd_ps(v0, b, a01);
            if M > 1 { a11 = _mm256_fmadd_ps(v1, b, a11) }
            let b = W::load8(w2.add(p));
            a02 = _mm256_fmadd_ps(v0, b, a02);
            if M > 1 { a12 = _mm256_fmadd_ps(v1, b, a12) }
            let b = W::load8(w3.add(p));
            a03 = _mm256_fmadd_ps(v0, b, a03);
            if M > 1 { a13 = _mm256_fmadd_ps(v1, b, a13) }
            p += 8;
        }
        let rows = [(x0, [a00, a01, a02, a03]), (x1, [a10, a11, a12, a13])];
        for (i, (xr, acc)) in rows.iter().take(M).enumerate() {
            for (j, wr) in [w0, w1, w2, w3].iter().enumerate() {
                *y.add(i * ldy + j) = finish(acc[j], *xr, *wr, body, k);
            }
        }
    }

    /// x rearranged for [`tile_bf16`]: in each block of 16, the 8 even then the 8 odd elements.
    pub fn even_odd(x: &[f32], m: usize, k: usize, out: &mut [f32]) {
        out.copy_from_slice(&x[..m * k]);
        for row in out.chunks_exact_mut(k) {
            for block in row.chunks_exact_mut(16) {
                let src: [f32; 16] = block.try_into().unwrap();
                for l in 0..8 {
                    block[l] = src[2 * l];
                    block[8 + l] = src[2 * l + 1];
                }
            }
        }
    }

    /// bf16 weights, MR (1..=2) x NR (1..=4) tile. One 256-bit load brings 16 weights: shifting
    /// left by 16 gives the even ones as f32, masking the low half gives the odd ones, matched by
    /// the even/odd halves of `xp`. No widening shuffles, one load per 16 weights.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn tile_bf16(x: *const f32, xp: *const f32, w: *const u16, k: usize, y: *mut f32, ldy: usize, mr: usize, nr: usize) {
        match (mr, nr) {
            (2, 4) => bf16_tile::<2, 4>(x, xp, w, k, y, ldy),
            (1, 4) => bf16_tile::<1, 4>(x, xp, w, k, y, ldy),
            _ => {
                for i in 0..mr {
                    for j in 0..nr {
                        bf16_tile::<1, 1>(x.add(i * k), xp.add(i * k), w.add(j * k), k, y.add(i * ldy + j), ldy);
                    }
                }
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn bf16_tile<const M: usize, const N: usize>(x: *const f32, xp: *const f32, w: *const u16, k: usize, y: *mut f32, ldy: usize) {
        let mask = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
        let z = _mm256_setzero_ps();
        let mut acc = [[z; N]; M];
        let body = k / 16 * 16;
        let mut p = 0;
        while p < body {
            for j in 0..N {
                let wv = _mm256_loadu_si256(w.add(j * k + p) as *const __m256i);
                let even = _mm256_castsi256_ps(_mm256_slli_epi32(wv, 16));
                let odd = _mm256_castsi256_ps(_mm256_and_si256(wv, mask));
                for i in 0..M {
                    let xe = _mm256_loadu_ps(xp.add(i * k + p));
                    let xo = _mm256_loadu_ps(xp.add(i * k + p + 8));
                    acc[i][j] = _mm256_fmadd_ps(xo, odd, _mm256_fmadd_ps(xe, even, acc[i][j]));
                }
            }
            p += 16;
        }
        for i in 0..M {
            for j in 0..N {
                let mut s = hsum(acc[i][j]);
                for q in body..k {
                    s += *x.add(i * k + q) * bf16::from_bits(*w.add(j * k + q)).to_f32();
                }
                *y.add(i * ldy + j) = s;
            }
        }
    }

    /// General MR x NR tile, used for the few leftover columns.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile<W: WeightElem + Load8, const M: usize, const N: usize>(
        x: *const f32,
        w: *const W,
        k: usize,
        y: *mut f32,
        ldy: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); N]; M];
        let body = k / 8 * 8;
        let mut p = 0;
        while p < body {
            let mut xv = [_mm256_setzero_ps(); M];
            for (i, v) in xv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(x.add(i * k + p));
            }
            for j in 0..N {
                let wv = W::load8(w.add(j * k + p));
                for i in 0..M {
                    acc[i][j] = _mm256_fmadd_ps(xv[i], wv, acc[i][j]);
                }
            }
            p += 8;
        }
        for i in 0..M {
            for j in 0..N {
                *y.add(i * ldy + j) = finish(acc[i][j], x.add(i * k), w.add(j * k), body, k);
            }
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
