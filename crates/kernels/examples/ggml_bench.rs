//! The GGUF-block kernels (`ggml`) against the repacked Q4_0 / Q8_0 ones on Qwen2.5-1.5B's shapes
//! (hidden 1536, ffn 8960, 28 layers, vocab 151936) inside a 2-thread pool (or `threads`):
//!
//! `cargo run --release --example ggml_bench -p nano-qwen3-kernels [rounds] [decode|prefill] [formats] [threads]`
//!
//! formats: comma-separated from q4_k, q5_k, q6_k, q5_0, q4_0, q8_0 (default q4_k,q6_k,q4_0).
//! Decode: every layer has its own matrices, so weights come from memory as in a real step;
//! lm_head too. Prefill: m = 256 rows (the default batch budget) per shape class, one layer.
//! Formats alternate within each round (the machine is noisy); min / median per format.
use half::f16;
use nano_qwen3_kernels::ggml::{Format, GgmlMatrix};
use nano_qwen3_kernels::repack::{Q4x8Matrix, Q8x8Matrix};
use nano_qwen3_kernels::{active_isa, BlockQ4, BlockQ8, Q4Matrix, Q8Matrix, QuantMatrix};
use std::time::Instant;

const LAYERS: usize = 28;
const SHAPES: [(&str, usize, usize); 4] = [("qkv", 2048, 1536), ("o_proj", 1536, 1536), ("gate_up", 17920, 1536), ("down", 1536, 8960)];
const LM_HEAD: (usize, usize) = (151936, 1536);
const PREFILL_M: usize = 256;

#[path = "shared/rng.rs"]
mod rng;
use rng::Rng;

fn bytes(len: usize, rng: &mut Rng) -> Vec<u8> {
    (0..len.div_ceil(8)).flat_map(|_| rng.next().to_le_bytes()).take(len).collect()
}

/// A matrix of random valid blocks in `format`.
fn matrix(format: &str, n: usize, k: usize, rng: &mut Rng) -> Box<dyn QuantMatrix> {
    let half = |v: f32| f16::from_f32(v).to_bits().to_le_bytes();
    match format {
        "q4_0" => {
            let blocks = (0..n * k / 32)
                .map(|_| BlockQ4 { d: f16::from_f32(0.001 + 0.01 * rng.f32()), qs: bytes(16, rng).try_into().unwrap() })
                .collect();
            Box::new(Q4x8Matrix::from_q4(&Q4Matrix { n, k, blocks }))
        }
        "q8_0" => {
            let blocks = (0..n * k / 32)
                .map(|_| BlockQ8 { d: f16::from_f32(0.001 + 0.01 * rng.f32()), qs: bytes(32, rng).iter().map(|&b| (b as i8).max(-127)).collect::<Vec<_>>().try_into().unwrap() })
                .collect();
            Box::new(Q8x8Matrix::from_q8(&Q8Matrix::from_blocks(n, k, blocks)))
        }
        name => {
            let f = Format::ALL.into_iter().find(|f| f.name() == name).unwrap_or_else(|| panic!("unknown format {name}"));
            let bb = f.gguf_bytes();
            let mut raw = bytes(n * k / f.block_values() * bb, rng);
            for b in raw.chunks_exact_mut(bb) {
                let at = if f == Format::Q6K { 208 } else { 0 };
                b[at..at + 2].copy_from_slice(&half(0.001 + 0.01 * rng.f32()));
                if matches!(f, Format::Q4K | Format::Q5K | Format::Q4_1 | Format::Q5_1) {
                    b[2..4].copy_from_slice(&half(0.001 + 0.01 * rng.f32()));
                }
            }
            Box::new(GgmlMatrix::from_gguf(f, n, k, &raw).unwrap())
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let prefill = args.get(2).is_some_and(|a| a == "prefill");
    let formats: Vec<String> = args.get(3).map_or("q4_k,q6_k,q4_0".into(), |s| s.clone()).split(',').map(String::from).collect();
    let isa = active_isa();
    let threads: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(2);
    let pool = nano_qwen3_kernels::pool::ThreadPool::new(threads).unwrap();
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let layers = if prefill { 1 } else { LAYERS };
    // Per format: [layer][shape] matrices, then lm_head.
    let mats: Vec<Vec<Box<dyn QuantMatrix>>> = formats
        .iter()
        .map(|f| {
            let mut v: Vec<Box<dyn QuantMatrix>> = (0..layers).flat_map(|_| SHAPES.iter().map(|&(_, n, k)| (n, k)).collect::<Vec<_>>()).map(|(n, k)| matrix(f, n, k, &mut rng)).collect();
            if !prefill {
                v.push(matrix(f, LM_HEAD.0, LM_HEAD.1, &mut rng));
            }
            v
        })
        .collect();
    let m = if prefill { PREFILL_M } else { 1 };
    let x: Vec<f32> = (0..m * 8960).map(|_| rng.f32() * 2.0 - 1.0).collect();
    let mut y = vec![0f32; m * LM_HEAD.0];
    println!("{} {}, isa {}, {rounds} rounds, {threads} threads", if prefill { "prefill m=256, one layer's shapes" } else { "decode step (28 layers + lm_head)" }, formats.join(" / "), isa.name());
    let mut times = vec![Vec::new(); formats.len()];
    let mut per_shape = vec![[0f64; 5]; formats.len()];
    pool.install(|| {
        for round in 0..rounds + 1 {
            for (fi, ms) in mats.iter().enumerate() {
                let t0 = Instant::now();
                for (i, q) in ms.iter().enumerate() {
                    let t = Instant::now();
                    q.linear(&x[..m * q.k()], m, &mut y[..m * q.n()], isa);
                    if round > 0 {
                        per_shape[fi][if i == ms.len() - 1 && !prefill { 4 } else { i % 4 }] += t.elapsed().as_secs_f64();
                    }
                }
                if round > 0 {
                    times[fi].push(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
    });
    for (fi, f) in formats.iter().enumerate() {
        let t = &mut times[fi];
        t.sort_by(f64::total_cmp);
        let bytes: usize = mats[fi].iter().map(|q| q.bytes()).sum();
        let shapes: Vec<String> = ["qkv", "o", "gate_up", "down", "lm_head"].iter().zip(per_shape[fi]).map(|(n, s)| format!("{n} {:.1}", s * 1e3 / rounds as f64)).collect();
        println!(
            "{f:6} {:8.1} MB  min {:7.2} ms  median {:7.2} ms  {:5.1} GB/s at min  per class (ms, mean): {}",
            bytes as f64 / 1e6,
            t[0],
            t[t.len() / 2],
            bytes as f64 / t[0] / 1e6,
            shapes.join(", ")
        );
    }
}
