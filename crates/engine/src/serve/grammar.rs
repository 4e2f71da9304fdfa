//! Structured outputs: a grammar (a JSON schema, any JSON object, a Lark grammar or a regex) that
//! masks the logits before every sampled token, so the output matches it. llguidance does the
//! parsing and the masks (the library llama.cpp and vLLM use); this file builds its view of our
//! vocabulary once per engine and one matcher per request.
use crate::error::{EngineError, Result};
use crate::text::tokenizer::Tokenizer;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, InferenceCapabilities, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde::Deserialize;
use std::sync::Arc;

/// What the output must match.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum GrammarSpec {
    /// JSON valid against this schema (draft 2020-12 subset that llguidance supports).
    JsonSchema { schema: serde_json::Value },
    /// Any JSON object.
    JsonObject,
    /// A Lark grammar (llguidance's dialect; `%json { ... }` embeds a JSON schema).
    Lark { grammar: String },
    /// Text matching this regex.
    Regex { pattern: String },
}

impl GrammarSpec {
    fn top_level(&self) -> TopLevelGrammar {
        match self {
            GrammarSpec::JsonSchema { schema } => TopLevelGrammar::from_json_schema(compact(schema.clone())),
            GrammarSpec::JsonObject => TopLevelGrammar::from_json_schema(compact(serde_json::json!({ "type": "object" }))),
            GrammarSpec::Lark { grammar } => TopLevelGrammar::from_lark(grammar.clone()),
            GrammarSpec::Regex { pattern } => TopLevelGrammar::from_regex(pattern),
        }
    }
}

/// JSON laid out as Python's `json.dumps` does (`", "`, `": "`, no other whitespace), unless the
/// schema sets llguidance's own `x-guidance` options: with free whitespace a sampled model can
/// spend its whole budget on blank lines before the first key.
fn compact(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(o) = schema.as_object_mut() {
        if !o.contains_key("x-guidance") {
            let layout = llguidance::JsonCompileOptions {
                whitespace_flexible: false,
                item_separator: ", ".into(),
                key_separator: ": ".into(),
                ..Default::default()
            };
            layout.apply_to(&mut schema);
        }
    }
    schema
}

/// The vocabulary as llguidance sees it (a token trie), built once per engine.
pub struct GrammarCompiler {
    factory: ParserFactory,
}

impl GrammarCompiler {
    /// `eos`: the token a finished grammar allows (the first of the request's stop tokens).
    pub fn new(tok: &Tokenizer, eos: u32) -> Result<Self> {
        let table = tok.token_bytes();
        // Special tokens carry llguidance's marker byte, so no grammar text can match them.
        let words: Vec<Vec<u8>> = table
            .bytes
            .iter()
            .zip(&table.special)
            .map(|(b, &special)| if special { [&[TokTrie::SPECIAL_TOKEN_MARKER][..], b].concat() } else { b.clone() })
            .collect();
        let trie = TokTrie::from(&TokRxInfo::new(words.len() as u32, eos), &words);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        // One token per step, never spliced or rolled back: what the scheduler can do.
        let caps = InferenceCapabilities { ff_tokens: false, backtrack: false, conditional_ff_tokens: false, fork: false };
        let mut factory = ParserFactory::new(&env, caps, &llguidance::earley::SlicedBiasComputer::general_slices())
            .map_err(|e| EngineError::Internal(format!("cannot set up structured outputs: {e}")))?;
        factory.quiet();
        *factory.limits_mut() = GRAMMAR_LIMITS;
        Ok(Self { factory })
    }

    /// A fresh matcher for one request; an invalid grammar or schema is the caller's error. The
    /// first token's mask is computed here, so a grammar that admits no output at all (a schema
    /// that only refers to itself) is refused before the request is queued.
    pub fn matcher(&self, spec: &GrammarSpec) -> Result<Matcher> {
        let parser = self.factory.create_parser(spec.top_level()).map_err(|e| grammar_error(&e.to_string()))?;
        let mut m = Matcher::new(Ok(parser));
        // llguidance answers such a grammar with a bare stop reason (NoExtensionBias): say it plainly.
        let admits_none = || grammar_error("it admits no output (e.g. a schema that only refers to itself)");
        let first = m.compute_mask_or_eos().map_err(|_| admits_none())?;
        if first.is_zero() {
            return Err(admits_none());
        }
        Ok(m)
    }
}

/// llguidance's bounds on one grammar (its defaults, written out so the README can state them):
/// compiling a grammar and computing each token's mask stay within a few tens of milliseconds.
pub const GRAMMAR_LIMITS: llguidance::api::ParserLimits = llguidance::api::ParserLimits {
    max_items_in_row: 2_000,
    initial_lexer_fuel: 1_000_000,
    step_lexer_fuel: 200_000,
    step_max_items: 50_000,
    max_lexer_states: 250_000,
    max_grammar_size: 500_000,
    precompute_large_lexemes: true,
    // The parser's state and token dump is for llguidance's developers, not for the client.
    verbose_errors: false,
};

/// The client's grammar is at fault: one line of llguidance's reason, none of its internals.
pub(crate) fn grammar_error(reason: &str) -> EngineError {
    let reason: String = reason.lines().next().unwrap_or("").chars().take(300).collect();
    EngineError::invalid_arg("grammar", reason, "a JSON schema, Lark grammar or regex that llguidance accepts, within its limits")
}

/// Sets every logit the grammar forbids to -inf; `Err` when the matcher has failed (a grammar
/// past its limits at this token: still the grammar's fault, not the server's).
pub fn mask_logits(m: &mut Matcher, logits: &mut [f32]) -> Result<()> {
    let mask = m.compute_mask_or_eos().map_err(|e| grammar_error(&e.to_string()))?;
    let known = mask.len();
    for (id, l) in logits.iter_mut().enumerate() {
        if id >= known || !mask.is_allowed(id as u32) {
            *l = f32::NEG_INFINITY;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_from_json_and_unknown_types_are_refused() {
        let s: GrammarSpec = serde_json::from_str(r#"{"type":"json_schema","schema":{"type":"integer"}}"#).unwrap();
        assert_eq!(s, GrammarSpec::JsonSchema { schema: serde_json::json!({"type":"integer"}) });
        assert_eq!(serde_json::from_str::<GrammarSpec>(r#"{"type":"json_object"}"#).unwrap(), GrammarSpec::JsonObject);
        assert!(serde_json::from_str::<GrammarSpec>(r#"{"type":"xml"}"#).is_err());
    }
}
