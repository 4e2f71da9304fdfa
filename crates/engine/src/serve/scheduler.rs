//! Continuous batching. Each step is ONE forward call over the next token of every running
//! sequence plus prefill chunks of the others, within a token budget: decode first, then chunked
//! prefill, then new sequences first come first served. While sequences decode, chunks of long
//! prompts are also bounded so the decoding streams keep pace ([`StepCost`]); short prompts go in
//! whole, for their own time to first token. When KV blocks run out the most recently
//! admitted sequence is preempted (its blocks freed, its tokens recomputed later). Finished and
//! aborted sequences leave at the step that sees them and free their blocks.
use crate::error::{EngineError, Result};
use crate::model::{LogitsFor, SeqChunk, BLOCK_TOKENS};
use crate::serve::block_manager::{block_hash, BlockManager, PrefixStats};
use crate::serve::request::FinishReason;
use crate::serve::sequence::{Output, Sequence};
use crate::serve::step_cost::StepCost;
use crate::text::tokenizer::Tokenizer;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Tokens per step (decode tokens plus prefill chunks).
    pub max_batch_tokens: usize,
    /// Sequences running at once.
    pub max_sequences: usize,
    /// Longest prefill chunk of one sequence per step (chunked prefill's activation bound).
    pub max_chunk: usize,
}

/// What the scheduler has done, for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    pub steps: u64,
    pub preemptions: u64,
    pub running: usize,
    pub waiting: usize,
    pub blocks_total: usize,
    pub blocks_used: usize,
    pub blocks_cached: usize,
    pub prefix: PrefixStats,
}

pub struct Scheduler {
    cfg: SchedulerConfig,
    blocks: BlockManager,
    waiting: VecDeque<Sequence>,
    /// In admission order: the last one is preempted first.
    running: Vec<Sequence>,
    /// This step's tokens per running sequence (0: not in the step).
    planned: Vec<usize>,
    preemptions: u64,
    steps: u64,
    cost: StepCost,
    /// [`Self::stats`] as last published: before any request is told it ended, and after each step.
    published: Arc<Mutex<SchedulerStats>>,
}

