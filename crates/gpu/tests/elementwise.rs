//! Row ops against plain loops: RMSNorm (all rows, selected rows, fused with the residual add),
//! residual and bias adds, SwiGLU, argmax, embedding gather for every format.
mod common;
use common::{assert_close, ctx, rand, seed, weights};
use nano_qwen3_gpu::*;

fn rms_ref(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let ss: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
    let s = 1.0 / (ss / x.len() as f64 + eps as f64).sqrt();
    x.iter().zip(w).map(|(&v, &w)| (v as f64 * s * w as f64) as f32).collect()
}

fn run_read(ctx: &GpuContext, step: Step, t: &GpuTensor) -> Vec<f32> {
    let mut step = step;
    let h = step.read_f32(t, 0, t.len()).unwrap();
    ctx.run(step).unwrap().f32(h)
}

#[test]
fn rms_norm_rows_and_selected_rows() {
    let Some(ctx) = ctx() else { return };
    for (rows, h) in [(3, 64), (5, 100), (2, 1024)] {
        let s = seed() ^ (rows * h) as u64;
        let (x, w) = (rand(rows * h, s), rand(h, s + 1));
        let (xt, wt) = (ctx.upload_f32(rows, h, &x).unwrap(), ctx.upload_f32(1, h, &w).unwrap());
        let out = ctx.zeros(DType::F32, rows, h).unwrap();
        let mut step = ctx.step();
        step.rms_norm(xt.view(), &wt, 1e-6, out.view(), rows).unwrap();
        let got = run_read(ctx, step, &out);
        let want: Vec<f32> = x.chunks(h).flat_map(|r| rms_ref(r, &w, 1e-6)).collect();
        assert_close(&format!("rms_norm {rows}x{h}"), &got, &want, 1e-5);
        // The last row, then the first: packed into rows 0 and 1.
        let sel = ctx.zeros(DType::F32, 2, h).unwrap();
        let mut step = ctx.step();
        step.rms_norm_rows(xt.view(), &[rows as u32 - 1, 0], &wt, 1e-6, sel.view()).unwrap();
        let got = run_read(ctx, step, &sel);
        let want: Vec<f32> = [rows - 1, 0].iter().flat_map(|&r| rms_ref(&x[r * h..(r + 1) * h], &w, 1e-6)).collect();
        assert_close("rms_norm_rows", &got, &want, 1e-5);
    }
}

#[test]
fn add_rms_norm_updates_the_residual() {
    let Some(ctx) = ctx() else { return };
    let (rows, h, eps) = (4, 96, 1e-5);
    let s = seed() ^ 11;
    let (x, r, w) = (rand(rows * h, s), rand(rows * h, s + 1), rand(h, s + 2));
    let (xt, rt, wt) = (ctx.upload_f32(rows, h, &x).unwrap(), ctx.upload_f32(rows, h, &r).unwrap(), ctx.upload_f32(1, h, &w).unwrap());
    let out = ctx.zeros(DType::F32, rows, h).unwrap();
    let mut step = ctx.step();
    step.add_rms_norm(xt.view(), rt.view(), &wt, eps, out.view(), rows).unwrap();
    let hx = step.read_f32(&xt, 0, rows * h).unwrap();
    let ho = step.read_f32(&out, 0, rows * h).unwrap();
    let res = ctx.run(step).unwrap();
    let sum: Vec<f32> = x.iter().zip(&r).map(|(a, b)| a + b).collect();
    assert_eq!(res.f32(hx), sum, "x += r exactly");
    let want: Vec<f32> = sum.chunks(h).flat_map(|row| rms_ref(row, &w, eps)).collect();
    assert_close("add_rms_norm", &res.f32(ho), &want, 1e-5);
    // Its output may not be its input.
    assert!(matches!(ctx.step().add_rms_norm(xt.view(), rt.view(), &wt, eps, xt.view(), rows), Err(GpuError::Shape(_))));
}

