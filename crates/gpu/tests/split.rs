//! Tensors over the binding limit are split into parts of whole rows, and the ops that read
//! weights (matmul, embedding) give the same results as unsplit: checked with a deliberately
//! tiny limit so the tensors stay tiny.
mod common;
use common::{assert_close, ctx, matmul_ref, rand, seed, weights};
use nano_qwen3_gpu::*;

#[test]
fn split_weights_match_unsplit() {
    if ctx().is_none() {
        return;
    }
    let ctx = GpuContext::with_options(DeviceRequest::Any(None), ContextOptions { max_storage_binding: Some(1024), ..Default::default() }).unwrap();
    assert_eq!(ctx.report().max_storage_binding, 1024);
    let (n, k, m) = (45, 64, 3);
    for (i, d) in WEIGHT_FORMATS.into_iter().enumerate() {
        let (bytes, w) = weights(d, n, k, seed() ^ (40 + i as u64));
        let wt = ctx.upload(d, n, k, &bytes).unwrap();
        assert_eq!(ctx.parts_needed(d, n, k).unwrap(), wt.parts.len());
        let per = 1024 / d.row_bytes(k);
        assert_eq!(wt.parts.len(), n.div_ceil(per), "{d:?}: parts of {per} rows");
        assert!(wt.parts.iter().all(|p| (p.rows * d.row_bytes(k)) as u64 <= 1024));
        assert_eq!(wt.parts.iter().map(|p| p.rows).sum::<usize>(), n);
        let x = rand(m * k, seed() ^ (50 + i as u64));
        let xt = ctx.upload_f32(m, k, &x).unwrap();
        let want = matmul_ref(&x, &w, m, n, k);
        for kind in [MatmulKind::MatVec, MatmulKind::Tiled] {
            let yt = ctx.zeros(DType::F32, m, n).unwrap();
            let mut step = ctx.step();
            step.matmul_with(kind, xt.view(), &wt, yt.view(), m).unwrap();
            let h = step.read_f32(&yt, 0, m * n).unwrap();
            assert_close(&format!("split {d:?} {kind:?}"), &ctx.run(step).unwrap().f32(h), &want, 2e-5 * k as f32);
        }
        // Rows from the first, a middle and the last part.
        let ids = [0u32, (n / 2) as u32, n as u32 - 1];
        let et = ctx.zeros(DType::F32, 3, k).unwrap();
        let mut step = ctx.step();
        step.embedding(&wt, &ids, et.view()).unwrap();
        let h = step.read_f32(&et, 0, 3 * k).unwrap();
        let want: Vec<f32> = ids.iter().flat_map(|&t| w[t as usize * k..(t as usize + 1) * k].to_vec()).collect();
        assert_eq!(ctx.run(step).unwrap().f32(h), want, "split embedding {d:?}");
    }
    // A single row over the limit cannot be split.
    assert!(matches!(ctx.parts_needed(DType::F32, 1, 300), Err(GpuError::TooLargeForBinding { .. })));
    let r = ctx.upload_f32(1, 300, &rand(300, 1));
    assert!(matches!(r, Err(GpuError::TooLargeForBinding { .. })), "{r:?}");
}
