//! Hugging Face `config.json` / `generation_config.json` for Qwen3 and Qwen2 / Qwen2.5, in both the
//! transformers-4 (`rope_theta`) and transformers-5 (`rope_parameters`) styles.
use crate::error::{EngineError, Result};
use serde_json::Value;
use std::path::Path;

/// The model families the engine runs. They share one forward pass and differ in two places:
/// Qwen3 normalises each query and key head (RMSNorm) before RoPE, Qwen2 adds biases to the q, k
/// and v projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Qwen3,
    Qwen2,
}

impl Architecture {
    pub const ALL: [Architecture; 2] = [Architecture::Qwen3, Architecture::Qwen2];

    /// The name in Hugging Face's `model_type` and in GGUF's `general.architecture` (they agree).
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Qwen3 => "qwen3",
            Architecture::Qwen2 => "qwen2",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// `"qwen3", "qwen2"`, for error messages.
    pub fn supported() -> String {
        Self::ALL.map(|a| format!("\"{}\"", a.name())).join(", ")
    }

    /// The model class transformers names it by (config.json's `architectures`).
    pub fn hf_class(self) -> &'static str {
        match self {
            Architecture::Qwen3 => "Qwen3ForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
        }
    }

    /// Per-head RMSNorm of queries and keys before RoPE.
    pub fn qk_norm(self) -> bool {
        self == Architecture::Qwen3
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    /// Biases on the q, k and v projections (always for Qwen2; `attention_bias` for Qwen3).
    pub attention_bias: bool,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
}

/// Sampling defaults a checkpoint ships in `generation_config.json`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationDefaults {
    pub do_sample: bool,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub eos_token_ids: Vec<u32>,
}

fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect(),
        _ => vec![],
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            EngineError::ModelNotFound(format!("{} does not exist", path.display()))
        } else {
            EngineError::Io { path: path.into(), source: e }
        }
    })?;
    serde_json::from_str(&text)
        .map_err(|e| EngineError::InvalidConfig { path: path.into(), reason: format!("not valid JSON: {e}") })
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_json(&read_json(path)?, path)
    }

    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        let bad = |reason: String| EngineError::InvalidConfig { path: path.into(), reason };
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("<missing>");
        let architecture = Architecture::from_name(model_type)
            .ok_or_else(|| bad(format!("model_type is \"{model_type}\"; supported: {}", Architecture::supported())))?;
        if v.get("use_sliding_window").and_then(Value::as_bool) == Some(true) {
            return Err(bad("use_sliding_window is true; sliding-window attention is not supported".into()));
        }
        let req = |key: &str| -> Result<usize> {
            match v.get(key).and_then(Value::as_u64) {
                Some(n) if n > 0 => Ok(n as usize),
                Some(_) => Err(bad(format!("\"{key}\" must be a positive integer"))),
                None => Err(bad(format!("required field \"{key}\" is missing or not an integer"))),
            }
        };
        let hidden_size = req("hidden_size")?;
        let num_attention_heads = req("num_attention_heads")?;
        let num_key_value_heads = match v.get("num_key_value_heads") {
            Some(_) => req("num_key_value_heads")?,
            None => num_attention_heads,
        };
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(bad(format!(
                "num_attention_heads ({num_attention_heads}) is not a multiple of num_key_value_heads ({num_key_value_heads})"
            )));
        }
        let head_dim = match v.get("head_dim") {
            Some(Value::Null) | None => hidden_size / num_attention_heads,
            Some(_) => req("head_dim")?,
        };
        // transformers 5 moved rope_theta into rope_parameters.
        let rope_theta = v
            .get("rope_parameters")
            .and_then(|p| p.get("rope_theta"))
            .or_else(|| v.get("rope_theta"))
            .and_then(Value::as_f64)
            .unwrap_or(10_000.0);
        let rope_type = v
            .get("rope_parameters")
            .or_else(|| v.get("rope_scaling"))
            .and_then(|p| p.get("rope_type").or_else(|| p.get("type")))
            .and_then(Value::as_str)
            .unwrap_or("default");
        if rope_type != "default" {
            return Err(bad(format!("rope_type \"{rope_type}\" is not supported; supported: \"default\"")));
        }
        let rms_norm_eps = match v.get("rms_norm_eps") {
            None => 1e-6,
            Some(e) => match e.as_f64() {
                Some(e) if e > 0.0 && e.is_finite() => e,
                _ => return Err(bad(format!("\"rms_norm_eps\" is {e}; it must be a positive number"))),
            },
        };
        Ok(Self {
            architecture,
            attention_bias: match architecture {
                Architecture::Qwen2 => true,
                Architecture::Qwen3 => v.get("attention_bias").and_then(Value::as_bool).unwrap_or(false),
            },
            vocab_size: req("vocab_size")?,
            hidden_size,
            intermediate_size: req("intermediate_size")?,
            num_hidden_layers: req("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            max_position_embeddings: v.get("max_position_embeddings").and_then(Value::as_u64).unwrap_or(32768)
                as usize,
            tie_word_embeddings: v.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
            eos_token_ids: token_ids(v.get("eos_token_id")),
            bos_token_id: v.get("bos_token_id").and_then(Value::as_u64).map(|x| x as u32),
        })
    }

    /// Number of parameters, counting a tied embedding once.
    pub fn num_parameters(&self) -> usize {
        let (h, i, hd) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let q = self.num_attention_heads * hd;
        let kv = self.num_key_value_heads * hd;
        let bias = if self.attention_bias { q + 2 * kv } else { 0 };
        let qk_norm = if self.architecture.qk_norm() { 2 * hd } else { 0 };
        let layer = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h + bias + qk_norm;
        let embed = self.vocab_size * h;
        embed * if self.tie_word_embeddings { 1 } else { 2 } + self.num_hidden_layers * layer + h
    }
}

