//! Chat messages to a prompt, through the model's `tokenizer.chat_template` (Jinja, rendered by
//! minijinja as Hugging Face's `apply_chat_template` does: `messages`, `bos_token`,
//! `eos_token`, `add_generation_prompt = true`, and `raise_exception`).
//!
//! A model without a template gets [`FALLBACK_TEMPLATE`]: one `role: content` line per message
//! and then `assistant:`, so a base model continues as the assistant.

use minijinja::{Environment, Error, ErrorKind, Value as JValue, context};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::api::ApiError;

/// The template used when the GGUF has no `tokenizer.chat_template`.
pub const FALLBACK_TEMPLATE: &str = "{% for message in messages %}{{ message.role }}: {{ message.content }}\n{% endfor %}\
     {% if add_generation_prompt %}assistant:{% endif %}";

/// Most messages in one chat request.
pub const MAX_MESSAGES: usize = 1024;

/// The compiled template with the model's special-token texts.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
    /// Whether this is [`FALLBACK_TEMPLATE`].
    pub fallback: bool,
}

/// One message as the template sees it.
#[derive(Debug, Serialize, PartialEq)]
pub struct Message {
    /// `system`, `user`, `assistant`, `tool`, …
    pub role: String,
    /// Text (an array of text parts is joined).
    pub content: String,
}

fn raise_exception(msg: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

impl ChatTemplate {
    /// Compiles `source` (or the fallback when `None`).
    pub fn new(source: Option<&'static str>, bos: String, eos: String) -> Result<Self, Error> {
        let mut env = Environment::new();
        env.add_function("raise_exception", raise_exception);
        let fallback = source.is_none();
        env.add_template("chat", source.unwrap_or(FALLBACK_TEMPLATE))?;
        Ok(Self { env, bos, eos, fallback })
    }

    /// The prompt for `messages`.
    pub fn render(&self, messages: &[Message]) -> Result<String, ApiError> {
        let t = self.env.get_template("chat").map_err(|e| ApiError::internal(e.to_string()))?;
        t.render(context! {
            messages => JValue::from_serialize(messages),
            bos_token => &self.bos,
            eos_token => &self.eos,
            add_generation_prompt => true,
        })
        .map_err(|e| ApiError::invalid(Some("messages"), format!("the chat template failed: {e}")))
    }
}

/// Reads `messages` from a chat request.
pub fn messages(map: &Map<String, Value>) -> Result<Vec<Message>, ApiError> {
    let bad = |m: &str| ApiError::invalid(Some("messages"), m.to_owned());
    let items = match map.get("messages") {
        Some(Value::Array(items)) => items,
        None | Some(Value::Null) => return Err(bad("'messages' is required")),
        Some(_) => return Err(bad("'messages' must be an array")),
    };
    if items.is_empty() {
        return Err(bad("'messages' must not be empty"));
    }
    if items.len() > MAX_MESSAGES {
        return Err(bad(&format!("at most {MAX_MESSAGES} messages")));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(&format!("messages[{i}].role must be a string")))?;
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                None | Some(Value::Null) => String::new(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(|p| {
                        match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                            (Some("text"), Some(t)) => Ok(t),
                            _ => Err(bad(&format!("messages[{i}].content: only text parts are supported"))),
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .concat(),
                Some(_) => {
                    return Err(bad(&format!(
                        "messages[{i}].content must be a string or an array of text parts"
                    )));
                }
            };
            Ok(Message { role: role.to_owned(), content })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(v: Value) -> Result<Vec<Message>, ApiError> {
        messages(v.as_object().unwrap())
    }

    #[test]
    fn fallback_template() {
        let t = ChatTemplate::new(None, String::new(), String::new()).unwrap();
        assert!(t.fallback);
        let m = msgs(serde_json::json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
        ]}))
        .unwrap();
        assert_eq!(t.render(&m).unwrap(), "system: be brief\nuser: hi there\nassistant:");
    }

    #[test]
    fn model_template_with_specials() {
        let src = "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let t = ChatTemplate::new(Some(src), "<s>".into(), "</s>".into()).unwrap();
        let m = msgs(serde_json::json!({"messages": [{"role": "user", "content": " hi "}]})).unwrap();
        assert_eq!(t.render(&m).unwrap(), "<s><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
        let t = ChatTemplate::new(Some("{{ raise_exception('no system') }}"), String::new(), String::new())
            .unwrap();
        assert_eq!(t.render(&m).unwrap_err().status, 400);
    }

    #[test]
    fn rejects_bad_messages() {
        for v in [
            serde_json::json!({}),
            serde_json::json!({"messages": "hi"}),
            serde_json::json!({"messages": []}),
            serde_json::json!({"messages": [{"content": "x"}]}),
            serde_json::json!({"messages": [{"role": "user", "content": 3}]}),
            serde_json::json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
        ] {
            assert_eq!(msgs(v).unwrap_err().param, Some("messages"));
        }
    }
}
