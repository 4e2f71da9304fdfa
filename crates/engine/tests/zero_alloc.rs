//! Compile mode reduce-overhead pre-plans the decode step: once warm, a serving step over a steady
//! batch allocates nothing.
//! Counted by this test binary's global allocator (every thread, kernel pool workers included),
//! so this file holds one test: nothing else runs while it counts.
use nano_qwen3_engine::acceleration::CompileMode;
use nano_qwen3_engine::model::{KvPool, LogitsFor, SeqChunk, Stepper};
use nano_qwen3_kernels::pool::ThreadPool;
use nano_qwen3_engine::{AccelerationConfig, Engine, LoadOptions, Quantization};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

struct Counting;
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        System.alloc_zeroed(l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        System.realloc(p, l, new)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Greedy tokens of 10 decode steps of a batch of 3 sequences (the serving loop's stepper, blocks
/// of each sequence interleaved in one pool), and the allocations of the last 8.
fn decode(engine: &Engine, prompt: &[u32]) -> (Vec<Vec<u32>>, usize) {
    let c = &engine.model.config;
    let mut kv = KvPool::new(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, engine.kv_dtype, 8);
    let tables: [[u32; 2]; 3] = [[0, 3], [1, 4], [2, 5]];
    let pool = ThreadPool::new(2).unwrap();
    let mut stepper = Stepper::default();
    let vocab = c.vocab_size;
    let mut logits = Vec::new();
    let mut tokens: Vec<Vec<u32>> = (0..3).map(|s| prompt[s..].to_vec()).collect();
    let prefill: Vec<SeqChunk> = (0..3).map(|s| SeqChunk { tokens: &tokens[s], start: 0, table: &tables[s], logits: LogitsFor::LastToken }).collect();
    pool.install(|| stepper.step(&engine.model, &mut kv, &prefill, &engine.exec, &mut logits)).unwrap();
    drop(prefill);
    let mut starts: Vec<usize> = tokens.iter().map(Vec::len).collect();
    for (s, t) in tokens.iter_mut().enumerate() {
        t.reserve(16);
        t.push(argmax(&logits[s * vocab..(s + 1) * vocab]));
    }
    let mut before = 0;
    for step in 0..10 {
        if step == 2 {
            before = ALLOCATIONS.load(Relaxed); // two warm-up steps size the per-thread buffers
        }
        // On the stack: the test's own bookkeeping allocates nothing either.
        let batch: [SeqChunk; 3] =
            std::array::from_fn(|s| SeqChunk { tokens: &tokens[s][starts[s]..], start: starts[s], table: &tables[s], logits: LogitsFor::LastToken });
        logits.clear();
        pool.install(|| stepper.step(&engine.model, &mut kv, &batch, &engine.exec, &mut logits)).unwrap();
        for (s, t) in tokens.iter_mut().enumerate() {
            starts[s] = t.len();
            t.push(argmax(&logits[s * vocab..(s + 1) * vocab]));
        }
    }
    (tokens, ALLOCATIONS.load(Relaxed) - before)
}

#[test]
fn reduce_overhead_decode_steps_allocate_nothing_in_every_weight_format() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/qwen3-tiny");
    let prompt: Vec<u32> = (0..7).map(|i| 100 + 37 * i).collect();
    let mut keep = Vec::new();
    for q in [Quantization::None, Quantization::Bf16, Quantization::DynamicInt8, Quantization::StaticInt8, Quantization::Int4] {
        let load = |compile_mode| {
            let acceleration = AccelerationConfig { quantization: q, use_torch_compile: true, compile_mode, ..Default::default() };
            Engine::load(&dir, &LoadOptions { acceleration, threads: Some(2), ..Default::default() }).unwrap()
        };
        let planned_engine = load(CompileMode::ReduceOverhead);
        let (planned, allocations) = decode(&planned_engine, &prompt);
        assert_eq!(allocations, 0, "{q:?}: {allocations} allocations in 8 reduce-overhead decode steps");
        // The counter sees the work: without the plan, each step allocates its buffers.
        let plain_engine = load(CompileMode::Default);
        let (plain, plain_allocations) = decode(&plain_engine, &prompt);
        assert!(plain_allocations >= 8, "{q:?}: only {plain_allocations} allocations counted without reduce-overhead");
        assert_eq!(planned, plain, "{q:?}: reduce-overhead changed the greedy tokens");
        // Dropped engines' load threads exit (and free) asynchronously: keep them to the end.
        keep.extend([planned_engine, plain_engine]);
    }
}
