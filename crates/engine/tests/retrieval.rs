//! Embeddings and reranking against the references of an implementation written apart from the
//! engine (scripts/test-data/qwen3_numpy.py, float64), and a row's independence from its batch:
//! alone, among 32 texts of mixed lengths, and sharing steps with generation.
use nano_qwen3_engine::{AccelerationConfig, EmbedInput, EmbedOptions, Engine, Event, GenerateRequest, LoadOptions, ModelKind, RerankOptions};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::mpsc;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn load(dir: &str, opts: LoadOptions) -> Engine {
    Engine::load(&fixtures().join(dir), &LoadOptions { threads: Some(2), ..opts }).unwrap()
}

fn reference(path: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(path)).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// max |a - b| over max |b|: the error relative to the vector's scale; NaN never passes.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, &x| m.max(x.abs() as f64));
    let err = a.iter().zip(b).fold(0f64, |m, (&x, &y)| if (x - y).is_nan() { f64::INFINITY } else { m.max((x as f64 - y as f64).abs()) });
    err / scale
}

fn text(s: &str) -> EmbedInput {
    EmbedInput::Text(s.into())
}

#[test]
fn embeddings_match_the_numpy_reference_in_f32() {
    let engine = load("qwen3-embedding-tiny", LoadOptions::default());
    assert_eq!(engine.retrieval.kind, ModelKind::Embedding);
    let r = reference("qwen3-embedding-tiny/reference.json");
    for case in r["cases"].as_array().unwrap() {
        let instruction = case["instruction"].as_str().map(String::from);
        let input = text(case["text"].as_str().unwrap());
        let ids: Vec<u32> = case["input_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(engine.embedding_ids(&input, instruction.as_deref()).unwrap(), ids, "ids of {:?}", case["text"]);
        let raw = engine.embed(&[input.clone()], &EmbedOptions { instruction: instruction.clone(), normalize: Some(false), ..Default::default() }).unwrap();
        assert_eq!(raw.prompt_tokens, ids.len());
        let e = rel_err(&raw.embeddings[0], &floats(&case["pooled"]));
        assert!(e < 1e-4, "pooled {:?}: {e:e}", case["text"]);
        let unit = engine.embed(&[input.clone()], &EmbedOptions { instruction: instruction.clone(), ..Default::default() }).unwrap();
        let e = rel_err(&unit.embeddings[0], &floats(&case["embedding"]));
        assert!(e < 1e-4, "normalised {:?}: {e:e}", case["text"]);
        // Matryoshka: the first 16 values of the pooled state, then normalised.
        let want: Vec<f32> = floats(&case["pooled"])[..16].to_vec();
        let n = want.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let want: Vec<f32> = want.iter().map(|x| (*x as f64 / n) as f32).collect();
        let d16 = engine.embed(&[input], &EmbedOptions { instruction, dimensions: Some(16), ..Default::default() }).unwrap();
        assert!(rel_err(&d16.embeddings[0], &want) < 1e-4);
    }
}

#[test]
fn an_embedding_is_the_same_alone_in_a_batch_of_32_and_beside_generation() {
    let engine = load("qwen3-embedding-tiny", LoadOptions::default());
    let r = reference("qwen3-embedding-tiny/reference.json");
    let long = r["cases"][5]["text"].as_str().unwrap().to_string();
    let target = text("The capital of France is Paris.");
    let alone = engine.embed(&[target.clone()], &EmbedOptions::default()).unwrap().embeddings.remove(0);
    // 31 neighbours of mixed lengths (a word to the 577-token text), the target in the middle.
    let chars = long.chars().count();
    let mut batch: Vec<EmbedInput> = (0..31).map(|i| EmbedInput::Text(long.chars().take(1 + (i * 97 + 5) % chars).collect())).collect();
    batch.insert(13, target.clone());
    let out = engine.embed(&batch, &EmbedOptions::default()).unwrap();
    assert_eq!(out.embeddings.len(), 32);
    assert_eq!(out.embeddings[13], alone, "in a batch of 32");
    // Beside generation requests in the same steps (the embedding checkpoint's tied head decodes).
    let opts = GenerateRequest { max_tokens: Some(40.0), temperature: Some(0.0), ignore_eos: true, ..Default::default() }.resolve(&engine.generation_defaults).unwrap();
    let gens: Vec<_> = (0..3)
        .map(|i| {
            let (tx, rx) = mpsc::channel();
            let prompt = engine.tokenizer.encode(&long.chars().take(100 + 50 * i).collect::<String>(), false).unwrap();
            engine.submit(prompt, &opts, Box::new(move |e| drop(tx.send(e)))).unwrap();
            rx
        })
        .collect();
    let during = engine.embed(&[text("warm-up so decoding is under way"), target.clone()], &EmbedOptions::default()).unwrap();
    let mut generated = 0;
    for rx in gens {
        loop {
            if let Event::Done(out) = rx.recv().unwrap() {
                generated += out.unwrap().token_ids.len();
                break;
            }
        }
    }
    assert_eq!(generated, 120);
    assert_eq!(during.embeddings[1], alone, "beside generation");
    assert!(engine.serving_stats().steps > 0);
}

#[test]
fn bad_embedding_inputs_are_refused_with_the_numbers() {
    let engine = load("qwen3-embedding-tiny", LoadOptions { max_seq_length: Some(64), ..Default::default() });
    let long = "word ".repeat(200);
    let n = engine.embedding_ids(&text(&long), None).unwrap().len();
    assert!(n > 200);
    let e = engine.embed(&[text("ok"), text(&long)], &EmbedOptions::default()).unwrap_err().to_string();
    assert!(e.contains("input[1]") && e.contains(&format!("{n} tokens")) && e.contains("at most 64 tokens"), "{e}");
    let e = engine.embed(&[], &EmbedOptions::default()).unwrap_err().to_string();
    assert!(e.contains("0 inputs") && e.contains("2048"), "{e}");
    let e = engine.embed(&[text("ok")], &EmbedOptions { dimensions: Some(33), ..Default::default() }).unwrap_err().to_string();
    assert!(e.contains("dimensions") && e.contains("1 ..= 32"), "{e}");
    let e = engine.embed(&[text("")], &EmbedOptions::default()).unwrap_err().to_string();
    assert!(e.contains("input[0]") && e.contains("empty"), "{e}");
    let e = engine.embed(&[EmbedInput::Tokens(vec![1, 151669])], &EmbedOptions::default()).unwrap_err().to_string();
    assert!(e.contains("151669") && e.contains("151669"), "{e}");
    // Still serving after the refusals.
    assert_eq!(engine.embed(&[text("ok")], &EmbedOptions::default()).unwrap().embeddings[0].len(), 32);
}

#[test]
fn rerank_scores_match_the_numpy_reference() {
    let engine = load("qwen3-tiny", LoadOptions::default());
    assert_eq!(engine.retrieval.kind, ModelKind::Generate, "a causal LM, which reranks all the same");
    let r = reference("qwen3-tiny/rerank-reference.json");
    let query = r["query"].as_str().unwrap();
    let docs: Vec<String> = r["documents"].as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_string()).collect();
    for instruction in [None, Some("Given a question, find the passage that answers it")] {
        let cases: Vec<&Value> = r["cases"].as_array().unwrap().iter().filter(|c| c["instruction"].as_str() == instruction).collect();
        for c in &cases {
            let i = c["document_index"].as_u64().unwrap() as usize;
            let ids: Vec<u32> = c["input_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            assert_eq!(engine.rerank_ids(query, &docs[i], instruction).unwrap(), ids);
        }
        let out = engine.rerank(query, &docs, &RerankOptions { instruction: instruction.map(String::from), top_n: None }).unwrap();
        assert_eq!(out.results.len(), docs.len());
        assert!(out.results.windows(2).all(|w| w[0].score >= w[1].score), "sorted best first");
        for s in &out.results {
            let want = cases.iter().find(|c| c["document_index"].as_u64() == Some(s.index as u64)).unwrap()["score"].as_f64().unwrap();
            assert!((s.score - want).abs() < 1e-4, "doc {}: {} vs {want}", s.index, s.score);
        }
        let top = engine.rerank(query, &docs, &RerankOptions { instruction: instruction.map(String::from), top_n: Some(2) }).unwrap();
        assert_eq!(top.results, out.results[..2]);
    }
    let e = engine.rerank("", &docs, &RerankOptions::default()).unwrap_err().to_string();
    assert!(e.contains("query"), "{e}");
    let e = engine.rerank(query, &docs, &RerankOptions { top_n: Some(0), ..Default::default() }).unwrap_err().to_string();
    assert!(e.contains("topN"), "{e}");
}

#[test]
fn the_plan_says_which_pooling_runs_and_the_kind_can_be_overridden() {
    let engine = load("qwen3-tiny", LoadOptions { model_kind: Some(ModelKind::Embedding), acceleration: AccelerationConfig::default(), ..Default::default() });
    let item = engine.plan.items.iter().find(|i| i.option == "modelKind").unwrap();
    assert_eq!(item.requested, "embedding");
    assert!(item.detail.contains("last-token pooling") && item.detail.contains("modelKind option"), "{}", item.detail);
    // A chat model embeds too (last-token pooling, no EOS appended by its tokenizer).
    let v = engine.embed(&[text("hello")], &EmbedOptions::default()).unwrap();
    let norm: f64 = v.embeddings[0].iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5);
}

#[test]
fn an_embedding_model_exported_to_gguf_is_one_there_too() {
    let folder = load("qwen3-embedding-tiny", LoadOptions::default());
    let dir = std::env::temp_dir().join(format!("nano-qwen3-emb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("emb.gguf");
    folder.export_gguf(&file).unwrap();
    let gguf = Engine::load(&file, &LoadOptions { threads: Some(2), ..Default::default() }).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    // pooling_type 3 and add_eos_token: the GGUF's tokenizer appends nothing itself.
    assert_eq!((gguf.retrieval.kind, gguf.retrieval.append_eos), (ModelKind::Embedding, Some(151643)), "{:?}", gguf.retrieval);
    let input = text("The capital of France is Paris.");
    assert_eq!(gguf.embedding_ids(&input, None).unwrap(), folder.embedding_ids(&input, None).unwrap());
    let (a, b) = (folder.embed(&[input.clone()], &EmbedOptions::default()).unwrap(), gguf.embed(&[input], &EmbedOptions::default()).unwrap());
    assert!(rel_err(&b.embeddings[0], &a.embeddings[0]) < 1e-5);
}
