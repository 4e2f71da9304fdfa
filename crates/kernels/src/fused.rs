//! Elementwise kernels of a transformer layer, fused so each activation row is read and written
//! as few times as possible: residual add + RMSNorm, per-head RMSNorm + RoPE in place, SiLU(gate)·up.
//! Each has its unfused reference in the tests. Rows are independent: large batches run in parallel.
use crate::pool::{parallel_chunks_mut, parallel_chunks_mut2};

/// Rows per parallel task: below this the work is too small to be worth a thread hop.
const ROWS_PER_TASK: usize = 16;

fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i] * c[i];
        }
    }
    let sum: f32 = acc.iter().sum::<f32>() + tail.iter().map(|v| v * v).sum::<f32>();
    1.0 / (sum / x.len() as f32 + eps).sqrt()
}

fn scale_into(x: &[f32], w: &[f32], s: f32, out: &mut [f32]) {
    for ((o, x), w) in out.iter_mut().zip(x).zip(w) {
        *o = x * s * w;
    }
}

/// `out = x / rms(x) * w` for each row of `x` (row length `w.len()`).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let h = w.len();
    let run = |(x, out): (&[f32], &mut [f32])| scale_into(x, w, inv_rms(x, eps), out);
    if x.len() / h >= 2 * ROWS_PER_TASK {
        let block = ROWS_PER_TASK * h;
        parallel_chunks_mut(out, block, |i, out| x[i * block..].chunks(h).zip(out.chunks_mut(h)).for_each(run));
    } else {
        x.chunks(h).zip(out.chunks_mut(h)).for_each(run);
    }
}

/// The residual add and the next RMSNorm in one pass per row: `x += delta; out = x / rms(x) * w`.
pub fn add_rms_norm(x: &mut [f32], delta: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let h = w.len();
    let run = |((x, d), out): ((&mut [f32], &[f32]), &mut [f32])| {
        for (x, d) in x.iter_mut().zip(d) {
            *x += d;
        }
        scale_into(x, w, inv_rms(x, eps), out);
    };
    if x.len() / h >= 2 * ROWS_PER_TASK {
        let block = ROWS_PER_TASK * h;
        parallel_chunks_mut2(x, block, out, block, |i, x, out| {
            x.chunks_mut(h).zip(delta[i * block..].chunks(h)).zip(out.chunks_mut(h)).for_each(run)
        });
    } else {
        x.chunks_mut(h).zip(delta.chunks(h)).zip(out.chunks_mut(h)).for_each(run);
    }
}

/// `x += delta` (the last residual of a layer, when no norm follows it in the same pass).
pub fn add_in_place(x: &mut [f32], delta: &[f32]) {
    for (x, d) in x.iter_mut().zip(delta) {
        *x += d;
    }
}

/// Qwen3's q/k path in place: per head, RMSNorm over head_dim with `w`, then rotary embedding
/// (rotate-half layout) with the token's `cos`/`sin` rows. `x`: `[tokens, heads * head_dim]` with
/// row stride `stride` (so q and k can be read straight out of a fused qkv row); `cos`, `sin`:
/// `[tokens, head_dim / 2]`.
pub fn head_norm_rope(x: &mut [f32], stride: usize, heads: usize, w: &[f32], eps: f32, cos: &[f32], sin: &[f32]) {
    let hd = w.len();
    let half = hd / 2;
    let run = |(row, (c, s)): (&mut [f32], (&[f32], &[f32]))| {
        for head in row[..heads * hd].chunks_exact_mut(hd) {
            let r = inv_rms(head, eps);
            let (a, b) = head.split_at_mut(half);
            for i in 0..half {
                let x1 = a[i] * r * w[i];
                let x2 = b[i] * r * w[i + half];
                a[i] = x1 * c[i] - x2 * s[i];
                b[i] = x2 * c[i] + x1 * s[i];
            }
        }
    };
    if x.len() / stride >= 2 * ROWS_PER_TASK {
        let t = ROWS_PER_TASK * half;
        parallel_chunks_mut(x, ROWS_PER_TASK * stride, |i, x| {
            x.chunks_mut(stride).zip(cos[i * t..].chunks(half).zip(sin[i * t..].chunks(half))).for_each(run)
        });
    } else {
        x.chunks_mut(stride).zip(cos.chunks(half).zip(sin.chunks(half))).for_each(run);
    }
}

/// Unfused halves of [`head_norm_rope`] (for measuring the fusion): per-head RMSNorm in place...
pub fn head_rms_norm(x: &mut [f32], stride: usize, heads: usize, w: &[f32], eps: f32) {
    let hd = w.len();
    for row in x.chunks_mut(stride) {
        if row.len() < heads * hd {
            break;
        }
        for head in row[..heads * hd].chunks_exact_mut(hd) {
            let r = inv_rms(head, eps);
            for (v, w) in head.iter_mut().zip(w) {
                *v *= r * w;
            }
        }
    }
}

/// ...and rotary embedding (rotate-half layout) in place, a second pass over the same rows.
pub fn rope(x: &mut [f32], stride: usize, heads: usize, hd: usize, cos: &[f32], sin: &[f32]) {
    let half = hd / 2;
    for (row, (c, s)) in x.chunks_mut(stride).zip(cos.chunks(half).zip(sin.chunks(half))) {
        for head in row[..heads * hd].chunks_exact_mut(hd) {
            let (a, b) = head.split_at_mut(half);
            for i in 0..half {
                let (x1, x2) = (a[i], b[i]);
                a[i] = x1 * c[i] - x2 * s[i];
                b[i] = x2 * c[i] + x1 * s[i];
            }
        }
    }
}

