//! One request in flight: its tokens, where its KV lives, and what it has streamed so far. The
//! scheduler moves it between waiting and running; `on_logits` turns each step's logits into the
//! next token, the text that is safe to release, and the end of the request.
use crate::error::{EngineError, Result};
use crate::serve::grammar::{grammar_error, mask_logits};
use crate::serve::logprobs::{token_logprob, TokenLogprob};
use crate::serve::request::{FinishReason, GenerateOptions, StopMatcher, StopScan};
use crate::serve::sampler::Sampler;
use crate::text::tokenizer::{StreamDecoder, Tokenizer};
use llguidance::Matcher;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// One piece of streamed output.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamChunk {
    pub text: String,
    pub token_ids: Vec<u32>,
    /// One per token id, when the request asked for logprobs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<TokenLogprob>>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache (not computed for this request).
    pub cached_tokens: usize,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Timings {
    /// Submission to the first step that ran this request (waiting for a place in the batch).
    pub queued_ms: f64,
    /// First step to the first token (the prompt's prefill, sharing steps with other requests).
    pub prefill_ms: f64,
    /// First token to the last.
    pub decode_ms: f64,
    pub prefill_tokens_per_second: f64,
    pub decode_tokens_per_second: f64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateOutput {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<TokenLogprob>>,
    /// The vector a pooling sequence ([`Output::Hidden`] / [`Output::Logits`]) produced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pooled: Option<Vec<f32>>,
    pub usage: Usage,
    pub timings: Timings,
}

/// What a request's owner hears, in order: chunks, then exactly one `Done`.
#[derive(Debug)]
pub enum Event {
    Chunk(StreamChunk),
    Done(Result<GenerateOutput>),
}

/// What a sequence produces: generated tokens, or one vector read at its prompt's last token
/// (embeddings, reranker scores), after which it ends without generating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Generate,
    /// The last token's final-normed hidden state; no lm_head runs for it.
    Hidden,
    /// These logits at the last token (a reranker's "no" and "yes"), ids checked at submission.
    Logits(Vec<u32>),
}

pub type EventSink = Box<dyn FnMut(Event) + Send>;

fn per_second(n: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        n as f64 * 1000.0 / ms
    } else {
        0.0
    }
}

pub struct Sequence {
    /// Prompt, then every generated token.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Tokens whose K/V are in the pool (the next forward starts at this position).
    pub computed: usize,
    /// Physical KV blocks, in order.
    pub table: Vec<u32>,
    /// Chain hashes of the leading full blocks already registered in the prefix cache.
    pub hashes: Vec<u64>,
    /// Set once, at the first admission: prompt tokens found in the prefix cache.
    pub cached_tokens: Option<usize>,
    pub cancel: Arc<AtomicBool>,
    pub output: Output,
    pooled: Option<Vec<f32>>,
    budget: usize,
    stop_ids: Vec<u32>,
    stops: StopMatcher,
    sampler: Sampler,
    decoder: StreamDecoder,
    text: String,
    released: usize,
    pending_ids: Vec<u32>,
    /// Alternatives per token when logprobs were asked for, and the logprobs of every generated
    /// token (the last `pending_ids.len()` not yet streamed).
    top_logprobs: Option<usize>,
    logprobs: Vec<TokenLogprob>,
    /// The structured-output constraint, if any.
    grammar: Option<Matcher>,
    sink: EventSink,
    submitted: Instant,
    started: Option<Instant>,
    first_token: Option<Instant>,
}

impl Sequence {
    /// `budget`: new tokens at most; `stop_ids`: token ids that end it (EOS included as wanted).
    pub fn new(prompt: Vec<u32>, opts: &GenerateOptions, budget: usize, stop_ids: Vec<u32>, grammar: Option<Matcher>, sink: EventSink) -> Self {
        Self {
            sampler: Sampler::new(opts.sampling.clone(), &prompt),
            prompt_len: prompt.len(),
            tokens: prompt,
            computed: 0,
            table: Vec::new(),
            hashes: Vec::new(),
            cached_tokens: None,
            cancel: Arc::new(AtomicBool::new(false)),
            output: Output::Generate,
            pooled: None,
            budget,
            stop_ids,
            stops: StopMatcher::new(opts.stop.clone()),
            decoder: StreamDecoder::new(true),
            text: String::new(),
            released: 0,
            pending_ids: Vec::new(),
            top_logprobs: opts.logprobs,
            logprobs: Vec::new(),
            grammar,
            sink,
            submitted: Instant::now(),
            started: None,
            first_token: None,
        }
    }

    /// A sequence that reads one vector (`output`) at the end of `prompt` and ends there.
    pub fn pooled(prompt: Vec<u32>, output: Output, sink: EventSink) -> Self {
        let opts = crate::serve::request::GenerateRequest::default().resolve(&Default::default()).expect("the default request is valid");
        let mut seq = Self::new(prompt, &opts, 0, Vec::new(), None, sink);
        seq.output = output;
        seq
    }

    /// The final-normed hidden state of an [`Output::Hidden`] sequence's last token.
    pub fn on_hidden(&mut self, row: &[f32]) {
        self.pooled = Some(row.to_vec());
    }

    /// The structured-output constraint, compiled once the sequence exists (see `Engine::submit`).
    pub fn with_grammar(mut self, grammar: Matcher) -> Self {
        self.grammar = Some(grammar);
        self
    }

    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    pub fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Tokens still to run through the model before the next logits.
    pub fn remaining(&self) -> usize {
        self.tokens.len() - self.computed
    }

