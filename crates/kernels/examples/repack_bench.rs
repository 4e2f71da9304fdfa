//! Row-major Q8_0 / Q4_0 kernels against the 8-row interleaved ones (`repack`), on Qwen3-0.6B's
//! shapes inside a 2-thread pool:
//!
//! `cargo run --example repack_bench -p nano-qwen3-kernels [rounds] [decode|prefill]`
//!
//! Decode: every layer has its own matrices (28 x 4 + lm_head, ~0.6 GB for int8), so weights come
//! from memory as in a real step. Prefill: m = 512 rows per shape. Old and new alternate within
//! each round (the machine is noisy); min / median / max over the rounds are printed.
use half::f16;
use nano_qwen3_kernels::repack::{Q4x8Matrix, Q8x8Matrix};
use nano_qwen3_kernels::{active_isa, BlockQ4, BlockQ8, Isa, Q4Matrix, Q8Matrix, QuantMatrix};
use std::time::Instant;

const LAYERS: usize = 28;
/// (name, n, k): fused qkv, o_proj, fused gate/up, down; lm_head separately.
const SHAPES: [(&str, usize, usize); 4] = [("qkv", 4096, 1024), ("o_proj", 1024, 2048), ("gate_up", 6144, 1024), ("down", 1024, 3072)];
const LM_HEAD: (&str, usize, usize) = ("lm_head", 151936, 1024);
const PREFILL_M: usize = 512;

#[path = "shared/rng.rs"]
mod rng;
use rng::Rng;

/// Random blocks straight away (quantizing 0.6 G weights would take minutes on 2 cores).
fn q8(n: usize, k: usize, rng: &mut Rng) -> Q8Matrix {
    let blocks = (0..n * k / 32)
        .map(|_| {
            let mut qs = [0i8; 32];
            for c in qs.chunks_exact_mut(8) {
                for (q, b) in c.iter_mut().zip(rng.next().to_le_bytes()) {
                    *q = (b as i8).max(-127);
                }
            }
            BlockQ8 { d: f16::from_f32(0.001 + 0.01 * rng.f32()), qs }
        })
        .collect();
    Q8Matrix::from_blocks(n, k, blocks)
}

fn q4(n: usize, k: usize, rng: &mut Rng) -> Q4Matrix {
    let blocks = (0..n * k / 32)
        .map(|_| {
            let mut qs = [0u8; 16];
            qs[..8].copy_from_slice(&rng.next().to_le_bytes());
            qs[8..].copy_from_slice(&rng.next().to_le_bytes());
            BlockQ4 { d: f16::from_f32(0.001 + 0.01 * rng.f32()), qs }
        })
        .collect();
    Q4Matrix { n, k, blocks }
}

fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

/// Largest |a - b| relative to the largest |b|: old and new must compute the same products.
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs())) / scale
}

