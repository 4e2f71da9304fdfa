//! Token sampling: penalties, temperature, top-k, top-p, min-p, seeded RNG.
use crate::error::{EngineError, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f64,
    /// 0 disables top-k.
    pub top_k: usize,
    pub top_p: f64,
    pub min_p: f64,
    /// transformers' multiplicative penalty over prompt and generated tokens; 1 disables it.
    pub repetition_penalty: f64,
    /// OpenAI-style additive penalties over generated tokens.
    pub presence_penalty: f64,
    pub frequency_penalty: f64,
    pub seed: Option<u64>,
    /// (token, bias) added to the logits after the penalties.
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        let check = |ok: bool, name: &str, v: f64, allowed: &str| {
            if ok && v.is_finite() {
                Ok(())
            } else {
                Err(EngineError::invalid_arg(name, v, allowed))
            }
        };
        check(self.temperature >= 0.0, "temperature", self.temperature, "a number >= 0 (0 = greedy)")?;
        check(self.top_p > 0.0 && self.top_p <= 1.0, "topP", self.top_p, "0 < topP <= 1")?;
        check((0.0..=1.0).contains(&self.min_p), "minP", self.min_p, "0 <= minP <= 1")?;
        check(self.repetition_penalty > 0.0, "repetitionPenalty", self.repetition_penalty, "a number > 0 (1 = off)")?;
        check((-2.0..=2.0).contains(&self.presence_penalty), "presencePenalty", self.presence_penalty, "-2 <= presencePenalty <= 2")?;
        check((-2.0..=2.0).contains(&self.frequency_penalty), "frequencyPenalty", self.frequency_penalty, "-2 <= frequencyPenalty <= 2")?;
        Ok(())
    }
}

