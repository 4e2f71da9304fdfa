//! GGUF import: files written by an independent writer (PyPI `gguf`, see
//! scripts/test-data/write_gguf_fixtures.py), our own exports read back, and bad files.
use nano_qwen3_engine::source::gguf::GgufFile;
use nano_qwen3_engine::source::weights::TensorSource;
use nano_qwen3_engine::{AccelerationConfig, Engine, LoadOptions, Quantization};
use serde_json::Value;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn load(path: &std::path::Path, q: Quantization) -> nano_qwen3_engine::Result<Engine> {
    let acceleration = AccelerationConfig { quantization: q, ..Default::default() };
    Engine::load(path, &LoadOptions { acceleration, threads: Some(2), ..Default::default() })
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn prompts() -> Vec<Vec<u32>> {
    let r: Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("qwen3-tiny/reference.json")).unwrap()).unwrap();
    r["prompts"].as_array().unwrap().iter().map(|p| p["input_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()).collect()
}

#[test]
fn every_block_format_dequantizes_like_gguf_py() {
    let g = GgufFile::open(&fixtures().join("gguf/kquants.gguf")).unwrap();
    for name in ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"] {
        let got = g.load_stored(name, &[3, 512]).unwrap().into_f32_vec().unwrap();
        let want = g.load_stored(&format!("{name}.ref"), &[3, 512]).unwrap().into_f32_vec().unwrap();
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(scale > 0.0, "{name}: empty reference");
        // gguf-py computes in f32 too, in a different order: allow rounding, nothing more.
        assert!(max_abs_diff(&got, &want) <= 1e-6 * scale, "{name}: max diff {}", max_abs_diff(&got, &want));
    }
}

#[test]
fn independent_writer_file_gives_the_safetensors_logits_tokens_and_template() {
    let st = load(&fixtures().join("qwen3-tiny"), Quantization::None).unwrap();
    let gg = load(&fixtures().join("gguf/qwen3-tiny-pypi.gguf"), Quantization::None).unwrap();
    assert_eq!(st.model.config, gg.model.config);
    for p in prompts() {
        let (a, b) = (st.compute_logits(&p, false).unwrap(), gg.compute_logits(&p, false).unwrap());
        // Same bf16 values (some stored as F32 in the file): only summation order may differ
        // (the f32 and bf16 kernels accumulate in different orders), relative to the logits' scale.
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
        // Measured up to 1.1e-5 of the scale on an AVX-512 machine (the AVX512_BF16 path for the
        // bf16 matrices, the AVX2 one for the f32 matrices).
        assert!(max_abs_diff(&a, &b) < 2e-5 * scale, "max diff {} at scale {scale}", max_abs_diff(&a, &b));
    }
    // The tokenizer rebuilt from GGUF metadata encodes and decodes like tokenizer.json.
    let r: Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("qwen3-tiny/reference.json")).unwrap()).unwrap();
    for case in r["tokenizer_cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(gg.tokenizer.encode(text, false).unwrap(), st.tokenizer.encode(text, false).unwrap(), "{text:?}");
    }
    let special = "<|im_start|>user\n<think>hi</think><|im_end|>";
    assert_eq!(gg.tokenizer.encode(special, false).unwrap(), st.tokenizer.encode(special, false).unwrap());
    assert_eq!(gg.tokenizer.vocab_size(), st.tokenizer.vocab_size());
    let msgs = serde_json::json!([{"role": "user", "content": "Hi"}]);
    let opts = Default::default();
    assert_eq!(gg.apply_chat_template(&msgs, &opts).unwrap(), st.apply_chat_template(&msgs, &opts).unwrap());
    assert_eq!(gg.generation_defaults.eos_token_ids, vec![151645]);
}

