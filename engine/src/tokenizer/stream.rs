//! Streaming: decode tokens into complete UTF-8 as they are generated, and encode text that
//! arrives in chunks.

use super::special::Frag;
use super::{Tokenizer, Workspace};
use crate::TokenId;

/// Turns generated tokens into text, one token at a time, never splitting a character.
///
/// A token may end in the middle of a UTF-8 character (byte-level BPE splits emoji and CJK
/// across tokens); those bytes are held until the character is complete. Invalid UTF-8 becomes
/// U+FFFD, one per maximal invalid sequence, exactly as [`String::from_utf8_lossy`] would turn
/// the whole byte stream.
#[derive(Default)]
pub struct StreamDecoder {
    /// Bytes of a character not yet complete (at most 3 between calls).
    pending: Vec<u8>,
    /// Text completed by the last call.
    out: String,
    render_special: bool,
}

impl StreamDecoder {
    /// A decoder that renders control tokens as nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder that, with `render_special`, renders control tokens as their text.
    pub fn with_special(render_special: bool) -> Self {
        Self { render_special, ..Self::default() }
    }

    /// Adds a token; returns the text it completes (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: TokenId) -> &str {
        self.push_bytes(tok.decode_token_with(id, self.render_special))
    }

    /// Adds raw bytes; returns the text they complete.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> &str {
        self.out.clear();
        self.pending.extend_from_slice(bytes);
        let mut consumed = 0;
        let mut chunks = self.pending.utf8_chunks().peekable();
        while let Some(chunk) = chunks.next() {
            self.out.push_str(chunk.valid());
            consumed += chunk.valid().len();
            let bad = chunk.invalid();
            if bad.is_empty() {
                continue;
            }
            let incomplete = std::str::from_utf8(bad).is_err_and(|e| e.error_len().is_none());
            if chunks.peek().is_none() && incomplete {
                break; // keep the start of a character
            }
            self.out.push('\u{FFFD}');
            consumed += bad.len();
        }
        self.pending.drain(..consumed);
        &self.out
    }

    /// Ends the stream: returns the text of any incomplete character left (as U+FFFD) and
    /// resets the decoder.
    pub fn finish(&mut self) -> &str {
        self.out.clear();
        if !self.pending.is_empty() {
            self.out.push('\u{FFFD}');
            self.pending.clear();
        }
        &self.out
    }
}

/// Encodes text that arrives in chunks: each [`StreamEncoder::push`] emits the tokens of the
/// text that can no longer change, and holds back the rest; [`StreamEncoder::finish`] flushes.
///
/// The tokens equal [`Tokenizer::encode`] of the whole text, however it is split, even inside a
/// UTF-8 character (invalid UTF-8 is replaced as by [`String::from_utf8_lossy`]).
///
/// Held back: the last pre-token piece (at most [`super::MAX_PIECE_BYTES`] plus a character)
/// and, when special tokens take part, a few bytes that might start one, at most the summed
/// lengths of the special tokens.
pub struct StreamEncoder {
    parse_special: bool,
    /// Bytes of an incomplete UTF-8 character.
    utf8: [u8; 4],
    n_utf8: usize,
    /// Text not yet encoded.
    buf: String,
    /// Chunk being decoded.
    scratch: Vec<u8>,
    ws: Workspace,
}

impl StreamEncoder {
    /// A streaming encoder; `parse_special` as in [`Tokenizer::encode`].
    pub fn new(parse_special: bool) -> Self {
        Self {
            parse_special,
            utf8: [0; 4],
            n_utf8: 0,
            buf: String::new(),
            scratch: Vec::new(),
            ws: Workspace::default(),
        }
    }

    /// Adds a chunk of UTF-8 (split anywhere); appends the tokens that became final to `out`.
    pub fn push(&mut self, tok: &Tokenizer, bytes: &[u8], out: &mut Vec<TokenId>) {
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.utf8[..self.n_utf8]);
        self.scratch.extend_from_slice(bytes);
        self.n_utf8 = 0;
        let mut chunks = self.scratch.utf8_chunks().peekable();
        while let Some(chunk) = chunks.next() {
            self.buf.push_str(chunk.valid());
            let bad = chunk.invalid();
            if bad.is_empty() {
                continue;
            }
            let incomplete = std::str::from_utf8(bad).is_err_and(|e| e.error_len().is_none());
            if chunks.peek().is_none() && incomplete && bad.len() < 4 {
                self.utf8[..bad.len()].copy_from_slice(bad);
                self.n_utf8 = bad.len();
            } else {
                self.buf.push('\u{FFFD}');
            }
        }
        self.drain(tok, false, out);
    }

    /// [`StreamEncoder::push`] for text.
    pub fn push_str(&mut self, tok: &Tokenizer, text: &str, out: &mut Vec<TokenId>) {
        self.push(tok, text.as_bytes(), out);
    }

    /// Ends the text: appends the remaining tokens and resets the encoder for a new text.
    pub fn finish(&mut self, tok: &Tokenizer, out: &mut Vec<TokenId>) {
        if self.n_utf8 > 0 {
            self.buf.push('\u{FFFD}');
            self.n_utf8 = 0;
        }
        self.drain(tok, true, out);
        self.buf.clear();
    }

    /// Bytes of text held back.
    pub fn held_back(&self) -> usize {
        self.buf.len() + self.n_utf8
    }

    /// Encodes the part of `buf` that is final (all of it if `last`) and removes it.
    fn drain(&mut self, tok: &Tokenizer, last: bool, out: &mut Vec<TokenId>) {
        let text = self.buf.as_str();
        if text.is_empty() {
            return;
        }
        let stable = if last { text.len() } else { tok.special_stable_end(text, self.parse_special) };
        let ws = &mut self.ws;
        tok.partition(text, self.parse_special, &mut ws.frags, &mut ws.frags_tmp);
        let frags = std::mem::take(&mut ws.frags);
        let mut done = 0;
        for (i, frag) in frags.iter().enumerate() {
            match *frag {
                Frag::Token { id, start, end } => {
                    if start >= stable {
                        break;
                    }
                    out.push(id);
                    done = end;
                }
                Frag::Raw { start, end } => {
                    let closed =
                        last || matches!(frags.get(i + 1), Some(Frag::Token { start: s, .. }) if *s < stable);
                    if closed {
                        done = tok.encode_raw(text, start..end, false, ws, out);
                        continue;
                    }
                    let seg_end = end.min(stable);
                    done = if seg_end > start {
                        tok.encode_raw(text, start..seg_end, true, ws, out)
                    } else {
                        start
                    };
                    break;
                }
            }
        }
        ws.frags = frags;
        self.buf.drain(..done);
    }
}