impl GenerationDefaults {
    /// Missing file means "no defaults", not an error: many checkpoints don't ship one.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("generation_config.json");
        if !path.exists() {
            return Ok(Self::default());
        }
        let v = read_json(&path)?;
        Ok(Self {
            do_sample: v.get("do_sample").and_then(Value::as_bool).unwrap_or(false),
            temperature: v.get("temperature").and_then(Value::as_f64),
            top_p: v.get("top_p").and_then(Value::as_f64),
            top_k: v.get("top_k").and_then(Value::as_u64).map(|x| x as usize),
            min_p: v.get("min_p").and_then(Value::as_f64),
            repetition_penalty: v.get("repetition_penalty").and_then(Value::as_f64),
            eos_token_ids: token_ids(v.get("eos_token_id")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({"model_type":"qwen3","vocab_size":10,"hidden_size":8,"intermediate_size":16,
               "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,"head_dim":4,
               "rope_theta":5000.0,"eos_token_id":[1,2]})
    }

    #[test]
    fn both_rope_styles_agree() {
        let p = Path::new("config.json");
        let v4 = ModelConfig::from_json(&base(), p).unwrap();
        let mut v5 = base();
        v5.as_object_mut().unwrap().remove("rope_theta");
        v5["rope_parameters"] = json!({"rope_theta": 5000.0, "rope_type": "default"});
        assert_eq!(v4, ModelConfig::from_json(&v5, p).unwrap());
        assert_eq!(v4.rope_theta, 5000.0);
        assert_eq!(v4.eos_token_ids, vec![1, 2]);
    }

    #[test]
    fn qwen2_has_biases_and_no_qk_norm() {
        let p = Path::new("config.json");
        let mut v = base();
        v["model_type"] = json!("qwen2");
        let c = ModelConfig::from_json(&v, p).unwrap();
        assert_eq!((c.architecture, c.attention_bias, c.architecture.qk_norm()), (Architecture::Qwen2, true, false));
        let q3 = ModelConfig::from_json(&base(), p).unwrap();
        assert_eq!((q3.architecture, q3.attention_bias, q3.architecture.qk_norm()), (Architecture::Qwen3, false, true));
        // Qwen2 counts q/k/v biases (8 + 2·4) and no q/k norms (2·4) per layer.
        assert_eq!(c.num_parameters(), q3.num_parameters() + 16 - 8);
        v["use_sliding_window"] = json!(true);
        let e = ModelConfig::from_json(&v, p).unwrap_err().to_string();
        assert!(e.contains("use_sliding_window"), "{e}");
    }

    #[test]
    fn rms_norm_eps_must_be_positive() {
        let p = Path::new("config.json");
        for bad in [json!(0.0), json!(-1e-6), json!("1e-6")] {
            let mut v = base();
            v["rms_norm_eps"] = bad.clone();
            let e = ModelConfig::from_json(&v, p).unwrap_err().to_string();
            assert!(e.contains("rms_norm_eps") && e.contains(&bad.to_string()), "{e}");
        }
        assert_eq!(ModelConfig::from_json(&base(), p).unwrap().rms_norm_eps, 1e-6);
    }

    #[test]
    fn rejects_unknown_model_type_and_missing_fields() {
        let p = Path::new("config.json");
        let mut v = base();
        v["model_type"] = json!("llama");
        let e = ModelConfig::from_json(&v, p).unwrap_err().to_string();
        assert!(e.contains("\"llama\"") && e.contains("\"qwen3\", \"qwen2\""), "{e}");
        let mut v = base();
        v.as_object_mut().unwrap().remove("hidden_size");
        let e = ModelConfig::from_json(&v, p).unwrap_err().to_string();
        assert!(e.contains("hidden_size"), "{e}");
    }

    /// Elements stored in a safetensors file (its header's shapes), an independent count.
    fn stored_parameters(file: &Path) -> usize {
        let bytes = std::fs::read(file).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let tensors = header.as_object().unwrap().iter().filter(|(k, _)| *k != "__metadata__");
        tensors.map(|(_, t)| t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).product::<usize>()).sum()
    }

    #[test]
    fn parameter_count_matches_the_checkpoints() {
        // Qwen3 tied (no lm_head tensor, q/k norms) and Qwen2 untied (biases): every term counts.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
        for name in ["qwen3-tiny", "qwen2-tiny"] {
            let c = ModelConfig::from_file(&root.join(name).join("config.json")).unwrap();
            assert_eq!(c.num_parameters(), stored_parameters(&root.join(name).join("model.safetensors")), "{name}");
        }
    }

    #[test]
    fn every_field_is_read_and_defaults_are_exact() {
        let p = Path::new("config.json");
        let mut v = base();
        let o = v.as_object_mut().unwrap();
        o.insert("max_position_embeddings".into(), json!(777));
        o.insert("tie_word_embeddings".into(), json!(true));
        o.insert("bos_token_id".into(), json!(9));
        o.insert("rms_norm_eps".into(), json!(1e-5));
        o.insert("attention_bias".into(), json!(true));
        let c = ModelConfig::from_json(&v, p).unwrap();
        let want = ModelConfig {
            architecture: Architecture::Qwen3,
            attention_bias: true,
            vocab_size: 10,
            hidden_size: 8,
            intermediate_size: 16,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            head_dim: 4,
            rms_norm_eps: 1e-5,
            rope_theta: 5000.0,
            max_position_embeddings: 777,
            tie_word_embeddings: true,
            eos_token_ids: vec![1, 2],
            bos_token_id: Some(9),
        };
        assert_eq!(c, want);
        // Only the required fields: every default.
        let bare = json!({"model_type":"qwen3","vocab_size":10,"hidden_size":12,"intermediate_size":16,
                          "num_hidden_layers":1,"num_attention_heads":3,"eos_token_id":7});
        let d = ModelConfig::from_json(&bare, p).unwrap();
        assert_eq!(
            (d.num_key_value_heads, d.head_dim, d.rope_theta, d.rms_norm_eps, d.max_position_embeddings),
            (3, 4, 10_000.0, 1e-6, 32768)
        );
        assert_eq!((d.tie_word_embeddings, d.attention_bias, d.bos_token_id, d.eos_token_ids), (false, false, None, vec![7]));
        // head_dim: null is the derived one too.
        let mut n = bare.clone();
        n["head_dim"] = Value::Null;
        assert_eq!(ModelConfig::from_json(&n, p).unwrap().head_dim, 4);
    }

    #[test]
    fn shape_rules_name_the_field_and_values() {
        let p = Path::new("config.json");
        let err = |edit: &dyn Fn(&mut Value)| {
            let mut v = base();
            edit(&mut v);
            ModelConfig::from_json(&v, p).unwrap_err().to_string()
        };
        let e = err(&|v| v["num_key_value_heads"] = json!(3));
        assert!(e.contains("num_attention_heads (2)") && e.contains("num_key_value_heads (3)"), "{e}");
        let e = err(&|v| v["num_hidden_layers"] = json!(0));
        assert!(e.contains("\"num_hidden_layers\" must be a positive integer"), "{e}");
        let e = err(&|v| v["vocab_size"] = json!("10"));
        assert!(e.contains("\"vocab_size\" is missing or not an integer"), "{e}");
        let e = err(&|v| v["head_dim"] = json!(0));
        assert!(e.contains("\"head_dim\" must be a positive integer"), "{e}");
        let e = err(&|v| v["rms_norm_eps"] = Value::Null);
        assert!(e.contains("\"rms_norm_eps\" is null; it must be a positive number"), "{e}");
        for (key, scaling) in [("rope_scaling", json!({"type": "yarn"})), ("rope_parameters", json!({"rope_type": "linear", "rope_theta": 1.0}))] {
            let e = err(&|v| v[key] = scaling.clone());
            assert!(e.contains("is not supported; supported: \"default\""), "{key}: {e}");
        }
        // A rope_scaling of null (as checkpoints ship it) is the default.
        let mut v = base();
        v["rope_scaling"] = Value::Null;
        assert!(ModelConfig::from_json(&v, p).is_ok());
        // use_sliding_window: false is accepted.
        v["use_sliding_window"] = json!(false);
        assert!(ModelConfig::from_json(&v, p).is_ok());
    }

    #[test]
    fn a_missing_file_is_model_not_found_and_other_read_errors_are_io() {
        let dir = std::env::temp_dir().join(format!("nq3-config-read-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("config.json")).unwrap(); // a directory: not readable as text
        let missing = ModelConfig::from_file(&dir.join("absent.json")).unwrap_err();
        let unreadable = ModelConfig::from_file(&dir.join("config.json")).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!((missing.code(), unreadable.code()), ("MODEL_NOT_FOUND", "IO_ERROR"));
        assert!(missing.to_string().contains("absent.json does not exist"), "{missing}");
    }

    #[test]
    fn architecture_names() {
        assert_eq!(Architecture::from_name("qwen2"), Some(Architecture::Qwen2));
        assert_eq!(Architecture::from_name("qwen3"), Some(Architecture::Qwen3));
        assert_eq!(Architecture::from_name("Qwen3"), None);
        assert_eq!((Architecture::Qwen3.hf_class(), Architecture::Qwen2.hf_class()), ("Qwen3ForCausalLM", "Qwen2ForCausalLM"));
    }

    #[test]
    fn generation_defaults_read_every_key() {
        let dir = std::env::temp_dir().join(format!("nq3-gen-defaults-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(GenerationDefaults::from_dir(&dir).unwrap(), GenerationDefaults::default());
        let text = r#"{"do_sample":true,"temperature":0.6,"top_p":0.95,"top_k":20,"min_p":0.05,"repetition_penalty":1.1,"eos_token_id":[3,4]}"#;
        std::fs::write(dir.join("generation_config.json"), text).unwrap();
        let g = GenerationDefaults::from_dir(&dir).unwrap();
        std::fs::write(dir.join("generation_config.json"), "{not json").unwrap();
        let e = GenerationDefaults::from_dir(&dir).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        let want = GenerationDefaults {
            do_sample: true,
            temperature: Some(0.6),
            top_p: Some(0.95),
            top_k: Some(20),
            min_p: Some(0.05),
            repetition_penalty: Some(1.1),
            eos_token_ids: vec![3, 4],
        };
        assert_eq!(g, want);
        assert!(e.contains("not valid JSON"), "{e}");
    }
}
