//! Structured outputs, logprobs and logit bias on the tiny fixture (random weights: without the
//! grammar its output is never JSON, so a parse proves the mask did the work).
use nano_qwen3_engine::serve::grammar::GrammarSpec;
use nano_qwen3_engine::{Engine, GenerateOutput, GenerateRequest, LoadOptions};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::OnceLock;

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/qwen3-tiny");
        Engine::load(&dir, &LoadOptions { threads: Some(2), ..Default::default() }).unwrap()
    })
}

fn run(prompt: &str, req: GenerateRequest) -> nano_qwen3_engine::Result<GenerateOutput> {
    let e = engine();
    let ids = e.tokenizer.encode(prompt, false).unwrap();
    let opts = req.resolve(&e.generation_defaults)?;
    e.generate(&ids, &opts, &AtomicBool::new(false), &mut |_| {})
}

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": { "type": "string", "maxLength": 12 },
            "age": { "type": "integer", "minimum": 0, "maximum": 120 },
            "tags": { "type": "array", "items": { "enum": ["red", "green", "blue"] }, "maxItems": 3 },
            "address": {
                "type": "object",
                "properties": { "city": { "type": "string", "maxLength": 10 }, "zip": { "type": "integer" } },
                "required": ["city"],
                "additionalProperties": false
            }
        },
        "required": ["name", "age", "tags", "address"],
        "additionalProperties": false
    })
}

/// JSON Schema's integer: any number without a fraction ("-0" and "1e2" included).
fn is_integer(v: &Value) -> bool {
    v.as_f64().is_some_and(|f| f.fract() == 0.0)
}

/// The schema's rules, checked by hand on the parsed value.
fn check(v: &Value) -> Result<(), String> {
    let o = v.as_object().ok_or("not an object")?;
    let keys: Vec<&str> = o.keys().map(String::as_str).collect();
    for k in &keys {
        if !["name", "age", "tags", "address"].contains(k) {
            return Err(format!("extra key {k}"));
        }
    }
    let name = o.get("name").and_then(Value::as_str).ok_or("name")?;
    if name.chars().count() > 12 {
        return Err("name too long".into());
    }
    let age = o.get("age").filter(|a| is_integer(a)).and_then(Value::as_f64).ok_or("age")?;
    if !(0.0..=120.0).contains(&age) {
        return Err(format!("age {age}"));
    }
    let tags = o.get("tags").and_then(Value::as_array).ok_or("tags")?;
    if tags.len() > 3 || !tags.iter().all(|t| ["red", "green", "blue"].contains(&t.as_str().unwrap_or(""))) {
        return Err(format!("tags {tags:?}"));
    }
    let addr = o.get("address").and_then(Value::as_object).ok_or("address")?;
    addr.get("city").and_then(Value::as_str).filter(|c| c.chars().count() <= 10).ok_or("city")?;
    if addr.keys().any(|k| k != "city" && k != "zip") || addr.get("zip").is_some_and(|z| !is_integer(z)) {
        return Err(format!("address {addr:?}"));
    }
    Ok(())
}

#[test]
fn json_schema_output_parses_and_validates_on_every_seed() {
    for seed in 0..10 {
        let req = GenerateRequest {
            max_tokens: Some(400.0),
            temperature: Some(1.0),
            seed: Some(seed as f64),
            grammar: Some(GrammarSpec::JsonSchema { schema: schema() }),
            ..Default::default()
        };
        let out = run("Describe a person as JSON:", req).unwrap();
        let v: Value = serde_json::from_str(&out.text).unwrap_or_else(|e| panic!("seed {seed}: {e}: {:?}", out.text));
        check(&v).unwrap_or_else(|e| panic!("seed {seed}: {e}: {}", out.text));
        assert_eq!(out.finish_reason, nano_qwen3_engine::FinishReason::Stop, "seed {seed}: {}", out.text);
    }
    // Without the grammar the same request is not JSON: the test above measures the constraint.
    let free = run("Describe a person as JSON:", GenerateRequest { max_tokens: Some(40.0), temperature: Some(1.0), seed: Some(0.0), ..Default::default() }).unwrap();
    assert!(serde_json::from_str::<Value>(&free.text).is_err(), "{}", free.text);
}