/// How a sequence leaves.
enum Outcome {
    Finished(FinishReason),
    Failed(EngineError),
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig, blocks: BlockManager) -> Self {
        let s = Self {
            cfg,
            blocks,
            waiting: VecDeque::new(),
            running: Vec::new(),
            planned: Vec::new(),
            preemptions: 0,
            steps: 0,
            cost: StepCost::default(),
            published: Default::default(),
        };
        s.publish();
        s
    }

    /// The counters as last published, shared with readers on other threads.
    pub fn published(&self) -> Arc<Mutex<SchedulerStats>> {
        self.published.clone()
    }

    pub fn publish(&self) {
        *self.published.lock().unwrap() = self.stats();
    }

    /// A sequence leaves: its blocks are freed and the counters published before its owner hears
    /// of the end (so whoever reacts to the end sees the blocks back).
    fn retire(&mut self, seq: Sequence, outcome: Outcome, tok: &Tokenizer) {
        self.blocks.release(&seq.table);
        self.publish();
        match outcome {
            Outcome::Finished(reason) => seq.finish(reason, tok),
            Outcome::Failed(e) => seq.fail(e),
        }
    }

    pub fn add(&mut self, seq: Sequence) {
        self.waiting.push_back(seq);
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    pub fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            steps: self.steps,
            preemptions: self.preemptions,
            running: self.running.len(),
            waiting: self.waiting.len(),
            blocks_total: self.blocks.total(),
            blocks_used: self.blocks.used(),
            blocks_cached: self.blocks.cached(),
            prefix: self.blocks.stats,
        }
    }

    /// Ends every aborted sequence, waiting or running, and frees its blocks.
    fn drop_cancelled(&mut self, tok: &Tokenizer) {
        while let Some(seq) = self.waiting.take_where(Sequence::cancelled) {
            self.retire(seq, Outcome::Failed(EngineError::Aborted), tok);
        }
        while let Some(seq) = self.running.take_where(Sequence::cancelled) {
            self.retire(seq, Outcome::Failed(EngineError::Aborted), tok);
        }
    }

    /// Blocks for `seq` to hold `tokens` tokens; false (nothing taken) if there are not enough.
    fn grow(blocks: &mut BlockManager, seq: &mut Sequence, tokens: usize) -> bool {
        let need = tokens.div_ceil(BLOCK_TOKENS).saturating_sub(seq.table.len());
        match blocks.allocate(need) {
            Some(b) => {
                seq.table.extend(b);
                true
            }
            None => false,
        }
    }

    fn preempt_last(&mut self) {
        let mut seq = self.running.pop().expect("a running sequence to preempt");
        self.planned.truncate(self.running.len());
        self.blocks.release(&seq.table);
        seq.reset_kv();
        self.preemptions += 1;
        self.waiting.push_front(seq);
    }

    /// Plan the next step; false when there is nothing to run.
    fn plan(&mut self, tok: &Tokenizer) -> bool {
        self.drop_cancelled(tok);
        self.planned.clear();
        let decodes = self.running.iter().filter(|s| s.remaining() == 1).count();
        // Decode tokens are always in the step; prompts share what is left. Chunks of long prompts
        // are also held to what keeps the decoding streams' pace; a short prompt goes in whole
        // (its own first token matters, and it delays the others once, by little).
        let mut budget = Budget {
            tokens: self.cfg.max_batch_tokens.saturating_sub(decodes),
            long: if decodes > 0 { self.cost.prefill_budget(decodes) } else { usize::MAX },
            max_chunk: self.cfg.max_chunk,
        };
        let mut i = 0;
        while i < self.running.len() {
            let (remaining, total) = (self.running[i].remaining(), self.running[i].tokens.len());
            let n = if remaining == 1 { 1 } else { budget.chunk(remaining, total) };
            if n == 0 {
                self.planned.push(0);
                i += 1;
                continue;
            }
            let want = self.running[i].computed + n;
            let mut fits = Self::grow(&mut self.blocks, &mut self.running[i], want);
            while !fits && self.running.len() > i + 1 {
                self.preempt_last();
                fits = Self::grow(&mut self.blocks, &mut self.running[i], want);
            }
            if !fits {
                if i == 0 {
                    // Alone and still out of blocks: the pool is this sequence's context limit.
                    let seq = self.running.remove(0);
                    self.retire(seq, Outcome::Finished(FinishReason::Length), tok);
                    continue;
                }
                self.preempt_last(); // itself: the most recent
                break;
            }
            if remaining > 1 {
                budget.take(total, n);
            }
            self.planned.push(n);
            i += 1;
        }
        // Admit waiting sequences, first come first served, while budget and blocks last.
        while budget.tokens > 0 && self.running.len() < self.cfg.max_sequences {
            let Some(mut seq) = self.waiting.pop_front() else { break };
            if seq.table.is_empty() {
                let (table, hashes) = self.blocks.match_prefix(&seq.tokens);
                seq.computed = table.len() * BLOCK_TOKENS;
                seq.cached_tokens.get_or_insert(seq.computed.min(seq.prompt_len));
                (seq.table, seq.hashes) = (table, hashes);
            }
            let n = budget.chunk(seq.remaining(), seq.tokens.len());
            let want = seq.computed + n;
            if n == 0 || !Self::grow(&mut self.blocks, &mut seq, want) {
                self.blocks.release(&seq.table);
                seq.reset_kv();
                self.waiting.push_front(seq);
                break;
            }
            budget.take(seq.tokens.len(), n);
            self.running.push(seq);
            self.planned.push(n);
        }
        self.planned.iter().any(|&n| n > 0)
    }

    /// Run one step: plan it, hand the batch to `forward`, then sample, stream, and retire
    /// finished sequences. `forward` appends one logits row per chunk whose `LogitsFor` is
    /// `LastToken`, in batch order, then the final-normed hidden state of the last token of each
    /// chunk its second argument lists (indices into the chunks: pooling sequences reaching their
    /// end, which need no logits). Returns false when there was nothing to do.
    pub fn step(
        &mut self,
        tok: &Tokenizer,
        vocab: usize,
        forward: impl FnOnce(&[SeqChunk], &[usize], &mut Vec<f32>) -> Result<()>,
        logits: &mut Vec<f32>,
    ) -> bool {
        if !self.plan(tok) {
            return false;
        }
        self.steps += 1;
        let mut chunks = Vec::with_capacity(self.running.len());
        let mut hidden = Vec::new();
        for (seq, &n) in self.running.iter_mut().zip(&self.planned) {
            if n > 0 {
                seq.mark_started();
                let ends = seq.computed + n == seq.tokens.len();
                let pooled = ends && seq.output == Output::Hidden;
                if pooled {
                    hidden.push(chunks.len());
                }
                chunks.push(SeqChunk {
                    tokens: &seq.tokens[seq.computed..seq.computed + n],
                    start: seq.computed,
                    table: &seq.table,
                    logits: if ends && !pooled { LogitsFor::LastToken } else { LogitsFor::Nothing },
                });
            }
        }
        logits.clear();
        let started = std::time::Instant::now();
        let result = forward(&chunks, &hidden, logits);
        let hidden_at = chunks.iter().filter(|c| c.logits == LogitsFor::LastToken).count() * vocab;
        let tokens: usize = chunks.iter().map(|c| c.tokens.len()).sum();
        let decodes = chunks.iter().filter(|c| c.tokens.len() == 1 && c.logits == LogitsFor::LastToken).count();
        self.cost.observe(decodes, tokens - decodes, started.elapsed().as_secs_f64() * 1000.0);
        drop(chunks);
        if let Err(e) = result {
            // A failed step fails the sequences in it; the others keep going.
            let planned = std::mem::take(&mut self.planned);
            let mut k = 0;
            for (i, n) in planned.iter().enumerate() {
                if *n > 0 {
                    let seq = self.running.remove(i - k);
                    k += 1;
                    // A GPU failure (lost device, out of memory) stays typed as one.
                    let err = match &e {
                        EngineError::Gpu(m) => EngineError::Gpu(format!("forward step failed: {m}")),
                        e => EngineError::Internal(format!("forward step failed: {e}")),
                    };
                    self.retire(seq, Outcome::Failed(err), tok);
                }
            }
            self.publish();
            return true;
        }
        let width = if hidden.is_empty() { 0 } else { (logits.len() - hidden_at) / hidden.len() };
        let (mut row, mut hidden_row) = (0, 0);
        let mut i = 0;
        let planned = std::mem::take(&mut self.planned);
        for &n in &planned {
            let seq = &mut self.running[i];
            if n == 0 {
                i += 1;
                continue;
            }
            seq.computed += n;
            self.register_full_blocks(i);
            let seq = &mut self.running[i];
            if seq.computed < seq.tokens.len() {
                i += 1;
                continue;
            }
            if seq.output == Output::Hidden {
                seq.on_hidden(&logits[hidden_at + hidden_row * width..][..width]);
                hidden_row += 1;
                let seq = self.running.remove(i);
                self.retire(seq, Outcome::Finished(FinishReason::Stop), tok);
                continue;
            }
            let out = seq.on_logits(&mut logits[row * vocab..(row + 1) * vocab], tok);
            row += 1;
            match out {
                Ok(None) => i += 1,
                Ok(Some(reason)) => {
                    let seq = self.running.remove(i);
                    self.retire(seq, Outcome::Finished(reason), tok);
                }
                Err(e) => {
                    let seq = self.running.remove(i);
                    self.retire(seq, Outcome::Failed(e), tok);
                }
            }
        }
        self.planned = planned; // cleared by the next plan: the buffer is reused
        self.publish();
        true
    }

    /// Register the sequence's newly completed blocks in the prefix cache.
    fn register_full_blocks(&mut self, i: usize) {
        if !self.blocks.caching() {
            return;
        }
        let seq = &mut self.running[i];
        let full = seq.computed / BLOCK_TOKENS;
        while seq.hashes.len() < full {
            let b = seq.hashes.len();
            let tokens = &seq.tokens[b * BLOCK_TOKENS..(b + 1) * BLOCK_TOKENS];
            let h = block_hash(seq.hashes.last().copied().unwrap_or(0), tokens);
            self.blocks.register(seq.table[b], h, tokens);
            seq.hashes.push(h);
        }
    }

    /// Fail every sequence (shutdown).
    pub fn abort_all(&mut self, tok: &Tokenizer) {
        let all: Vec<Sequence> = self.running.drain(..).chain(self.waiting.drain(..)).collect();
        for seq in all {
            self.retire(seq, Outcome::Failed(EngineError::Aborted), tok);
        }
    }
}

