//! OpenAI's request and response shapes: limits, parameter checks, error bodies, and the JSON
//! of completions and chunks. Pure functions over strings and `serde_json` values, so they are
//! tested without HTTP.

use serde_json::{Map, Value, json};
use tinystate_engine::generate::{FinishReason, GenerateParams};
use tinystate_engine::sampler::SamplerConfig;

/// Parses a decimal build-time setting, or gives `default` (in a const context).
const fn build_setting(value: Option<&str>, default: usize) -> usize {
    let Some(s) = value else { return default };
    let b = s.as_bytes();
    if b.is_empty() {
        return default;
    }
    let mut n = 0usize;
    let mut i = 0;
    while i < b.len() {
        assert!(b[i].is_ascii_digit(), "build settings TINYSTATE_MAX_* must be decimal integers");
        n = n * 10 + (b[i] - b'0') as usize;
        i += 1;
    }
    n
}

/// Largest request body accepted, in bytes; a larger one gets 413. The prompt is streamed,
/// so this bounds request time, not memory. Build-time env `TINYSTATE_MAX_BODY_BYTES`.
pub const MAX_BODY_BYTES: usize = build_setting(option_env!("TINYSTATE_MAX_BODY_BYTES"), 2 << 20);

/// Largest `max_tokens` accepted. Build-time env `TINYSTATE_MAX_TOKENS`.
pub const MAX_TOKENS_CAP: usize = build_setting(option_env!("TINYSTATE_MAX_TOKENS"), 4096);

/// Most prompt tokens accepted (after the chat template); more gets 400
/// `context_length_exceeded`. The state does not grow with them; this bounds prefill time.
/// Build-time env `TINYSTATE_MAX_PROMPT_TOKENS`.
pub const MAX_PROMPT_TOKENS: usize = build_setting(option_env!("TINYSTATE_MAX_PROMPT_TOKENS"), 1 << 20);

/// Bytes allowed for the members of a completion request other than `prompt` (which is
/// streamed): they are parsed as one small JSON value.
pub const MAX_FIELDS_BYTES: usize = 64 << 10;

/// Bytes allowed for a whole chat request: its messages are parsed and rendered through the
/// template whole, so they are capped rather than streamed. Build-time env
/// `TINYSTATE_MAX_CHAT_BYTES`.
pub const MAX_CHAT_BYTES: usize = build_setting(option_env!("TINYSTATE_MAX_CHAT_BYTES"), 256 << 10);

/// Most stop sequences, and longest one in bytes.
pub const MAX_STOP: usize = 16;
/// Longest stop sequence in bytes.
pub const MAX_STOP_BYTES: usize = 256;

/// `max_tokens` when the request gives none: OpenAI's 16 for completions.
pub const DEFAULT_MAX_TOKENS_COMPLETION: usize = 16;
/// `max_tokens` when a chat request gives none.
pub const DEFAULT_MAX_TOKENS_CHAT: usize = 256;

/// Another name for the embedded model accepted in `model`.
pub const MODEL_ALIAS: &str = "default";

/// An error answered with OpenAI's error body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// What went wrong, for people.
    pub message: String,
    /// OpenAI's `type`.
    pub kind: &'static str,
    /// The request field at fault.
    pub param: Option<&'static str>,
    /// A machine-readable code.
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400 `invalid_request_error` about `param`.
    pub fn invalid(param: Option<&'static str>, message: impl Into<String>) -> Self {
        Self { status: 400, message: message.into(), kind: "invalid_request_error", param, code: None }
    }

    /// The same error with a `code`.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// Another status, same type.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// 404 for an unknown path.
    pub fn not_found(path: &str) -> Self {
        Self::invalid(None, format!("no route for {path}")).with_status(404).with_code("not_found")
    }

    /// 405 for a known path and the wrong method.
    pub fn method_not_allowed(method: &str, path: &str, allow: &str) -> Self {
        Self::invalid(None, format!("{method} is not allowed on {path}; use {allow}"))
            .with_status(405)
            .with_code("method_not_allowed")
    }

    /// 413 for a body over `cap` bytes.
    pub fn too_large(cap: usize) -> Self {
        Self::invalid(None, format!("the request body exceeds {cap} bytes"))
            .with_status(413)
            .with_code("request_too_large")
    }

    /// 500 for a failure of the server, not the request.
    pub fn internal(message: impl Into<String>) -> Self {
        Self { status: 500, message: message.into(), kind: "server_error", param: None, code: None }
    }

    /// OpenAI's error body.
    pub fn body(&self) -> String {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
            .to_string()
    }
}

