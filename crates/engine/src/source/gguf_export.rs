//! Writes the loaded (possibly quantized) model as GGUF v3 with llama.cpp's `qwen3` / `qwen2` metadata,
//! tensor names and tokenizer, so llama.cpp-based tools can run the same weights.
//! Q8 / Q4 weights are written as Q8_0 / Q4_0 unchanged: our block layouts are theirs, byte for byte.
use crate::engine::Engine;
use crate::error::{EngineError, Result};
use crate::source::gguf::GgufFile;
use crate::model::linear::ExportData;
use crate::source::ModelFiles;
use candle_core::DType;
use serde_json::Value;
use std::io::{BufWriter, Write};
use std::path::Path;

const ALIGNMENT: usize = 32;

// GGUF metadata value types.
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;

// ggml tensor types.
const GGML_F32: u32 = 0;
const GGML_F16: u32 = 1;
const GGML_Q4_0: u32 = 2;
const GGML_Q8_0: u32 = 8;
const GGML_BF16: u32 = 30;

// llama.cpp token types.
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;
const TOKEN_UNUSED: i32 = 5;

/// Little-endian GGUF encoder for the header and metadata.
#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn u32(&mut self, v: u32) {
        self.0.extend(v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend(v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.0.extend(s.as_bytes());
    }
    fn kv_u32(&mut self, k: &str, v: u32) {
        self.str(k);
        self.u32(T_U32);
        self.u32(v);
    }
    fn kv_f32(&mut self, k: &str, v: f32) {
        self.str(k);
        self.u32(T_F32);
        self.0.extend(v.to_le_bytes());
    }
    fn kv_bool(&mut self, k: &str, v: bool) {
        self.str(k);
        self.u32(T_BOOL);
        self.0.push(v as u8);
    }
    fn kv_str(&mut self, k: &str, v: &str) {
        self.str(k);
        self.u32(T_STRING);
        self.str(v);
    }
    fn kv_strs(&mut self, k: &str, v: &[String]) {
        self.str(k);
        self.u32(T_ARRAY);
        self.u32(T_STRING);
        self.u64(v.len() as u64);
        for s in v {
            self.str(s);
        }
    }
    fn kv_i32s(&mut self, k: &str, v: &[i32]) {
        self.str(k);
        self.u32(T_ARRAY);
        self.u32(T_I32);
        self.u64(v.len() as u64);
        for x in v {
            self.0.extend(x.to_le_bytes());
        }
    }
}

/// Tokens, token types and merges in llama.cpp's `gpt2` tokenizer form, from tokenizer.json.
fn tokenizer_metadata(path: &Path, vocab_size: usize) -> Result<(Vec<String>, Vec<i32>, Vec<String>)> {
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::Io { path: path.into(), source: e })?;
    let v: Value = serde_json::from_str(&text).map_err(|e| EngineError::bad_file(path, format!("not valid JSON: {e}")))?;
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; vocab_size];
    let vocab = v["model"]["vocab"].as_object().ok_or_else(|| EngineError::bad_file(path, "no model.vocab (not a BPE tokenizer)"))?;
    for (tok, id) in vocab {
        if let Some(slot) = id.as_u64().and_then(|i| tokens.get_mut(i as usize)) {
            *slot = Some((tok.clone(), TOKEN_NORMAL));
        }
    }
    for a in v["added_tokens"].as_array().into_iter().flatten() {
        if let (Some(id), Some(content)) = (a["id"].as_u64(), a["content"].as_str()) {
            let kind = if a["special"].as_bool() == Some(true) { TOKEN_CONTROL } else { TOKEN_USER_DEFINED };
            if let Some(slot) = tokens.get_mut(id as usize) {
                *slot = Some((content.to_string(), kind));
            }
        }
    }
    // The embedding has more rows than the tokenizer has tokens: llama.cpp's converter pads them.
    let (names, types): (Vec<String>, Vec<i32>) = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or((format!("[PAD{i}]"), TOKEN_UNUSED)))
        .unzip();
    let merges = v["model"]["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            Value::String(s) => Some(s.clone()),
            Value::Array(pair) => Some(format!("{} {}", pair.first()?.as_str()?, pair.get(1)?.as_str()?)),
            _ => None,
        })
        .collect();
    Ok((names, types, merges))
}

