//! Serving with the model on the GPU (`device: "gpu"`, any adapter: lavapipe in CI): the same
//! scheduler, block manager and prefix cache drive GPU steps. A request's greedy tokens are the
//! same alone, batched with 7 others of different lengths, after a prefix-cache hit and after a
//! preemption; computeLogits runs there too; the plan names the adapter. Without an adapter the
//! tests skip and say so, unless NANO_QWEN3_REQUIRE_GPU=1.
use nano_qwen3_engine::model::BLOCK_TOKENS;
use nano_qwen3_engine::{AccelerationConfig, Engine, Event, GenerateOptions, GenerateOutput, GenerateRequest, LoadOptions, Quantization, ServeOptions};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;

/// The engine on the GPU, or None (skipped) when this machine has no adapter.
fn load(q: Quantization, serving: ServeOptions) -> Option<Engine> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/qwen3-tiny");
    let acceleration = AccelerationConfig { quantization: q, ..Default::default() };
    match Engine::load(&dir, &LoadOptions { acceleration, device: "gpu".into(), threads: Some(2), serving, weight_cache: false, ..Default::default() }) {
        Ok(e) => Some(e),
        Err(e) if std::env::var("NANO_QWEN3_REQUIRE_GPU").as_deref() == Ok("1") => panic!("NANO_QWEN3_REQUIRE_GPU=1 but the GPU load failed: {e}"),
        Err(e) if e.to_string().contains("no GPU adapter") => {
            eprintln!("SKIPPED: GPU serving tests need an adapter (mesa-vulkan-drivers gives lavapipe): {e}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn greedy(engine: &Engine, max_tokens: usize) -> GenerateOptions {
    GenerateRequest { max_tokens: Some(max_tokens as f64), temperature: Some(0.0), ignore_eos: true, ..Default::default() }
        .resolve(&engine.generation_defaults)
        .unwrap()
}

fn prompt(seed: u32, n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| 200 + (seed * 7919 + i * 104_729) % 20_000).collect()
}

fn run(engine: &Engine, p: &[u32], opts: &GenerateOptions) -> GenerateOutput {
    engine.generate(p, opts, &AtomicBool::new(false), &mut |_| {}).unwrap()
}

fn run_all(engine: &Engine, prompts: &[Vec<u32>], opts: &GenerateOptions) -> Vec<GenerateOutput> {
    let rxs: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (tx, rx) = mpsc::channel();
            engine.submit(p.clone(), opts, Box::new(move |e| drop(tx.send(e)))).unwrap();
            rx
        })
        .collect();
    rxs.into_iter()
        .map(|rx| loop {
            if let Event::Done(out) = rx.recv().unwrap() {
                break out.unwrap();
            }
        })
        .collect()
}

