//! Embeddings: each text (with the model card's query instruction when given) is tokenized as
//! the checkpoint's tokenizer says (Qwen3-Embedding's appends `<|endoftext|>`, the token that is
//! pooled), run as a pooling sequence, and its last token's final-normed hidden state is
//! truncated (Matryoshka `dimensions`) and then L2-normalised.
use crate::engine::Engine;
use crate::error::{EngineError, Result};
use crate::retrieval::run::{at_input, run_all, submit_all, Pooled};
use crate::retrieval::MAX_INPUTS;
use crate::serve::sequence::Output;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(untagged)]
pub enum EmbedInput {
    Text(String),
    /// Token ids used as they are (no instruction, nothing appended).
    Tokens(Vec<u32>),
}

/// [`EmbedOptions`] as a binding receives them (JSON numbers checked there).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmbedRequest {
    pub instruction: Option<String>,
    pub dimensions: Option<f64>,
    pub normalize: Option<bool>,
}

#[derive(Debug, Clone, Default)]
pub struct EmbedOptions {
    /// The task of a query: the text becomes `Instruct: {task}\nQuery:{text}` (Qwen3-Embedding's
    /// model card; documents go without one).
    pub instruction: Option<String>,
    /// Keep the first `dimensions` values (Matryoshka), before normalising. 1 ..= hidden size.
    pub dimensions: Option<usize>,
    /// L2-normalise (default true).
    pub normalize: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct Embedded {
    pub embeddings: Vec<Vec<f32>>,
    /// Tokens of all inputs together.
    pub prompt_tokens: usize,
}

/// Qwen3-Embedding's query format.
pub fn with_instruction(task: &str, text: &str) -> String {
    format!("Instruct: {task}\nQuery:{text}")
}

/// Truncate to `dims`, then scale to unit length (a zero vector stays zero).
pub fn finish_vector(mut v: Vec<f32>, dims: usize, normalize: bool) -> Vec<f32> {
    v.truncate(dims);
    if normalize {
        let norm = v.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x = (*x as f64 / norm) as f32);
        }
    }
    v
}

impl Engine {
    /// The ids an input is embedded from.
    pub fn embedding_ids(&self, input: &EmbedInput, instruction: Option<&str>) -> Result<Vec<u32>> {
        match input {
            EmbedInput::Tokens(ids) if instruction.is_some() => {
                Err(EngineError::invalid_arg("instruction", "given with token ids", "text inputs only (token ids are embedded as they are)"))
            }
            EmbedInput::Tokens(ids) => Ok(ids.clone()),
            EmbedInput::Text(t) if t.is_empty() => Err(EngineError::invalid_arg("text", "\"\" (empty)", "a non-empty string")),
            EmbedInput::Text(t) => {
                let text = match instruction {
                    Some(task) => with_instruction(task, t),
                    None => t.clone(),
                };
                let mut ids = self.encode_checked(&text, true)?;
                if let Some(eos) = self.retrieval.append_eos.filter(|e| ids.last() != Some(e)) {
                    ids.push(eos);
                }
                Ok(ids)
            }
        }
    }

    fn embed_plan(&self, inputs: &[EmbedInput], opts: &EmbedOptions) -> Result<(Vec<Vec<u32>>, usize, bool)> {
        if self.retrieval.pooling != "last_token" {
            return Err(EngineError::Unsupported(format!(
                "this checkpoint asks for {} pooling ({}); supported: last_token (Qwen3-Embedding's)",
                self.retrieval.pooling, self.retrieval.detected_from
            )));
        }
        // Refused before queueing: a pooling row in a GPU step would fail the step, and with it
        // the generations sharing it.
        if self.gpu.is_some() {
            return Err(EngineError::Unsupported("embeddings do not run on the GPU yet: load the model with device \"cpu\" (rerank does run there)".into()));
        }
        if inputs.is_empty() || inputs.len() > MAX_INPUTS {
            return Err(EngineError::invalid_arg("input", format!("{} inputs", inputs.len()), &format!("1 ..= {MAX_INPUTS} inputs")));
        }
        let hidden = self.model.config.hidden_size;
        let dims = match opts.dimensions {
            None => hidden,
            Some(d) if (1..=hidden).contains(&d) => d,
            Some(d) => return Err(EngineError::invalid_arg("dimensions", d, &format!("1 ..= {hidden} (the model's hidden size)"))),
        };
        let instruction = opts.instruction.as_deref();
        let ids = inputs.iter().enumerate().map(|(i, x)| self.embedding_ids(x, instruction).map_err(|e| at_input("input", i, e))).collect::<Result<_>>()?;
        Ok((ids, dims, opts.normalize.unwrap_or(true)))
    }

    /// Queue `inputs` as pooling sequences (they share steps with everything else running);
    /// `done` hears the embeddings, in input order, once the last one is computed. Bad input is
    /// refused here, before anything runs. Returns the flag that aborts the call.
    pub fn submit_embed(&self, inputs: &[EmbedInput], opts: &EmbedOptions, done: Box<dyn FnOnce(Result<Embedded>) + Send>) -> Result<Arc<AtomicBool>> {
        let (ids, dims, normalize) = self.embed_plan(inputs, opts)?;
        let finish = move |r: Result<Pooled>| {
            done(r.map(|all| Embedded {
                prompt_tokens: all.iter().map(|(_, n)| n).sum(),
                embeddings: all.into_iter().map(|(v, _)| finish_vector(v, dims, normalize)).collect(),
            }))
        };
        submit_all(self, "input", ids, Output::Hidden, Box::new(finish))
    }

    /// [`Self::submit_embed`] and wait.
    pub fn embed(&self, inputs: &[EmbedInput], opts: &EmbedOptions) -> Result<Embedded> {
        let (ids, dims, normalize) = self.embed_plan(inputs, opts)?;
        let all = run_all(self, "input", ids, Output::Hidden)?;
        Ok(Embedded {
            prompt_tokens: all.iter().map(|(_, n)| n).sum(),
            embeddings: all.into_iter().map(|(v, _)| finish_vector(v, dims, normalize)).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matryoshka_truncates_before_normalising() {
        let v = finish_vector(vec![3.0, 4.0, 12.0], 2, true);
        assert_eq!(v, vec![0.6, 0.8]);
        assert_eq!(finish_vector(vec![3.0, 4.0, 12.0], 3, false), vec![3.0, 4.0, 12.0]);
        assert_eq!(finish_vector(vec![0.0, 0.0], 2, true), vec![0.0, 0.0]);
    }

    #[test]
    fn the_query_format_is_the_model_cards() {
        assert_eq!(with_instruction("Find it", "what?"), "Instruct: Find it\nQuery:what?");
    }
}
