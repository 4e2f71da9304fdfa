//! What a checkpoint is for, read from its files: sentence-transformers' `modules.json` +
//! `1_Pooling/config.json` (+ `config_sentence_transformers.json` prompts) in a Hugging Face
//! folder, or llama.cpp's `<arch>.pooling_type` in a GGUF file. A caller may override it.
use crate::error::{EngineError, Result};
use crate::source::gguf::{GgufFile, Meta};
use crate::source::ModelFiles;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// A causal LM (chat / generation). It can still embed (last-token pooling) and rerank.
    Generate,
    Embedding,
    Reranker,
}

impl ModelKind {
    pub const ALL: [&'static str; 3] = ["generate", "embedding", "reranker"];

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "generate" => Ok(Self::Generate),
            "embedding" => Ok(Self::Embedding),
            "reranker" => Ok(Self::Reranker),
            _ => Err(EngineError::invalid_arg("modelKind", format!("{s:?}"), "\"auto\", \"generate\", \"embedding\" or \"reranker\"")),
        }
    }
}

/// How embeddings and scores are made for this checkpoint.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Retrieval {
    pub kind: ModelKind,
    /// Which file (or the override) said so.
    pub detected_from: String,
    /// The pooling the checkpoint asks for ("last_token", "mean", "cls", ...). Only last-token
    /// pooling runs (Qwen3-Embedding's); embedding with another one is refused.
    pub pooling: String,
    /// Whether the checkpoint's pipeline L2-normalises (a sentence-transformers Normalize module,
    /// or any GGUF embedding model, as llama.cpp does).
    pub normalize: bool,
    /// Named prompt prefixes (config_sentence_transformers.json), e.g. "query".
    pub prompts: BTreeMap<String, String>,
    /// A token appended to every embedded text when the tokenizer itself does not add it (a GGUF
    /// with `tokenizer.ggml.add_eos_token`); a Hugging Face tokenizer.json's post-processor adds its own.
    pub append_eos: Option<u32>,
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::Io { path: path.into(), source: e })?;
    serde_json::from_str(&text).map(Some).map_err(|e| EngineError::bad_file(path, format!("not valid JSON: {e}")))
}

/// sentence-transformers' Pooling config -> our name for its mode.
fn pooling_mode(cfg: &Value) -> String {
    let modes = [
        ("pooling_mode_lasttoken", "last_token"),
        ("pooling_mode_mean_tokens", "mean"),
        ("pooling_mode_cls_token", "cls"),
        ("pooling_mode_max_tokens", "max"),
        ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"),
        ("pooling_mode_weightedmean_tokens", "weighted_mean"),
    ];
    let on: Vec<&str> = modes.iter().filter(|(k, _)| cfg.get(*k).and_then(Value::as_bool) == Some(true)).map(|(_, n)| *n).collect();
    match (on.as_slice(), cfg.get("pooling_mode").and_then(Value::as_str)) {
        ([one], _) => one.to_string(),
        ([], Some(m)) if m == "lasttoken" => "last_token".into(),
        ([], Some(m)) => m.to_string(),
        ([], None) => "none".into(),
        (many, _) => many.join("+"),
    }
}

fn from_folder(dir: &Path) -> Result<Retrieval> {
    let causal = |from: &str| Retrieval {
        kind: ModelKind::Generate,
        detected_from: from.into(),
        pooling: "last_token".into(),
        normalize: true,
        prompts: BTreeMap::new(),
        append_eos: None,
    };
    let Some(modules) = read_json(&dir.join("modules.json"))? else {
        return Ok(causal("no modules.json: a causal LM"));
    };
    let list = modules.as_array().ok_or_else(|| EngineError::bad_file(dir.join("modules.json"), "not a JSON array of modules"))?;
    let of_type = |t: &str| list.iter().find(|m| m.get("type").and_then(Value::as_str).is_some_and(|s| s.ends_with(t)));
    let Some(pool) = of_type(".Pooling") else {
        return Ok(causal("modules.json has no Pooling module: a causal LM"));
    };
    let pool_dir = pool.get("path").and_then(Value::as_str).unwrap_or("1_Pooling");
    if pool_dir.contains("..") || Path::new(pool_dir).is_absolute() {
        return Err(EngineError::bad_file(dir.join("modules.json"), format!("Pooling path {pool_dir:?} leaves the model folder")));
    }
    let pool_cfg_path = dir.join(pool_dir).join("config.json");
    let pooling = read_json(&pool_cfg_path)?.map(|c| pooling_mode(&c)).unwrap_or_else(|| "none".into());
    let prompts = read_json(&dir.join("config_sentence_transformers.json"))?
        .and_then(|c| c.get("prompts").and_then(Value::as_object).cloned())
        .map(|m| m.into_iter().filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string()))).collect())
        .unwrap_or_default();
    Ok(Retrieval {
        kind: ModelKind::Embedding,
        detected_from: format!("modules.json + {pool_dir}/config.json"),
        pooling,
        normalize: of_type(".Normalize").is_some(),
        prompts,
        append_eos: None,
    })
}