/// Which endpoint a request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/completions`
    Completions,
    /// `/v1/chat/completions`
    Chat,
}

/// A checked request, less its prompt or messages.
#[derive(Clone, Debug)]
pub struct Request {
    /// Generation settings.
    pub params: GenerateParams,
    /// Answer as server-sent events.
    pub stream: bool,
    /// Send a last chunk with `usage` (`stream_options.include_usage`).
    pub include_usage: bool,
}

fn number(map: &Map<String, Value>, key: &'static str) -> Result<Option<f64>, ApiError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|v| v.is_finite())
            .map(Some)
            .ok_or_else(|| ApiError::invalid(Some(key), format!("'{key}' must be a finite number"))),
        Some(_) => Err(ApiError::invalid(Some(key), format!("'{key}' must be a number"))),
    }
}

fn integer(map: &Map<String, Value>, key: &'static str) -> Result<Option<i64>, ApiError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_u64()) {
            (Some(v), _) => Ok(Some(v)),
            (None, Some(v)) => Ok(Some(i64::try_from(v).unwrap_or(i64::MAX))),
            _ => Err(ApiError::invalid(Some(key), format!("'{key}' must be an integer"))),
        },
        Some(_) => Err(ApiError::invalid(Some(key), format!("'{key}' must be an integer"))),
    }
}

fn boolean(map: &Map<String, Value>, key: &'static str) -> Result<Option<bool>, ApiError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid(Some(key), format!("'{key}' must be a boolean"))),
    }
}

/// Parses the JSON text of a request's fields into an object.
pub fn parse_fields(text: &str) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::invalid(None, "the request body must be a JSON object")),
        Err(e) => Err(ApiError::invalid(None, format!("invalid JSON in the request body: {e}"))),
    }
}