impl Engine {
    /// Write the model as loaded now (f32 / bf16 / f16 / Q8_0) to `path` as GGUF. Written to a
    /// temporary file and renamed, so a failed export leaves nothing behind.
    pub fn export_gguf(&self, path: &Path) -> Result<u64> {
        let cfg = &self.model.config;
        let mut h = Enc::default();
        let tensors = self.model.export_tensors()?;
        // The tokenizer and template as the source stored them.
        let (tokens, types, merges, template, name) = match &self.files {
            ModelFiles::HfFolder(dir) => {
                let (tokens, types, merges) = tokenizer_metadata(&dir.join("tokenizer.json"), cfg.vocab_size)?;
                let tc: Value = std::fs::read_to_string(dir.join("tokenizer_config.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok())
                    .unwrap_or(Value::Null);
                (tokens, types, merges, tc["chat_template"].as_str().map(str::to_string), self.files.name())
            }
            ModelFiles::Gguf(path) => {
                let g = GgufFile::open(path)?;
                let (tokens, types, merges) = g.tokenizer_arrays()?;
                let name = g.meta("general.name").and_then(|m| m.as_str()).map(str::to_string).unwrap_or_else(|| self.files.name());
                (tokens, types, merges, g.chat_template().map(str::to_string), name)
            }
        };

        let mut kv = Enc::default();
        let mut n_kv = 0u64;
        let arch = cfg.architecture.name();
        kv.kv_str("general.architecture", arch);
        n_kv += 1;
        kv.kv_str("general.name", &name);
        n_kv += 1;
        kv.kv_u32("general.alignment", ALIGNMENT as u32);
        n_kv += 1;
        for (k, v) in [
            ("context_length", cfg.max_position_embeddings),
            ("embedding_length", cfg.hidden_size),
            ("feed_forward_length", cfg.intermediate_size),
            ("block_count", cfg.num_hidden_layers),
            ("attention.head_count", cfg.num_attention_heads),
            ("attention.head_count_kv", cfg.num_key_value_heads),
            ("attention.key_length", cfg.head_dim),
            ("attention.value_length", cfg.head_dim),
        ] {
            kv.kv_u32(&format!("{arch}.{k}"), v as u32);
            n_kv += 1;
        }
        kv.kv_f32(&format!("{arch}.rope.freq_base"), cfg.rope_theta as f32);
        kv.kv_f32(&format!("{arch}.attention.layer_norm_rms_epsilon"), cfg.rms_norm_eps as f32);
        kv.kv_str("tokenizer.ggml.model", "gpt2");
        kv.kv_str("tokenizer.ggml.pre", "qwen2");
        kv.kv_strs("tokenizer.ggml.tokens", &tokens);
        kv.kv_i32s("tokenizer.ggml.token_type", &types);
        kv.kv_strs("tokenizer.ggml.merges", &merges);
        kv.kv_bool("tokenizer.ggml.add_bos_token", false);
        n_kv += 8;
        let eos = self.generation_defaults.eos_token_ids.first().or(cfg.eos_token_ids.first()).copied();
        if let Some(eos) = eos {
            kv.kv_u32("tokenizer.ggml.eos_token_id", eos);
            n_kv += 1;
        }
        if let Some(pad) = self.tokenizer.token_to_id("<|endoftext|>") {
            kv.kv_u32("tokenizer.ggml.padding_token_id", pad);
            kv.kv_u32("tokenizer.ggml.bos_token_id", cfg.bos_token_id.unwrap_or(pad));
            n_kv += 2;
        }
        if let Some(t) = &template {
            kv.kv_str("tokenizer.chat_template", t);
            n_kv += 1;
        }
        // An embedding model says so as llama.cpp reads it: last-token pooling, and the EOS its
        // tokenizer appends (Qwen3-Embedding's post-processor) as add_eos_token.
        if self.retrieval.kind == crate::retrieval::ModelKind::Embedding && self.retrieval.pooling == "last_token" {
            kv.kv_u32(&format!("{arch}.pooling_type"), 3);
            n_kv += 1;
            let (with, without) = (self.tokenizer.encode("a", true)?, self.tokenizer.encode("a", false)?);
            let appends_eos = with.len() == without.len() + 1 && with.last().copied() == eos;
            if appends_eos || self.retrieval.append_eos.is_some() {
                kv.kv_bool("tokenizer.ggml.add_eos_token", true);
                n_kv += 1;
            }
        }

        // Tensor infos: ggml lists dimensions fastest-varying first, i.e. HF's shape reversed.
        let mut infos = Enc::default();
        let mut offset = 0usize;
        let mut layout = Vec::with_capacity(tensors.len());
        for (name, data) in &tensors {
            let (dims, ty, bytes): (Vec<usize>, u32, usize) = match data {
                ExportData::Dense(t) => {
                    let ty = match t.dtype() {
                        DType::F32 => GGML_F32,
                        DType::F16 => GGML_F16,
                        DType::BF16 => GGML_BF16,
                        d => return Err(EngineError::Unsupported(format!("GGUF export of {d:?} tensors"))),
                    };
                    (t.dims().iter().rev().copied().collect(), ty, t.elem_count() * t.dtype().size_in_bytes())
                }
                ExportData::Q8 { blocks, n, k } => (vec![*k, *n], GGML_Q8_0, std::mem::size_of_val(&blocks[..])),
                ExportData::Q4 { blocks, n, k } => (vec![*k, *n], GGML_Q4_0, std::mem::size_of_val(&blocks[..])),
            };
            infos.str(name);
            infos.u32(dims.len() as u32);
            for d in &dims {
                infos.u64(*d as u64);
            }
            infos.u32(ty);
            infos.u64(offset as u64);
            layout.push(offset);
            offset = (offset + bytes).next_multiple_of(ALIGNMENT);
        }
        h.0.extend(b"GGUF");
        h.u32(3);
        h.u64(tensors.len() as u64);
        h.u64(n_kv);
        h.0.extend(kv.0);
        h.0.extend(infos.0);
        let pad = h.0.len().next_multiple_of(ALIGNMENT) - h.0.len();
        h.0.extend(std::iter::repeat_n(0u8, pad));

        let tmp = path.with_extension("gguf.partial");
        let write = || -> std::io::Result<u64> {
            let mut f = BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
            f.write_all(&h.0)?;
            let mut pos = 0usize;
            for ((_, data), start) in tensors.iter().zip(&layout) {
                f.write_all(&vec![0u8; start - pos])?;
                let bytes: Vec<u8> = match data {
                    ExportData::Dense(t) => dense_bytes(t).map_err(std::io::Error::other)?,
                    // SAFETY: the blocks are repr(C) with no padding (sizes asserted in kernels).
                    ExportData::Q8 { blocks, .. } => unsafe { std::slice::from_raw_parts(blocks.as_ptr() as *const u8, std::mem::size_of_val(&blocks[..])) }.to_vec(),
                    ExportData::Q4 { blocks, .. } => unsafe { std::slice::from_raw_parts(blocks.as_ptr() as *const u8, std::mem::size_of_val(&blocks[..])) }.to_vec(),
                };
                f.write_all(&bytes)?;
                pos = start + bytes.len();
            }
            f.flush()?;
            Ok((h.0.len() + pos) as u64)
        };
        match write().and_then(|n| std::fs::rename(&tmp, path).map(|()| n)) {
            Ok(n) => Ok(n),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(EngineError::Io { path: path.into(), source: e })
            }
        }
    }
}

fn dense_bytes(t: &candle_core::Tensor) -> candle_core::Result<Vec<u8>> {
    let t = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => t.to_vec1::<f32>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::F16 => t.to_vec1::<half::f16>()?.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
        DType::BF16 => t.to_vec1::<half::bf16>()?.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
        d => candle_core::bail!("unsupported dtype {d:?}"),
    })
}
