//! Request options for generation and the stop-string logic that decides what text may be
//! released while streaming.
use crate::model::config::GenerationDefaults;
use crate::error::{EngineError, Result};
use crate::serve::grammar::GrammarSpec;
use crate::serve::sampler::SamplingParams;
use serde::{Deserialize, Serialize};

/// What a caller may set; anything left out comes from generation_config.json, then built-ins.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GenerateRequest {
    pub max_tokens: Option<f64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<f64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub seed: Option<f64>,
    #[serde(default)]
    pub stop: Vec<String>,
    #[serde(default)]
    pub stop_token_ids: Vec<u32>,
    #[serde(default)]
    pub ignore_eos: bool,
    /// Added to these tokens' logits before sampling (token id as a decimal string -> bias).
    #[serde(default)]
    pub logit_bias: std::collections::BTreeMap<String, f64>,
    /// Report each sampled token's log-probability and this many most likely alternatives.
    pub logprobs: Option<f64>,
    /// Constrain the output to a grammar (structured outputs).
    pub grammar: Option<GrammarSpec>,
}

/// Most alternatives per token that `logprobs` may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

pub const DEFAULT_MAX_TOKENS: usize = 256;

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// `Some(n)`: logprobs with n alternatives per token.
    pub logprobs: Option<usize>,
    pub grammar: Option<GrammarSpec>,
}

fn whole(name: &str, v: f64, min: f64, allowed: &str) -> Result<u64> {
    if v.is_finite() && v.fract() == 0.0 && v >= min && v <= u64::MAX as f64 {
        Ok(v as u64)
    } else {
        Err(EngineError::invalid_arg(name, v, allowed))
    }
}

