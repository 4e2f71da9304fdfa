//! A serving step with pooling rows: the forward pass's lm_head input (every token's
//! final-normed hidden state, which it shows its [`Observer`]) is read at the last token of each
//! embedding chunk, so those sequences share the step with generating ones yet never reach the
//! lm_head. The rows are computed as in any step: a row never depends on its neighbours.
use crate::error::Result;
use crate::model::{ExecOptions, KvPool, Observer, Qwen3Model, SeqChunk, Workspace};
use crate::quantize::calibration::Site;

/// Copies the final-normed rows at `rows` (token indices within the step) out of the forward.
struct LastRows<'a> {
    rows: &'a [usize],
    out: Vec<f32>,
}

impl Observer for LastRows<'_> {
    fn observe(&mut self, layer: Option<usize>, _site: Site, x: &[f32], t: usize) {
        if layer.is_some() || t == 0 {
            return; // only the lm_head's input: `layer` None
        }
        let h = x.len() / t;
        for &r in self.rows {
            self.out.extend_from_slice(&x[r * h..(r + 1) * h]);
        }
    }
}

/// One forward over `chunks`: the logits rows as usual, then the hidden state of the last token
/// of each chunk listed in `hidden`, appended to `logits` in that order.
pub fn pooled_step(model: &Qwen3Model, kv: &mut KvPool, chunks: &[SeqChunk], hidden: &[usize], exec: &ExecOptions, logits: &mut Vec<f32>) -> Result<()> {
    let mut ends = Vec::with_capacity(chunks.len());
    let mut at = 0;
    for c in chunks {
        at += c.tokens.len();
        ends.push(at - 1);
    }
    let rows: Vec<usize> = hidden.iter().map(|&i| ends[i]).collect();
    let mut pick = LastRows { rows: &rows, out: Vec::with_capacity(rows.len() * model.config.hidden_size) };
    model.forward(kv, chunks, exec, &mut Workspace::default(), logits, Some(&mut pick))?;
    logits.extend_from_slice(&pick.out);
    Ok(())
}
