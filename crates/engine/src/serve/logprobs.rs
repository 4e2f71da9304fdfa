//! Log-probabilities of sampled tokens and their most likely alternatives, from the model's own
//! distribution (the logits before penalties, bias, grammar masks and temperature).
use crate::text::tokenizer::Tokenizer;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Alternative {
    pub token_id: u32,
    /// The token's text (lossy where it holds part of a UTF-8 character: see `bytes`).
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TokenLogprob {
    #[serde(flatten)]
    pub chosen: Alternative,
    /// The `n` most likely tokens, most likely first (ties: lower id first).
    pub top: Vec<Alternative>,
}

/// log-softmax normaliser: max + ln(sum(exp(l - max))), over finite logits.
fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().filter(|l| l.is_finite()).fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().filter(|l| l.is_finite()).map(|&l| ((l - max) as f64).exp()).sum();
    max + sum.ln() as f32
}

fn alternative(tok: &Tokenizer, token_id: u32, logprob: f32) -> Alternative {
    let bytes = tok.token_bytes().bytes.get(token_id as usize).cloned().unwrap_or_default();
    Alternative { token_id, token: String::from_utf8_lossy(&bytes).into_owned(), bytes, logprob }
}

/// `logits`: the raw logits of this step (padding rows already -inf).
pub fn token_logprob(tok: &Tokenizer, logits: &[f32], chosen: u32, n: usize) -> TokenLogprob {
    let norm = log_sum_exp(logits);
    let lp = |id: u32| logits.get(id as usize).map_or(f32::NEG_INFINITY, |&l| l - norm);
    // The n best in one pass, kept sorted (n <= 20): no vocabulary-sized list per token.
    let mut ids: Vec<u32> = Vec::with_capacity(n + 1);
    for (i, &l) in logits.iter().enumerate().filter(|(_, l)| l.is_finite()) {
        if ids.len() == n && ids.last().is_none_or(|&w| logits[w as usize] >= l) {
            continue;
        }
        let at = ids.partition_point(|&w| logits[w as usize] >= l);
        ids.insert(at, i as u32);
        ids.truncate(n);
    }
    TokenLogprob { chosen: alternative(tok, chosen, lp(chosen)), top: ids.into_iter().map(|i| alternative(tok, i, lp(i))).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_alternatives_are_a_full_sort_s_first_n() {
        let tok = crate::text::tokenizer::Tokenizer::from_file(&std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/qwen3-tiny/tokenizer.json")).unwrap();
        // Ties, a masked row and a spread of values.
        let logits: Vec<f32> = (0..500).map(|i| if i == 7 { f32::NEG_INFINITY } else { ((i * 37) % 101) as f32 / 10.0 }).collect();
        let mut sorted: Vec<u32> = (0..500u32).filter(|&i| i != 7).collect();
        sorted.sort_by(|a, b| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b)));
        for n in [0, 1, 5, 20] {
            let got: Vec<u32> = token_logprob(&tok, &logits, 3, n).top.iter().map(|a| a.token_id).collect();
            assert_eq!(got, sorted[..n], "n = {n}");
        }
    }

    #[test]
    fn log_sum_exp_matches_the_plain_formula_and_skips_masked_rows() {
        let l = [1.0f32, -2.0, 0.5, f32::NEG_INFINITY];
        let plain = (1f64.exp() + (-2f64).exp() + 0.5f64.exp()).ln() as f32;
        assert!((log_sum_exp(&l) - plain).abs() < 1e-6);
        // Large logits do not overflow.
        assert!((log_sum_exp(&[1000.0, 1000.0]) - (1000.0 + 2f32.ln())).abs() < 1e-3);
    }
}