/// SwiGLU with gate and up in separate buffers: one pass when `fused`, else SiLU in place over
/// the gate, then a second pass for the product.
pub fn silu_mul_separate(gate: &mut [f32], up: &[f32], out: &mut [f32], fused: bool) {
    if fused {
        for ((o, g), u) in out.iter_mut().zip(gate.iter()).zip(up) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    } else {
        for g in gate.iter_mut() {
            *g /= 1.0 + (-*g).exp();
        }
        for ((o, g), u) in out.iter_mut().zip(gate.iter()).zip(up) {
            *o = g * u;
        }
    }
}

/// `out[j] = silu(gate[j]) * up[j]`: the arithmetic of every SwiGLU path (matmul epilogues
/// included), so they all give the same bits.
#[inline]
pub fn silu_mul_into(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// SwiGLU: `out[t, j] = silu(gu[t, j]) * gu[t, inter + j]`, where each row of `gu` holds the gate
/// outputs then the up outputs (one matmul with the gate and up weights stacked).
pub fn silu_mul(gu: &[f32], inter: usize, out: &mut [f32]) {
    let run = |(gu, out): (&[f32], &mut [f32])| {
        let (g, u) = gu.split_at(inter);
        silu_mul_into(g, u, out);
    };
    if out.len() / inter >= 2 * ROWS_PER_TASK {
        let block = ROWS_PER_TASK * inter;
        parallel_chunks_mut(out, block, |i, out| gu[2 * i * block..].chunks(2 * inter).zip(out.chunks_mut(inter)).for_each(run));
    } else {
        gu.chunks(2 * inter).zip(out.chunks_mut(inter)).for_each(run);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::test_data;

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "element {i}: {x} vs {y}");
        }
    }

    /// Plain f64 RMSNorm of one row.
    fn norm_ref(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
        let ms = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / x.len() as f64;
        let r = 1.0 / (ms + eps as f64).sqrt();
        x.iter().zip(w).map(|(v, w)| (*v as f64 * r * *w as f64) as f32).collect()
    }

    #[test]
    fn add_rms_norm_is_add_then_norm() {
        // Row counts on both sides of the parallel threshold, a row length that is not a multiple of 8.
        for &(rows, h) in &[(1usize, 36usize), (3, 1024), (40, 100)] {
            let mut x = test_data(rows * h, 1);
            let d = test_data(rows * h, 2);
            let w = test_data(h, 3);
            let want_x: Vec<f32> = x.iter().zip(&d).map(|(a, b)| a + b).collect();
            let want: Vec<f32> = want_x.chunks(h).flat_map(|r| norm_ref(r, &w, 1e-6)).collect();
            let mut out = vec![0f32; rows * h];
            add_rms_norm(&mut x, &d, &w, 1e-6, &mut out);
            close(&x, &want_x, 0.0);
            close(&out, &want, 1e-5);
            let mut plain = vec![0f32; rows * h];
            rms_norm(&want_x, &w, 1e-6, &mut plain);
            close(&plain, &want, 1e-5);
        }
    }

    #[test]
    fn head_norm_rope_is_norm_then_rotate_half() {
        for &(tokens, heads, hd, extra) in &[(1usize, 2usize, 32usize, 0usize), (5, 3, 64, 7), (40, 4, 128, 16)] {
            let stride = heads * hd + extra; // extra columns (k and v of a fused row) stay untouched
            let x0 = test_data(tokens * stride, 4);
            let w = test_data(hd, 5);
            let angles: Vec<f32> = test_data(tokens * hd / 2, 6).iter().map(|a| a * 3.0).collect();
            let (cos, sin): (Vec<f32>, Vec<f32>) = angles.iter().map(|a| (a.cos(), a.sin())).unzip();
            let mut want = x0.clone();
            for t in 0..tokens {
                for h in 0..heads {
                    let at = t * stride + h * hd;
                    let n = norm_ref(&x0[at..at + hd], &w, 1e-6);
                    for i in 0..hd / 2 {
                        let (c, s) = (cos[t * hd / 2 + i], sin[t * hd / 2 + i]);
                        want[at + i] = n[i] * c - n[i + hd / 2] * s;
                        want[at + i + hd / 2] = n[i + hd / 2] * c + n[i] * s;
                    }
                }
            }
            let mut x = x0.clone();
            head_norm_rope(&mut x, stride, heads, &w, 1e-6, &cos, &sin);
            close(&x, &want, 1e-5);
            let mut unfused = x0.clone();
            head_rms_norm(&mut unfused, stride, heads, &w, 1e-6);
            rope(&mut unfused, stride, heads, hd, &cos, &sin);
            close(&unfused, &want, 1e-5);
        }
    }

    #[test]
    fn silu_mul_matches_separate_ops() {
        for &(rows, inter) in &[(1usize, 96usize), (50, 37)] {
            let gu = test_data(rows * 2 * inter, 7);
            let mut out = vec![0f32; rows * inter];
            silu_mul(&gu, inter, &mut out);
            let want: Vec<f32> = gu
                .chunks(2 * inter)
                .flat_map(|r| (0..inter).map(move |j| (r[j] as f64 / (1.0 + (-r[j] as f64).exp()) * r[inter + j] as f64) as f32))
                .collect();
            close(&out, &want, 1e-6);
            for fused in [true, false] {
                let mut g: Vec<f32> = gu.chunks(2 * inter).flat_map(|r| r[..inter].to_vec()).collect();
                let u: Vec<f32> = gu.chunks(2 * inter).flat_map(|r| r[inter..].to_vec()).collect();
                let mut sep = vec![0f32; rows * inter];
                silu_mul_separate(&mut g, &u, &mut sep, fused);
                close(&sep, &want, 1e-6);
            }
        }
    }
}
