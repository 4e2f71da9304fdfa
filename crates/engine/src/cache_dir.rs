//! Where this engine keeps files between runs (autotune winners, prepared weights).
use std::path::PathBuf;

/// `<user cache>/nano-qwen3-serving`: XDG_CACHE_HOME, else LOCALAPPDATA, else ~/.cache.
pub fn user_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("LOCALAPPDATA").map(PathBuf::from))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("nano-qwen3-serving"))
}