#[test]
fn json_object_regex_and_lark_are_each_enforced() {
    let req = |g: GrammarSpec, seed: f64| GenerateRequest { max_tokens: Some(200.0), temperature: Some(1.0), seed: Some(seed), grammar: Some(g), ..Default::default() };
    let obj = run("x", req(GrammarSpec::JsonObject, 3.0)).unwrap();
    assert!(serde_json::from_str::<Value>(&obj.text).unwrap().is_object(), "{}", obj.text);
    for seed in 0..5 {
        let r = run("x", req(GrammarSpec::Regex { pattern: "[0-9]{3}-[a-z]{2}".into() }, seed as f64)).unwrap();
        let b = r.text.as_bytes();
        assert!(b.len() == 6 && b[..3].iter().all(u8::is_ascii_digit) && b[3] == b'-' && b[4..].iter().all(u8::is_ascii_lowercase), "{:?}", r.text);
    }
    let lark = run("x", req(GrammarSpec::Lark { grammar: "start: (\"yes\" | \"no\") \"!\"".into() }, 1.0)).unwrap();
    assert!(lark.text == "yes!" || lark.text == "no!", "{:?}", lark.text);
}

#[test]
fn bad_grammars_are_refused_before_anything_runs() {
    let e = run("x", GenerateRequest { grammar: Some(GrammarSpec::Lark { grammar: "start: ???".into() }), ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("grammar"), "{e}");
}

#[test]
fn logprobs_are_the_model_distribution_and_top_is_sorted() {
    let e = engine();
    let ids = e.tokenizer.encode("The capital of France", false).unwrap();
    let logits = e.compute_logits(&ids, false).unwrap();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let norm = max + (logits[..e.tokenizer.vocab_size()].iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>().ln() as f32);
    let req = GenerateRequest { max_tokens: Some(4.0), temperature: Some(0.0), logprobs: Some(5.0), ignore_eos: true, ..Default::default() };
    let out = run("The capital of France", req).unwrap();
    let lp = out.logprobs.unwrap();
    assert_eq!(lp.len(), out.token_ids.len());
    let first = &lp[0];
    assert_eq!(first.chosen.token_id, out.token_ids[0]);
    assert!((first.chosen.logprob - (logits[out.token_ids[0] as usize] - norm)).abs() < 1e-4, "{} vs plain", first.chosen.logprob);
    for t in &lp {
        assert_eq!(t.top.len(), 5);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(t.top[0].token_id, t.chosen.token_id);
        assert!(t.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
        assert!(t.top.iter().all(|a| a.logprob <= 0.0));
    }
    assert_eq!(first.chosen.bytes, e.tokenizer.decode(&[first.chosen.token_id], false).unwrap().into_bytes());
    let bad = GenerateRequest { logprobs: Some(21.0), ..Default::default() }.resolve(&e.generation_defaults).unwrap_err();
    assert!(bad.to_string().contains("logprobs") && bad.to_string().contains("21"), "{bad}");
}

#[test]
fn logit_bias_forces_a_token_and_bad_ids_are_named() {
    let mut bias = std::collections::BTreeMap::new();
    bias.insert("1000".to_string(), 100.0);
    let req = GenerateRequest { max_tokens: Some(3.0), temperature: Some(0.0), logit_bias: bias, ignore_eos: true, ..Default::default() };
    let out = run("hello", req).unwrap();
    assert_eq!(out.token_ids, vec![1000, 1000, 1000]);
    let mut bad = std::collections::BTreeMap::new();
    bad.insert("99999999".to_string(), 1.0);
    let e = run("hello", GenerateRequest { logit_bias: bad, ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("logitBias") && e.to_string().contains("99999999"), "{e}");
    let mut far = std::collections::BTreeMap::new();
    far.insert("5".to_string(), 101.0);
    assert!(run("hello", GenerateRequest { logit_bias: far, ..Default::default() }).is_err());
}
