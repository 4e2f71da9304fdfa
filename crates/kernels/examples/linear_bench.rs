//! Throughput of `linear` on Qwen3-0.6B's shapes: `cargo run --example linear_bench -p nano-qwen3-kernels`
use half::bf16;
use nano_qwen3_kernels::{active_isa, linear, Weights};
use std::time::Instant;

fn main() {
    quantize_speed();
    q8_bench();
    decode_step_upper_bound();
    let isa = active_isa();
    for &(m, k, n) in &[(1usize, 1024usize, 3072usize), (1, 3072, 1024), (1, 1024, 151936), (128, 1024, 3072), (512, 1024, 3072)] {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let w: Vec<bf16> = (0..n * k).map(|i| bf16::from_f32((i % 5) as f32 * 0.01)).collect();
        let mut y = vec![0f32; m * n];
        linear(&x, Weights::Bf16(&w), m, k, n, &mut y, isa);
        let iters = (2_000_000_000 / (m * n * k).max(1)).clamp(3, 200);
        let t = Instant::now();
        for _ in 0..iters {
            linear(&x, Weights::Bf16(&w), m, k, n, &mut y, isa);
        }
        let s = t.elapsed().as_secs_f64() / iters as f64;
        println!(
            "m={m:4} k={k:5} n={n:6}: {:8.3} ms  {:6.1} GB/s weights  {:6.1} GFLOP/s",
            s * 1e3,
            (n * k * 2) as f64 / s / 1e9,
            (2 * m * n * k) as f64 / s / 1e9
        );
    }
}

/// All matmuls of one Qwen3-0.6B decode step (bf16 weights), as the model issues them.
#[allow(dead_code)]
pub fn decode_step_upper_bound() {
    let shapes: Vec<(usize, usize)> = (0..28)
        .flat_map(|_| [(2048, 1024), (1024, 1024), (1024, 1024), (1024, 2048), (3072, 1024), (3072, 1024), (1024, 3072)])
        .chain([(151936, 1024)])
        .collect();
    let ws: Vec<Vec<bf16>> = shapes.iter().map(|&(n, k)| vec![bf16::from_f32(0.01); n * k]).collect();
    let x = vec![0.5f32; 3072];
    let mut y = vec![0f32; 151936];
    let isa = active_isa();
    let t = Instant::now();
    let steps = 10;
    for _ in 0..steps {
        for (w, &(n, k)) in ws.iter().zip(&shapes) {
            linear(&x[..k], Weights::Bf16(w), 1, k, n, &mut y[..n], isa);
        }
    }
    let s = t.elapsed().as_secs_f64() / steps as f64;
    let bytes: usize = shapes.iter().map(|(n, k)| n * k * 2).sum();
    println!("decode step, matmuls only: {:.1} ms = {:.1} tok/s, {:.1} GB/s", s * 1e3, 1.0 / s, bytes as f64 / s / 1e9);
    drop(ws);
    let wf: Vec<Vec<f32>> = shapes.iter().map(|&(n, k)| vec![0.01f32; n * k]).collect();
    let t = Instant::now();
    for _ in 0..steps {
        for (w, &(n, k)) in wf.iter().zip(&shapes) {
            linear(&x[..k], Weights::F32(w), 1, k, n, &mut y[..n], isa);
        }
    }
    let s = t.elapsed().as_secs_f64() / steps as f64;
    println!("decode step, f32 weights: {:.1} ms = {:.1} tok/s, {:.1} GB/s", s * 1e3, 1.0 / s, 2.0 * bytes as f64 / s / 1e9);
    drop(wf);
    let wh: Vec<Vec<half::f16>> = shapes.iter().map(|&(n, k)| vec![half::f16::from_f32(0.01); n * k]).collect();
    let t = Instant::now();
    for _ in 0..steps {
        for (w, &(n, k)) in wh.iter().zip(&shapes) {
            linear(&x[..k], Weights::F16(w), 1, k, n, &mut y[..n], isa);
        }
    }
    let s = t.elapsed().as_secs_f64() / steps as f64;
    println!("decode step, f16 weights: {:.1} ms = {:.1} tok/s, {:.1} GB/s", s * 1e3, 1.0 / s, bytes as f64 / s / 1e9);
}

/// Q8 (dynamic_int8) throughput on decode and prefill shapes.
#[allow(dead_code)]
pub fn q8_bench() {
    use nano_qwen3_kernels::{Q8Matrix, QuantMatrix};
    for &(m, k, n) in &[(1usize, 1024usize, 3072usize), (512, 1024, 3072)] {
        let w: Vec<f32> = (0..n * k).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect();
        let q = Q8Matrix::quantize(&w, n, k);
        let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let mut y = vec![0f32; m * n];
        let iters = (2_000_000_000 / (m * n * k)).clamp(3, 200);
        let t = Instant::now();
        for _ in 0..iters {
            q.linear(&x, m, &mut y, active_isa());
        }
        let s = t.elapsed().as_secs_f64() / iters as f64;
        println!("q8 m={m:4} k={k} n={n}: {:.3} ms, {:.1} GOP/s", s * 1e3, (2 * m * n * k) as f64 / s / 1e9);
    }
}

/// Quantization speed (weights per second) for the load path.
#[allow(dead_code)]
pub fn quantize_speed() {
    use nano_qwen3_kernels::{Q4Matrix, Q8Matrix};
    let (n, k) = (3072, 1024);
    let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-4).collect();
    let t = Instant::now();
    let _ = Q4Matrix::quantize(&w, n, k);
    let q4 = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let _ = Q8Matrix::quantize(&w, n, k);
    let q8 = t.elapsed().as_secs_f64();
    println!("quantize: q4 {:.0} M weights/s, q8 {:.0} M weights/s", (n * k) as f64 / q4 / 1e6, (n * k) as f64 / q8 / 1e6);
}
