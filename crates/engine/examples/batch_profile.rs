//! What limits batched decode: the time of one serving step (B sequences, one token each, `context`
//! tokens already cached) against B, with flash attention and with attention's share estimated by a
//! second run at a 16x longer context. `cargo run --example batch_profile -p nano-qwen3-engine -- DIR`
//! Env: QUANTIZATION (default dynamic_int8), KV_CACHE_DTYPE (f32, f16, bf16; default f32), BATCHES (default 1,4,8,16,32), CONTEXT (default 64),
//! REPEAT (timed steps per figure, default 5; more for a profiler), SHORT_ONLY=1 (skip the long run).
use nano_qwen3_engine::model::{KvPool, LogitsFor, SeqChunk, Stepper, BLOCK_TOKENS};
use nano_qwen3_engine::{Engine, LoadOptions, Quantization};
use nano_qwen3_kernels::pool::ThreadPool;
use std::time::Instant;

/// Best-of-5 milliseconds of one decode step of `batch` sequences with `context` cached tokens.
fn step_ms(engine: &Engine, pool: &ThreadPool, batch: usize, context: usize) -> f64 {
    let c = &engine.model.config;
    let per = (context + 1).div_ceil(BLOCK_TOKENS);
    let mut kv = KvPool::new(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, engine.kv_dtype, per * batch);
    let tables: Vec<Vec<u32>> = (0..batch).map(|s| ((s * per) as u32..((s + 1) * per) as u32).collect()).collect();
    let tokens: Vec<Vec<u32>> = (0..batch).map(|s| (0..=context as u32).map(|i| 1000 + (s as u32 * 31 + i * 7) % 5000).collect()).collect();
    let mut stepper = Stepper::default();
    let mut logits = Vec::new();
    // Fill the cache with each sequence's context (one prefill step each).
    for s in 0..batch {
        let chunk = SeqChunk { tokens: &tokens[s][..context], start: 0, table: &tables[s], logits: LogitsFor::Nothing };
        pool.install(|| stepper.step(&engine.model, &mut kv, &[chunk], &engine.exec, &mut logits)).unwrap();
    }
    let step: Vec<SeqChunk> = (0..batch).map(|s| SeqChunk { tokens: &tokens[s][context..], start: context, table: &tables[s], logits: LogitsFor::LastToken }).collect();
    let repeat: usize = std::env::var("REPEAT").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    (0..=repeat)
        .map(|_| {
            logits.clear();
            let t = Instant::now();
            pool.install(|| stepper.step(&engine.model, &mut kv, &step, &engine.exec, &mut logits)).unwrap();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .skip(1)
        .fold(f64::INFINITY, f64::min)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: batch_profile DIR")?;
    let mut load = LoadOptions { threads: Some(2), ..Default::default() };
    load.acceleration.quantization = Quantization::parse(&std::env::var("QUANTIZATION").unwrap_or("dynamic_int8".into()))?;
    if let Ok(kv) = std::env::var("KV_CACHE_DTYPE") {
        load.acceleration.kv_cache_dtype = serde_json::from_value(serde_json::Value::String(kv))?;
    }
    load.acceleration.use_torch_compile = true;
    load.acceleration.compile_mode = nano_qwen3_engine::acceleration::CompileMode::ReduceOverhead;
    load.serving.kv_cache_memory = Some(1 << 24); // the serving pool is not used here
    let engine = Engine::load(dir.as_ref(), &load)?;
    let pool = ThreadPool::new(2)?;
    let batches: Vec<usize> = std::env::var("BATCHES").unwrap_or("1,4,8,16,32".into()).split(',').map(|b| b.parse()).collect::<Result<_, _>>()?;
    let context: usize = std::env::var("CONTEXT").unwrap_or("64".into()).parse()?;
    println!("batch  step ms  tok/s   step ms at {}x context  attention share at {context}", 16);
    for b in batches {
        let short = step_ms(&engine, &pool, b, context);
        if std::env::var("SHORT_ONLY").is_ok_and(|v| v == "1") {
            println!("{b:5}  {short:7.2}  {:6.1}", b as f64 * 1000.0 / short);
            continue;
        }
        let long = step_ms(&engine, &pool, b, 16 * context);
        // Attention grows with the context, the rest does not: extrapolate its share.
        let attention = ((long - short) / 15.0).max(0.0);
        println!("{b:5}  {short:7.2}  {:6.1}  {long:7.2}                 {:4.1}%", b as f64 * 1000.0 / short, 100.0 * attention / short);
    }
    Ok(())
}