impl GenerateRequest {
    pub fn resolve(&self, defaults: &GenerationDefaults) -> Result<GenerateOptions> {
        let sampled = defaults.do_sample;
        let pick = |mine: Option<f64>, theirs: Option<f64>, builtin: f64| mine.or(if sampled { theirs } else { None }).unwrap_or(builtin);
        let temperature = match self.temperature {
            Some(t) => t,
            None if sampled => defaults.temperature.unwrap_or(1.0),
            None => 0.0,
        };
        let top_k = match self.top_k {
            Some(k) => whole("topK", k, 0.0, "an integer >= 0 (0 = off)")? as usize,
            None if sampled => defaults.top_k.unwrap_or(0),
            None => 0,
        };
        let sampling = SamplingParams {
            temperature,
            top_k,
            top_p: pick(self.top_p, defaults.top_p, 1.0),
            min_p: pick(self.min_p, defaults.min_p, 0.0),
            repetition_penalty: pick(self.repetition_penalty, defaults.repetition_penalty, 1.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            seed: self.seed.map(|s| whole("seed", s, 0.0, "an integer >= 0")).transpose()?,
            logit_bias: self.logit_bias()?,
        };
        sampling.validate()?;
        let max_tokens = match self.max_tokens {
            Some(m) => whole("maxTokens", m, 1.0, "an integer >= 1")? as usize,
            None => DEFAULT_MAX_TOKENS,
        };
        if let Some(s) = self.stop.iter().find(|s| s.is_empty()) {
            return Err(EngineError::invalid_arg("stop", format!("{s:?}"), "non-empty strings"));
        }
        Ok(GenerateOptions {
            sampling,
            max_tokens,
            stop: self.stop.clone(),
            stop_token_ids: self.stop_token_ids.clone(),
            ignore_eos: self.ignore_eos,
            logprobs: self.logprobs.map(top_logprobs).transpose()?,
            grammar: self.grammar.clone(),
        })
    }

    /// Token ids are checked against the vocabulary when the request is submitted.
    fn logit_bias(&self) -> Result<Vec<(u32, f32)>> {
        self.logit_bias
            .iter()
            .map(|(k, &v)| {
                let id = k.parse::<u32>().map_err(|_| EngineError::invalid_arg("logitBias key", format!("{k:?}"), "a token id (decimal integer)"))?;
                if !(-100.0..=100.0).contains(&v) {
                    return Err(EngineError::invalid_arg(&format!("logitBias[{k}]"), v, "-100 <= bias <= 100"));
                }
                Ok((id, v as f32))
            })
            .collect()
    }
}

fn top_logprobs(n: f64) -> Result<usize> {
    let allowed = format!("an integer 0..={MAX_TOP_LOGPROBS} (alternatives per token)");
    match whole("logprobs", n, 0.0, &allowed)? {
        n if n as usize <= MAX_TOP_LOGPROBS => Ok(n as usize),
        n => Err(EngineError::invalid_arg("logprobs", n, &allowed)),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// EOS, a stop token id or a stop string.
    Stop,
    /// maxTokens or the context length was reached.
    Length,
}

/// Finds stop strings in the generated text and tells how much text is safe to release: text that
/// could still become the start of a stop string is held back.
pub struct StopMatcher {
    stops: Vec<String>,
}

pub enum StopScan {
    /// A stop string starts at this byte offset; the output ends there.
    Hit(usize),
    /// No stop string; text up to this byte offset can be released.
    SafeUpTo(usize),
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        Self { stops }
    }

    /// `from` is the first byte of new text; a stop may straddle it, so search a little before.
    pub fn scan(&self, text: &str, from: usize) -> StopScan {
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut search_from = from.saturating_sub(longest);
        while !text.is_char_boundary(search_from) {
            search_from -= 1;
        }
        let hit = self.stops.iter().filter_map(|s| text[search_from..].find(s.as_str()).map(|i| i + search_from)).min();
        if let Some(at) = hit {
            return StopScan::Hit(at);
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let mut safe = text.len();
        for s in &self.stops {
            for k in (1..s.len()).rev() {
                if s.is_char_boundary(k) && text.ends_with(&s[..k]) {
                    safe = safe.min(text.len() - k);
                    break;
                }
            }
        }
        StopScan::SafeUpTo(safe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_found_and_prefixes_held_back() {
        let m = StopMatcher::new(vec!["###".into(), "END".into()]);
        assert!(matches!(m.scan("hello ##", 6), StopScan::SafeUpTo(6)));
        assert!(matches!(m.scan("hello ###x", 8), StopScan::Hit(6)));
        assert!(matches!(m.scan("abc EN", 4), StopScan::SafeUpTo(4)));
        assert!(matches!(m.scan("abc", 0), StopScan::SafeUpTo(3)));
    }

    /// Streams `text` in the given pieces as a sequence does: what may still start a stop string is
    /// held back; returns everything released and whether a stop string ended it.
    fn stream(m: &StopMatcher, pieces: &[&str]) -> (String, bool) {
        let (mut text, mut released, mut out) = (String::new(), 0, String::new());
        for p in pieces {
            let from = text.len();
            text.push_str(p);
            match m.scan(&text, from) {
                StopScan::Hit(at) => {
                    out.push_str(&text[released.min(at)..at]);
                    return (out, true);
                }
                StopScan::SafeUpTo(safe) if safe > released => {
                    out.push_str(&text[released..safe]);
                    released = safe;
                }
                StopScan::SafeUpTo(_) => {}
            }
        }
        out.push_str(&text[released..]);
        (out, false)
    }

    #[test]
    fn stop_strings_split_at_every_boundary_never_leak() {
        let m = StopMatcher::new(vec!["###END".into(), "é!".into()]);
        for text in ["Hello ###END and more", "café! then", "a##b#END ###END", "no stop ## here #"] {
            let want = ["###END", "é!"].iter().filter_map(|s| text.find(s)).min().map(|at| &text[..at]);
            let cuts: Vec<usize> = (0..=text.len()).filter(|&i| text.is_char_boundary(i)).collect();
            // Every way to cut the text in two and in three pieces, and one character at a time.
            let mut splits: Vec<Vec<&str>> = vec![text.char_indices().map(|(i, c)| &text[i..i + c.len_utf8()]).collect()];
            for &a in &cuts {
                splits.push(vec![&text[..a], &text[a..]]);
                for &b in cuts.iter().filter(|&&b| b >= a) {
                    splits.push(vec![&text[..a], &text[a..b], &text[b..]]);
                }
            }
            for pieces in &splits {
                let (out, hit) = stream(&m, pieces);
                match want {
                    Some(prefix) => assert!(hit && out == prefix, "{pieces:?}: released {out:?}, want {prefix:?}"),
                    None => assert!(!hit && out == text, "{pieces:?}: released {out:?}"),
                }
            }
        }
    }

    #[test]
    fn defaults_merge_and_bad_values_are_named() {
        let d = GenerationDefaults { do_sample: true, temperature: Some(0.6), top_k: Some(20), ..Default::default() };
        let o = GenerateRequest::default().resolve(&d).unwrap();
        assert_eq!((o.sampling.temperature, o.sampling.top_k), (0.6, 20));
        let greedy = GenerateRequest { temperature: Some(0.0), ..Default::default() }.resolve(&d).unwrap();
        assert_eq!(greedy.sampling.temperature, 0.0);
        let e = GenerateRequest { max_tokens: Some(0.0), ..Default::default() }.resolve(&d).unwrap_err();
        assert!(e.to_string().contains("maxTokens"), "{e}");
    }

    fn resolved(f: &dyn Fn(&mut GenerateRequest)) -> Result<GenerateOptions> {
        let mut r = GenerateRequest::default();
        f(&mut r);
        r.resolve(&GenerationDefaults::default())
    }

    #[test]
    fn logit_bias_is_parsed_and_bounded_exactly() {
        let bias = resolved(&|r| {
            r.logit_bias.insert("7".into(), 100.0);
            r.logit_bias.insert("3".into(), -100.0);
        });
        assert_eq!(bias.unwrap().sampling.logit_bias, vec![(3, -100.0), (7, 100.0)]);
        let e = resolved(&|r| {
            r.logit_bias.insert("x".into(), 1.0);
        }).unwrap_err().to_string();
        assert!(e.contains("logitBias key") && e.contains("\"x\""), "{e}");
        for v in [100.5, -100.5, f64::NAN] {
            let e = resolved(&|r| {
                r.logit_bias.insert("1".into(), v);
            }).unwrap_err().to_string();
            assert!(e.contains("logitBias[1]") && e.contains("-100 <= bias <= 100"), "{e}");
        }
    }

    #[test]
    fn whole_number_options_take_their_bounds_and_refuse_fractions() {
        assert_eq!(resolved(&|r| r.max_tokens = Some(1.0)).unwrap().max_tokens, 1);
        assert_eq!(resolved(&|_| ()).unwrap().max_tokens, DEFAULT_MAX_TOKENS);
        for bad in [0.0, 1.5, f64::INFINITY, f64::NAN] {
            assert!(resolved(&|r| r.max_tokens = Some(bad)).is_err(), "maxTokens {bad}");
        }
        assert_eq!(resolved(&|r| r.seed = Some(0.0)).unwrap().sampling.seed, Some(0));
        assert!(resolved(&|r| r.seed = Some(-1.0)).is_err());
        assert_eq!(resolved(&|r| r.top_k = Some(0.0)).unwrap().sampling.top_k, 0);
        assert!(resolved(&|r| r.top_k = Some(2.5)).is_err());
        assert_eq!(resolved(&|r| r.logprobs = Some(0.0)).unwrap().logprobs, Some(0));
        assert_eq!(resolved(&|r| r.logprobs = Some(MAX_TOP_LOGPROBS as f64)).unwrap().logprobs, Some(MAX_TOP_LOGPROBS));
        let e = resolved(&|r| r.logprobs = Some(MAX_TOP_LOGPROBS as f64 + 1.0)).unwrap_err().to_string();
        assert!(e.contains("logprobs") && e.contains("0..=20"), "{e}");
        assert!(resolved(&|r| r.stop = vec!["ok".into(), String::new()]).is_err());
    }

    #[test]
    fn generation_config_values_apply_only_to_sampled_defaults() {
        let d = GenerationDefaults { do_sample: false, temperature: Some(0.7), top_k: Some(20), top_p: Some(0.8), min_p: Some(0.1), repetition_penalty: Some(1.3), ..Default::default() };
        let greedy = GenerateRequest::default().resolve(&d).unwrap().sampling;
        assert_eq!((greedy.temperature, greedy.top_k, greedy.top_p, greedy.min_p, greedy.repetition_penalty), (0.0, 0, 1.0, 0.0, 1.0));
        let sampled = GenerateRequest::default().resolve(&GenerationDefaults { do_sample: true, ..d.clone() }).unwrap().sampling;
        assert_eq!((sampled.temperature, sampled.top_k, sampled.top_p, sampled.min_p, sampled.repetition_penalty), (0.7, 20, 0.8, 0.1, 1.3));
        let mine = GenerateRequest { top_p: Some(0.5), ..Default::default() }.resolve(&d).unwrap().sampling;
        assert_eq!(mine.top_p, 0.5);
    }

    #[test]
    fn the_search_for_a_straddling_stop_steps_back_to_a_char_boundary() {
        // from - longest lands inside the 4-byte emoji: the search must start before it, not after.
        let m = StopMatcher::new(vec!["\u{1F600}a".into(), "b".into()]);
        assert!(matches!(m.scan("\u{1F600}ab", 6), StopScan::Hit(0)));
    }
}
