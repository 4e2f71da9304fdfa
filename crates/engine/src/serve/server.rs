//! The engine loop: one thread that owns the scheduler and the KV pool, takes new requests from a
//! channel and runs steps (each one forward call on the kernel pool) while there is work. Callers
//! never block it: they submit a [`Sequence`] with its event sink and go.
use crate::error::EngineError;
use crate::error::Result;
use crate::model::backend::executor::Executor;
use crate::model::{ExecOptions, Qwen3Model};
use crate::serve::pooled::pooled_step;
use crate::serve::scheduler::{Scheduler, SchedulerStats};
use crate::serve::sequence::Sequence;
use crate::text::tokenizer::Tokenizer;
use nano_qwen3_kernels::pool::ThreadPool;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// What the loop needs of the engine, shared with it.
pub struct Runtime {
    pub model: Arc<Qwen3Model>,
    pub pool: Arc<ThreadPool>,
    pub tokenizer: Arc<Tokenizer>,
    pub exec: ExecOptions,
}

pub struct Server {
    tx: Option<Sender<Sequence>>,
    stats: Arc<Mutex<SchedulerStats>>,
    thread: Option<JoinHandle<()>>,
}

/// Queue `seq` on the serving loop behind `tx` (fails it when the loop is gone: shutting down).
pub fn queue(tx: Option<&Sender<Sequence>>, seq: Sequence) {
    if let Some(Err(e)) = tx.map(|tx| tx.send(seq)) {
        e.0.fail(EngineError::Aborted);
    }
}

/// A step with pooling rows (embeddings), which read hidden states: on the CPU only for now.
fn pooled(device: &mut Executor, rt: &Runtime, chunks: &[crate::model::SeqChunk], hidden: &[usize], logits: &mut Vec<f32>) -> Result<()> {
    match device.cpu_kv() {
        Some(kv) => pooled_step(&rt.model, kv, chunks, hidden, &rt.exec, logits),
        None => Err(EngineError::Unsupported("embeddings and rerank scores do not run on the GPU yet: load the model with device \"cpu\"".into())),
    }
}

impl Server {
    pub fn start(rt: Runtime, mut device: Executor, mut sched: Scheduler) -> std::io::Result<Server> {
        let (tx, rx) = channel::<Sequence>();
        let stats = sched.published();
        // `start` returns once the loop runs: its thread's start-up (the runtime's allocations)
        // never lands in the middle of the first requests' steps.
        let (ready, running) = channel::<()>();
        let thread = std::thread::Builder::new().name("nano-qwen3-engine".into()).spawn(move || {
            let _ = ready.send(());
            let vocab = rt.model.config.vocab_size;
            let mut logits = Vec::new();
            loop {
                if sched.is_idle() {
                    match rx.recv() {
                        Ok(seq) => sched.add(seq),
                        Err(_) => break,
                    }
                }
                let mut closed = false;
                loop {
                    match rx.try_recv() {
                        Ok(seq) => sched.add(seq),
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                }
                if closed {
                    sched.abort_all(&rt.tokenizer);
                    break;
                }
                sched.step(
                    &rt.tokenizer,
                    vocab,
                    |chunks, hidden, logits| {
                        let run = || {
                            rt.pool.install(|| {
                                if hidden.is_empty() {
                                    device.step(&rt.model, chunks, &rt.exec, logits)
                                } else {
                                    pooled(&mut device, &rt, chunks, hidden, logits)
                                }
                            })
                        };
                        catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|p| {
                            let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
                            Err(EngineError::Internal(format!("the forward step panicked: {}", msg.unwrap_or_default())))
                        })
                    },
                    &mut logits,
                );
            }
        })?;
        let _ = running.recv();
        Ok(Server { tx: Some(tx), stats, thread: Some(thread) })
    }

    /// Queue a request; it joins the batch at the next step.
    pub fn submit(&self, seq: Sequence) {
        queue(self.tx.as_ref(), seq);
    }

    /// Where requests are queued, for a thread that readies a request before it joins ([`queue`]).
    pub fn queue(&self) -> Option<Sender<Sequence>> {
        self.tx.clone()
    }

    /// The scheduler's counters after the last step.
    pub fn stats(&self) -> SchedulerStats {
        *self.stats.lock().unwrap()
    }
}

impl Drop for Server {
    /// Closing the channel ends the loop; requests still in it end with `Aborted`.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
