//! A streaming scanner for a JSON request body that holds one large string field without
//! buffering it.
//!
//! The body is one JSON object. The scanner follows its top level as bytes arrive:
//! * the value of the *streamed key* (`"prompt"`), when it is a string, is unescaped on the fly
//!   and handed to a sink in pieces of at most [`OUT_CHUNK`] bytes; it is never held whole;
//! * every other member is copied verbatim (key and raw value text) into a small buffer capped
//!   at `fields_cap` bytes, which [`BodyScanner::finish`] returns as the text of a JSON object
//!   for `serde_json` to parse and check (so nested values are validated by `serde_json`, and
//!   the scanner only needs to find where each top-level value ends).
//!
//! The whole body must be UTF-8 (checked across chunk boundaries) and strings must follow
//! RFC 8259 §7: no raw control characters, only the listed escapes, `\u` surrogates in pairs.
//! Memory is O(1) in the body size: the field buffer, a 4-byte UTF-8 carry, a 6-byte escape
//! buffer and the output chunk.

/// The streamed string reaches the sink in pieces of at most this many bytes.
pub const OUT_CHUNK: usize = 4096;
/// Longest top-level key accepted, in bytes of JSON text.
pub const MAX_KEY_BYTES: usize = 256;

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanError {
    /// Not valid UTF-8.
    InvalidUtf8,
    /// Not valid JSON here (message says what was expected).
    Syntax(&'static str),
    /// The members other than the streamed one exceed the cap.
    FieldsTooLarge(usize),
    /// The streamed key appears twice.
    DuplicateKey,
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidUtf8 => f.write_str("the request body is not valid UTF-8"),
            Self::Syntax(what) => write!(f, "invalid JSON in the request body: {what}"),
            Self::FieldsTooLarge(cap) => {
                write!(f, "the request's fields other than the prompt exceed {cap} bytes")
            }
            Self::DuplicateKey => f.write_str("the prompt is given twice"),
        }
    }
}

/// Where the scanner is in the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    /// Before `{`.
    Start,
    /// After `{` or `,`: a key (or `}` right after `{`).
    KeyOrEnd { first: bool },
    /// Inside a key string; `esc` after a backslash.
    Key { esc: bool },
    /// After a key: expecting `:`.
    Colon,
    /// After `:`: the value starts.
    ValueStart,
    /// Inside the streamed string value.
    Streamed,
    /// A `\` escape of the streamed string, `esc[..n]` collected so far.
    StreamedEsc,
    /// A copied value: `depth` open brackets, inside a string or not, after a backslash.
    Copied { depth: u32, in_str: bool, esc: bool },
    /// After a value: `,` or `}`.
    AfterValue,
    /// After the closing `}`: only whitespace.
    End,
}

/// Follows a JSON object body chunk by chunk; see the module docs.
pub struct BodyScanner {
    streamed_key: Option<&'static str>,
    fields_cap: usize,
    st: St,
    /// UTF-8 bytes of a character split across chunks.
    carry: [u8; 4],
    n_carry: usize,
    /// Raw text of the current key.
    key: Vec<u8>,
    /// `{` + copied members, comma-separated.
    fields: String,
    /// A member has been copied (a comma goes before the next).
    any_field: bool,
    /// Unescaped streamed text not yet handed to the sink.
    out: Vec<u8>,
    /// An escape in progress: `\` and up to 5 more bytes (`uXXXX`).
    esc: [u8; 6],
    n_esc: usize,
    /// A high surrogate waiting for its low half.
    high: Option<u16>,
    /// The streamed key was present with a string value.
    streamed: bool,
    /// Bytes of streamed text (unescaped).
    streamed_bytes: u64,
}

