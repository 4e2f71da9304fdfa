//! Chat templates from `tokenizer_config.json`, rendered with minijinja configured like
//! transformers' Jinja environment (trim_blocks, lstrip_blocks, Python string methods, and a
//! `tojson` that prints exactly what Python's `json.dumps` prints).
use crate::error::{EngineError, Result};
use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};
use serde_json::Value as Json;
use std::path::Path;

pub struct ChatTemplate {
    env: Environment<'static>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ChatTemplateOptions {
    pub add_generation_prompt: bool,
    /// None leaves `enable_thinking` undefined in the template, as transformers does.
    pub enable_thinking: Option<bool>,
    pub tools: Option<Json>,
}

/// Python's json.dumps(x, ensure_ascii=False) with its default separators ", " and ": ".
fn python_json(v: &Json, indent: Option<usize>, level: usize, out: &mut String) {
    let pad = |out: &mut String, l: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * l));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        Json::Array(a) if !a.is_empty() => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                pad(out, level + 1);
                python_json(x, indent, level + 1, out);
            }
            pad(out, level);
            out.push(']');
        }
        Json::Object(m) if !m.is_empty() => {
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                pad(out, level + 1);
                out.push_str(&Json::String(k.clone()).to_string());
                out.push_str(": ");
                python_json(x, indent, level + 1, out);
            }
            pad(out, level);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn tojson(value: Value, kwargs: minijinja::value::Kwargs) -> std::result::Result<String, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    python_json(&json, indent, 0, &mut out);
    Ok(out)
}

impl ChatTemplate {
    pub fn from_tokenizer_config(path: &Path) -> Result<Option<Self>> {
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::Io { path: path.into(), source: e })?;
        let cfg: Json = serde_json::from_str(&text)
            .map_err(|e| EngineError::InvalidConfig { path: path.into(), reason: format!("not valid JSON: {e}") })?;
        let template = match cfg.get("chat_template") {
            Some(Json::String(s)) => s.clone(),
            // A list of named templates: take "default".
            Some(Json::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                .and_then(|t| t.get("template")?.as_str())
                .map(str::to_string)
                .ok_or_else(|| EngineError::Template("no \"default\" chat template in the list".into()))?,
            _ => return Ok(None),
        };
        let token = |k: &str| match cfg.get(k) {
            Some(Json::String(s)) => Some(s.clone()),
            Some(Json::Object(o)) => o.get("content").and_then(Json::as_str).map(str::to_string),
            _ => None,
        };
        Self::new(&template, token("bos_token"), token("eos_token")).map(Some)
    }

    pub fn new(template: &str, bos_token: Option<String>, eos_token: Option<String>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<Value, JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", template.to_string())
            .map_err(|e| EngineError::Template(format!("cannot compile chat template: {e}")))?;
        Ok(Self { env, bos_token, eos_token })
    }

    pub fn render(&self, messages: &Json, opts: &ChatTemplateOptions) -> Result<String> {
        if !messages.is_array() {
            return Err(EngineError::invalid_arg("messages", messages, "an array of {role, content} objects"));
        }
        let mut ctx = serde_json::Map::new();
        ctx.insert("messages".into(), messages.clone());
        ctx.insert("add_generation_prompt".into(), Json::Bool(opts.add_generation_prompt));
        if let Some(t) = opts.enable_thinking {
            ctx.insert("enable_thinking".into(), Json::Bool(t));
        }
        if let Some(tools) = &opts.tools {
            ctx.insert("tools".into(), tools.clone());
        }
        if let Some(b) = &self.bos_token {
            ctx.insert("bos_token".into(), Json::String(b.clone()));
        }
        if let Some(e) = &self.eos_token {
            ctx.insert("eos_token".into(), Json::String(e.clone()));
        }
        let tmpl = self.env.get_template("chat").map_err(|e| EngineError::Template(e.to_string()))?;
        tmpl.render(Value::from_serialize(&ctx)).map_err(|e| EngineError::Template(format!("{e:#}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tojson_matches_python_json_dumps() {
        let v: Json = serde_json::from_str(r#"{"b": [1, 2.5, "é"], "a": {}, "c": null, "d": "x\"y"}"#).unwrap();
        let mut s = String::new();
        python_json(&v, None, 0, &mut s);
        assert_eq!(s, r#"{"b": [1, 2.5, "é"], "a": {}, "c": null, "d": "x\"y"}"#);
        let mut s = String::new();
        python_json(&serde_json::json!({"a": [1]}), Some(2), 0, &mut s);
        assert_eq!(s, "{\n  \"a\": [\n    1\n  ]\n}");
    }
}
