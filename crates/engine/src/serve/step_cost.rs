//! How many prompt tokens a step may add while sequences are decoding, so that running streams
//! keep their pace. A step's time is about `fixed + per_token × tokens` (the weights are read once
//! per step; every token costs its compute); both are fitted online from the steps that ran.
//! A step with `d` decode tokens and `p` prompt tokens stays within `slack` times a decode-only
//! step when `p <= (slack - 1) × (fixed / per_token + d)`.

/// A running stream's inter-token time may grow by this factor while prompts are admitted.
pub const ITL_SLACK: f64 = 3.0;
/// `fixed / per_token` before enough steps were seen (a CPU's order of magnitude: the weight read
/// of a step costs a few tokens' compute).
const DEFAULT_RATIO: f64 = 4.0;
/// Weight of older steps per new step: the fit follows load changes within tens of steps.
const DECAY: f64 = 0.97;

/// Online least squares of step time against step tokens, older steps decaying.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepCost {
    w: f64,
    x: f64,
    y: f64,
    xx: f64,
    xy: f64,
}

impl StepCost {
    pub fn observe(&mut self, tokens: usize, ms: f64) {
        let t = tokens as f64;
        for s in [&mut self.w, &mut self.x, &mut self.y, &mut self.xx, &mut self.xy] {
            *s *= DECAY;
        }
        self.w += 1.0;
        self.x += t;
        self.y += ms;
        self.xx += t * t;
        self.xy += t * ms;
    }

    /// `fixed / per_token` as fitted, or the default while the steps seen do not determine it.
    pub fn ratio(&self) -> f64 {
        let spread = self.w * self.xx - self.x * self.x;
        if self.w < 4.0 || spread <= 1e-9 * self.w * self.xx.max(1.0) {
            return DEFAULT_RATIO;
        }
        let per_token = (self.w * self.xy - self.x * self.y) / spread;
        let fixed = (self.y - per_token * self.x) / self.w;
        if per_token <= 0.0 || fixed < 0.0 {
            return DEFAULT_RATIO;
        }
        (fixed / per_token).clamp(0.5, 256.0)
    }

    /// Prompt tokens a step with `decodes` decode tokens may add.
    pub fn prefill_budget(&self, decodes: usize) -> usize {
        ((ITL_SLACK - 1.0) * (self.ratio() + decodes as f64)).ceil() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fit_recovers_fixed_and_per_token_cost_and_bounds_the_step() {
        let mut c = StepCost::default();
        assert_eq!(c.ratio(), DEFAULT_RATIO);
        // 30 ms per step plus 5 ms per token: ratio 6.
        for (i, t) in [1usize, 8, 24, 3, 64, 16, 2, 40].iter().cycle().take(60).enumerate() {
            c.observe(*t, 30.0 + 5.0 * *t as f64 + if i % 2 == 0 { 0.5 } else { -0.5 });
        }
        assert!((c.ratio() - 6.0).abs() < 0.1, "{}", c.ratio());
        // 8 decodes: a decode-only step is 70 ms; 3x is 210 ms = 30 + 5 (8 + p): p = 28.
        assert_eq!(c.prefill_budget(8), 28);
        // Steps of one size do not determine the fit: the default stays.
        let mut same = StepCost::default();
        (0..20).for_each(|_| same.observe(8, 50.0));
        assert_eq!(same.ratio(), DEFAULT_RATIO);
    }
}
