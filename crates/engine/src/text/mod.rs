//! Text: the tokenizer (with UTF-8-safe streaming decode) and the chat template.
pub mod chat_template;
pub mod tokenizer;
