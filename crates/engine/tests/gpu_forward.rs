//! The whole model on the GPU (the same recipe, the GPU backend's ops) against the CPU path, on
//! the repository's fixtures. Runs on any adapter (`device: 'gpu'`: lavapipe in CI, with
//! `WGPU_BACKEND=vulkan`). Without one the tests skip and say so, unless NANO_QWEN3_REQUIRE_GPU=1.
use nano_qwen3_engine::model::backend::gpu::{GpuModel, GpuRunner};
use nano_qwen3_engine::model::{KvDtype, KvPool, LogitsFor, SeqChunk, Workspace};
use nano_qwen3_engine::{AccelerationConfig, Engine, LoadOptions, Quantization};
use nano_qwen3_gpu::{DeviceRequest, GpuContext};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

fn ctx() -> Option<Arc<GpuContext>> {
    static CTX: OnceLock<Option<Arc<GpuContext>>> = OnceLock::new();
    CTX.get_or_init(|| match GpuContext::new(DeviceRequest::Any(None)) {
        Ok(c) => {
            eprintln!("GPU forward tests on {:?}", c.report());
            Some(Arc::new(c))
        }
        Err(e) if std::env::var("NANO_QWEN3_REQUIRE_GPU").as_deref() == Ok("1") => panic!("NANO_QWEN3_REQUIRE_GPU=1 but no GPU: {e}"),
        Err(e) => {
            eprintln!("SKIPPED: the GPU forward tests need an adapter (mesa-vulkan-drivers gives lavapipe): {e}");
            None
        }
    })
    .clone()
}

fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures").join(p)
}

fn load(path: &str, q: Quantization) -> Engine {
    load_kv(path, q, KvDtype::F32)
}

fn load_kv(path: &str, q: Quantization, kv_cache_dtype: KvDtype) -> Engine {
    let acceleration = AccelerationConfig { quantization: q, kv_cache_dtype, ..Default::default() };
    Engine::load(&fixture(path), &LoadOptions { acceleration, device: "cpu".into(), threads: Some(2), weight_cache: false, ..Default::default() }).unwrap()
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    assert!(a.iter().all(|x| x.is_finite()), "NaN/inf in logits");
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

fn argmax(v: &[f32]) -> u32 {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b }) as u32
}

/// The largest logit minus the second largest.
fn top2_gap(v: &[f32]) -> f32 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &x in v {
        if x > a {
            (a, b) = (x, a);
        } else if x > b {
            b = x;
        }
    }
    a - b
}

/// A prompt of `n` ids from the model's vocabulary.
fn prompt(n: usize, seed: u32, vocab: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (seed * 7919 + i * 104_729) % vocab as u32).collect()
}

/// Logits of `batch` on the CPU and on the GPU, each in a pool of its own, after the same history.
struct Pair {
    cpu: KvPool,
    gpu: GpuRunner,
    ws: Workspace,
}

impl Pair {
    fn new(e: &Engine, g: &Arc<GpuModel>, blocks: usize) -> Self {
        let c = &e.model.config;
        let cpu = KvPool::new(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, e.kv_dtype, blocks);
        let gpu = GpuRunner::new(g.clone(), &e.model, e.kv_dtype, blocks, 64).unwrap();
        Self { cpu, gpu, ws: Workspace::default() }
    }

    /// `cpu` runs the CPU side, `gpu` (the model uploaded) the GPU side.
    fn step2(&mut self, cpu: &Engine, gpu: &Engine, batch: &[SeqChunk]) -> (Vec<f32>, Vec<f32>) {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let pool = nano_qwen3_kernels::pool::ThreadPool::new(2).unwrap();
        pool.install(|| cpu.model.forward(&mut self.cpu, batch, &cpu.exec, &mut self.ws, &mut a, None)).unwrap();
        self.gpu.forward(&gpu.model, batch, &mut b).unwrap();
        (a, b)
    }

    fn step(&mut self, e: &Engine, batch: &[SeqChunk]) -> (Vec<f32>, Vec<f32>) {
        self.step2(e, e, batch)
    }
}

/// Prefill a batch of 3 sequences of different lengths (blocks out of order), then 6 greedy
/// decode steps; every step's logits on the GPU within `tol` (relative L2) of the CPU's, and the
/// greedy tokens identical.
fn compare(path: &str, q: Quantization, tol: f64) {
    compare_to(path, q, q, tol)
}

/// [`compare`] with the GPU running the model loaded as `q` and the CPU as `q_cpu`.
fn compare_to(path: &str, q: Quantization, q_cpu: Quantization, tol: f64) {
    compare_kv(path, q, q_cpu, KvDtype::F32, tol)
}