/// xoshiro256** seeded through splitmix64: small, fast, and identical on every platform, so a
/// seed gives the same tokens everywhere.
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Self([next(), next(), next(), next()])
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// Counts of generated tokens, for presence/frequency penalties.
    generated_counts: std::collections::HashMap<u32, usize>,
    /// Every token seen (prompt + generated), for the repetition penalty.
    seen: std::collections::HashSet<u32>,
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(params: SamplingParams, prompt: &[u32]) -> Self {
        let seed = params.seed.unwrap_or_else(|| {
            use std::time::{SystemTime, UNIX_EPOCH};
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
        });
        Self {
            rng: Rng::new(seed),
            params,
            generated_counts: Default::default(),
            seen: prompt.iter().copied().collect(),
        }
    }

    /// Record a token that was appended to the sequence.
    pub fn observe(&mut self, token: u32) {
        *self.generated_counts.entry(token).or_default() += 1;
        self.seen.insert(token);
    }

    fn apply_penalties(&self, logits: &mut [f32]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let rp = p.repetition_penalty as f32;
            for &t in &self.seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / rp } else { *l * rp };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&t, &c) in &self.generated_counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= (p.presence_penalty + p.frequency_penalty * c as f64) as f32;
                }
            }
        }
        for &(t, bias) in &p.logit_bias {
            if let Some(l) = logits.get_mut(t as usize) {
                *l += bias;
            }
        }
    }

    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        self.apply_penalties(logits);
        let p = &self.params;
        if p.temperature == 0.0 || p.top_k == 1 {
            return argmax(logits);
        }
        let inv_t = 1.0 / p.temperature as f32;
        let mut cand: Vec<(u32, f32)> =
            logits.iter().enumerate().filter(|(_, l)| l.is_finite()).map(|(i, &l)| (i as u32, l * inv_t)).collect();
        if cand.is_empty() {
            return argmax(logits);
        }
        let by_logit_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, by_logit_desc);
            cand.truncate(p.top_k);
        }
        cand.sort_unstable_by(by_logit_desc);
        // Softmax over the candidates (max first after sorting).
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand.iter().map(|c| (c.1 - max).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= sum);
        let mut keep = probs.len();
        if p.min_p > 0.0 {
            let floor = probs[0] * p.min_p as f32;
            keep = probs.iter().take_while(|&&x| x >= floor).count().max(1);
        }
        if p.top_p < 1.0 {
            let mut cum = 0.0f32;
            for (i, &x) in probs[..keep].iter().enumerate() {
                cum += x;
                if cum >= p.top_p as f32 {
                    keep = i + 1;
                    break;
                }
            }
        }
        let total: f32 = probs[..keep].iter().sum();
        let mut r = self.rng.next_f64() as f32 * total;
        for i in 0..keep {
            r -= probs[i];
            if r <= 0.0 {
                return cand[i].0;
            }
        }
        cand[keep - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(p: SamplingParams) -> Sampler {
        Sampler::new(p, &[])
    }

    #[test]
    fn greedy_picks_argmax() {
        let mut s = sampler(SamplingParams::default());
        assert_eq!(s.sample(&mut [0.1, 3.0, -1.0, 2.9]), 1);
    }

    #[test]
    fn same_seed_same_tokens_and_top_k_restricts() {
        let p = SamplingParams { temperature: 1.0, top_k: 2, seed: Some(7), ..Default::default() };
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let run = |p: &SamplingParams| {
            let mut s = sampler(p.clone());
            (0..200).map(|_| s.sample(&mut logits.clone())).collect::<Vec<_>>()
        };
        let a = run(&p);
        assert_eq!(a, run(&p));
        // top-2 of the logits are the two largest: indices with i%7==6 -> 6 and 13 tie with others;
        // every sampled token must carry the maximum logit value.
        assert!(a.iter().all(|&t| t % 7 == 6), "{a:?}");
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        // One dominant token (p ~ 0.97): top_p 0.9 and min_p 0.5 both leave only it.
        let logits = vec![10.0f32, 6.0, 5.0, 4.0];
        for p in [
            SamplingParams { temperature: 1.0, top_p: 0.9, seed: Some(1), ..Default::default() },
            SamplingParams { temperature: 1.0, min_p: 0.5, seed: Some(1), ..Default::default() },
        ] {
            let mut s = sampler(p);
            assert!((0..300).all(|_| s.sample(&mut logits.clone()) == 0));
        }
        // Without cuts, the tail shows up.
        let mut s = sampler(SamplingParams { temperature: 1.0, seed: Some(1), ..Default::default() });
        assert!((0..300).any(|_| s.sample(&mut logits.clone()) != 0));
    }

    #[test]
    fn penalties_change_the_choice() {
        let mut s = Sampler::new(SamplingParams { repetition_penalty: 2.0, ..Default::default() }, &[0]);
        assert_eq!(s.sample(&mut [2.0, 1.5]), 1); // 2.0/2 = 1.0 < 1.5
        let mut s = sampler(SamplingParams { frequency_penalty: 1.0, ..Default::default() });
        s.observe(0);
        assert_eq!(s.sample(&mut [2.0, 1.5]), 1);
        let mut s = sampler(SamplingParams { presence_penalty: 0.4, ..Default::default() });
        s.observe(0);
        assert_eq!(s.sample(&mut [2.0, 1.7]), 1);
    }

    /// Each penalty alone, hand-computed, including negative logits and repeated tokens.
    #[test]
    fn each_penalty_alone_follows_its_rule_exactly() {
        // Repetition (transformers' rule): a seen token's positive logit is divided, a negative one
        // multiplied, by the penalty; unseen tokens are untouched.
        let s = Sampler::new(SamplingParams { repetition_penalty: 2.0, ..Default::default() }, &[0, 1, 1]);
        let mut l = [3.0f32, -1.5, 0.25, -4.0];
        s.apply_penalties(&mut l);
        assert_eq!(l, [1.5, -3.0, 0.25, -4.0]);
        // Frequency: minus penalty x count of generated tokens (prompt tokens do not count).
        let mut s = Sampler::new(SamplingParams { frequency_penalty: 0.5, ..Default::default() }, &[3]);
        [0, 0, 0, 1].into_iter().for_each(|t| s.observe(t));
        let mut l = [3.0f32, -1.5, 0.25, -4.0];
        s.apply_penalties(&mut l);
        assert_eq!(l, [1.5, -2.0, 0.25, -4.0]);
        // Presence: minus penalty once per generated token, whatever its count.
        let mut s = Sampler::new(SamplingParams { presence_penalty: 0.5, ..Default::default() }, &[3]);
        [0, 0, 0, 1].into_iter().for_each(|t| s.observe(t));
        let mut l = [3.0f32, -1.5, 0.25, -4.0];
        s.apply_penalties(&mut l);
        assert_eq!(l, [2.5, -2.0, 0.25, -4.0]);
        // Negative penalties reward instead.
        let mut s = Sampler::new(SamplingParams { presence_penalty: -1.0, frequency_penalty: -0.25, ..Default::default() }, &[]);
        [2, 2].into_iter().for_each(|t| s.observe(t));
        let mut l = [3.0f32, -1.5, 0.25, -4.0];
        s.apply_penalties(&mut l);
        assert_eq!(l, [3.0, -1.5, 1.75, -4.0]);
    }

    /// Each cut alone, on logits whose softmax is known: p = [0.5, 0.25, 0.125, 0.125] from
    /// ln-probabilities (temperature 1); the set of tokens ever drawn is exactly what the cut keeps.
    #[test]
    fn each_cut_alone_keeps_exactly_its_tokens() {
        let l: Vec<f32> = [0.5f32, 0.25, 0.125, 0.125].iter().map(|p| p.ln()).collect();
        let drawn = |p: SamplingParams| {
            let mut s = sampler(p);
            let mut seen = [false; 4];
            (0..2000).for_each(|_| seen[s.sample(&mut l.clone()) as usize] = true);
            seen
        };
        let base = SamplingParams { temperature: 1.0, seed: Some(3), ..Default::default() };
        assert_eq!(drawn(base.clone()), [true; 4]);
        assert_eq!(drawn(SamplingParams { top_k: 2, ..base.clone() }), [true, true, false, false]);
        // top_p: the smallest prefix whose mass reaches p (0.5 + 0.25 = 0.75).
        assert_eq!(drawn(SamplingParams { top_p: 0.7, ..base.clone() }), [true, true, false, false]);
        assert_eq!(drawn(SamplingParams { top_p: 0.5, ..base.clone() }), [true, false, false, false]);
        // min_p: at least min_p x the top probability (0.3 x 0.5 = 0.15 keeps 0.5 and 0.25).
        assert_eq!(drawn(SamplingParams { min_p: 0.3, ..base.clone() }), [true, true, false, false]);
        assert_eq!(drawn(SamplingParams { min_p: 0.25, ..base.clone() }), [true; 4]);
        // Temperature alone: near 0 it is greedy; high, it still draws from all four.
        assert_eq!(drawn(SamplingParams { temperature: 0.01, ..base.clone() }), [true, false, false, false]);
        assert_eq!(drawn(SamplingParams { temperature: 5.0, ..base }), [true; 4]);
    }

    #[test]
    fn temperature_sharpens_by_its_exact_factor() {
        // Two tokens, logits 0 and ln 3: at T = 1, P(1) = 0.75; at T = 0.5, 9 / 10 = 0.9.
        let l = [0.0f32, 3f32.ln()];
        let freq = |t: f64| {
            let mut s = sampler(SamplingParams { temperature: t, seed: Some(11), ..Default::default() });
            (0..20000).filter(|_| s.sample(&mut l.clone()) == 1).count() as f64 / 20000.0
        };
        assert!((freq(1.0) - 0.75).abs() < 0.015, "{}", freq(1.0));
        assert!((freq(0.5) - 0.9).abs() < 0.015, "{}", freq(0.5));
    }

    #[test]
    fn logit_bias_moves_the_choice_and_only_its_token() {
        let mut s = sampler(SamplingParams { logit_bias: vec![(2, 5.0)], ..Default::default() });
        assert_eq!(s.sample(&mut [1.0, 2.0, -2.5, 0.0]), 2); // -2.5 + 5 = 2.5 > 2
        let mut s = sampler(SamplingParams { logit_bias: vec![(2, 4.0)], ..Default::default() });
        assert_eq!(s.sample(&mut [1.0, 2.0, -2.5, 0.0]), 1); // 1.5 < 2
        let mut s = sampler(SamplingParams { logit_bias: vec![(1, -100.0)], ..Default::default() });
        assert_eq!(s.sample(&mut [1.0, 2.0, -2.5, 0.0]), 0);
    }

    #[test]
    fn validation_names_the_bad_value() {
        let e = SamplingParams { top_p: 1.5, ..Default::default() }.validate().unwrap_err().to_string();
        assert!(e.contains("topP") && e.contains("1.5"), "{e}");
        assert!(SamplingParams { temperature: -1.0, ..Default::default() }.validate().is_err());
        assert!(SamplingParams { temperature: f64::NAN, ..Default::default() }.validate().is_err());
    }

    #[test]
    fn rng_is_xoshiro256_starstar_seeded_by_splitmix64() {
        // Known answers from an independent implementation of both reference algorithms (Vigna);
        // splitmix64(0)'s first output, 0xe220a8397b1dcdaf, is the published one.
        let first = |seed| {
            let mut r = Rng::new(seed);
            [r.next_u64(), r.next_u64(), r.next_u64(), r.next_u64()]
        };
        assert_eq!(first(0), [0x99ec5f36cb75f2b4, 0xbf6e1f784956452a, 0x1a5f849d4933e6e0, 0x6aa594f1262d2d2c]);
        assert_eq!(first(42), [0x15780b2e0c2ec716, 0x6104d9866d113a7e, 0xae17533239e499a1, 0xecb8ad4703b360a1]);
        let mut r = Rng::new(0);
        assert_eq!(r.next_f64(), (0x99ec5f36cb75f2b4u64 >> 11) as f64 / (1u64 << 53) as f64);
    }

    #[test]
    fn argmax_ties_go_to_the_lowest_id() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[-1.0, -1.0]), 0);
    }

    #[test]
    fn validation_boundaries_are_exact() {
        let with = |f: &dyn Fn(&mut SamplingParams)| {
            let mut p = SamplingParams::default();
            f(&mut p);
            p.validate().is_ok()
        };
        assert!(with(&|p| p.temperature = 0.0));
        assert!(!with(&|p| p.temperature = -1e-9));
        assert!(!with(&|p| p.top_p = 0.0));
        assert!(with(&|p| p.top_p = 1.0));
        assert!(!with(&|p| p.top_p = 1.0 + 1e-9));
        assert!(with(&|p| p.min_p = 0.0));
        assert!(with(&|p| p.min_p = 1.0));
        assert!(!with(&|p| p.min_p = -1e-9));
        assert!(!with(&|p| p.repetition_penalty = 0.0));
        assert!(with(&|p| p.repetition_penalty = 1e-9));
        for v in [-2.0, 2.0] {
            assert!(with(&|p| p.presence_penalty = v));
            assert!(with(&|p| p.frequency_penalty = v));
        }
        for v in [-2.0 - 1e-9, 2.0 + 1e-9, f64::NAN, f64::INFINITY] {
            assert!(!with(&|p| p.presence_penalty = v));
            assert!(!with(&|p| p.frequency_penalty = v));
        }
        assert!(!with(&|p| p.temperature = f64::INFINITY));
    }

    #[test]
    fn draws_follow_the_kept_distribution_renormalised() {
        // probabilities 0.5 / 0.3 / 0.2: every draw lands on a token in proportion to its share of
        // what the cuts keep (a fixed seed, so the counts are the same on every run).
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let freq = |p: SamplingParams| {
            let mut s = sampler(SamplingParams { temperature: 1.0, seed: Some(11), ..p });
            let mut counts = [0usize; 3];
            for _ in 0..4000 {
                counts[s.sample(&mut logits.clone()) as usize] += 1;
            }
            counts.map(|c| c as f64 / 4000.0)
        };
        let all = freq(SamplingParams::default());
        for (got, want) in all.iter().zip([0.5, 0.3, 0.2]) {
            assert!((got - want).abs() < 0.03, "{all:?}");
        }
        // top_p 0.7 keeps 0.5 + 0.3: token 0 then has 0.5 / 0.8 of the draws.
        let cut = freq(SamplingParams { top_p: 0.7, ..Default::default() });
        assert!((cut[0] - 0.625).abs() < 0.03 && cut[2] == 0.0, "{cut:?}");
        // top_k = vocabulary - 1: the smallest is never drawn.
        let k = freq(SamplingParams { top_k: 2, ..Default::default() });
        assert!((k[0] - 0.625).abs() < 0.03 && k[2] == 0.0, "{k:?}");
    }
}