#[test]
fn greedy_tokens_are_the_same_alone_batched_after_a_prefix_hit_and_a_preemption() {
    let Some(engine) = load(Quantization::Fp32, ServeOptions { enable_prefix_caching: Some(false), ..Default::default() }) else { return };
    let plan = &engine.plan;
    assert_eq!(plan.device, "gpu");
    let gpu = plan.gpu.as_ref().expect("a GPU plan names its adapter");
    assert!(!gpu.adapter.is_empty() && !gpu.backend.is_empty(), "{gpu:?}");
    assert!(plan.device_detail.contains(&gpu.adapter), "{}", plan.device_detail);
    let opts = greedy(&engine, 10);
    let prompts: Vec<Vec<u32>> = [5, 9, 17, 23, 31, 40, 47, 64].iter().enumerate().map(|(i, &n)| prompt(i as u32, n)).collect();
    let alone: Vec<GenerateOutput> = prompts.iter().map(|p| run(&engine, p, &opts)).collect();
    let batched = run_all(&engine, &prompts, &opts);
    for (i, (a, b)) in alone.iter().zip(&batched).enumerate() {
        assert_eq!(a.token_ids.len(), 10);
        assert_eq!(a.token_ids, b.token_ids, "prompt {i}: batched with 7 others on the GPU");
    }
    // The same greedy tokens as the CPU path (f32 weights: logits within 1e-4, see gpu_forward).
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/qwen3-tiny");
    let acceleration = AccelerationConfig { quantization: Quantization::Fp32, ..Default::default() };
    let cpu = Engine::load(&dir, &LoadOptions { acceleration, device: "cpu".into(), threads: Some(2), weight_cache: false, ..Default::default() }).unwrap();
    for (i, p) in prompts.iter().enumerate().take(3) {
        assert_eq!(run(&cpu, p, &opts).token_ids, alone[i].token_ids, "prompt {i}: GPU vs CPU greedy");
        let (g, c) = (engine.compute_logits(p, false).unwrap(), cpu.compute_logits(p, false).unwrap());
        let err = g.iter().zip(&c).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt() / c.iter().map(|b| (*b as f64).powi(2)).sum::<f64>().sqrt();
        assert!(err < 1e-4, "prompt {i}: computeLogits on the GPU vs the CPU, relative L2 {err}");
    }

    // The prefix cache on the GPU's pool: the same prompt again reuses its 2 full blocks.
    let Some(cached) = load(Quantization::Fp32, ServeOptions::default()) else { return };
    let p = &prompts[5];
    let first = run(&cached, p, &opts);
    assert_eq!((first.token_ids.as_slice(), first.usage.cached_tokens), (alone[5].token_ids.as_slice(), 0));
    let again = run(&cached, p, &opts);
    assert_eq!((again.token_ids.as_slice(), again.usage.cached_tokens), (alone[5].token_ids.as_slice(), 2 * BLOCK_TOKENS));

    // Preemption: a pool of 10 blocks for 4 sequences of 40 + 10 tokens (4 blocks each at the end).
    let block_bytes = 2 * engine.model.config.num_hidden_layers * engine.model.config.num_key_value_heads * BLOCK_TOKENS * engine.model.config.head_dim * 4;
    let serving = ServeOptions { kv_cache_memory: Some(10 * block_bytes), enable_prefix_caching: Some(false), ..Default::default() };
    let Some(small) = load(Quantization::Fp32, serving) else { return };
    let four: Vec<Vec<u32>> = (0..4).map(|i| prompts[5].iter().map(|t| t + i).collect()).collect();
    let want: Vec<Vec<u32>> = four.iter().map(|p| run(&engine, p, &opts).token_ids).collect();
    let got = run_all(&small, &four, &opts);
    assert!(small.serving_stats().preemptions > 0, "no preemption happened: the test did not test it");
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        assert_eq!(w, &g.token_ids, "sequence {i} after a preemption");
    }
}

#[test]
fn a_kv_pool_past_the_adapters_binding_limit_is_refused_saying_what_would_fit() {
    // One block more than one layer's K pool can hold in a binding of the adapter 'gpu' takes.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/qwen3-tiny");
    let Ok(ctx) = nano_qwen3_gpu::GpuContext::new(nano_qwen3_gpu::DeviceRequest::Any(None)) else {
        return assert!(load(Quantization::Fp32, ServeOptions::default()).is_none());
    };
    let limit = ctx.report().max_storage_binding as usize;
    let cfg = nano_qwen3_engine::model::config::ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let block = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * BLOCK_TOKENS * cfg.head_dim * 4;
    let layer_block = block / (2 * cfg.num_hidden_layers);
    let serving = ServeOptions { kv_cache_memory: Some((limit / layer_block + 1) * block), ..Default::default() };
    let r = Engine::load(&dir, &LoadOptions { device: "gpu".into(), threads: Some(2), serving, weight_cache: false, ..Default::default() });
    let e = match r {
        Err(e) if e.to_string().contains("no GPU adapter") && std::env::var("NANO_QWEN3_REQUIRE_GPU").as_deref() != Ok("1") => {
            return eprintln!("SKIPPED: no GPU adapter: {e}");
        }
        Err(e) => e,
        Ok(_) => panic!("a KV pool one block past the binding limit ({limit} bytes per layer) loaded"),
    };
    let m = e.to_string();
    assert_eq!(e.code(), "UNSUPPORTED", "{m}");
    assert!(m.contains("KV pool does not fit") && m.contains("use kvCacheMemory <="), "{m}");
}
