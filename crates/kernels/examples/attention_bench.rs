//! Flash attention timings on Qwen3-0.6B's shape (16 query heads, 8 KV heads, head_dim 128):
//! `cargo run --example attention_bench -p nano-qwen3-kernels`
//! (`NANO_QWEN3_ISA=portable` for the plain path; the kernel pool has one thread per core).
use half::{bf16, f16};
use nano_qwen3_kernels::active_isa;
use nano_qwen3_kernels::attention::{flash_attention, AttentionShape, KvElem, KvPages};
use std::time::Instant;

fn main() {
    println!("isa {}, {} threads", active_isa().name(), nano_qwen3_kernels::pool::current_threads());
    for (q_len, start) in [(1, 99), (1, 511), (1, 4095), (512, 0)] {
        let kind = if q_len == 1 { "decode " } else { "prefill" };
        let f32_us = time::<f32>(q_len, start);
        let f16_us = time::<f16>(q_len, start);
        let bf16_us = time::<bf16>(q_len, start);
        println!("{kind} q_len {q_len:3}, kv {:4}: f32 {f32_us:9.1} us   f16 {f16_us:9.1} us   bf16 {bf16_us:9.1} us", start + q_len);
    }
}

/// Microseconds per call (best of 5 batches), paged cache (blocks of 16 keys) of type `T`, 4096 keys.
fn time<T: KvElem>(q_len: usize, start: usize) -> f64 {
    let (heads, kv_heads, head_dim, capacity) = (16, 8, 128, 4096);
    let shape = AttentionShape { heads, kv_heads, head_dim, q_len, start };
    let table: Vec<u32> = (0..(capacity / 16) as u32).collect();
    let pages = KvPages { table: &table, block_len: 16, block_stride: kv_heads * 16 * head_dim, head_stride: 16 * head_dim };
    let q: Vec<f32> = (0..q_len * heads * head_dim).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3).collect();
    let cache = |seed: usize| -> Vec<T> { (0..kv_heads * capacity * head_dim).map(|i| T::from_f32((((i + seed) * 104729 % 1000) as f32 - 500.0) * 1e-3)).collect() };
    let (k, v) = (cache(1), cache(2));
    let mut out = vec![0f32; q_len * heads * head_dim];
    let isa = active_isa();
    flash_attention(&q, &k, &v, &pages, &mut out, &shape, isa);
    let flops = 4 * heads * head_dim * q_len * (start + q_len / 2);
    let iters = (1_000_000_000 / flops.max(1)).clamp(2, 500);
    // Best of 5 batches: the machine may be shared.
    (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                flash_attention(&q, &k, &v, &pages, &mut out, &shape, isa);
            }
            t.elapsed().as_secs_f64() * 1e6 / iters as f64
        })
        .fold(f64::INFINITY, f64::min)
}