/// Prompts of at most this many tokens go into a step whole while others decode.
pub const SHORT_PROMPT: usize = 128;

/// The prompt tokens one step may still take: in all, and for chunks of long prompts.
struct Budget {
    tokens: usize,
    long: usize,
    max_chunk: usize,
}

impl Budget {
    /// Tokens this step takes of a sequence of `total` tokens with `remaining` still to run. Short
    /// sequences go in whole; the tail of a long one is held like the rest of it (its last
    /// chunks, attending over the whole prompt, are its dearest).
    fn chunk(&self, remaining: usize, total: usize) -> usize {
        let n = remaining.min(self.tokens).min(self.max_chunk);
        if total <= SHORT_PROMPT { n } else { n.min(self.long) }
    }

    fn take(&mut self, total: usize, n: usize) {
        self.tokens -= n;
        if total > SHORT_PROMPT {
            self.long = self.long.saturating_sub(n);
        }
    }
}

/// Removing the first sequence that matches, from either queue.
trait SeqList {
    fn take_where(&mut self, f: fn(&Sequence) -> bool) -> Option<Sequence>;
}

impl SeqList for VecDeque<Sequence> {
    fn take_where(&mut self, f: fn(&Sequence) -> bool) -> Option<Sequence> {
        let i = self.iter().position(f)?;
        self.remove(i)
    }
}

