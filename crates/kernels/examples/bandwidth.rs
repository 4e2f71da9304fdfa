//! Memory read bandwidth with the current rayon pool: the ceiling for decode (weights streamed once per token).
use rayon::prelude::*;
use std::time::Instant;

fn main() {
    let v = vec![1u64; 1200_000_000 / 8];
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let s: u64 = v.par_chunks(1 << 16).map(|c| c.iter().fold(0u64, |a, &b| a ^ b)).sum();
        best = best.min(t.elapsed().as_secs_f64());
        std::hint::black_box(s);
    }
    println!("read bandwidth: {:.1} GB/s ({} threads)", 1.2 / best, rayon::current_num_threads());
}
