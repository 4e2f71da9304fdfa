//! Serving on the tiny fixture: continuous batching, the paged KV pool, the prefix cache,
//! preemption and aborts. A request must give the same tokens alone, batched, after a prefix-cache
//! hit and after being preempted; blocks must all come back.
use nano_qwen3_engine::model::{KvPool, LogitsFor, SeqChunk, Workspace, BLOCK_TOKENS};
use nano_qwen3_engine::{AccelerationConfig, Engine, EngineError, Event, GenerateOptions, GenerateOutput, GenerateRequest, LoadOptions, Quantization, ServeOptions};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/qwen3-tiny")
}

fn load(q: Quantization, serving: ServeOptions) -> Engine {
    let acceleration = AccelerationConfig { quantization: q, ..Default::default() };
    Engine::load(&fixture(), &LoadOptions { acceleration, threads: Some(2), serving, ..Default::default() }).unwrap()
}

fn no_cache() -> ServeOptions {
    ServeOptions { enable_prefix_caching: Some(false), ..Default::default() }
}

fn greedy(engine: &Engine, max_tokens: usize) -> GenerateOptions {
    GenerateRequest { max_tokens: Some(max_tokens as f64), temperature: Some(0.0), ignore_eos: true, ..Default::default() }
        .resolve(&engine.generation_defaults)
        .unwrap()
}

/// A prompt of `n` tokens, distinct per `seed` from its first token on.
fn prompt(seed: u32, n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| 200 + (seed * 7919 + i * 104_729) % 20_000).collect()
}

fn run(engine: &Engine, p: &[u32], opts: &GenerateOptions) -> GenerateOutput {
    engine.generate(p, opts, &AtomicBool::new(false), &mut |_| {}).unwrap()
}

/// Every prompt submitted at once (from one thread, without waiting), then every result.
fn run_all(engine: &Engine, prompts: &[Vec<u32>], opts: &GenerateOptions) -> Vec<GenerateOutput> {
    let receivers: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (tx, rx) = mpsc::channel();
            engine.submit(p.clone(), opts, Box::new(move |e| drop(tx.send(e)))).unwrap();
            rx
        })
        .collect();
    receivers
        .into_iter()
        .map(|rx| loop {
            if let Event::Done(out) = rx.recv().unwrap() {
                break out.unwrap();
            }
        })
        .collect()
}

