//! Reranking as Qwen3-Reranker does it: each (query, document) pair in its fixed chat template,
//! run as a pooling sequence whose last-position logits of "no" and "yes" give the score
//! softmax([no, yes])[1] = sigmoid(yes - no), in [0, 1]. Any Qwen3 causal LM answers it.
use crate::engine::Engine;
use crate::error::{EngineError, Result};
use crate::retrieval::run::{at_input, run_all, submit_all, Pooled};
use crate::retrieval::MAX_INPUTS;
use crate::serve::sequence::Output;
use serde::Serialize;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

pub const DEFAULT_INSTRUCTION: &str = "Given a web search query, retrieve relevant passages that answer the query";
const PREFIX: &str = "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n";
const SUFFIX: &str = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n";

#[derive(Debug, Clone, Default)]
pub struct RerankOptions {
    /// The task (default: web search, as the model card's).
    pub instruction: Option<String>,
    /// Keep the best `top_n` (default: all).
    pub top_n: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scored {
    /// The document's position in the call.
    pub index: usize,
    pub score: f64,
}

#[derive(Debug, Clone)]
pub struct Reranked {
    /// Best first; equal scores keep the documents' order.
    pub results: Vec<Scored>,
    pub prompt_tokens: usize,
}

/// sigmoid(yes - no), computed without overflow.
fn score(no: f32, yes: f32) -> f64 {
    let d = yes as f64 - no as f64;
    if d >= 0.0 {
        1.0 / (1.0 + (-d).exp())
    } else {
        d.exp() / (1.0 + d.exp())
    }
}

fn ranked(all: Pooled, top_n: usize) -> Reranked {
    let prompt_tokens = all.iter().map(|(_, n)| n).sum();
    let mut results: Vec<Scored> = all.iter().enumerate().map(|(index, (v, _))| Scored { index, score: score(v[0], v[1]) }).collect();
    results.sort_by(|a, b| b.score.total_cmp(&a.score));
    results.truncate(top_n);
    Reranked { results, prompt_tokens }
}

impl Engine {
    /// The "no" and "yes" token ids the score reads.
    fn yes_no(&self) -> Result<Vec<u32>> {
        let id = |t: &str| self.tokenizer.token_to_id(t).ok_or_else(|| EngineError::Unsupported(format!("reranking needs a \"{t}\" token; this tokenizer has none (not a Qwen tokenizer)")));
        Ok(vec![id("no")?, id("yes")?])
    }

    /// The ids of one pair: template prefix, the instruction/query/document text, suffix, each
    /// tokenized alone as the model card does.
    pub fn rerank_ids(&self, query: &str, document: &str, instruction: Option<&str>) -> Result<Vec<u32>> {
        let body = format!("<Instruct>: {}\n<Query>: {query}\n<Document>: {document}", instruction.unwrap_or(DEFAULT_INSTRUCTION));
        let mut ids = self.tokenizer.encode(PREFIX, false)?;
        ids.extend(self.encode_checked(&body, false)?);
        ids.extend(self.tokenizer.encode(SUFFIX, false)?);
        Ok(ids)
    }

    fn rerank_plan(&self, query: &str, documents: &[String], opts: &RerankOptions) -> Result<(Vec<Vec<u32>>, Vec<u32>, usize)> {
        if query.is_empty() {
            return Err(EngineError::invalid_arg("query", "\"\" (empty)", "a non-empty string"));
        }
        if documents.is_empty() || documents.len() > MAX_INPUTS {
            return Err(EngineError::invalid_arg("documents", format!("{} documents", documents.len()), &format!("1 ..= {MAX_INPUTS} documents")));
        }
        let top_n = match opts.top_n {
            None => documents.len(),
            Some(0) => return Err(EngineError::invalid_arg("topN", 0, "an integer >= 1")),
            Some(n) => n.min(documents.len()),
        };
        let yes_no = self.yes_no()?;
        let ids = documents
            .iter()
            .enumerate()
            .map(|(i, d)| self.rerank_ids(query, d, opts.instruction.as_deref()).map_err(|e| at_input("documents", i, e)))
            .collect::<Result<_>>()?;
        Ok((ids, yes_no, top_n))
    }

    /// Queue every (query, document) pair as a pooling sequence; `done` hears the ranking.
    pub fn submit_rerank(&self, query: &str, documents: &[String], opts: &RerankOptions, done: Box<dyn FnOnce(Result<Reranked>) + Send>) -> Result<Arc<AtomicBool>> {
        let (ids, yes_no, top_n) = self.rerank_plan(query, documents, opts)?;
        submit_all(self, "documents", ids, Output::Logits(yes_no), Box::new(move |r| done(r.map(|all| ranked(all, top_n)))))
    }

    /// [`Self::submit_rerank`] and wait.
    pub fn rerank(&self, query: &str, documents: &[String], opts: &RerankOptions) -> Result<Reranked> {
        let (ids, yes_no, top_n) = self.rerank_plan(query, documents, opts)?;
        Ok(ranked(run_all(self, "documents", ids, Output::Logits(yes_no))?, top_n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_the_softmax_of_no_and_yes_and_never_overflow() {
        assert_eq!(score(1.0, 1.0), 0.5);
        let (no, yes) = (0.25f32, 2.0f32);
        let want = (yes as f64).exp() / ((yes as f64).exp() + (no as f64).exp());
        assert!((score(no, yes) - want).abs() < 1e-15);
        assert_eq!(score(0.0, 1e30), 1.0);
        assert_eq!(score(1e30, 0.0), 0.0);
    }

    #[test]
    fn ranking_is_best_first_stable_and_cut_to_top_n() {
        let all = vec![(vec![0.0, 1.0], 3), (vec![0.0, 2.0], 4), (vec![0.0, 1.0], 5)];
        let r = ranked(all, 2);
        assert_eq!(r.results.iter().map(|s| s.index).collect::<Vec<_>>(), vec![1, 0]);
        assert_eq!(r.prompt_tokens, 12);
    }
}
