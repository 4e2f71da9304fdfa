//! What a GGUF file's metadata says about the model: the Qwen3 / Qwen2 config, the tokenizer (rebuilt as a
//! Hugging Face tokenizer from llama.cpp's `gpt2` / `qwen2` token list and merges), the chat
//! template and the special token ids.
use crate::model::config::{Architecture, GenerationDefaults, ModelConfig};
use crate::error::{EngineError, Result};
use crate::source::gguf::{GgufFile, Meta};
use serde_json::{json, Map, Value};

const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;
const TOKEN_UNUSED: i64 = 5;

/// The pre-tokenizer regex of Qwen2/Qwen3 (llama.cpp's `qwen2` pre-tokenizer).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl GgufFile {
    fn bad(&self, reason: String) -> EngineError {
        EngineError::bad_file(&self.path, reason)
    }

    fn req_usize(&self, key: &str) -> Result<usize> {
        match self.meta(key).and_then(Meta::as_u64) {
            Some(n) if n > 0 => Ok(n as usize),
            _ => Err(self.bad(format!("GGUF metadata \"{key}\" is missing or not a positive integer"))),
        }
    }

    /// GGUF stores these as f32: read back the shortest decimal that rounds to it (1e-6, not
    /// 9.99999997e-7), as the original config said.
    fn f32_meta(&self, key: &str) -> Option<f64> {
        let v = self.meta(key).and_then(Meta::as_f64)?;
        format!("{}", v as f32).parse().ok()
    }

    fn u32_meta(&self, key: &str) -> Option<u32> {
        self.meta(key).and_then(Meta::as_u64).map(|x| x as u32)
    }

    pub fn model_config(&self) -> Result<ModelConfig> {
        let arch_name = self.architecture();
        let architecture = Architecture::from_name(arch_name).ok_or_else(|| {
            EngineError::Unsupported(format!(
                "{}: GGUF architecture \"{arch_name}\" is not supported; supported: {}",
                self.path.display(),
                Architecture::supported()
            ))
        })?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let hidden_size = self.req_usize(&key("embedding_length"))?;
        let num_attention_heads = self.req_usize(&key("attention.head_count"))?;
        let num_key_value_heads = self.u32_meta(&key("attention.head_count_kv")).map(|x| x as usize).unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(self.bad(format!("head_count {num_attention_heads} is not a multiple of head_count_kv {num_key_value_heads}")));
        }
        let head_dim = self.u32_meta(&key("attention.key_length")).map(|x| x as usize).unwrap_or(hidden_size / num_attention_heads);
        let rms_norm_eps = self.f32_meta(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-6);
        if !(rms_norm_eps > 0.0 && rms_norm_eps.is_finite()) {
            return Err(self.bad(format!("GGUF metadata \"{}\" is {rms_norm_eps}; it must be a positive number", key("attention.layer_norm_rms_epsilon"))));
        }
        let embd = self
            .tensors
            .get("token_embd.weight")
            .ok_or_else(|| self.bad("required tensor \"token_embd.weight\" is missing from the GGUF file".into()))?;
        let vocab_size = embd.dims.get(1).copied().unwrap_or(0);
        let eos = self.u32_meta("tokenizer.ggml.eos_token_id");
        Ok(ModelConfig {
            architecture,
            // llama.cpp stores the q/k/v biases as tensors; their presence is the flag.
            attention_bias: self.tensors.contains_key("blk.0.attn_q.bias"),
            vocab_size,
            hidden_size,
            intermediate_size: self.req_usize(&key("feed_forward_length"))?,
            num_hidden_layers: self.req_usize(&key("block_count"))?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps,
            rope_theta: self.f32_meta(&key("rope.freq_base")).unwrap_or(1_000_000.0),
            max_position_embeddings: self.u32_meta(&key("context_length")).map(|x| x as usize).unwrap_or(32768),
            // llama.cpp writes no output.weight when the embedding doubles as the lm_head.
            tie_word_embeddings: !self.tensors.contains_key("output.weight"),
            eos_token_ids: eos.into_iter().collect(),
            bos_token_id: self.u32_meta("tokenizer.ggml.bos_token_id"),
        })
    }

    pub fn generation_defaults(&self) -> GenerationDefaults {
        GenerationDefaults { eos_token_ids: self.u32_meta("tokenizer.ggml.eos_token_id").into_iter().collect(), ..Default::default() }
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.meta("tokenizer.chat_template").and_then(Meta::as_str)
    }

    fn strings(&self, key: &str) -> Result<Vec<&str>> {
        let a = self.meta(key).and_then(Meta::as_array).ok_or_else(|| self.bad(format!("GGUF metadata \"{key}\" is missing")))?;
        a.iter().map(|m| m.as_str().ok_or_else(|| self.bad(format!("GGUF metadata \"{key}\" holds a non-string")))).collect()
    }

    /// tokenizer.json for the file's `gpt2` BPE vocabulary with the `qwen2` pre-tokenizer.
    /// Control and user-defined tokens become added tokens; padding fillers are left out so the
    /// vocabulary matches the original tokenizer's.
    pub fn tokenizer_json(&self) -> Result<String> {
        let model = self.meta("tokenizer.ggml.model").and_then(Meta::as_str).unwrap_or("<missing>");
        let pre = self.meta("tokenizer.ggml.pre").and_then(Meta::as_str).unwrap_or("<missing>");
        if model != "gpt2" || pre != "qwen2" {
            return Err(EngineError::Unsupported(format!(
                "{}: tokenizer \"{model}\" with pre-tokenizer \"{pre}\" is not supported; supported: \"gpt2\" with \"qwen2\"",
                self.path.display()
            )));
        }
        let tokens = self.strings("tokenizer.ggml.tokens")?;
        let types: Vec<i64> = match self.meta("tokenizer.ggml.token_type").and_then(Meta::as_array) {
            Some(a) => a.iter().map(|m| if let Meta::Int(i) = m { *i } else { 1 }).collect(),
            None => vec![1; tokens.len()],
        };
        let merges = self.strings("tokenizer.ggml.merges")?;
        let mut vocab = Map::new();
        let mut added = Vec::new();
        for (id, tok) in tokens.iter().enumerate() {
            match types.get(id).copied().unwrap_or(1) {
                TOKEN_UNUSED => {}
                t @ (TOKEN_CONTROL | TOKEN_USER_DEFINED) => added.push(json!({
                    "id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
                    "normalized": false, "special": t == TOKEN_CONTROL,
                })),
                _ => {
                    vocab.insert((*tok).to_string(), json!(id));
                }
            }
        }
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false});
        let tj = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": {"type": "NFC"},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": false},
                byte_level,
            ]},
            "post_processor": byte_level,
            "decoder": byte_level,
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                      "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": Value::Object(vocab), "merges": merges},
        });
        Ok(tj.to_string())
    }

    /// (tokens, token types, merges) exactly as stored, for re-export.
    pub fn tokenizer_arrays(&self) -> Result<(Vec<String>, Vec<i32>, Vec<String>)> {
        let tokens = self.strings("tokenizer.ggml.tokens")?.into_iter().map(str::to_string).collect::<Vec<_>>();
        let types = match self.meta("tokenizer.ggml.token_type").and_then(Meta::as_array) {
            Some(a) => a.iter().map(|m| if let Meta::Int(i) = m { *i as i32 } else { 1 }).collect(),
            None => vec![1; tokens.len()],
        };
        let merges = self.strings("tokenizer.ggml.merges")?.into_iter().map(str::to_string).collect();
        Ok((tokens, types, merges))
    }
}
