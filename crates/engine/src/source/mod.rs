//! Opening a model: a Hugging Face folder (config.json, safetensors, tokenizer.json, ...) or a
//! single GGUF file. Both give the same pieces; nothing is loaded into the model yet.
use crate::text::chat_template::ChatTemplate;
use crate::model::config::{GenerationDefaults, ModelConfig};
use crate::error::{EngineError, Result};
use crate::source::gguf::GgufFile;
use crate::text::tokenizer::Tokenizer;
use crate::source::weights::{Checkpoint, TensorSource};
use std::path::{Path, PathBuf};

pub mod gguf;
pub mod gguf_export;
pub mod gguf_meta;
pub mod prepared_cache;
pub mod weights;

pub enum ModelFiles {
    HfFolder(PathBuf),
    Gguf(PathBuf),
}

pub struct OpenedModel {
    pub files: ModelFiles,
    pub config: ModelConfig,
    pub generation_defaults: GenerationDefaults,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    pub tensors: Box<dyn TensorSource + Send>,
}

impl ModelFiles {
    pub fn path(&self) -> &Path {
        match self {
            ModelFiles::HfFolder(p) | ModelFiles::Gguf(p) => p,
        }
    }

    /// A short name for the model (folder or file stem).
    pub fn name(&self) -> String {
        let p = self.path();
        let n = match self {
            ModelFiles::HfFolder(_) => p.file_name(),
            ModelFiles::Gguf(_) => p.file_stem(),
        };
        n.map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
    }
}

pub fn open(path: &Path) -> Result<OpenedModel> {
    if path.is_dir() {
        return open_folder(path);
    }
    if path.is_file() {
        return open_gguf(path);
    }
    Err(EngineError::ModelNotFound(format!("{} is neither a model folder nor a .gguf file", path.display())))
}

fn open_folder(dir: &Path) -> Result<OpenedModel> {
    let mut config = ModelConfig::from_file(&dir.join("config.json"))?;
    let generation_defaults = GenerationDefaults::from_dir(dir)?;
    let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    let template = ChatTemplate::from_tokenizer_config(&dir.join("tokenizer_config.json"))?;
    let tensors = Box::new(Checkpoint::open(dir)?);
    // Embedding checkpoints (Qwen3-Embedding-4B/8B) say untied but ship no lm_head: the
    // embedding matrix is the only output projection there is (what a GGUF without output.weight
    // gets too); embeddings never use it.
    if !config.tie_word_embeddings && !tensors.has("lm_head.weight") && dir.join("modules.json").is_file() {
        config.tie_word_embeddings = true;
    }
    Ok(OpenedModel { files: ModelFiles::HfFolder(dir.into()), config, generation_defaults, tokenizer, template, tensors })
}

fn open_gguf(path: &Path) -> Result<OpenedModel> {
    let gguf = GgufFile::open(path)?;
    let config = gguf.model_config()?;
    let tokenizer = Tokenizer::from_json(&gguf.tokenizer_json()?, path)?;
    let eos = config.eos_token_ids.first().and_then(|&id| tokenizer.decode(&[id], false).ok());
    let template = gguf.chat_template().map(|t| ChatTemplate::new(t, None, eos)).transpose()?;
    Ok(OpenedModel {
        files: ModelFiles::Gguf(path.into()),
        generation_defaults: gguf.generation_defaults(),
        config,
        tokenizer,
        template,
        tensors: Box::new(gguf),
    })
}