/// What a complete body held besides the streamed string.
#[derive(Debug)]
pub struct Scanned {
    /// The other members as one JSON object's text.
    pub fields: String,
    /// Whether the streamed key held a string (its text went to the sink).
    pub streamed: bool,
    /// Length of the streamed string in bytes (unescaped).
    pub streamed_bytes: u64,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl BodyScanner {
    /// A scanner that streams the string value of `streamed_key` (if any) and copies the other
    /// members into at most `fields_cap` bytes.
    pub fn new(streamed_key: Option<&'static str>, fields_cap: usize) -> Self {
        Self {
            streamed_key,
            fields_cap,
            st: St::Start,
            carry: [0; 4],
            n_carry: 0,
            key: Vec::new(),
            fields: String::from("{"),
            any_field: false,
            out: Vec::with_capacity(OUT_CHUNK),
            esc: [0; 6],
            n_esc: 0,
            high: None,
            streamed: false,
            streamed_bytes: 0,
        }
    }

    /// Scans the next chunk of the body (split anywhere); streamed text goes to `sink`.
    pub fn push(&mut self, chunk: &[u8], sink: &mut impl FnMut(&[u8])) -> Result<(), ScanError> {
        let mut rest = chunk;
        // Complete a character split by the previous chunk.
        if self.n_carry > 0 {
            let need = utf8_len(self.carry[0]).ok_or(ScanError::InvalidUtf8)?;
            let take = (need - self.n_carry).min(rest.len());
            self.carry[self.n_carry..self.n_carry + take].copy_from_slice(&rest[..take]);
            self.n_carry += take;
            rest = &rest[take..];
            if self.n_carry < need {
                return Ok(());
            }
            let c = self.carry;
            std::str::from_utf8(&c[..need]).map_err(|_| ScanError::InvalidUtf8)?;
            self.n_carry = 0;
            self.scan(&c[..need], sink)?;
        }
        let valid = match std::str::from_utf8(rest) {
            Ok(_) => rest.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => return Err(ScanError::InvalidUtf8),
        };
        self.scan(&rest[..valid], sink)?;
        let tail = &rest[valid..];
        self.carry[..tail.len()].copy_from_slice(tail);
        self.n_carry = tail.len();
        self.flush(sink);
        Ok(())
    }

    /// Ends the body: checks it is complete and returns the other members.
    pub fn finish(mut self, sink: &mut impl FnMut(&[u8])) -> Result<Scanned, ScanError> {
        if self.n_carry > 0 {
            return Err(ScanError::InvalidUtf8);
        }
        if let St::Copied { depth: 0, in_str: false, .. } = self.st {
            self.st = St::AfterValue; // a number at the very end: let the `}` check fail below
        }
        self.flush(sink);
        match self.st {
            St::End => {
                self.fields.push('}');
                Ok(Scanned {
                    fields: self.fields,
                    streamed: self.streamed,
                    streamed_bytes: self.streamed_bytes,
                })
            }
            St::Start => Err(ScanError::Syntax("the body is empty; expected a JSON object")),
            _ => Err(ScanError::Syntax("the body ends before the JSON object does")),
        }
    }

    fn flush(&mut self, sink: &mut impl FnMut(&[u8])) {
        if !self.out.is_empty() {
            sink(&self.out);
            self.out.clear();
        }
    }

    fn emit(&mut self, bytes: &[u8], sink: &mut impl FnMut(&[u8])) {
        self.streamed_bytes += bytes.len() as u64;
        let mut bytes = bytes;
        while !bytes.is_empty() {
            let n = (OUT_CHUNK - self.out.len()).min(bytes.len());
            self.out.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.out.len() == OUT_CHUNK {
                self.flush(sink);
            }
        }
    }

    fn copy(&mut self, bytes: &[u8]) -> Result<(), ScanError> {
        if self.fields.len() + bytes.len() + 1 > self.fields_cap {
            return Err(ScanError::FieldsTooLarge(self.fields_cap));
        }
        // Only ever called with whole characters of validated UTF-8.
        self.fields.push_str(std::str::from_utf8(bytes).map_err(|_| ScanError::InvalidUtf8)?);
        Ok(())
    }

    /// Scans whole UTF-8 characters.
    fn scan(&mut self, mut s: &[u8], sink: &mut impl FnMut(&[u8])) -> Result<(), ScanError> {
        while let Some(&b) = s.first() {
            match self.st {
                St::Start => {
                    if b == b'{' {
                        self.st = St::KeyOrEnd { first: true };
                    } else if !is_ws(b) {
                        return Err(ScanError::Syntax("the body must be a JSON object"));
                    }
                    s = &s[1..];
                }
                St::KeyOrEnd { first } => {
                    if b == b'"' {
                        self.key.clear();
                        self.st = St::Key { esc: false };
                    } else if b == b'}' && first {
                        self.st = St::End;
                    } else if !is_ws(b) {
                        return Err(ScanError::Syntax("expected a member name in double quotes"));
                    }
                    s = &s[1..];
                }
                St::Key { esc } => {
                    s = &s[1..];
                    if !esc && b == b'"' {
                        self.st = St::Colon;
                        continue;
                    }
                    if b < 0x20 {
                        return Err(ScanError::Syntax("control character in a string"));
                    }
                    if self.key.len() >= MAX_KEY_BYTES {
                        return Err(ScanError::Syntax("member name too long"));
                    }
                    self.key.push(b);
                    self.st = St::Key { esc: !esc && b == b'\\' };
                }
                St::Colon => {
                    if b == b':' {
                        self.st = St::ValueStart;
                    } else if !is_ws(b) {
                        return Err(ScanError::Syntax("expected ':' after a member name"));
                    }
                    s = &s[1..];
                }
                St::ValueStart => {
                    if is_ws(b) {
                        s = &s[1..];
                        continue;
                    }
                    let is_streamed = self.streamed_key.is_some_and(|k| key_equals(&self.key, k));
                    if b == b'"' && is_streamed {
                        if self.streamed {
                            return Err(ScanError::DuplicateKey);
                        }
                        self.streamed = true;
                        self.st = St::Streamed;
                        s = &s[1..];
                        continue;
                    }
                    // Copy `"key":` then the value as it comes.
                    let key = std::mem::take(&mut self.key);
                    if self.any_field {
                        self.copy(b",")?;
                    }
                    self.any_field = true;
                    self.copy(b"\"")?;
                    self.copy(&key)?;
                    self.copy(b"\":")?;
                    self.key = key;
                    self.st = St::Copied { depth: 0, in_str: false, esc: false };
                    // `b` is handled by the Copied state.
                    if matches!(b, b',' | b'}' | b']' | b':') {
                        return Err(ScanError::Syntax("expected a value"));
                    }
                }
                St::Streamed => {
                    // Run of plain characters: up to a quote, a backslash or a control byte.
                    let n = s.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20).unwrap_or(s.len());
                    if n > 0 {
                        if self.high.is_some() {
                            return Err(ScanError::Syntax("unpaired UTF-16 surrogate in \\u escape"));
                        }
                        let (run, tail) = s.split_at(n);
                        self.emit(run, sink);
                        s = tail;
                        continue;
                    }
                    s = &s[1..];
                    match b {
                        b'"' => {
                            if self.high.is_some() {
                                return Err(ScanError::Syntax("unpaired UTF-16 surrogate in \\u escape"));
                            }
                            self.st = St::AfterValue;
                        }
                        b'\\' => {
                            self.esc[0] = b'\\';
                            self.n_esc = 1;
                            self.st = St::StreamedEsc;
                        }
                        _ => return Err(ScanError::Syntax("control character in a string")),
                    }
                }
                St::StreamedEsc => {
                    s = &s[1..];
                    self.esc[self.n_esc] = b;
                    self.n_esc += 1;
                    if self.esc[1] == b'u' {
                        if self.n_esc < 6 {
                            continue;
                        }
                        let hex = std::str::from_utf8(&self.esc[2..6]).map_err(|_| ScanError::InvalidUtf8)?;
                        let unit = u16::from_str_radix(hex, 16)
                            .map_err(|_| ScanError::Syntax("\\u must be followed by four hex digits"))?;
                        self.unicode(unit, sink)?;
                    } else {
                        if self.high.is_some() {
                            return Err(ScanError::Syntax("unpaired UTF-16 surrogate in \\u escape"));
                        }
                        let c = match b {
                            b'"' => b'"',
                            b'\\' => b'\\',
                            b'/' => b'/',
                            b'b' => 0x08,
                            b'f' => 0x0c,
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            _ => return Err(ScanError::Syntax("invalid escape in a string")),
                        };
                        self.emit(&[c], sink);
                    }
                    self.n_esc = 0;
                    self.st = St::Streamed;
                }
                St::Copied { depth, in_str, esc } => {
                    if in_str {
                        // Copy a run up to the next quote or backslash.
                        let n = if esc {
                            1
                        } else {
                            s.iter().position(|&c| c == b'"' || c == b'\\').unwrap_or(s.len())
                        };
                        if n > 0 {
                            let (run, tail) = s.split_at(n);
                            if run.iter().any(|&c| c < 0x20) {
                                return Err(ScanError::Syntax("control character in a string"));
                            }
                            self.copy_run(run)?;
                            s = tail;
                            self.st = St::Copied { depth, in_str, esc: false };
                            continue;
                        }
                        self.copy_run(&s[..1])?;
                        s = &s[1..];
                        self.st = if b == b'\\' {
                            St::Copied { depth, in_str, esc: true }
                        } else if depth == 0 {
                            St::AfterValue
                        } else {
                            St::Copied { depth, in_str: false, esc: false }
                        };
                        continue;
                    }
                    match b {
                        b'"' => {
                            self.copy_run(&s[..1])?;
                            s = &s[1..];
                            self.st = St::Copied { depth, in_str: true, esc: false };
                            continue;
                        }
                        b'{' | b'[' => {
                            if depth >= 64 {
                                return Err(ScanError::Syntax("nesting too deep"));
                            }
                            self.copy_run(&s[..1])?;
                            s = &s[1..];
                            self.st = St::Copied { depth: depth + 1, in_str: false, esc: false };
                            continue;
                        }
                        b'}' | b']' if depth > 0 => {
                            self.copy_run(&s[..1])?;
                            s = &s[1..];
                            self.st = if depth == 1 {
                                St::AfterValue
                            } else {
                                St::Copied { depth: depth - 1, in_str: false, esc: false }
                            };
                            continue;
                        }
                        b',' | b'}' if depth == 0 => {
                            // End of a scalar: the delimiter belongs to the object.
                            self.st = St::AfterValue;
                            continue;
                        }
                        c if is_ws(c) && depth == 0 => {
                            self.st = St::AfterValue;
                            continue;
                        }
                        _ => {}
                    }
                    // Copy a run of plain value bytes.
                    let n = s
                        .iter()
                        .skip(1)
                        .position(|&c| matches!(c, b'"' | b'{' | b'[' | b'}' | b']' | b',') || is_ws(c))
                        .map_or(s.len(), |p| p + 1);
                    let (run, tail) = s.split_at(n);
                    self.copy_run(run)?;
                    s = tail;
                }
                St::AfterValue => {
                    match b {
                        b',' => self.st = St::KeyOrEnd { first: false },
                        b'}' => self.st = St::End,
                        c if is_ws(c) => {}
                        _ => return Err(ScanError::Syntax("expected ',' or '}' after a value")),
                    }
                    s = &s[1..];
                }
                St::End => {
                    if !is_ws(b) {
                        return Err(ScanError::Syntax("text after the JSON object"));
                    }
                    s = &s[1..];
                }
            }
        }
        Ok(())
    }