/// Checks the fields shared by both endpoints. `model_id` is the served model's name; `seed`
/// is used when the request has none.
pub fn check_request(
    map: &Map<String, Value>,
    endpoint: Endpoint,
    model_id: &str,
    seed: u64,
) -> Result<Request, ApiError> {
    match map.get("model") {
        None | Some(Value::Null) => {}
        Some(Value::String(m)) if m == model_id || m == MODEL_ALIAS => {}
        Some(Value::String(m)) => {
            return Err(ApiError::invalid(
                Some("model"),
                format!("the model '{m}' does not exist; this server has '{model_id}'"),
            )
            .with_code("model_not_found")
            .with_status(404));
        }
        Some(_) => return Err(ApiError::invalid(Some("model"), "'model' must be a string")),
    }
    if let Some(n) = integer(map, "n")?
        && n != 1
    {
        return Err(ApiError::invalid(Some("n"), format!("'n' must be 1 (got {n})")));
    }
    if let Some(n) = integer(map, "best_of")?
        && n != 1
    {
        return Err(ApiError::invalid(Some("best_of"), "'best_of' must be 1"));
    }
    if boolean(map, "echo")? == Some(true) {
        return Err(ApiError::invalid(Some("echo"), "'echo' is not supported"));
    }
    match map.get("logprobs") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(_) => return Err(ApiError::invalid(Some("logprobs"), "'logprobs' is not supported")),
    }
    if map.get("suffix").is_some_and(|v| !v.is_null()) {
        return Err(ApiError::invalid(Some("suffix"), "'suffix' is not supported"));
    }

    let (key, default) = match endpoint {
        Endpoint::Completions => ("max_tokens", DEFAULT_MAX_TOKENS_COMPLETION),
        Endpoint::Chat if map.get("max_completion_tokens").is_some_and(|v| !v.is_null()) => {
            ("max_completion_tokens", DEFAULT_MAX_TOKENS_CHAT)
        }
        Endpoint::Chat => ("max_tokens", DEFAULT_MAX_TOKENS_CHAT),
    };
    let max_tokens = match integer(map, key)? {
        None => default.min(MAX_TOKENS_CAP),
        Some(n) if n < 1 => {
            return Err(ApiError::invalid(Some(key), format!("'{key}' must be at least 1 (got {n})")));
        }
        Some(n) if n as u64 > MAX_TOKENS_CAP as u64 => {
            return Err(ApiError::invalid(
                Some(key),
                format!("'{key}' must be at most {MAX_TOKENS_CAP} (got {n})"),
            ));
        }
        Some(n) => n as usize,
    };

    let temperature = number(map, "temperature")?.unwrap_or(1.0);
    if temperature < 0.0 {
        return Err(ApiError::invalid(
            Some("temperature"),
            format!("'temperature' must be >= 0 (got {temperature})"),
        ));
    }
    let top_p = number(map, "top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(Some("top_p"), format!("'top_p' must be in (0, 1] (got {top_p})")));
    }
    let top_k = match integer(map, "top_k")? {
        None => 0,
        Some(k) if k < 0 => return Err(ApiError::invalid(Some("top_k"), "'top_k' must be >= 0 (0 = off)")),
        Some(k) => usize::try_from(k).unwrap_or(usize::MAX),
    };
    let min_p = number(map, "min_p")?.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&min_p) {
        return Err(ApiError::invalid(Some("min_p"), format!("'min_p' must be in [0, 1] (got {min_p})")));
    }
    let repetition_penalty = number(map, "repetition_penalty")?.unwrap_or(1.0);
    if repetition_penalty <= 0.0 {
        return Err(ApiError::invalid(
            Some("repetition_penalty"),
            "'repetition_penalty' must be > 0 (1 = off)",
        ));
    }
    let seed = match integer(map, "seed")? {
        None => seed,
        Some(s) => s as u64,
    };

    let stop = match map.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            if items.len() > MAX_STOP {
                return Err(ApiError::invalid(Some("stop"), format!("at most {MAX_STOP} stop sequences")));
            }
            items.iter().map(|v| v.as_str().map(str::to_owned)).collect::<Option<Vec<_>>>().ok_or_else(
                || ApiError::invalid(Some("stop"), "'stop' must be a string or an array of strings"),
            )?
        }
        Some(_) => {
            return Err(ApiError::invalid(Some("stop"), "'stop' must be a string or an array of strings"));
        }
    };
    if stop.iter().any(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::invalid(
            Some("stop"),
            format!("a stop sequence is longer than {MAX_STOP_BYTES} bytes"),
        ));
    }

    let stream = boolean(map, "stream")?.unwrap_or(false);
    // Extension (as llama.cpp's server): keep generating past end-of-text tokens.
    let ignore_eos = boolean(map, "ignore_eos")?.unwrap_or(false);
    let include_usage = match map.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => boolean(o, "include_usage")?.unwrap_or(false),
        Some(_) => {
            return Err(ApiError::invalid(Some("stream_options"), "'stream_options' must be an object"));
        }
    };

    Ok(Request {
        params: GenerateParams {
            max_tokens,
            sampler: SamplerConfig {
                temperature: temperature as f32,
                top_k,
                top_p: top_p as f32,
                min_p: min_p as f32,
                repetition_penalty: repetition_penalty as f32,
                repeat_last_n: SamplerConfig::default().repeat_last_n,
                seed,
            },
            stop,
            ignore_eos,
        },
        stream,
        include_usage,
    })
}