#[test]
fn exports_read_back_bit_for_bit() {
    let dir = std::env::temp_dir().join(format!("nano-qwen3-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for q in [Quantization::None, Quantization::DynamicInt8, Quantization::Int4] {
        let original = load(&fixtures().join("qwen3-tiny"), q).unwrap();
        let path = dir.join(format!("{}.gguf", q.name()));
        original.export_gguf(&path).unwrap();
        // Loaded with `none`, the file's Q8_0 / Q4_0 blocks run as they are.
        let back = load(&path, Quantization::None).unwrap();
        assert_eq!(back.model.weight_format, original.model.weight_format);
        assert_eq!(back.model.weight_bytes(), original.model.weight_bytes());
        for p in prompts() {
            assert_eq!(back.compute_logits(&p, false).unwrap(), original.compute_logits(&p, false).unwrap(), "{}", q.name());
        }
        // Exported again, the file is the same (tokenizer and template carried through).
        // (same file name: it becomes general.name)
        std::fs::create_dir_all(dir.join("again")).unwrap();
        let again = dir.join("again").join(format!("{}.gguf", q.name()));
        back.export_gguf(&again).unwrap();
        let (a, b) = (std::fs::read(&path).unwrap(), std::fs::read(&again).unwrap());
        assert!(a == b, "{}: re-export differs", q.name());
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Copy the independent writer's file with `edit` applied, load it, return the error.
fn load_edited(tag: &str, edit: impl FnOnce(&mut Vec<u8>)) -> nano_qwen3_engine::EngineError {
    let mut bytes = std::fs::read(fixtures().join("gguf/qwen3-tiny-pypi.gguf")).unwrap();
    edit(&mut bytes);
    let path = std::env::temp_dir().join(format!("nano-qwen3-bad-{tag}-{}.gguf", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let e = load(&path, Quantization::None).err().expect("loading a bad file must fail");
    std::fs::remove_file(&path).ok();
    e
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).unwrap()
}

#[test]
fn bad_files_are_named_errors() {
    // Truncated in the tensor data, and inside the header.
    let e = load_edited("trunc", |b| b.truncate(b.len() - 1000));
    assert_eq!(e.code(), "INVALID_MODEL_FILE");
    assert!(e.to_string().contains("truncated GGUF file") && e.to_string().contains("needs bytes up to"), "{e}");
    let e = load_edited("header", |b| b.truncate(300));
    assert!(e.to_string().contains("truncated GGUF file"), "{e}");
    let e = load_edited("magic", |b| b[0] = b'X');
    assert!(e.to_string().contains("not a GGUF file"), "{e}");
    // Another architecture (same length, so the file stays well-formed).
    let e = load_edited("arch", |b| {
        let at = find(b, b"qwen3\x0c\x00\x00\x00\x00\x00\x00\x00general.name") ;
        b[at..at + 5].copy_from_slice(b"llama");
    });
    assert_eq!(e.code(), "UNSUPPORTED");
    assert!(e.to_string().contains("\"llama\"") && e.to_string().contains("\"qwen3\", \"qwen2\""), "{e}");
    // A tensor type we don't load: blk.0.attn_q.weight's F32 (0) turned into IQ4_NL (20).
    let e = load_edited("type", |b| {
        let name = b"blk.0.attn_q.weight";
        let at = find(b, name) + name.len() + 4 + 2 * 8; // n_dims, two dims, then the type
        assert_eq!(&b[at..at + 4], &[0, 0, 0, 0]);
        b[at] = 20;
    });
    assert_eq!(e.code(), "UNSUPPORTED");
    let e = e.to_string();
    assert!(e.contains("\"blk.0.attn_q.weight\" has type IQ4_NL"), "{e}");
    for listed in ["F32", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"] {
        assert!(e.contains(listed), "{listed} missing from: {e}");
    }
}

/// Every config value the GGUF reader has a fallback for, set to something else than that fallback
/// before the export: a key written under a wrong name (read back as the fallback) fails here.
#[test]
fn every_metadata_key_survives_an_export_with_non_default_values() {
    let dir = std::env::temp_dir().join(format!("nano-qwen3-meta-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixtures().join("qwen3-tiny");
    for f in ["model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    // Fallbacks: rms_norm_eps 1e-6, rope_theta 1e6, context 32768, kv heads = heads, key length =
    // hidden / heads, no bos; eos from generation_config.json (absent here).
    cfg["rms_norm_eps"] = 3e-5.into();
    cfg["rope_theta"] = 12345.0.into();
    cfg["max_position_embeddings"] = 1536.into();
    cfg["bos_token_id"] = 151644.into();
    cfg["eos_token_id"] = 151643.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let folder = load(&dir, Quantization::None).unwrap();
    let path = dir.join("meta.gguf");
    folder.export_gguf(&path).unwrap();
    let gguf = load(&path, Quantization::None).unwrap();
    let (a, b) = (&folder.model.config, &gguf.model.config);
    assert_eq!(b.rms_norm_eps as f32, 3e-5f32);
    assert_eq!(b.rope_theta as f32, 12345.0f32);
    assert_eq!(b.max_position_embeddings, 1536);
    assert_eq!(b.bos_token_id, Some(151644));
    assert_eq!(b.eos_token_ids, vec![151643]);
    assert_eq!(gguf.generation_defaults.eos_token_ids, vec![151643]);
    assert_eq!(
        (b.vocab_size, b.hidden_size, b.intermediate_size, b.num_hidden_layers, b.num_attention_heads, b.num_key_value_heads, b.head_dim, b.tie_word_embeddings),
        (a.vocab_size, a.hidden_size, a.intermediate_size, a.num_hidden_layers, a.num_attention_heads, a.num_key_value_heads, a.head_dim, a.tie_word_embeddings)
    );
    assert_ne!(a.num_key_value_heads, a.num_attention_heads, "the fixture must not match the kv-heads fallback");
    assert_ne!(a.head_dim, a.hidden_size / a.num_attention_heads, "the fixture must not match the key-length fallback");
    // And the model computes the same (rope_theta and eps reach the forward pass).
    for p in prompts() {
        assert_eq!(gguf.compute_logits(&p, false).unwrap(), folder.compute_logits(&p, false).unwrap());
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Overwrite the 4-byte value of metadata `key` (its type must be `ty`: 4 = u32, 6 = f32).
fn set_meta(b: &mut [u8], key: &str, ty: u32, value: [u8; 4]) {
    let at = find(b, key.as_bytes()) + key.len();
    assert_eq!(u32::from_le_bytes(b[at..at + 4].try_into().unwrap()), ty, "{key}'s type");
    b[at + 4..at + 8].copy_from_slice(&value);
}

#[test]
fn bad_metadata_values_are_named_errors() {
    let cases: [(&str, u32, [u8; 4], &str); 5] = [
        ("qwen3.attention.head_count_kv", 4, 3u32.to_le_bytes(), "head_count 4 is not a multiple of head_count_kv 3"),
        ("qwen3.attention.head_count_kv", 4, 0u32.to_le_bytes(), "head_count 4 is not a multiple of head_count_kv 0"),
        ("qwen3.block_count", 4, 0u32.to_le_bytes(), "\"qwen3.block_count\" is missing or not a positive integer"),
        ("qwen3.attention.layer_norm_rms_epsilon", 6, 0f32.to_le_bytes(), "is 0; it must be a positive number"),
        ("qwen3.attention.layer_norm_rms_epsilon", 6, (-1e-6f32).to_le_bytes(), "is -0.000001; it must be a positive number"),
    ];
    for (i, (key, ty, value, want)) in cases.into_iter().enumerate() {
        let e = load_edited(&format!("meta{i}"), |b| set_meta(b, key, ty, value));
        assert_eq!(e.code(), "INVALID_MODEL_FILE", "{key}");
        assert!(e.to_string().contains(want), "{key}: {e}");
    }
}

#[test]
fn a_tokenizer_other_than_gpt2_with_qwen2_pre_is_refused() {
    // tokenizer.ggml.pre's value (a string: type 8, length 5, "qwen2") turned into "llama".
    let e = load_edited("pre", |b| {
        let key = b"tokenizer.ggml.pre";
        let at = find(b, key) + key.len() + 4 + 8;
        assert_eq!(&b[at..at + 5], b"qwen2");
        b[at..at + 5].copy_from_slice(b"llama");
    });
    assert_eq!(e.code(), "UNSUPPORTED");
    assert!(e.to_string().contains("tokenizer \"gpt2\" with pre-tokenizer \"llama\" is not supported"), "{e}");
}

/// The keys llama.cpp reads and this engine does not (it would not notice them written wrong):
/// checked in the exported file itself.
#[test]
fn exports_carry_what_llama_cpp_reads() {
    use nano_qwen3_engine::source::gguf::Meta;
    let dir = std::env::temp_dir().join(format!("nano-qwen3-llama-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let engine = load(&fixtures().join("qwen3-tiny"), Quantization::None).unwrap();
    let path = dir.join("tiny.gguf");
    let written = engine.export_gguf(&path).unwrap();
    assert_eq!(written, std::fs::metadata(&path).unwrap().len(), "the returned size is the file's");
    let g = GgufFile::open(&path).unwrap();
    let cfg = &engine.model.config;
    let int = |k: &str| g.meta(k).and_then(Meta::as_u64);
    assert_eq!(int("general.alignment"), Some(32));
    assert_eq!(g.meta("tokenizer.ggml.add_bos_token"), Some(&Meta::Bool(false)));
    assert_eq!(int("qwen3.attention.value_length"), Some(cfg.head_dim as u64));
    let pad = engine.tokenizer.token_to_id("<|endoftext|>").unwrap();
    assert_eq!(int("tokenizer.ggml.padding_token_id"), Some(pad as u64));
    // bos: the config's (the metadata round-trip test gives it a value that is not the pad).
    assert_eq!(int("tokenizer.ggml.bos_token_id"), cfg.bos_token_id.map(u64::from));
    // Token types: control (special added tokens) 3, user-defined (other added tokens) 4, normal 1,
    // and the embedding's rows past the tokenizer padded as unused (5) "[PAD<id>]".
    let (tokens, types, _) = g.tokenizer_arrays().unwrap();
    assert_eq!(tokens.len(), cfg.vocab_size);
    let id = |t: &str| engine.tokenizer.token_to_id(t).unwrap() as usize;
    assert_eq!((types[id("<|im_start|>")], types[id("<tool_call>")], types[id("hello")]), (3, 4, 1));
    let last = cfg.vocab_size - 1;
    assert_eq!((tokens[last].as_str(), types[last]), (format!("[PAD{last}]").as_str(), 5));
    assert_eq!(tokens[id("<tool_call>")], "<tool_call>");
    // Read back: special tokens stay special (skipped when asked), user-defined ones do not.
    let back = load(&path, Quantization::None).unwrap();
    let ids = engine.tokenizer.encode("<|im_start|>a<tool_call>b<|im_end|>", false).unwrap();
    for skip in [false, true] {
        assert_eq!(back.tokenizer.decode(&ids, skip).unwrap(), engine.tokenizer.decode(&ids, skip).unwrap(), "skip {skip}");
    }
    assert_eq!(back.tokenizer.decode(&ids, true).unwrap(), "a<tool_call>b");
    // The merges came through: text encodes as the original tokenizer encodes it.
    let text = "Hello world, the merges are all here: tokenization";
    assert_eq!(back.tokenizer.encode(text, false).unwrap(), engine.tokenizer.encode(text, false).unwrap());
    std::fs::remove_dir_all(&dir).ok();
}

/// tokenizer.json writes merges as pairs (tokenizers >= 0.20) or as "a b" strings (older files):
/// both export the same GGUF merges.
#[test]
fn both_merge_formats_export_the_same_merges() {
    let dir = std::env::temp_dir().join(format!("nano-qwen3-merges-{}", std::process::id()));
    let src = fixtures().join("qwen3-tiny");
    let mut merges = Vec::new();
    for form in ["pairs", "strings"] {
        let folder = dir.join(form);
        std::fs::create_dir_all(&folder).unwrap();
        for f in ["config.json", "model.safetensors", "tokenizer_config.json"] {
            std::fs::copy(src.join(f), folder.join(f)).unwrap();
        }
        let mut tj: Value = serde_json::from_str(&std::fs::read_to_string(src.join("tokenizer.json")).unwrap()).unwrap();
        assert!(tj["model"]["merges"][0].is_array(), "the fixture stores pairs");
        if form == "strings" {
            let joined: Vec<Value> = tj["model"]["merges"].as_array().unwrap().iter().map(|p| format!("{} {}", p[0].as_str().unwrap(), p[1].as_str().unwrap()).into()).collect();
            tj["model"]["merges"] = joined.into();
        }
        std::fs::write(folder.join("tokenizer.json"), tj.to_string()).unwrap();
        let path = folder.join("x.gguf");
        load(&folder, Quantization::None).unwrap().export_gguf(&path).unwrap();
        merges.push(GgufFile::open(&path).unwrap().tokenizer_arrays().unwrap().2);
    }
    std::fs::remove_dir_all(&dir).ok();
    assert!(merges[0].len() > 1000 && merges[0] == merges[1], "{} vs {} merges", merges[0].len(), merges[1].len());
    assert_eq!(merges[0][0], "Ġ Ġ");
}

#[test]
fn a_failed_export_leaves_nothing_behind() {
    let dir = std::env::temp_dir().join(format!("nano-qwen3-failed-export-{}", std::process::id()));
    // The target is a non-empty directory: the file is written, then cannot take its name.
    std::fs::create_dir_all(dir.join("taken.gguf").join("inside")).unwrap();
    let engine = load(&fixtures().join("qwen3-tiny"), Quantization::None).unwrap();
    let e = engine.export_gguf(&dir.join("taken.gguf")).unwrap_err();
    assert_eq!(e.code(), "IO_ERROR", "{e}");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("taken.gguf")], "a partial file stayed");
    std::fs::remove_dir_all(&dir).ok();
}