    fn copy_run(&mut self, run: &[u8]) -> Result<(), ScanError> {
        self.copy(run)
    }

    /// A `\uXXXX` escape of the streamed string.
    fn unicode(&mut self, unit: u16, sink: &mut impl FnMut(&[u8])) -> Result<(), ScanError> {
        let c = match (self.high.take(), unit) {
            (None, 0xD800..=0xDBFF) => {
                self.high = Some(unit);
                return Ok(());
            }
            (Some(h), 0xDC00..=0xDFFF) => {
                let cp = 0x10000 + ((u32::from(h) - 0xD800) << 10) + (u32::from(unit) - 0xDC00);
                char::from_u32(cp)
            }
            (None, 0xDC00..=0xDFFF) | (Some(_), _) => None,
            (None, u) => char::from_u32(u32::from(u)),
        };
        let c = c.ok_or(ScanError::Syntax("unpaired UTF-16 surrogate in \\u escape"))?;
        let mut buf = [0u8; 4];
        self.emit(c.encode_utf8(&mut buf).as_bytes(), sink);
        Ok(())
    }
}

/// Length of a UTF-8 sequence from its first byte.
fn utf8_len(b: u8) -> Option<usize> {
    match b {
        0xC2..=0xDF => Some(2),
        0xE0..=0xEF => Some(3),
        0xF0..=0xF4 => Some(4),
        _ => None,
    }
}

