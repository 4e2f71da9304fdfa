//! Decode loop on a model folder, for profilers: `cargo run --example decode_profile -p nano-qwen3-engine -- DIR [tokens]`
use nano_qwen3_engine::{Engine, GenerateRequest, LoadOptions};
use std::sync::atomic::AtomicBool;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: decode_profile DIR [tokens]")?;
    let tokens: f64 = std::env::args().nth(2).map(|s| s.parse()).transpose()?.unwrap_or(32.0);
    let mut load = LoadOptions { threads: Some(2), ..Default::default() };
    if let Ok(q) = std::env::var("QUANTIZATION") {
        load.acceleration.quantization = nano_qwen3_engine::Quantization::parse(&q)?;
    }
    let engine = Engine::load(dir.as_ref(), &load)?;
    let opts = GenerateRequest { max_tokens: Some(tokens), temperature: Some(0.0), ignore_eos: true, ..Default::default() }
        .resolve(&engine.generation_defaults)?;
    let prompt: Vec<u32> = (0..32).map(|i| 1000 + i * 37).collect();
    let out = engine.generate(&prompt, &opts, &AtomicBool::new(false), &mut |_| {})?;
    println!("{:?}", out.timings);
    Ok(())
}