/// [`compare_to`] with a KV cache of `kv` elements on both devices.
fn compare_kv(path: &str, q: Quantization, q_cpu: Quantization, kv: KvDtype, tol: f64) {
    let Some(ctx) = ctx() else { return };
    let e = load_kv(path, q, kv);
    let cpu_engine = (q_cpu != q).then(|| load_kv(path, q_cpu, kv));
    let c = cpu_engine.as_ref().unwrap_or(&e);
    let vocab = e.model.config.vocab_size;
    let g = Arc::new(GpuModel::upload(ctx, &e.model, 128).unwrap());
    let mut p = Pair::new(&e, &g, 16);
    let tables: [[u32; 3]; 3] = [[7, 2, 11], [0, 9, 4], [13, 5, 1]];
    let mut tokens: Vec<Vec<u32>> = [5usize, 17, 30].iter().enumerate().map(|(i, &n)| prompt(n, i as u32 + 1, vocab)).collect();
    let (mut worst, mut near_ties) = (0f64, 0);
    let mut starts = vec![0; 3];
    for step in 0..7 {
        let batch: Vec<SeqChunk> = (0..3).map(|s| SeqChunk { tokens: &tokens[s][starts[s]..], start: starts[s], table: &tables[s], logits: LogitsFor::LastToken }).collect();
        let (cpu, gpu) = p.step2(c, &e, &batch);
        assert_eq!(cpu.len(), 3 * vocab);
        assert_eq!(gpu.len(), cpu.len(), "{path} {q:?} step {step}: GPU logits rows");
        for s in 0..3 {
            let (c, g) = (&cpu[s * vocab..][..vocab], &gpu[s * vocab..][..vocab]);
            let err = rel_l2(g, c);
            worst = worst.max(err);
            assert!(err < tol, "{path} {q:?} step {step} sequence {s}: relative L2 {err} over {tol}");
            // Greedy tokens agree wherever the CPU's top two logits are apart by more than the
            // two devices' largest difference on this row could bridge.
            let diff = g.iter().zip(c).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            if top2_gap(c) > 2.0 * diff.max(1e-3) {
                assert_eq!(argmax(g), argmax(c), "{path} {q:?} step {step} sequence {s}: greedy token (gap {}, diff {diff})", top2_gap(c));
            } else {
                near_ties += 1;
            }
        }
        for s in 0..3 {
            starts[s] = tokens[s].len();
            let next = argmax(&cpu[s * vocab..][..vocab]);
            tokens[s].push(next);
        }
    }
    eprintln!("{path} {q:?}: worst relative L2 GPU vs CPU over 7 steps of 3 sequences: {worst:.2e}; greedy compared on {} of 21 rows", 21 - near_ties);
    // f32 paths differ by rounding only: every row's greedy token is compared.
    if tol <= 1e-4 {
        assert_eq!(near_ties, 0, "{path} {q:?}: rows too close to compare greedy tokens");
    }
}

#[test]
fn f32_weights_match_the_cpu_within_1e4() {
    compare("qwen3-tiny", Quantization::Fp32, 1e-4);
    compare("qwen2-tiny", Quantization::Fp32, 1e-4);
}

#[test]
fn checkpoint_bf16_and_f16_weights_match_the_cpu() {
    // bf16 / f16 weights read as stored on both devices, f32 accumulation: the sums' order differs only.
    compare("qwen3-tiny", Quantization::None, 1e-4);
    compare("qwen3-tiny", Quantization::Fp16, 1e-4);
    compare("qwen2-tiny/tiny-F16.gguf", Quantization::None, 1e-4);
}

#[test]
fn gguf_q8_0_and_q4_0_weights_match_the_cpu_within_its_activation_rounding() {
    // The CPU quantizes activations to int8 per block; the GPU multiplies them in f32: the
    // difference is the CPU's own activation rounding, which its fixture tests bound at 2e-2.
    compare("qwen2-tiny/tiny-Q8_0.gguf", Quantization::None, 2e-2);
    compare("qwen2-tiny/tiny-Q4_0.gguf", Quantization::None, 2e-2);
}

#[test]
fn gguf_q8_0_and_q4_0_blocks_match_the_cpu_on_their_dequantized_weights_within_1e4() {
    // The GPU reads the blocks as stored; the CPU's fp32 mode dequantizes the same blocks to f32
    // at load and keeps activations in f32: the two differ only by the order of the sums.
    compare_to("qwen2-tiny/tiny-Q8_0.gguf", Quantization::None, Quantization::Fp32, 1e-4);
    compare_to("qwen2-tiny/tiny-Q4_0.gguf", Quantization::None, Quantization::Fp32, 1e-4);
}