impl SeqList for Vec<Sequence> {
    fn take_where(&mut self, f: fn(&Sequence) -> bool) -> Option<Sequence> {
        let i = self.iter().position(f)?;
        Some(self.remove(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_sequences_are_held_to_the_pace_budget_to_their_last_chunk_and_short_ones_go_whole() {
        let budget = Budget { tokens: 256, long: 24, max_chunk: usize::MAX };
        // The last 100 tokens of a 2,048-token prompt: still held (they attend over all of it).
        assert_eq!(budget.chunk(100, 2048), 24);
        assert_eq!(budget.chunk(1000, 2048), 24);
        // A 100-token prompt goes in whole.
        assert_eq!(budget.chunk(100, 100), 100);
        assert_eq!(budget.chunk(SHORT_PROMPT, SHORT_PROMPT), SHORT_PROMPT);
        // Taking from a long sequence uses up the pace budget; a short one only the step's tokens.
        let mut b = Budget { tokens: 256, long: 24, max_chunk: usize::MAX };
        b.take(100, 100);
        assert_eq!((b.tokens, b.long), (156, 24));
        b.take(2048, 20);
        assert_eq!((b.tokens, b.long), (136, 4));
    }

    /// Zero logits for every row a step asks for: the scheduler is under test, not the model.
    fn zero_logits(chunks: &[SeqChunk], out: &mut Vec<f32>, vocab: usize) -> Result<()> {
        let rows = chunks.iter().filter(|c| c.logits == LogitsFor::LastToken).count();
        out.resize(rows * vocab, 0.0);
        Ok(())
    }

    #[test]
    fn the_newest_running_sequence_is_preempted_when_blocks_run_out() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/qwen3-tiny/tokenizer.json");
        let tok = Tokenizer::from_file(&dir).unwrap();
        let vocab = tok.vocab_size();
        let opts = crate::serve::request::GenerateRequest { max_tokens: Some(8.0), temperature: Some(0.0), ..Default::default() }
            .resolve(&Default::default())
            .unwrap();
        // Two blocks: each 15-token prompt takes one; both need a second at their 17th token.
        let cfg = SchedulerConfig { max_batch_tokens: 64, max_sequences: 4, max_chunk: 64 };
        let mut s = Scheduler::new(cfg, BlockManager::new(2, false));
        let (older, newer): (Vec<u32>, Vec<u32>) = ((100..115).collect(), (300..315).collect());
        for p in [&older, &newer] {
            s.add(Sequence::new(p.clone(), &opts, 8, Vec::new(), None, Box::new(|_| {})));
        }
        let mut logits = Vec::new();
        for _ in 0..2 {
            assert!(s.step(&tok, vocab, |c, _, out| zero_logits(c, out, vocab), &mut logits));
        }
        assert_eq!((s.running.len(), s.preemptions), (2, 0));
        assert!(s.step(&tok, vocab, |c, _, out| zero_logits(c, out, vocab), &mut logits));
        // The older one keeps running (with the freed block); the newer waits at the queue's head.
        assert_eq!(s.preemptions, 1);
        assert_eq!(s.running.len(), 1);
        assert_eq!(&s.running[0].tokens[..15], &older[..]);
        assert_eq!(s.running[0].table.len(), 2);
        let waiting = s.waiting.front().unwrap();
        assert_eq!(&waiting.tokens[..15], &newer[..]);
        assert!(waiting.table.is_empty(), "a preempted sequence keeps no blocks");
    }
}