/// One format: `old` and `new` built per shape class and layer.
fn bench<O: QuantMatrix, N: QuantMatrix>(
    label: &str,
    rounds: usize,
    what: &str,
    make: &dyn Fn(usize, usize, &mut Rng) -> O,
    repack: &dyn Fn(&O) -> N,
    isa: Isa,
) {
    let mut rng = Rng(0x9E3779B97F4A7C15);
    let classes: Vec<(&str, usize, usize, usize)> =
        SHAPES.iter().map(|&(s, n, k)| (s, n, k, LAYERS)).chain([(LM_HEAD.0, LM_HEAD.1, LM_HEAD.2, 1)]).collect();
    let t = Instant::now();
    let old: Vec<Vec<O>> = classes.iter().map(|&(_, n, k, l)| (0..l).map(|_| make(n, k, &mut rng)).collect()).collect();
    let new: Vec<Vec<N>> = old.iter().map(|ms| ms.iter().map(repack).collect()).collect();
    let (ob, nb): (usize, usize) = (old.iter().flatten().map(|m| m.bytes()).sum(), new.iter().flatten().map(|m| m.bytes()).sum());
    println!(
        "\n== {label}: {:.0} MB row-major, {:.0} MB interleaved (built and repacked in {:.1} s)",
        ob as f64 / 1e6,
        nb as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let x: Vec<f32> = (0..PREFILL_M * 3072).map(|_| rng.f32() * 2.0 - 1.0).collect();

    // Same results (sanity): the first matrix of every class, m = 3.
    for (c, &(name, n, k, _)) in classes.iter().enumerate() {
        let (mut a, mut b) = (vec![0f32; 3 * n], vec![0f32; 3 * n]);
        old[c][0].linear(&x[..3 * k], 3, &mut a, isa);
        new[c][0].linear(&x[..3 * k], 3, &mut b, isa);
        let d = rel_diff(&b, &a);
        assert!(d < 1e-5, "{name}: interleaved differs from row-major by {d}");
    }

    if what != "prefill" {
        // Decode: per class, all its layers once (m = 1); a step is the sum over classes.
        let mut y = vec![0f32; LM_HEAD.1];
        let steps = 3;
        let mut times = vec![[vec![], vec![]]; classes.len()];
        let mut totals = [vec![], vec![]];
        for _ in 0..rounds {
            let mut sum = [0f64; 2];
            for (c, &(_, n, k, _)) in classes.iter().enumerate() {
                for v in 0..2 {
                    let t = Instant::now();
                    for _ in 0..steps {
                        for l in 0..old[c].len() {
                            if v == 0 {
                                old[c][l].linear(&x[..k], 1, &mut y[..n], isa);
                            } else {
                                new[c][l].linear(&x[..k], 1, &mut y[..n], isa);
                            }
                        }
                    }
                    let ms = t.elapsed().as_secs_f64() * 1e3 / steps as f64;
                    times[c][v].push(ms);
                    sum[v] += ms;
                }
            }
            totals[0].push(sum[0]);
            totals[1].push(sum[1]);
        }
        println!("decode (m = 1), ms per step, min / median / max over {rounds} rounds:");
        for (c, &(name, n, k, l)) in classes.iter().enumerate() {
            let (o, w) = (stats(&mut times[c][0]), stats(&mut times[c][1]));
            println!(
                "  {name:8} {n:6}x{k:<5} x{l:2}: row-major {:7.2} / {:7.2} / {:7.2}   interleaved {:7.2} / {:7.2} / {:7.2}   ({:.2}x)",
                o.0, o.1, o.2, w.0, w.1, w.2, o.1 / w.1
            );
        }
        let (o, w) = (stats(&mut totals[0]), stats(&mut totals[1]));
        println!(
            "  STEP total          : row-major {:7.2} / {:7.2} / {:7.2}   interleaved {:7.2} / {:7.2} / {:7.2}   ({:.2}x; {:.1} vs {:.1} GB/s weights)",
            o.0, o.1, o.2, w.0, w.1, w.2, o.1 / w.1, ob as f64 / o.1 / 1e6, nb as f64 / w.1 / 1e6
        );
    }

    if what != "decode" {
        // Prefill: m = 512 against the first matrix of each class.
        println!("prefill (m = {PREFILL_M}), GFLOP/s, min / median / max over {rounds} rounds:");
        for (c, &(name, n, k, _)) in classes.iter().enumerate() {
            let mut y = vec![0f32; PREFILL_M * n];
            let flop = 2.0 * (PREFILL_M * n * k) as f64;
            let iters = ((20e9 / flop) as usize).max(1);
            let mut g = [vec![], vec![]];
            for _ in 0..rounds {
                for (v, gv) in g.iter_mut().enumerate() {
                    let t = Instant::now();
                    for _ in 0..iters {
                        if v == 0 {
                            old[c][0].linear(&x[..PREFILL_M * k], PREFILL_M, &mut y, isa);
                        } else {
                            new[c][0].linear(&x[..PREFILL_M * k], PREFILL_M, &mut y, isa);
                        }
                    }
                    gv.push(flop * iters as f64 / t.elapsed().as_secs_f64() / 1e9);
                }
            }
            let (o, w) = (stats(&mut g[0]), stats(&mut g[1]));
            println!(
                "  {name:8} {n:6}x{k:<5}: row-major {:6.1} / {:6.1} / {:6.1}   interleaved {:6.1} / {:6.1} / {:6.1}   ({:.2}x)",
                o.0, o.1, o.2, w.0, w.1, w.2, w.1 / o.1
            );
        }
    }
}

/// Streaming read bandwidth of the same pool (a 512 MB buffer, summed), the decode roofline.
fn read_bandwidth(rounds: usize) {
    use rayon::prelude::*;
    let buf: Vec<u64> = (0..64u64 << 20).collect();
    let mut gbs: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            let s = buf.par_chunks(1 << 16).map(|c| c.iter().fold(0u64, |a, &v| a.wrapping_add(v))).reduce(|| 0, u64::wrapping_add);
            std::hint::black_box(s);
            (buf.len() * 8) as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .collect();
    let (lo, med, hi) = stats(&mut gbs);
    println!("streaming read bandwidth: {lo:.1} / {med:.1} / {hi:.1} GB/s (min / median / max)");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let what = args.get(2).cloned().unwrap_or_default();
    let isa = active_isa();
    let kernels = nano_qwen3_kernels::pool::ThreadPool::new(2).unwrap();
    // The bandwidth probe reads with 2 rayon threads, the kernels run on their own pool of 2.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    println!("isa {}, 2 threads, {rounds} rounds", isa.name());
    pool.install(|| read_bandwidth(rounds));
    kernels.install(|| {
        bench("Q8_0 vs Q8x8", rounds, &what, &q8, &Q8x8Matrix::from_q8, isa);
        bench("Q4_0 vs Q4x8", rounds, &what, &q4, &Q4x8Matrix::from_q4, isa);
    });
}
