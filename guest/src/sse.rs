//! Server-sent events as OpenAI streams them: `data: <json>\n\n` per chunk, then
//! `data: [DONE]\n\n`.

/// The last event of a stream.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// Appends one event carrying `json` (which holds no newline: `serde_json` escapes them).
pub fn event(out: &mut Vec<u8>, json: &str) {
    debug_assert!(!json.contains('\n'));
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json.as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// The `data` payloads of a stream, for tests and clients: splits on blank lines.
pub fn payloads(stream: &str) -> Vec<&str> {
    stream.split("\n\n").filter_map(|ev| ev.strip_prefix("data: ")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_events() {
        let mut out = Vec::new();
        event(&mut out, r#"{"a":"x\ny"}"#);
        out.extend_from_slice(DONE);
        let s = String::from_utf8(out).unwrap();
        assert_eq!(s, "data: {\"a\":\"x\\ny\"}\n\ndata: [DONE]\n\n");
        assert_eq!(payloads(&s), [r#"{"a":"x\ny"}"#, "[DONE]"]);
    }
}
