//! Structural figures of a GPU decode step (any adapter; on lavapipe these are not GPU speed):
//! dispatches and submits per step, bytes read back, GPU buffers and bind groups created by a
//! warm step, CPU time to record a step, and the step's wall time.
//!   cargo run --example gpu_step_profile -p nano-qwen3-engine -- <model dir> [batch] [prompt tokens] [steps]
//! (`WGPU_BACKEND=vulkan` for lavapipe.)
use nano_qwen3_engine::model::backend::gpu::{GpuModel, GpuRunner};
use nano_qwen3_engine::model::{LogitsFor, SeqChunk, BLOCK_TOKENS};
use nano_qwen3_engine::{Engine, LoadOptions};
use nano_qwen3_gpu::{DeviceRequest, GpuContext};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).expect("usage: gpu_step_profile <model dir> [batch] [prompt tokens] [steps]");
    let arg = |i: usize, d: usize| args.get(i).map_or(d, |s| s.parse().unwrap());
    let (batch, prompt, steps) = (arg(2, 1), arg(3, 16), arg(4, 8));
    let e = Engine::load(dir.as_ref(), &LoadOptions { device: "cpu".into(), weight_cache: false, ..Default::default() }).unwrap();
    let ctx = Arc::new(GpuContext::new(DeviceRequest::Any(None)).unwrap());
    println!("adapter: {:?}", ctx.report());
    let t0 = Instant::now();
    let g = Arc::new(GpuModel::upload(ctx.clone(), &e.model, prompt + steps + 1).unwrap());
    println!("weights uploaded: {} bytes in {:.1} s", g.bytes, t0.elapsed().as_secs_f64());
    let per = (prompt + steps + 1).div_ceil(BLOCK_TOKENS);
    let mut r = GpuRunner::new(g, &e.model, e.kv_dtype, per * batch, prompt.max(batch)).unwrap();
    let tables: Vec<Vec<u32>> = (0..batch).map(|s| (0..per).map(|b| (b * batch + s) as u32).collect()).collect();
    let vocab = e.model.config.vocab_size as u32;
    let mut toks: Vec<Vec<u32>> = (0..batch).map(|s| (0..prompt as u32).map(|i| (s as u32 * 7919 + i * 104_729) % vocab).collect()).collect();
    let mut logits = Vec::new();
    for (s, tab) in tables.iter().enumerate() {
        let t = Instant::now();
        r.forward(&e.model, &[SeqChunk { tokens: &toks[s], start: 0, table: tab, logits: LogitsFor::LastToken }], &mut logits).unwrap();
        println!("prefill {prompt} tokens (sequence {s}): {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    }
    let argmax = |v: &[f32]| (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b }) as u32;
    for (s, t) in toks.iter_mut().enumerate() {
        t.push(argmax(&logits[s * vocab as usize..][..vocab as usize]));
    }
    let (mut rec, mut run, mut wall) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut warm = ctx.counters();
    let mut bytes_back = 0;
    for step in 0..steps {
        if step == 1 {
            warm = ctx.counters(); // the first decode step may grow the step arenas
            (rec, run, wall, bytes_back) = (Duration::ZERO, Duration::ZERO, Duration::ZERO, 0);
        }
        let starts: Vec<usize> = toks.iter().map(|t| t.len() - 1).collect();
        let chunks: Vec<SeqChunk> = (0..batch).map(|s| SeqChunk { tokens: &toks[s][starts[s]..], start: starts[s], table: &tables[s], logits: LogitsFor::LastToken }).collect();
        logits.clear();
        let t = Instant::now();
        r.forward(&e.model, &chunks, &mut logits).unwrap();
        wall += t.elapsed();
        rec += r.last_record;
        run += r.last_run;
        bytes_back += logits.len() * 4;
        for (s, t) in toks.iter_mut().enumerate() {
            t.push(argmax(&logits[s * vocab as usize..][..vocab as usize]));
        }
    }
    let n = (steps - 1).max(1) as u32;
    let c = ctx.counters();
    println!(
        "decode, batch {batch}, {} warm steps: dispatches/step {}, submits/step {}, bytes read back/step {}, buffers created {}, bind groups created {}",
        n,
        (c.dispatches - warm.dispatches) / n as u64,
        (c.submits - warm.submits) as f64 / n as f64,
        bytes_back / n as usize,
        c.buffers_created - warm.buffers_created,
        c.bind_groups_created - warm.bind_groups_created
    );
    println!(
        "per step: CPU time to record {:.3} ms, run (encode + submit + wait + read back) {:.1} ms, wall {:.1} ms",
        rec.as_secs_f64() * 1e3 / n as f64,
        run.as_secs_f64() * 1e3 / n as f64,
        wall.as_secs_f64() * 1e3 / n as f64
    );
}