/// Token counts of one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens (including BOS and the chat template's).
    pub prompt: usize,
    /// Generated tokens.
    pub completion: usize,
}

impl Usage {
    /// OpenAI's `usage` object.
    pub fn json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
        })
    }
}

/// What is the same in every response of one request.
#[derive(Clone, Debug)]
pub struct Meta {
    /// `cmpl-…` or `chatcmpl-…`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The model's name.
    pub model: String,
    /// Which endpoint.
    pub endpoint: Endpoint,
}

impl Meta {
    /// Meta for a request; the id is derived from `nonce` (seed, clock, …).
    pub fn new(endpoint: Endpoint, model: &str, created: u64, nonce: u64) -> Self {
        let prefix = match endpoint {
            Endpoint::Completions => "cmpl",
            Endpoint::Chat => "chatcmpl",
        };
        Self { id: format!("{prefix}-{:016x}", mix(nonce)), created, model: model.to_owned(), endpoint }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Completions, _) => "text_completion",
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
        }
    }

    /// The whole answer of a request that does not stream.
    pub fn completion(&self, text: &str, finish: FinishReason, usage: Usage) -> String {
        let choice = match self.endpoint {
            Endpoint::Completions => json!({
                "index": 0, "text": text, "logprobs": null, "finish_reason": finish.as_str(),
            }),
            Endpoint::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": finish.as_str(),
            }),
        };
        json!({
            "id": self.id, "object": self.object(false), "created": self.created, "model": self.model,
            "choices": [choice], "usage": usage.json(),
        })
        .to_string()
    }

    /// One streamed chunk: `text` (chat: as `delta.content`, with the role on the first), and
    /// the finish reason on the last.
    pub fn chunk(&self, text: &str, first: bool, finish: Option<FinishReason>) -> String {
        let finish = finish.map(FinishReason::as_str);
        let choice = match self.endpoint {
            Endpoint::Completions => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish})
            }
            Endpoint::Chat => {
                let mut delta = Map::new();
                if first {
                    delta.insert("role".into(), "assistant".into());
                }
                if !text.is_empty() || (first && finish.is_none()) {
                    delta.insert("content".into(), text.into());
                }
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
        };
        json!({
            "id": self.id, "object": self.object(true), "created": self.created, "model": self.model,
            "choices": [choice],
        })
        .to_string()
    }

    /// The chunk with `usage` and no choices (`stream_options.include_usage`).
    pub fn usage_chunk(&self, usage: Usage) -> String {
        json!({
            "id": self.id, "object": self.object(true), "created": self.created, "model": self.model,
            "choices": [], "usage": usage.json(),
        })
        .to_string()
    }
}

/// `GET /v1/models`.
pub fn models(model_id: &str, created: u64) -> String {
    json!({"object": "list", "data": [{"id": model_id, "object": "model", "created": created, "owned_by": "tinystate"}]})
        .to_string()
}