/// Waits until the loop is idle, then returns its counters.
fn idle(engine: &Engine) -> nano_qwen3_engine::serve::scheduler::SchedulerStats {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let s = engine.serving_stats();
        if s.running == 0 && s.waiting == 0 || Instant::now() > until {
            return s;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn tokens_are_the_same_alone_batched_and_after_a_prefix_hit() {
    for q in [Quantization::None, Quantization::DynamicInt8, Quantization::Int4] {
        let engine = load(q, no_cache());
        let opts = greedy(&engine, 12);
        let prompts: Vec<Vec<u32>> = [5, 9, 17, 23, 31, 40, 47, 64].iter().enumerate().map(|(i, &n)| prompt(i as u32, n)).collect();
        let alone: Vec<GenerateOutput> = prompts.iter().map(|p| run(&engine, p, &opts)).collect();
        let steps_alone = idle(&engine).steps;
        let batched = run_all(&engine, &prompts, &opts);
        let steps_batched = idle(&engine).steps - steps_alone;
        for (i, (a, b)) in alone.iter().zip(&batched).enumerate() {
            assert_eq!(a.token_ids, b.token_ids, "{q:?} prompt {i}: batched with 7 others");
            assert_eq!((a.text.as_str(), b.usage.cached_tokens), (b.text.as_str(), 0));
        }
        // They really shared steps: 8 x 12 tokens alone took 8 x 12 steps.
        assert!(steps_batched < steps_alone / 2, "{q:?}: {steps_batched} batched steps vs {steps_alone} alone");

        // The prefix cache: the same prompt again, and a prompt sharing only its first 2 blocks.
        let cached = load(q, ServeOptions::default());
        let p = &prompts[5]; // 40 tokens: 2 full blocks
        let first = run(&cached, p, &opts);
        assert_eq!((first.token_ids.as_slice(), first.usage.cached_tokens), (alone[5].token_ids.as_slice(), 0));
        let again = run(&cached, p, &opts);
        assert_eq!((again.token_ids.as_slice(), again.usage.cached_tokens), (alone[5].token_ids.as_slice(), 2 * BLOCK_TOKENS), "{q:?}");
        let mut sibling = p[..2 * BLOCK_TOKENS].to_vec();
        sibling.extend(prompt(99, 5));
        let s = run(&cached, &sibling, &opts);
        assert_eq!(s.usage.cached_tokens, 2 * BLOCK_TOKENS, "{q:?}");
        assert_eq!(s.token_ids, run(&engine, &sibling, &opts).token_ids, "{q:?}: sibling after a prefix hit");
        let info = cached.serving_info();
        assert!(info.prefix_cache_hit_tokens >= 4 * BLOCK_TOKENS as u64 && info.prefix_cache_hit_rate > 0.0, "{info:?}");
    }
}

/// Logits of one sequence's chunk, through a pool shared with `others` in the same call.
fn logits_in_batch(engine: &Engine, target: &[u32], others: &[Vec<u32>], prefix_done: usize) -> Vec<f32> {
    let c = &engine.model.config;
    let per = |n: usize| n.div_ceil(BLOCK_TOKENS);
    let total: usize = per(target.len()) + others.iter().map(|o| per(o.len())).sum::<usize>();
    let mut kv = KvPool::new(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, engine.kv_dtype, total);
    // Interleaved, reversed block numbers: nothing is where a contiguous cache would put it.
    let mut next = total as u32;
    let mut take = |n: usize| -> Vec<u32> {
        (0..per(n))
            .map(|_| {
                next -= 1;
                next
            })
            .collect()
    };
    let target_table = take(target.len());
    let tables: Vec<Vec<u32>> = others.iter().map(|o| take(o.len())).collect();
    let pool = nano_qwen3_kernels::pool::ThreadPool::new(2).unwrap();
    let mut ws = Workspace::default();
    let mut step = |batch: &[SeqChunk]| {
        let mut logits = Vec::new();
        pool.install(|| engine.model.forward(&mut kv, batch, &engine.exec, &mut ws, &mut logits, None)).unwrap();
        logits
    };
    if prefix_done > 0 {
        step(&[SeqChunk { tokens: &target[..prefix_done], start: 0, table: &target_table, logits: LogitsFor::Nothing }]);
    }
    let mut batch = vec![SeqChunk { tokens: &target[prefix_done..], start: prefix_done, table: &target_table, logits: LogitsFor::LastToken }];
    for (o, t) in others.iter().zip(&tables) {
        batch.push(SeqChunk { tokens: o, start: 0, table: t, logits: LogitsFor::LastToken });
    }
    step(&batch)[..c.vocab_size].to_vec()
}

#[test]
fn logits_do_not_depend_on_batch_neighbours_or_the_prefix_cache() {
    // Every weight format: each activation row is accumulated the same way whatever the batch.
    for q in [Quantization::None, Quantization::Bf16, Quantization::Fp16, Quantization::DynamicInt8, Quantization::StaticInt8, Quantization::Int4] {
        let engine = load(q, no_cache());
        let target = prompt(1, 37);
        let alone = engine.compute_logits(&target, false).unwrap();
        let others: Vec<Vec<u32>> = (0..7).map(|i| prompt(10 + i, 3 + 9 * i as usize)).collect();
        for (name, got) in [
            ("batched with 7 others", logits_in_batch(&engine, &target, &others, 0)),
            ("after 2 cached blocks, batched", logits_in_batch(&engine, &target, &others, 2 * BLOCK_TOKENS)),
            ("after 1 cached block, alone", logits_in_batch(&engine, &target, &[], BLOCK_TOKENS)),
        ] {
            let err = got.iter().zip(&alone).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            let scale = alone.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(err <= 1e-6 * scale, "{q:?} {name}: max difference {err} (scale {scale})");
        }
    }
}

#[test]
fn sixty_four_requests_share_a_pool_that_holds_eight() {
    let reference = load(Quantization::None, no_cache());
    let opts = greedy(&reference, 24);
    // Each request: 20 prompt tokens + 24 new = 3 blocks; the pool holds 24 blocks: 8 requests.
    let block_bytes = KvPool::block_bytes(2, 2, 32, Default::default());
    let small = ServeOptions { kv_cache_memory: Some(24 * block_bytes), ..Default::default() };
    let engine = load(Quantization::None, small);
    assert_eq!(engine.kv_blocks, 24);
    let prompts: Vec<Vec<u32>> = (0..64).map(|i| prompt(i, 20)).collect();
    let outs = run_all(&engine, &prompts, &opts);
    for (i, (p, out)) in prompts.iter().zip(&outs).enumerate() {
        assert_eq!(out.token_ids, run(&reference, p, &opts).token_ids, "request {i}");
        assert_eq!(out.usage.completion_tokens, 24);
    }
    let stats = idle(&engine);
    assert!(stats.preemptions > 0, "the pool never ran out: {stats:?}");
    assert_eq!(stats.blocks_used, 0, "{stats:?}");
}

#[test]
fn aborts_free_their_blocks_and_a_prompt_over_the_pool_is_refused() {
    // One token a step: a 3,000-token prompt takes 3,000 steps to prefill, far longer than the
    // abort needs even when this thread waits for a core (300 steps were not, on a loaded machine).
    let pool = |blocks| ServeOptions { max_batch_tokens: Some(1), kv_cache_memory: Some(blocks * KvPool::block_bytes(2, 2, 32, Default::default())), ..Default::default() };
    let engine = load(Quantization::None, pool(260));
    let opts = greedy(&engine, 200);
    for during in ["prefill", "decode"] {
        let (tx, rx) = mpsc::channel();
        let long = prompt(3, if during == "prefill" { 3000 } else { 10 });
        let cancel = engine.submit(long, &opts, Box::new(move |e| drop(tx.send(e)))).unwrap();
        // Wait until it holds blocks (prefill) or has streamed a token (decode).
        let until = Instant::now() + Duration::from_secs(10);
        match during {
            "prefill" => while engine.serving_stats().blocks_used < 2 && Instant::now() < until {},
            _ => assert!(matches!(rx.recv().unwrap(), Event::Chunk(_))),
        }
        assert!(engine.serving_stats().blocks_used > 0);
        cancel.store(true, Ordering::Relaxed);
        let mut chunks = 0;
        let end = loop {
            match rx.recv().unwrap() {
                Event::Done(out) => break out,
                Event::Chunk(_) => chunks += 1,
            }
        };
        assert!(during == "decode" || chunks == 0, "the prompt was done before the abort; make it longer");
        assert!(matches!(end, Err(EngineError::Aborted)), "{during}: {:?}", end.map(|o| o.token_ids.len()));
        assert_eq!(idle(&engine).blocks_used, 0, "{during}: blocks not freed");
    }
    // 400 tokens against a pool of 320: refused up front, naming both; others keep being served.
    let engine = load(Quantization::None, pool(20));
    let e = engine.submit(prompt(4, 400), &opts, Box::new(|_| {})).err().unwrap();
    assert_eq!(e.code(), "CONTEXT_OVERFLOW");
    assert!(e.to_string().contains("400 tokens") && e.to_string().contains("320 tokens"), "{e}");
    let ok = run(&engine, &prompt(5, 30), &greedy(&engine, 4));
    assert_eq!(ok.usage.completion_tokens, 4);
}
