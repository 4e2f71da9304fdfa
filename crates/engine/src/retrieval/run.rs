//! Runs a set of pooling sequences on the engine loop and gathers their vectors, in input order.
//! Nothing waits on a thread: the last sequence to end hands everything to `done`.
use crate::engine::Engine;
use crate::error::{EngineError, Result};
use crate::serve::sequence::{Event, Output, Sequence};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Each input's vector and its token count, in input order.
pub type Pooled = Vec<(Vec<f32>, usize)>;
pub type Done = Box<dyn FnOnce(Result<Pooled>) + Send>;

struct Gather {
    vectors: Vec<Option<(Vec<f32>, usize)>>,
    left: usize,
    done: Option<Done>,
    cancel: Arc<AtomicBool>,
}

impl Gather {
    fn finish(&mut self, r: Result<Pooled>) {
        if let Some(done) = self.done.take() {
            if r.is_err() {
                // One failed input fails the call: the others stop at their next step.
                self.cancel.store(true, Ordering::Relaxed);
            }
            done(r);
        }
    }
}

/// The error for input `i` of a call (`what`: "input", "documents"): which one, with the numbers.
pub fn at_input(what: &str, i: usize, e: EngineError) -> EngineError {
    match e {
        EngineError::ContextOverflow { prompt_tokens, context } => {
            EngineError::invalid_arg(&format!("{what}[{i}]"), format!("{prompt_tokens} tokens"), &format!("at most {context} tokens (the context length)"))
        }
        EngineError::ContextOverflowAtLeast { min_tokens, context, .. } => {
            EngineError::invalid_arg(&format!("{what}[{i}]"), format!("at least {min_tokens} tokens"), &format!("at most {context} tokens (the context length)"))
        }
        EngineError::KvPoolOverflow { prompt_tokens, pool_tokens, .. } => EngineError::invalid_arg(
            &format!("{what}[{i}]"),
            format!("{prompt_tokens} tokens"),
            &format!("at most {pool_tokens} tokens (the KV cache pool; raise kvCacheMemory)"),
        ),
        EngineError::InvalidArgument { name, value, allowed } => EngineError::InvalidArgument { name: format!("{what}[{i}] {name}"), value, allowed },
        e => e,
    }
}

/// Check every prompt, then queue them all: a bad one refuses the call before anything runs.
/// Returns the flag that aborts them all (each checked at every step).
pub fn submit_all(engine: &Engine, what: &str, prompts: Vec<Vec<u32>>, output: Output, done: Done) -> Result<Arc<AtomicBool>> {
    for (i, p) in prompts.iter().enumerate() {
        engine.check_pooled(p).map_err(|e| at_input(what, i, e))?;
    }
    let n = prompts.len();
    let cancel = Arc::new(AtomicBool::new(false));
    let gather = Arc::new(Mutex::new(Gather { vectors: vec![None; n], left: n, done: Some(done), cancel: cancel.clone() }));
    if n == 0 {
        gather.lock().unwrap().finish(Ok(Vec::new()));
        return Ok(cancel);
    }
    for (i, prompt) in prompts.into_iter().enumerate() {
        let g = gather.clone();
        let sink = Box::new(move |e: Event| {
            let Event::Done(out) = e else { return };
            let mut g = g.lock().unwrap();
            match out.and_then(|o| o.pooled.map(|v| (v, o.usage.prompt_tokens)).ok_or_else(|| EngineError::Internal("a pooling sequence ended without its vector".into()))) {
                Ok(v) => {
                    g.vectors[i] = Some(v);
                    g.left -= 1;
                    if g.left == 0 {
                        let all = g.vectors.iter_mut().map(|v| v.take().unwrap()).collect();
                        g.finish(Ok(all));
                    }
                }
                Err(e) => g.finish(Err(e)),
            }
        });
        let mut seq = Sequence::pooled(prompt, output.clone(), sink);
        seq.cancel = cancel.clone();
        engine.submit_sequence(seq);
    }
    Ok(cancel)
}

/// [`submit_all`] and wait (Rust callers, tests).
pub fn run_all(engine: &Engine, what: &str, prompts: Vec<Vec<u32>>, output: Output) -> Result<Pooled> {
    let (tx, rx) = std::sync::mpsc::channel();
    submit_all(engine, what, prompts, output, Box::new(move |r| drop(tx.send(r))))?;
    rx.recv().unwrap_or(Err(EngineError::Aborted))
}