#[test]
fn add_bias_and_swiglu_on_column_ranges() {
    let Some(ctx) = ctx() else { return };
    let (rows, inter) = (3, 40);
    let s = seed() ^ 12;
    let gu = rand(rows * 2 * inter, s);
    let bias = rand(inter, s + 1);
    let gut = ctx.upload_f32(rows, 2 * inter, &gu).unwrap();
    let bt = ctx.upload_f32(1, inter, &bias).unwrap();
    let out = ctx.zeros(DType::F32, rows, inter).unwrap();
    let mut step = ctx.step();
    step.add_bias(gut.cols_from(inter), &bt, rows).unwrap(); // the "up" half gets the bias
    step.swiglu(gut.view(), gut.cols_from(inter), out.view(), rows, inter).unwrap();
    let got = run_read(ctx, step, &out);
    let want: Vec<f32> = (0..rows)
        .flat_map(|i| {
            let (g, u) = (&gu[i * 2 * inter..], &gu[i * 2 * inter + inter..]);
            (0..inter).map(|j| g[j] / (1.0 + (-g[j]).exp()) * (u[j] + bias[j])).collect::<Vec<_>>()
        })
        .collect();
    assert_close("bias + swiglu", &got, &want, 1e-6);
    // The plain residual add.
    let (a, b) = (rand(rows * inter, s + 2), rand(rows * inter, s + 3));
    let (at, bt) = (ctx.upload_f32(rows, inter, &a).unwrap(), ctx.upload_f32(rows, inter, &b).unwrap());
    let mut step = ctx.step();
    step.add(at.view(), bt.view(), rows, inter).unwrap();
    assert_eq!(run_read(ctx, step, &at), a.iter().zip(&b).map(|(x, y)| x + y).collect::<Vec<_>>());
}

#[test]
fn argmax_first_of_equals() {
    let Some(ctx) = ctx() else { return };
    let (rows, n) = (4, 1000);
    let mut x = rand(rows * n, seed() ^ 13);
    x[n + 700] = 5.0; // row 1: a tie, the lower index wins
    x[n + 300] = 5.0;
    x[2 * n + 999] = 9.0; // row 2: the last element
    x[3 * n] = f32::NAN; // row 3: NaN never wins
    let xt = ctx.upload_f32(rows, n, &x).unwrap();
    let out = ctx.zeros(DType::U32, rows + 1, 1).unwrap();
    let mut step = ctx.step();
    step.argmax(xt.view(), rows, n, &out, 1).unwrap();
    let h = step.read_u32(&out, 0, rows + 1).unwrap();
    let got = ctx.run(step).unwrap().u32(h).to_vec();
    let want: Vec<u32> = x
        .chunks(n)
        .map(|r| r.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0 as u32)
        .collect();
    assert_eq!(got[0], 0, "element before out_first untouched");
    assert_eq!(&got[1..], &want[..]);
    assert_eq!((got[2], got[3]), (300, 999));
}

#[test]
fn embedding_every_format() {
    let Some(ctx) = ctx() else { return };
    let (vocab, h) = (50, 64);
    let ids = [7u32, 0, 49, 7, 23];
    for (i, d) in WEIGHT_FORMATS.into_iter().enumerate() {
        let (bytes, table) = weights(d, vocab, h, seed() ^ (20 + i as u64));
        let tt = ctx.upload(d, vocab, h, &bytes).unwrap();
        let out = ctx.zeros(DType::F32, ids.len(), h).unwrap();
        let mut step = ctx.step();
        step.embedding(&tt, &ids, out.view()).unwrap();
        let want: Vec<f32> = ids.iter().flat_map(|&t| table[t as usize * h..(t as usize + 1) * h].to_vec()).collect();
        assert_eq!(run_read(ctx, step, &out), want, "{d:?}");
    }
    let tt = ctx.upload_f32(vocab, h, &rand(vocab * h, 1)).unwrap();
    let out = ctx.zeros(DType::F32, 1, h).unwrap();
    assert!(matches!(ctx.step().embedding(&tt, &[50], out.view()), Err(GpuError::Shape(_))));
}
