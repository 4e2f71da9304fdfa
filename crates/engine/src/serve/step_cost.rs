//! How many prompt tokens a step may add while sequences are decoding, so that running streams
//! keep their pace: a step with prompt tokens should take at most `ITL_SLACK` times a decode-only
//! step. The prompt tokens' cost is measured where the prompt is (a chunk late in a long prompt
//! attends over more keys, so tokens get dearer as it goes): after each loaded step, the cost per
//! prompt token seen there sets the next budget. A straight-line fit over all steps (the earlier
//! rule) under-counted those tokens and let a 256-token chunk stall 8 streams for seconds.

/// A running stream's inter-token time may grow by this factor while prompts are admitted.
pub const ITL_SLACK: f64 = 3.0;
/// `fixed / per_token` before any loaded step was seen: the weight read of a step costs a few
/// tokens' compute on a CPU, so `(ITL_SLACK - 1) * (4 + decodes)` prompt tokens to start with.
const DEFAULT_RATIO: f64 = 4.0;
/// Weight of the newest decode-only step in the baseline.
const BASE_WEIGHT: f64 = 0.2;

#[derive(Debug, Clone, Copy, Default)]
pub struct StepCost {
    /// Decode-only step time (ms), a moving average.
    base_ms: Option<f64>,
    /// Prompt tokens a loaded step may add, from the last loaded steps.
    budget: Option<f64>,
}

impl StepCost {
    /// A step ran `decodes` decode tokens and `prompt` prompt tokens in `ms`.
    pub fn observe(&mut self, decodes: usize, prompt: usize, ms: f64) {
        if decodes == 0 {
            return; // no stream was waiting on it
        }
        if prompt == 0 {
            self.base_ms = Some(self.base_ms.map_or(ms, |b| b + BASE_WEIGHT * (ms - b)));
            return;
        }
        let Some(base) = self.base_ms else { return };
        let per_token = (ms - base).max(1e-6) / prompt as f64;
        let fit = ((ITL_SLACK - 1.0) * base / per_token).max(1.0);
        // Shrink at once to what this step says; grow half way to it, at most 2x a step.
        let b = self.budget.unwrap_or(fit);
        self.budget = Some(if fit <= b { fit } else { (0.5 * (b + fit)).min(2.0 * b) });
    }

    /// Prompt tokens a step with `decodes` decode tokens may add.
    pub fn prefill_budget(&self, decodes: usize) -> usize {
        match self.budget {
            Some(b) => b.floor() as usize,
            None => ((ITL_SLACK - 1.0) * (DEFAULT_RATIO + decodes as f64)).ceil() as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CPU-like step: a fixed weight read, cheap decode rows, dear prompt rows whose attention
    /// grows with their position in the prompt.
    fn step_ms(decodes: usize, prompt: usize, position: usize) -> f64 {
        60.0 + 2.0 * decodes as f64 + prompt as f64 * (6.0 + 0.004 * position as f64)
    }

    #[test]
    fn a_long_prompt_is_admitted_within_the_slack_and_still_progresses() {
        let mut c = StepCost::default();
        assert_eq!(c.prefill_budget(8), 24);
        (0..10).for_each(|_| c.observe(8, 0, step_ms(8, 0, 0)));
        let base = step_ms(8, 0, 0);
        let (mut pos, mut steps, mut worst) = (0usize, 0, 0.0f64);
        while pos < 4096 {
            let p = c.prefill_budget(8).min(256).min(4096 - pos);
            assert!(p >= 1);
            let ms = step_ms(8, p, pos + p);
            c.observe(8, p, ms);
            worst = worst.max(ms / base);
            pos += p;
            steps += 1;
        }
        assert!(worst <= ITL_SLACK * 1.1, "worst step {worst:.2}x a decode-only step");
        // It used the slack: within 15% of the fewest steps that keep every one within it
        // (prompt tokens of a step costing at most (slack - 1) x the decode-only step).
        let ideal: f64 = (0..4096).map(|x| (6.0 + 0.004 * x as f64) / ((ITL_SLACK - 1.0) * base)).sum();
        assert!((steps as f64) < 1.15 * ideal, "{steps} steps, ideal {ideal:.0}");
    }

    #[test]
    fn an_overlong_step_shrinks_the_budget_at_once() {
        let mut c = StepCost::default();
        c.observe(4, 0, 100.0);
        c.observe(4, 50, 200.0); // 2 ms a token: 100 tokens fit in 3x
        assert_eq!(c.prefill_budget(4), 100);
        c.observe(4, 100, 1100.0); // now 10 ms a token: 20 fit
        assert_eq!(c.prefill_budget(4), 20);
    }
}