#[test]
fn engine_int8_and_int4_weights_match_the_cpu_within_its_activation_rounding() {
    // Quantized at load (int4 groups of 128 reach the GPU as Q4_0 blocks with the scale
    // repeated), repacked for the CPU kernels and exported row-major for the GPU.
    // The CPU's int8 activations: its own tests bound these modes at 5e-2 against transformers.
    compare("qwen3-tiny", Quantization::DynamicInt8, 5e-2);
    compare("qwen3-tiny", Quantization::Int4, 5e-2);
    let Some(ctx) = ctx() else { return };
    let acceleration = AccelerationConfig { quantization: Quantization::Int4, int4_group_size: 128, ..Default::default() };
    let e = Engine::load(&fixture("qwen3-tiny"), &LoadOptions { acceleration, device: "cpu".into(), threads: Some(2), weight_cache: false, ..Default::default() }).unwrap();
    let g = Arc::new(GpuModel::upload(ctx, &e.model, 64).unwrap());
    let mut p = Pair::new(&e, &g, 4);
    let toks = prompt(21, 3, e.model.config.vocab_size);
    let (cpu, gpu) = p.step(&e, &[SeqChunk { tokens: &toks, start: 0, table: &[2, 0], logits: LogitsFor::LastToken }]);
    let err = rel_l2(&gpu, &cpu);
    assert!(err < 5e-2, "int4 groups of 128: relative L2 {err}");
}

#[test]
fn f16_and_bf16_kv_caches_match_the_cpu() {
    // Both devices round K and V to nearest even; a value on the two sides of a rounding
    // boundary (inputs 1e-7 apart) may round apart: a looser bound than f32's, far below bf16's step.
    compare_kv("qwen3-tiny", Quantization::Fp32, Quantization::Fp32, KvDtype::F16, 1e-3);
    compare_kv("qwen3-tiny", Quantization::Fp32, Quantization::Fp32, KvDtype::Bf16, 1e-3);
}

#[test]
fn all_positions_and_chunked_prefill_match() {
    let Some(ctx) = ctx() else { return };
    let e = load("qwen3-tiny", Quantization::Fp32);
    let vocab = e.model.config.vocab_size;
    let g = Arc::new(GpuModel::upload(ctx, &e.model, 128).unwrap());
    let mut p = Pair::new(&e, &g, 8);
    let table = [3u32, 6, 1, 0];
    let toks = prompt(40, 9, vocab);
    // 23 tokens without logits, then 17 with logits at every position.
    let _ = p.step(&e, &[SeqChunk { tokens: &toks[..23], start: 0, table: &table, logits: LogitsFor::Nothing }]);
    let (cpu, gpu) = p.step(&e, &[SeqChunk { tokens: &toks[23..], start: 23, table: &table, logits: LogitsFor::AllTokens }]);
    assert_eq!((cpu.len(), gpu.len()), (17 * vocab, 17 * vocab));
    for r in 0..17 {
        let err = rel_l2(&gpu[r * vocab..][..vocab], &cpu[r * vocab..][..vocab]);
        assert!(err < 1e-4, "position {}: relative L2 {err}", 23 + r);
    }
}

#[test]
fn a_warm_decode_step_is_one_submit_and_creates_no_buffers_or_bind_groups() {
    if ctx().is_none() {
        return;
    }
    // A context of its own: the other tests' steps (run in parallel) would move the counters.
    let ctx = Arc::new(GpuContext::new(DeviceRequest::Any(None)).unwrap());
    let e = load("qwen3-tiny", Quantization::Fp32);
    let vocab = e.model.config.vocab_size;
    let g = Arc::new(GpuModel::upload(ctx.clone(), &e.model, 64).unwrap());
    let mut r = GpuRunner::new(g, &e.model, e.kv_dtype, 8, 32).unwrap();
    let tables: [[u32; 2]; 2] = [[5, 1], [0, 6]];
    let mut toks: Vec<Vec<u32>> = (0..2).map(|s| prompt(9 + s, s as u32 + 4, vocab)).collect();
    let mut logits = Vec::new();
    let batch: Vec<SeqChunk> = (0..2).map(|s| SeqChunk { tokens: &toks[s], start: 0, table: &tables[s], logits: LogitsFor::LastToken }).collect();
    r.forward(&e.model, &batch, &mut logits).unwrap();
    let mut before = ctx.counters();
    for step in 0..4 {
        if step == 1 {
            before = ctx.counters(); // the first decode step may size the step's arenas
        }
        for (s, t) in toks.iter_mut().enumerate() {
            t.push(argmax(&logits[s * vocab..][..vocab]));
        }
        let batch: Vec<SeqChunk> = (0..2).map(|s| SeqChunk { tokens: &toks[s][toks[s].len() - 1..], start: toks[s].len() - 1, table: &tables[s], logits: LogitsFor::LastToken }).collect();
        logits.clear();
        let at = ctx.counters();
        r.forward(&e.model, &batch, &mut logits).unwrap();
        let now = ctx.counters();
        assert_eq!(now.submits - at.submits, 1, "step {step}: one submit");
        assert_eq!(logits.len(), 2 * vocab, "step {step}: only the two wanted rows come back");
    }
    let after = ctx.counters();
    assert_eq!(after.buffers_created - before.buffers_created, 0, "warm decode steps created GPU buffers");
    assert_eq!(after.bind_groups_created - before.bind_groups_created, 0, "warm decode steps created bind groups");
}
