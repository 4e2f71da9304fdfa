//! Both matmul kernels for every weight format against an f64 loop over the decoded weights:
//! row counts on and off the tiles, outputs written into a column range of a wider tensor.
mod common;
use common::{assert_close, ctx, matmul_ref, rand, seed, weights};
use nano_qwen3_gpu::*;

fn check(ctx: &GpuContext, dtype: DType, kind: MatmulKind, m: usize, n: usize, k: usize, salt: u64) {
    let s = seed() ^ salt;
    let (bytes, w) = weights(dtype, n, k, s);
    let x = rand(m * k, s + 1);
    let wt = ctx.upload(dtype, n, k, &bytes).unwrap();
    // x read from column 2 of rows of k + 3 (an activation inside a wider row).
    let mut wide = vec![f32::NAN; m * (k + 3)];
    for i in 0..m {
        wide[i * (k + 3) + 2..][..k].copy_from_slice(&x[i * k..(i + 1) * k]);
    }
    let xt = ctx.upload_f32(m, k + 3, &wide).unwrap();
    // y is written at column 3 of rows of n + 5 (the q/k/v columns of a fused row).
    let yt = ctx.zeros(DType::F32, m, n + 5).unwrap();
    let mut step = ctx.step();
    step.matmul_with(kind, xt.cols_from(2), &wt, yt.cols_from(3), m).unwrap();
    let h = step.read_f32(&yt, 0, m * (n + 5)).unwrap();
    let out = ctx.run(step).unwrap().f32(h);
    let want = matmul_ref(&x, &w, m, n, k);
    let got: Vec<f32> = (0..m).flat_map(|i| out[i * (n + 5) + 3..i * (n + 5) + 3 + n].to_vec()).collect();
    assert_close(&format!("{dtype:?} {kind:?} m={m} n={n} k={k}"), &got, &want, 2e-5 * k as f32);
    // Columns outside the range stay untouched.
    assert!((0..m).all(|i| out[i * (n + 5)..i * (n + 5) + 3].iter().all(|&v| v == 0.0)), "{dtype:?} {kind:?}: wrote outside its columns");
}

#[test]
fn matvec_every_format() {
    let Some(ctx) = ctx() else { return };
    for (i, d) in WEIGHT_FORMATS.into_iter().enumerate() {
        for (m, n, k) in [(1, 37, 64), (3, 8, 96), (6, 70, 128)] {
            check(ctx, d, MatmulKind::MatVec, m, n, k, i as u64 * 100 + m as u64);
        }
    }
}

#[test]
fn tiled_every_format() {
    let Some(ctx) = ctx() else { return };
    for (i, d) in WEIGHT_FORMATS.into_iter().enumerate() {
        for (m, n, k) in [(33, 45, 64), (9, 32, 160), (40, 70, 32)] {
            check(ctx, d, MatmulKind::Tiled, m, n, k, i as u64 * 100 + 50 + m as u64);
        }
    }
}

/// The matvec without subgroups (the stand-in reduction) gives the same results.
#[test]
fn matvec_without_subgroups() {
    if ctx().is_none() {
        return;
    }
    let c = GpuContext::with_options(DeviceRequest::Any(None), ContextOptions { disable_subgroups: true, ..Default::default() }).unwrap();
    assert!(!c.report().uses("subgroups"));
    check(&c, DType::F16, MatmulKind::MatVec, 5, 33, 128, 7);
    check(&c, DType::Q4_0, MatmulKind::MatVec, 2, 9, 64, 8);
    check_swiglu(&c, DType::Bf16, 3, 21, 64, 11);
}

/// The lm_head's shape (many rows per matvec workgroup), and more workgroups than one grid
/// dimension holds (65,535 x 16 rows).
#[test]
fn matvec_past_one_grid_dimension() {
    let Some(ctx) = ctx() else { return };
    check(ctx, DType::F16, MatmulKind::MatVec, 2, 70_001, 4 * 8, 9);
    check(ctx, DType::F32, MatmulKind::MatVec, 1, 65_535 * 16 + 17, 4, 10);
}

/// `silu(x · gate) * (x · up)` from gate rows stacked over up rows, as a loop.
pub fn swiglu_ref(x: &[f32], w: &[f32], m: usize, inter: usize, k: usize) -> Vec<f32> {
    let gu = matmul_ref(x, w, m, 2 * inter, k);
    (0..m)
        .flat_map(|i| {
            let row = &gu[i * 2 * inter..(i + 1) * 2 * inter];
            (0..inter).map(|j| row[j] / (1.0 + (-row[j]).exp()) * row[inter + j]).collect::<Vec<_>>()
        })
        .collect()
}

fn check_swiglu(ctx: &GpuContext, dtype: DType, m: usize, inter: usize, k: usize, salt: u64) {
    let s = seed() ^ salt;
    let (bytes, w) = weights(dtype, 2 * inter, k, s);
    let x = rand(m * k, s + 1);
    let wt = ctx.upload(dtype, 2 * inter, k, &bytes).unwrap();
    let xt = ctx.upload_f32(m, k, &x).unwrap();
    let out = ctx.zeros(DType::F32, m, inter + 1).unwrap();
    let mut step = ctx.step();
    step.matmul_swiglu(xt.view(), &wt, out.cols_from(1), m).unwrap();
    let h = step.read_f32(&out, 0, m * (inter + 1)).unwrap();
    let got = ctx.run(step).unwrap().f32(h);
    let got: Vec<f32> = (0..m).flat_map(|i| got[i * (inter + 1) + 1..(i + 1) * (inter + 1)].to_vec()).collect();
    assert_close(&format!("matmul_swiglu {dtype:?} m={m} inter={inter} k={k} parts={}", wt.parts.len()), &got, &swiglu_ref(&x, &w, m, inter, k), 2e-5 * k as f32);
}

/// Fused for decode rows, through the scratch for prefill rows, every format.
#[test]
fn gate_up_with_swiglu_epilogue() {
    let Some(ctx) = ctx() else { return };
    for (i, d) in WEIGHT_FORMATS.into_iter().enumerate() {
        for m in [1, 5, 11] {
            check_swiglu(ctx, d, m, 37, 64, 300 + i as u64 * 10 + m as u64);
        }
    }
    // Split gate/up weights (gate and up rows in different parts) take the unfused path.
    let small = GpuContext::with_options(DeviceRequest::Any(None), ContextOptions { max_storage_binding: Some(2048), ..Default::default() }).unwrap();
    check_swiglu(&small, DType::F32, 2, 9, 32, 400);
}