    /// Called when a step first includes this sequence.
    pub fn mark_started(&mut self) {
        self.started.get_or_insert_with(Instant::now);
    }

    /// Forget the KV (preemption): it will be recomputed from its tokens.
    pub fn reset_kv(&mut self) {
        self.table.clear();
        self.hashes.clear();
        self.computed = 0;
    }

    /// The logits after this sequence's last token: sample the next one, stream what is final.
    /// Returns why the request is over once it is (the caller then frees its blocks and calls
    /// [`Self::finish`]).
    pub fn on_logits(&mut self, logits: &mut [f32], tok: &Tokenizer) -> Result<Option<FinishReason>> {
        if let Output::Logits(ids) = &self.output {
            self.pooled = Some(ids.iter().map(|&i| logits[i as usize]).collect());
            return Ok(Some(FinishReason::Stop));
        }
        if self.generated() >= self.budget {
            return Ok(Some(FinishReason::Length)); // a prompt that fills the context
        }
        // Padding rows of the lm_head have no token: never sample them.
        if let Some(pad) = logits.get_mut(tok.vocab_size()..) {
            pad.fill(f32::NEG_INFINITY);
        }
        let raw = self.top_logprobs.map(|_| logits.to_vec());
        if let Some(m) = &mut self.grammar {
            mask_logits(m, logits)?;
        }
        let next = self.sampler.sample(logits);
        self.sampler.observe(next);
        self.first_token.get_or_insert_with(Instant::now);
        if self.stop_ids.contains(&next) {
            return Ok(Some(FinishReason::Stop));
        }
        if let (Some(n), Some(raw)) = (self.top_logprobs, raw) {
            self.logprobs.push(token_logprob(tok, &raw, next, n));
        }
        // The grammar is complete once it takes no more tokens: the output ends here.
        let grammar_done = match &mut self.grammar {
            Some(m) => {
                m.consume_token(next).map_err(|e| grammar_error(&e.to_string()))?;
                m.is_stopped()
            }
            None => false,
        };
        self.tokens.push(next);
        self.pending_ids.push(next);
        let from = self.text.len();
        let piece = self.decoder.push(tok, next)?;
        self.text.push_str(&piece);
        match self.stops.scan(&self.text, from) {
            StopScan::Hit(at) => {
                self.text.truncate(at);
                self.released = self.released.min(at);
                // Nothing more may come out of the decoder: the text ends at the stop string.
                self.decoder = StreamDecoder::new(true);
                return Ok(Some(FinishReason::Stop));
            }
            StopScan::SafeUpTo(safe) if safe > self.released => {
                let text = self.text[self.released..safe].to_string();
                self.send_chunk(text);
                self.released = safe;
            }
            StopScan::SafeUpTo(_) => {}
        }
        if grammar_done {
            return Ok(Some(FinishReason::Stop));
        }
        Ok((self.generated() >= self.budget).then_some(FinishReason::Length))
    }

    fn send_chunk(&mut self, text: String) {
        let token_ids = std::mem::take(&mut self.pending_ids);
        let logprobs = self.top_logprobs.map(|_| self.logprobs[self.logprobs.len() - token_ids.len()..].to_vec());
        (self.sink)(Event::Chunk(StreamChunk { text, token_ids, logprobs }));
    }

    /// Flush what is held back, send the last chunk and the output.
    pub fn finish(mut self, mut reason: FinishReason, tok: &Tokenizer) {
        let flushed = self.decoder.flush(tok).map(|rest| {
            // Text held back for an incomplete character can still complete a stop string.
            let from = self.text.len();
            self.text.push_str(&rest);
            if let StopScan::Hit(at) = self.stops.scan(&self.text, from) {
                self.text.truncate(at.max(self.released));
                reason = FinishReason::Stop;
            }
        });
        if let Err(e) = flushed {
            return self.fail(e);
        }
        if self.text.len() > self.released || !self.pending_ids.is_empty() {
            let text = self.text.get(self.released..).unwrap_or("").to_string();
            self.send_chunk(text);
        }
        let now = Instant::now();
        let started = self.started.unwrap_or(now);
        let first = self.first_token.unwrap_or(now);
        let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1000.0;
        let (prefill_ms, decode_ms) = (ms(started, first), ms(first, now));
        let completion = self.generated();
        let out = GenerateOutput {
            text: std::mem::take(&mut self.text),
            token_ids: self.tokens[self.prompt_len..].to_vec(),
            finish_reason: reason,
            logprobs: self.top_logprobs.map(|_| std::mem::take(&mut self.logprobs)),
            pooled: self.pooled.take(),
            usage: Usage {
                prompt_tokens: self.prompt_len,
                completion_tokens: completion,
                total_tokens: self.prompt_len + completion,
                cached_tokens: self.cached_tokens.unwrap_or(0),
            },
            timings: Timings {
                queued_ms: ms(self.submitted, started),
                prefill_ms,
                decode_ms,
                prefill_tokens_per_second: per_second(self.prompt_len - self.cached_tokens.unwrap_or(0), prefill_ms),
                // The first token comes from the prefill logits: decode produced tokens - 1.
                decode_tokens_per_second: per_second(completion.saturating_sub(1), decode_ms),
            },
        };
        (self.sink)(Event::Done(Ok(out)));
    }

    /// End with an error (aborted, or a failed step).
    pub fn fail(mut self, e: EngineError) {
        (self.sink)(Event::Done(Err(e)));
    }
}
