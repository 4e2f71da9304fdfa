//! The `qwen2` architecture (Qwen2 / Qwen2.5: q/k/v biases, no q/k norm) in every quantization mode
//! and with every optimization, on the tiny random Qwen2 fixture (fixtures/qwen2-tiny). Its plain
//! path is checked against llama.cpp in `__test__/qwen2.test.mjs`; here every other path is checked
//! against that plain path.
use nano_qwen3_engine::acceleration::CompileMode;
use nano_qwen3_engine::model::config::Architecture;
use nano_qwen3_engine::model::KvDtype;
use nano_qwen3_engine::{AccelerationConfig, Engine, GenerateRequest, LoadOptions, Quantization};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/qwen2-tiny")
}

fn load(acceleration: AccelerationConfig) -> Engine {
    Engine::load(&fixture(), &LoadOptions { acceleration, threads: Some(2), ..Default::default() }).unwrap()
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    assert!(a.iter().all(|x| x.is_finite()), "NaN/inf in logits");
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

const PROMPTS: [&[u32]; 2] = [&[10, 200, 33, 401, 77, 5, 300, 250, 12, 499, 64, 128], &[509, 7, 7, 7, 91, 340, 22, 180, 455]];

fn greedy(engine: &Engine, prompt: &[u32]) -> Vec<u32> {
    let opts = GenerateRequest { max_tokens: Some(12.0), temperature: Some(0.0), ignore_eos: true, ..Default::default() }
        .resolve(&engine.generation_defaults)
        .unwrap();
    engine.generate(prompt, &opts, &AtomicBool::new(false), &mut |_| {}).unwrap().token_ids
}

#[test]
fn the_folder_is_read_as_qwen2_with_biases() {
    let e = load(AccelerationConfig::default());
    let c = &e.model.config;
    assert_eq!((c.architecture, c.attention_bias, c.tie_word_embeddings), (Architecture::Qwen2, true, false));
    let classes = e.model.tensor_classes();
    let biases = classes.iter().find(|c| c.class == "qkv biases").expect("biases reported");
    // q (256) + k (128) + v (128) floats per layer, 2 layers.
    assert_eq!((biases.count, biases.bytes), (2, 2 * 512 * 4));
    assert_eq!(e.model.weight_bytes(), classes.iter().map(|c| c.bytes).sum::<usize>());
}

/// Every exec option on and off (exact ones keep the logits to rounding and the greedy tokens), and
/// every quantization mode within its error budget, against the plain f16 path.
#[test]
fn every_mode_and_option_keeps_the_plain_logits() {
    let base = AccelerationConfig::default();
    let plain = load(base.clone());
    let want: Vec<Vec<f32>> = PROMPTS.iter().map(|p| plain.compute_logits(p, false).unwrap()).collect();
    let want_tokens: Vec<Vec<u32>> = PROMPTS.iter().map(|p| greedy(&plain, p)).collect();
    let q = |quantization: Quantization| AccelerationConfig { quantization, ..base.clone() };
    // Bounds: measured errors x2 or more (kv f16 2.0e-4, bf16 4.4e-3, dynamic_int8 2.1e-2,
    // static_int8 2.7e-2); SmoothQuant on a Qwen2 model is covered in static_int8's unit tests.
    let variants: Vec<(&str, AccelerationConfig, f64)> = vec![
        ("flash off", AccelerationConfig { use_flash_attention: false, ..base.clone() }, 1e-5),
        ("fused off", AccelerationConfig { use_fused_kernels: false, ..base.clone() }, 1e-5),
        ("reduce-overhead", AccelerationConfig { use_torch_compile: true, compile_mode: CompileMode::ReduceOverhead, ..base.clone() }, 1e-5),
        ("chunked prefill", AccelerationConfig { use_gradient_checkpointing: true, ..base.clone() }, 1e-5),
        ("kv f16", AccelerationConfig { kv_cache_dtype: KvDtype::F16, ..base.clone() }, 2e-3),
        ("fp16", q(Quantization::Fp16), 1e-5),
        ("fp32", q(Quantization::Fp32), 1e-5),
        ("bf16", q(Quantization::Bf16), 2e-2),
        ("dynamic_int8", q(Quantization::DynamicInt8), 5e-2),
        ("dynamic_int8 repacked", AccelerationConfig { use_channels_last: true, ..q(Quantization::DynamicInt8) }, 5e-2),
        ("static_int8", q(Quantization::StaticInt8), 8e-2),
        // Random N(0, 0.05) weights have no structure for 4 bits to keep: measured 0.19-0.22.
        ("int4", q(Quantization::Int4), 0.35),
        ("int4 group 128 repacked", AccelerationConfig { int4_group_size: 128, use_channels_last: true, ..q(Quantization::Int4) }, 0.4), // measured 0.24-0.28
    ];
    for (name, acceleration, bound) in variants {
        let mut engine = load(acceleration);
        if engine.prefill_chunk.is_some() {
            engine.prefill_chunk = Some(5); // shorter than the prompts, not a divisor of their lengths
        }
        for (i, p) in PROMPTS.iter().enumerate() {
            let err = rel_l2(&engine.compute_logits(p, false).unwrap(), &want[i]);
            assert!(err < bound, "{name}, prompt {i}: relative L2 {err} (bound {bound})");
            // A mode that rounds must change something (the option really took effect).
            if bound > 1e-3 {
                assert!(err > 1e-6, "{name}, prompt {i}: logits identical to the plain path");
            }
            if bound <= 1e-5 {
                assert_eq!(greedy(&engine, p), want_tokens[i], "{name}, prompt {i}");
            }
        }
    }
}

/// `fp32` dequantizes a GGUF's blocks, which `none` runs as stored (Q8_0: int8 activations too).
#[test]
fn fp32_dequantizes_the_blocks_that_none_keeps() {
    let file = fixture().join("tiny-Q8_0.gguf");
    let load = |quantization| {
        let acceleration = AccelerationConfig { quantization, ..Default::default() };
        Engine::load(&file, &LoadOptions { acceleration, threads: Some(2), ..Default::default() }).unwrap()
    };
    let (stored, wide) = (load(Quantization::None), load(Quantization::Fp32));
    assert_eq!((stored.model.weight_format.as_str(), wide.model.weight_format.as_str()), ("q8_0", "f32"));
    assert!(wide.model.tensor_classes().iter().all(|c| c.format == "f32"), "{:?}", wide.model.tensor_classes());
    for p in PROMPTS {
        let err = rel_l2(&stored.compute_logits(p, false).unwrap(), &wide.compute_logits(p, false).unwrap());
        // Same weights; only the activations' rounding to int8 separates them.
        assert!(err > 1e-6 && err < 5e-2, "relative L2 {err}");
    }
}

/// An export of each stored format reads back bit for bit, biases included.
#[test]
fn exports_read_back_to_the_same_logits() {
    let dir = std::env::temp_dir().join(format!("nano-qwen3-qwen2-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for quantization in [Quantization::None, Quantization::DynamicInt8, Quantization::Int4] {
        let engine = load(AccelerationConfig { quantization, ..Default::default() });
        let path = dir.join(format!("{}.gguf", quantization.name()));
        engine.export_gguf(&path).unwrap();
        let back = Engine::load(&path, &LoadOptions { threads: Some(2), ..Default::default() }).unwrap();
        assert_eq!(back.model.config.architecture, Architecture::Qwen2);
        assert!(back.model.config.attention_bias);
        for p in PROMPTS {
            assert_eq!(back.compute_logits(p, false).unwrap(), engine.compute_logits(p, false).unwrap(), "{}", quantization.name());
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// The GGUF block formats run as stored (`none`): the file's blocks in the block kernels with
/// int8 activations, named as they are, close to the same file dequantized to f32 (`fp32`), and
/// the same bits whether q/k/v and gate/up are fused or not (a row's sum does not depend on its
/// neighbours).
#[test]
fn gguf_blocks_run_as_stored_close_to_their_f32_values() {
    for ty in ["Q4_K", "Q5_K", "Q6_K", "Q5_0", "Q4_1", "Q5_1"] {
        let file = fixture().join(format!("tiny-{ty}.gguf"));
        let load = |quantization, fused| {
            let acceleration = AccelerationConfig { quantization, use_fused_kernels: fused, ..Default::default() };
            Engine::load(&file, &LoadOptions { acceleration, threads: Some(2), ..Default::default() }).unwrap()
        };
        let (stored, unfused, wide) = (load(Quantization::None, true), load(Quantization::None, false), load(Quantization::Fp32, true));
        let name = ty.to_lowercase();
        assert_eq!(stored.model.weight_format, name);
        let classes = stored.model.tensor_classes();
        assert!(classes.iter().filter(|c| !["norms", "qkv biases"].contains(&c.class.as_str())).all(|c| c.format == name), "{classes:?}");
        // Stored bytes: the file's blocks in 8-row units (Q4_K / Q5_K carry their unpacked
        // scales: 148 / 180 bytes per 256 values instead of 144 / 176).
        assert!(stored.model.weight_bytes() * 3 < wide.model.weight_bytes(), "{ty}: {} vs f32 {}", stored.model.weight_bytes(), wide.model.weight_bytes());
        for p in PROMPTS {
            let (a, b) = (stored.compute_logits(p, false).unwrap(), wide.compute_logits(p, false).unwrap());
            let err = rel_l2(&a, &b);
            // Same weights; only the activations' rounding to int8 separates them (as Q8_0's;
            // measured 1.1e-2 to 2.2e-2).
            assert!(err > 1e-6 && err < 5e-2, "{ty}: relative L2 {err}");
            assert_eq!(unfused.compute_logits(p, false).unwrap(), a, "{ty}: fused and separate projections differ");
        }
    }
    // The other modes still re-quantize such a file into our formats (from its f32 values).
    let file = fixture().join("tiny-Q4_K.gguf");
    let acceleration = AccelerationConfig { quantization: Quantization::DynamicInt8, ..Default::default() };
    let int8 = Engine::load(&file, &LoadOptions { acceleration, threads: Some(2), ..Default::default() }).unwrap();
    assert_eq!(int8.model.weight_format, "q8_0");
    let acceleration = AccelerationConfig { quantization: Quantization::Fp32, ..Default::default() };
    let wide = Engine::load(&file, &LoadOptions { acceleration, threads: Some(2), ..Default::default() }).unwrap();
    for p in PROMPTS {
        let err = rel_l2(&int8.compute_logits(p, false).unwrap(), &wide.compute_logits(p, false).unwrap());
        assert!(err > 1e-6 && err < 5e-2, "dynamic_int8 from Q4_K: relative L2 {err}");
    }
}