/// Whether the raw JSON text of a key (escapes not undone) names `want`.
fn key_equals(raw: &[u8], want: &str) -> bool {
    if !raw.contains(&b'\\') {
        return raw == want.as_bytes();
    }
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    serde_json::from_slice::<String>(&quoted).is_ok_and(|k| k == want)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `body` split into pieces of `step` bytes; returns (streamed text, fields).
    fn scan(body: &[u8], step: usize) -> Result<(Vec<u8>, Scanned), ScanError> {
        let mut sc = BodyScanner::new(Some("prompt"), 1024);
        let mut text = Vec::new();
        let mut sink = |b: &[u8]| {
            assert!(b.len() <= OUT_CHUNK);
            text.extend_from_slice(b)
        };
        for piece in body.chunks(step.max(1)) {
            sc.push(piece, &mut sink)?;
        }
        let r = sc.finish(&mut sink)?;
        Ok((text, r))
    }

    fn all_splits(body: &str) -> (String, serde_json::Value, bool) {
        let (t0, s0) = scan(body.as_bytes(), body.len()).unwrap();
        for step in 1..body.len().min(9) {
            let (t, s) = scan(body.as_bytes(), step).unwrap();
            assert_eq!(t, t0, "step {step}");
            assert_eq!(s.fields, s0.fields, "step {step}");
        }
        let fields: serde_json::Value = serde_json::from_str(&s0.fields).unwrap();
        (String::from_utf8(t0).unwrap(), fields, s0.streamed)
    }

    #[test]
    fn streams_prompt_and_copies_the_rest() {
        let body = r#" { "model" : "m", "prompt": "a\"b\\c\n\u00e9\ud83d\ude00 ü", "stop": ["x", {"y": [1, "]"]}], "n": 1 , "t": -1.5e3, "b": true } "#;
        let (text, fields, streamed) = all_splits(body);
        assert!(streamed);
        assert_eq!(text, "a\"b\\c\né😀 ü");
        assert_eq!(
            fields,
            serde_json::json!({"model": "m", "stop": ["x", {"y": [1, "]"]}], "n": 1, "t": -1500.0, "b": true})
        );
    }

    #[test]
    fn matches_serde_on_the_prompt() {
        let prompt = "tab\t quote\" slash/ \u{1} \u{7f} 日本語 🦀 \\u0041";
        let body = serde_json::json!({ "prompt": prompt, "max_tokens": 3 }).to_string();
        let (text, fields, _) = all_splits(&body);
        assert_eq!(text, prompt);
        assert_eq!(fields, serde_json::json!({"max_tokens": 3}));
    }

    #[test]
    fn non_string_prompt_is_copied() {
        let (text, fields, streamed) = all_splits(r#"{"prompt": [1, 2], "x": null}"#);
        assert!(!streamed);
        assert_eq!(text, "");
        assert_eq!(fields, serde_json::json!({"prompt": [1, 2], "x": null}));
    }

    #[test]
    fn escaped_key_names_the_prompt() {
        let (text, _, streamed) = all_splits(r#"{"pr\u006fmpt": "hi"}"#);
        assert!(streamed);
        assert_eq!(text, "hi");
    }

    #[test]
    fn empty_object_and_empty_prompt() {
        let (_, fields, streamed) = all_splits("{}");
        assert!(!streamed);
        assert_eq!(fields, serde_json::json!({}));
        let (text, _, streamed) = all_splits(r#"{"prompt":""}"#);
        assert!(streamed && text.is_empty());
    }

    #[test]
    fn long_prompt_goes_out_in_bounded_pieces() {
        let prompt = "x".repeat(3 * OUT_CHUNK + 17);
        let body = format!(r#"{{"prompt":"{prompt}"}}"#);
        let (text, r) = scan(body.as_bytes(), 1000).unwrap();
        assert_eq!(text.len(), prompt.len());
        assert_eq!(r.streamed_bytes, prompt.len() as u64);
    }

    #[test]
    fn rejects_bad_bodies() {
        let bad: &[&[u8]] = &[
            b"",
            b"   ",
            b"[1]",
            b"{",
            b"{\"prompt\": \"abc",
            b"{\"a\" 1}",
            b"{\"a\": 1,}",
            b"{,}",
            b"{\"a\": }",
            b"{\"a\": 1} x",
            b"{\"a\": 1 2}",
            b"{\"prompt\": \"a\\x\"}",
            b"{\"prompt\": \"a\\u12g4\"}",
            b"{\"prompt\": \"\\ud800\"}",
            b"{\"prompt\": \"\\udc00\"}",
            b"{\"prompt\": \"\\ud800\\u0041\"}",
            b"{\"prompt\": \"a\nb\"}",
            b"{\"prompt\": \"a\", \"prompt\": \"b\"}",
            b"{\"prompt\": \"\xff\"}",
            b"{\"prompt\": \"\xe6\x97\"}",
            b"{\"a\": \"\xc3\"}",
        ];
        for body in bad {
            for step in [1, 2, 3, 64] {
                assert!(scan(body, step).is_err(), "{:?} step {step}", String::from_utf8_lossy(body));
            }
        }
    }

    #[test]
    fn copied_values_are_checked_by_serde() {
        // The scanner finds the value's end; serde_json rejects what is inside.
        let (_, r) = scan(br#"{"a": [1,}}"#, 3).unwrap();
        assert!(serde_json::from_str::<serde_json::Value>(&r.fields).is_err());
        let (_, r) = scan(br#"{"a": tru}"#, 2).unwrap();
        assert!(serde_json::from_str::<serde_json::Value>(&r.fields).is_err());
    }

    #[test]
    fn caps_the_other_fields() {
        let body = format!(r#"{{"prompt": "{}", "x": "{}"}}"#, "p".repeat(5000), "y".repeat(2000));
        assert_eq!(scan(body.as_bytes(), 100).unwrap_err(), ScanError::FieldsTooLarge(1024));
    }
}
