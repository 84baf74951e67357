//! Splitting special tokens out of raw text (llama.cpp's `tokenizer_st_partition`).
//!
//! Special tokens are those of type control, user-defined or unknown; control and unknown ones
//! only take part when the caller asks to parse special tokens, user-defined ones always (as in
//! HF `tokenizers`). They are tried one at a time, longest text first (ties: lower id first):
//! each cuts every occurrence (leftmost first, non-overlapping) out of the raw fragments left by
//! the tokens before it. What remains raw goes to the pre-tokenizer.
//!
//! For streaming, [`Tokenizer::special_stable_end`] finds how much of a text prefix is already
//! partitioned as it will be once more text arrives.

use super::{TokenType, Tokenizer};
use crate::TokenId;

/// A fragment of the text: byte range `start..end`, either raw text or one special token.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Frag {
    Raw { start: usize, end: usize },
    Token { id: TokenId, start: usize, end: usize },
}

impl Tokenizer {
    /// The special tokens that take part in partitioning, in the order they are tried.
    pub(crate) fn specials(&self, parse_special: bool) -> impl Iterator<Item = (TokenId, &str)> {
        self.special.iter().filter_map(move |&id| {
            let take = parse_special || self.token_type(id) == TokenType::UserDefined;
            take.then(|| (id, self.token_text(id)))
        })
    }

    /// Partitions `text` into `frags` (`tmp` is scratch).
    pub(crate) fn partition(
        &self,
        text: &str,
        parse_special: bool,
        frags: &mut Vec<Frag>,
        tmp: &mut Vec<Frag>,
    ) {
        frags.clear();
        if text.is_empty() {
            return;
        }
        frags.push(Frag::Raw { start: 0, end: text.len() });
        for (id, special) in self.specials(parse_special) {
            if !text.contains(special) {
                continue;
            }
            tmp.clear();
            for &frag in frags.iter() {
                let Frag::Raw { start, end } = frag else {
                    tmp.push(frag);
                    continue;
                };
                let mut at = start;
                for (i, _) in text[start..end].match_indices(special) {
                    let (a, b) = (start + i, start + i + special.len());
                    if at < a {
                        tmp.push(Frag::Raw { start: at, end: a });
                    }
                    tmp.push(Frag::Token { id, start: a, end: b });
                    at = b;
                }
                if at < end {
                    tmp.push(Frag::Raw { start: at, end });
                }
            }
            std::mem::swap(frags, tmp);
        }
    }

    /// For a prefix `text` of a longer text: a byte offset `q` such that every special token
    /// occurrence starting before `q` is cut (or not) exactly as it will be in the whole text.
    ///
    /// Two bounds, the larger wins:
    /// * no occurrence, complete or possibly completed by later text, crosses `q`: then what
    ///   lies before `q` is partitioned independently of what follows;
    /// * `len - D`, `D` the summed lengths of all taking-part special tokens: whether an
    ///   occurrence is cut depends only on occurrences of earlier-tried tokens that overlap it,
    ///   which depend on those of tokens tried before them, and so on, so at most `D` bytes
    ///   ahead. This bound keeps the held-back text bounded when occurrences chain (a long run
    ///   of spaces with user-defined space tokens).
    pub(crate) fn special_stable_end(&self, text: &str, parse_special: bool) -> usize {
        let len = text.len();
        let floor = len.saturating_sub(self.lookahead(parse_special));
        let bytes = text.as_bytes();
        let mut q = len;
        for (_, special) in self.specials(parse_special) {
            let s = special.as_bytes();
            // Longest proper prefix of the token that the text ends with.
            for k in (1..s.len().min(len + 1)).rev() {
                if bytes.ends_with(&s[..k]) {
                    q = q.min(len - k);
                    break;
                }
            }
        }
        loop {
            if q <= floor {
                break;
            }
            let mut moved = false;
            for (_, special) in self.specials(parse_special) {
                let n = special.len();
                let from = q.saturating_sub(n - 1);
                let to = (q + n - 1).min(len);
                if from >= to {
                    continue;
                }
                // Occurrences inside text[from..to] necessarily cross q (start < q < end).
                let window = &bytes[from..to];
                if let Some(i) = window.windows(n).position(|w| w == special.as_bytes()) {
                    q = from + i;
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
        let mut q = q.max(floor);
        while !text.is_char_boundary(q) {
            q -= 1;
        }
        q
    }
}