/// splitmix64: spreads a nonce over 64 bits for ids and default seeds.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str) -> Result<Request, ApiError> {
        check_request(&parse_fields(body)?, Endpoint::Completions, "m", 7)
    }

    #[test]
    fn defaults_and_values() {
        let r = check("{}").unwrap();
        assert_eq!(r.params.max_tokens, DEFAULT_MAX_TOKENS_COMPLETION);
        assert_eq!(r.params.sampler.seed, 7);
        assert_eq!(r.params.sampler.temperature, 1.0);
        assert!(!r.stream);
        let r = check(
            r#"{"model":"m","max_tokens":5,"temperature":0,"top_p":0.5,"top_k":3,"min_p":0.1,
                "repetition_penalty":1.1,"seed":42,"stop":["a","b"],"stream":true,
                "stream_options":{"include_usage":true},"n":1,"echo":false,"user":"x"}"#,
        )
        .unwrap();
        assert_eq!(r.params.max_tokens, 5);
        assert_eq!(r.params.sampler.top_k, 3);
        assert_eq!(r.params.sampler.seed, 42);
        assert_eq!(r.params.stop, ["a", "b"]);
        assert!(r.stream && r.include_usage);
        assert_eq!(check(r#"{"stop":"x","model":"default"}"#).unwrap().params.stop, ["x"]);
    }

    #[test]
    fn rejects_bad_values() {
        let cases: &[(&str, Option<&str>)] = &[
            (r#"{"model":"gpt-4"}"#, Some("model")),
            (r#"{"model":3}"#, Some("model")),
            (r#"{"max_tokens":0}"#, Some("max_tokens")),
            (r#"{"max_tokens":-3}"#, Some("max_tokens")),
            (r#"{"max_tokens":1000000}"#, Some("max_tokens")),
            (r#"{"max_tokens":"5"}"#, Some("max_tokens")),
            (r#"{"max_tokens":1.5}"#, Some("max_tokens")),
            (r#"{"temperature":-0.1}"#, Some("temperature")),
            (r#"{"temperature":"hot"}"#, Some("temperature")),
            (r#"{"top_p":0}"#, Some("top_p")),
            (r#"{"top_p":1.01}"#, Some("top_p")),
            (r#"{"top_k":-1}"#, Some("top_k")),
            (r#"{"min_p":2}"#, Some("min_p")),
            (r#"{"repetition_penalty":0}"#, Some("repetition_penalty")),
            (r#"{"stop":3}"#, Some("stop")),
            (r#"{"stop":["a",1]}"#, Some("stop")),
            (r#"{"stream":"yes"}"#, Some("stream")),
            (r#"{"n":2}"#, Some("n")),
            (r#"{"echo":true}"#, Some("echo")),
            (r#"{"logprobs":3}"#, Some("logprobs")),
        ];
        for (body, param) in cases {
            let e = check(body).unwrap_err();
            // OpenAI answers an unknown model with 404 (`model_not_found`); the rest is 400.
            let want = if body.contains("gpt-4") { 404 } else { 400 };
            assert_eq!(e.status, want, "{body}");
            assert_eq!(e.param, *param, "{body}");
        }
        assert_eq!(parse_fields("[1]").unwrap_err().status, 400);
        assert_eq!(parse_fields("{\"a\":").unwrap_err().status, 400);
    }

    #[test]
    fn error_body_has_openai_shape() {
        let v: Value = serde_json::from_str(&ApiError::invalid(Some("top_p"), "bad").body()).unwrap();
        assert_eq!(
            v,
            json!({"error": {"message": "bad", "type": "invalid_request_error", "param": "top_p", "code": null}})
        );
    }

    #[test]
    fn response_shapes() {
        let m = Meta::new(Endpoint::Chat, "m", 1, 2);
        assert!(m.id.starts_with("chatcmpl-"));
        let v: Value = serde_json::from_str(&m.completion(
            "hi",
            FinishReason::Length,
            Usage { prompt: 3, completion: 2 },
        ))
        .unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "hi");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["total_tokens"], 5);
        let c: Value = serde_json::from_str(&m.chunk("", true, None)).unwrap();
        assert_eq!(c["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
        let c: Value = serde_json::from_str(&m.chunk("", false, Some(FinishReason::Stop))).unwrap();
        assert_eq!(c["choices"][0]["delta"], json!({}));
        assert_eq!(c["choices"][0]["finish_reason"], "stop");
        let m = Meta::new(Endpoint::Completions, "m", 1, 2);
        let c: Value = serde_json::from_str(&m.chunk("x", true, None)).unwrap();
        assert_eq!(c["object"], "text_completion");
        assert_eq!(c["choices"][0]["text"], "x");
        assert!(c["choices"][0]["finish_reason"].is_null());
    }
}