fn from_gguf(path: &Path) -> Result<Retrieval> {
    let g = GgufFile::open(path)?;
    let key = format!("{}.pooling_type", g.architecture());
    let pooling_type = g.meta(&key).and_then(Meta::as_u64);
    // llama.cpp's enum llama_pooling_type: 0 none, 1 mean, 2 cls, 3 last, 4 rank.
    let (kind, pooling) = match pooling_type {
        None | Some(0) => (ModelKind::Generate, "last_token"),
        Some(1) => (ModelKind::Embedding, "mean"),
        Some(2) => (ModelKind::Embedding, "cls"),
        Some(3) => (ModelKind::Embedding, "last_token"),
        Some(4) => (ModelKind::Reranker, "last_token"),
        Some(_) => (ModelKind::Embedding, "unknown"),
    };
    let add_eos = matches!(g.meta("tokenizer.ggml.add_eos_token"), Some(Meta::Bool(true)));
    let eos = g.meta("tokenizer.ggml.eos_token_id").and_then(Meta::as_u64).map(|e| e as u32);
    Ok(Retrieval {
        kind,
        detected_from: match pooling_type {
            Some(p) => format!("GGUF {key} = {p}"),
            None => format!("no {key} in the GGUF: a causal LM"),
        },
        pooling: pooling.into(),
        normalize: true,
        prompts: BTreeMap::new(),
        append_eos: if add_eos && kind == ModelKind::Embedding { eos } else { None },
    })
}

/// The plan's account of what embedding and reranking run for this checkpoint.
pub fn plan_item(r: &Retrieval) -> crate::acceleration::PlanItem {
    let embed = if r.pooling == "last_token" {
        "embed: last-token pooling of the final-normed hidden state (no lm_head), L2-normalised unless asked not to".to_string()
    } else {
        format!("embed: refused, the checkpoint asks for {} pooling (only last_token runs)", r.pooling)
    };
    crate::acceleration::PlanItem {
        option: "modelKind".into(),
        requested: serde_json::to_value(r.kind).unwrap().as_str().unwrap_or_default().into(),
        applied: true,
        detail: format!("{} ({}); {embed}; rerank: Qwen3-Reranker's template, softmax of the \"no\"/\"yes\" logits at the last position", kind_name(r.kind), r.detected_from),
    }
}

fn kind_name(k: ModelKind) -> &'static str {
    match k {
        ModelKind::Generate => "causal LM",
        ModelKind::Embedding => "embedding model",
        ModelKind::Reranker => "reranker",
    }
}

/// What the checkpoint is, from its files; `kind` (the caller's override) wins over them.
pub fn detect(files: &ModelFiles, kind: Option<ModelKind>) -> Result<Retrieval> {
    let mut r = match files {
        ModelFiles::HfFolder(dir) => from_folder(dir)?,
        ModelFiles::Gguf(path) => from_gguf(path)?,
    };
    if let Some(k) = kind.filter(|&k| k != r.kind) {
        r.detected_from = format!("modelKind option (the files say {}: {})", serde_json::to_value(r.kind).unwrap(), r.detected_from);
        r.kind = k;
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_modes_are_named_and_several_at_once_are_reported() {
        assert_eq!(pooling_mode(&serde_json::json!({"pooling_mode_lasttoken": true, "pooling_mode_mean_tokens": false})), "last_token");
        assert_eq!(pooling_mode(&serde_json::json!({"pooling_mode_mean_tokens": true})), "mean");
        assert_eq!(pooling_mode(&serde_json::json!({"pooling_mode": "lasttoken"})), "last_token");
        assert_eq!(pooling_mode(&serde_json::json!({"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true})), "mean+cls");
        assert_eq!(pooling_mode(&serde_json::json!({})), "none");
    }

    #[test]
    fn the_fixtures_are_told_apart_and_the_override_says_what_it_overrode() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
        let emb = detect(&ModelFiles::HfFolder(root.join("qwen3-embedding-tiny")), None).unwrap();
        assert_eq!((emb.kind, emb.pooling.as_str(), emb.normalize), (ModelKind::Embedding, "last_token", true));
        assert!(emb.prompts["query"].starts_with("Instruct: "), "{:?}", emb.prompts);
        let lm = detect(&ModelFiles::HfFolder(root.join("qwen3-tiny")), None).unwrap();
        assert_eq!(lm.kind, ModelKind::Generate);
        let over = detect(&ModelFiles::HfFolder(root.join("qwen3-tiny")), Some(ModelKind::Reranker)).unwrap();
        assert_eq!(over.kind, ModelKind::Reranker);
        assert!(over.detected_from.contains("modelKind") && over.detected_from.contains("generate"), "{}", over.detected_from);
        let gguf = detect(&ModelFiles::Gguf(root.join("gguf/qwen3-tiny-pypi.gguf")), None).unwrap();
        assert_eq!(gguf.kind, ModelKind::Generate);
    }
}
