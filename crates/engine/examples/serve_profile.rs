//! Aggregate decode tokens/s of N concurrent requests on the engine alone (no Node), as
//! `bench:serve` defines it: tokens after each stream's first, over the window from the earliest
//! first token to the latest last one. Tells the engine loop's own cost from the binding's.
//! `cargo run --example serve_profile -p nano-qwen3-engine -- DIR`
//! Env: QUANTIZATION (default dynamic_int8), KV_CACHE_DTYPE (default f32), STREAMS (default 16), NEW_TOKENS (default 128).
use nano_qwen3_engine::{Engine, Event, GenerateRequest, LoadOptions, Quantization};
use std::sync::mpsc;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: serve_profile DIR")?;
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or(d.into());
    let mut load = LoadOptions { threads: Some(2), ..Default::default() };
    load.acceleration.quantization = Quantization::parse(&env("QUANTIZATION", "dynamic_int8"))?;
    load.acceleration.kv_cache_dtype = serde_json::from_value(serde_json::Value::String(env("KV_CACHE_DTYPE", "f32")))?;
    let engine = Engine::load(dir.as_ref(), &load)?;
    let (streams, new_tokens): (usize, usize) = (env("STREAMS", "16").parse()?, env("NEW_TOKENS", "128").parse()?);
    let req = GenerateRequest { max_tokens: Some(new_tokens as f64), temperature: Some(0.0), ignore_eos: true, ..Default::default() };
    let opts = req.resolve(&engine.generation_defaults)?;
    let (tx, rx) = mpsc::channel::<Vec<Instant>>();
    for s in 0..streams {
        // Distinct 32-token prompts.
        let prompt: Vec<u32> = (0..32).map(|i| 1000 + (s as u32 * 97 + i * 13) % 20000).collect();
        let (tx, mut times) = (tx.clone(), Vec::new());
        engine.submit(
            prompt,
            &opts,
            Box::new(move |e| match e {
                Event::Chunk(c) => times.extend(c.token_ids.iter().map(|_| Instant::now())),
                Event::Done(_) => drop(tx.send(std::mem::take(&mut times))),
            }),
        )?;
    }
    let all: Vec<Vec<Instant>> = (0..streams).map(|_| rx.recv()).collect::<Result<_, _>>()?;
    let first = all.iter().filter_map(|t| t.first()).min().ok_or("no tokens")?;
    let last = all.iter().filter_map(|t| t.last()).max().ok_or("no tokens")?;
    let after_first: usize = all.iter().map(|t| t.len().saturating_sub(1)).sum();
    let secs = (*last - *first).as_secs_f64();
    println!("{streams} streams: {:.1} decode tok/s ({after_first} tokens in {secs:.2} s)", after_first as f64 / secs);
    Ok(())
}
