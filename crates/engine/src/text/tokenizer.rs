//! Tokenizer (HF `tokenizer.json`) plus a streaming detokenizer that never splits a UTF-8 character.
use crate::error::{EngineError, Result};
use std::path::Path;
use std::sync::OnceLock;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Cached: the tokenizers crate rebuilds the whole vocabulary map to answer this.
    vocab_size: usize,
    /// Each token's bytes, built on first use (logprobs, structured outputs).
    bytes: OnceLock<TokenBytes>,
}

/// What each token id stands for as bytes: byte-level BPE pieces mapped back to the bytes they
/// encode; added tokens as their text, `special` marking the ones that are not text.
pub struct TokenBytes {
    pub bytes: Vec<Vec<u8>>,
    pub special: Vec<bool>,
}

/// GPT-2's byte-level alphabet: printable bytes stand for themselves, the other 68 bytes for the
/// code points from U+0100 on, in byte order.
fn byte_level_char_map() -> std::collections::HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 0x100u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                (b as char, b)
            } else {
                next += 1;
                (char::from_u32(next - 1).unwrap(), b)
            }
        })
        .collect()
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(EngineError::ModelNotFound(format!("tokenizer file {} does not exist", path.display())));
        }
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| EngineError::bad_file(path, format!("cannot parse tokenizer: {e}")))?;
        let vocab_size = inner.get_vocab_size(true);
        Ok(Self { inner, vocab_size, bytes: OnceLock::new() })
    }

    /// From the text of a tokenizer.json (e.g. one rebuilt from GGUF metadata); `origin` names it in errors.
    pub fn from_json(json: &str, origin: &Path) -> Result<Self> {
        let inner: tokenizers::Tokenizer = json
            .parse()
            .map_err(|e| EngineError::bad_file(origin, format!("cannot build the tokenizer: {e}")))?;
        let vocab_size = inner.get_vocab_size(true);
        Ok(Self { inner, vocab_size, bytes: OnceLock::new() })
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special_tokens).map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The fewest tokens `text` can encode to, known without encoding it: no token stands for more
    /// bytes than the longest one, and NFC normalisation (Qwen's) at most triples a text's UTF-8
    /// bytes (Unicode's stated bound). A 10 MB prompt is known to overflow at once.
    pub fn min_tokens(&self, text: &str) -> usize {
        let longest = self.token_bytes().bytes.iter().map(Vec::len).max().unwrap_or(1).max(1);
        text.len().div_ceil(3 * longest)
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let vocab = self.vocab_size as u32;
        if let Some(bad) = ids.iter().find(|&&i| i >= vocab) {
            return Err(EngineError::invalid_arg("token id", bad, &format!("0 <= id < {vocab}")));
        }
        self.inner.decode(ids, skip_special_tokens).map_err(|e| EngineError::Tokenizer(e.to_string()))
    }

    /// Token ids this tokenizer can decode: `0..vocab_size` (the model's matrices may be padded
    /// past it, e.g. 151936 rows for Qwen3's 151669 tokens).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Every token's bytes (`vocab_size` entries). A vocabulary piece outside the byte-level
    /// alphabet (not a byte-level tokenizer) keeps its UTF-8 text.
    pub fn token_bytes(&self) -> &TokenBytes {
        self.bytes.get_or_init(|| {
            let map = byte_level_char_map();
            let mut bytes = vec![Vec::new(); self.vocab_size];
            let mut special = vec![false; self.vocab_size];
            for (piece, id) in self.inner.get_vocab(false) {
                if let Some(slot) = bytes.get_mut(id as usize) {
                    *slot = piece.chars().map(|c| map.get(&c).copied()).collect::<Option<Vec<u8>>>().unwrap_or_else(|| piece.into_bytes());
                }
            }
            for (id, added) in self.inner.get_added_tokens_decoder() {
                if let Some(slot) = bytes.get_mut(id as usize) {
                    *slot = added.content.into_bytes();
                    special[id as usize] = added.special;
                }
            }
            TokenBytes { bytes, special }
        })
    }
}

/// Turns a growing token sequence into text deltas. A delta is released only when the decoded text
/// no longer ends in U+FFFD (an incomplete multi-byte character), and decoding restarts a few
/// tokens back so that byte-level BPE pieces join correctly.
pub struct StreamDecoder {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    skip_special_tokens: bool,
}

impl StreamDecoder {
    pub fn new(skip_special_tokens: bool) -> Self {
        Self { ids: Vec::new(), prefix_offset: 0, read_offset: 0, skip_special_tokens }
    }

    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = tok.decode(&self.ids[self.prefix_offset..self.read_offset], self.skip_special_tokens)?;
        let full = tok.decode(&self.ids[self.prefix_offset..], self.skip_special_tokens)?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.is_char_boundary(prefix.len()) {
            let delta = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }

    /// Whatever is still held back (e.g. an incomplete character at the very end).
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<String> {
        let prefix = tok.decode(&self.ids[self.prefix_offset..self.read_offset], self.skip_special_tokens)?;
        let full = tok.decode(&self.ids[self.prefix_offset..], self.skip_special_tokens)?;
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(full.get(prefix.len()..).unwrap_or("").to_string())
    }
}
