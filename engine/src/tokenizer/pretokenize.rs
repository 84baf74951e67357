//! Pre-tokenizers: split raw text into the pieces that BPE then encodes one at a time.
//!
//! Both follow llama.cpp (`llm_tokenizer_bpe` in `llama-vocab.cpp`, `unicode_regex_split` in
//! `unicode.cpp`), hand-written as state machines over code points:
//!
//! * [`PreTokenizer::Gpt2`] is the GPT-2 regex
//!   `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
//!   (`unicode_regex_split_custom_gpt2`). The contractions are case-sensitive, and a run of
//!   whitespace followed by a non-space gives its last character to the next piece.
//! * [`PreTokenizer::Default`] is llama.cpp's `LLAMA_VOCAB_PRE_TYPE_DEFAULT`: four regexes, each
//!   splitting every piece of the previous one into matches and the gaps between them:
//!   1. `[\p{P}\$\+<=>\^~\|]+` (runs of punctuation),
//!   2. the GPT-2 regex above,
//!   3. `\p{N}+` (runs of numbers),
//!   4. `[0-9][0-9][0-9]` (ASCII digits in threes, from the left).
//!
//!   Because step 1 runs first, an apostrophe is already split off before step 2 sees it, so
//!   "don't" becomes `don`, `'`, `t` (unlike HF's GPT-2).
//!
//! Streaming: every piece records whether its extent depended on where its parent ended
//! (it read past the end, or ran up to it). When the text is only a prefix of what is to come
//! (`open`), such a piece may still change and is marked open; every other piece is final.
//!
//! Pieces longer than [`MAX_PIECE_BYTES`] are cut into chunks of at most that many bytes (at
//! character boundaries). This bounds memory and BPE time, and lets a [`super::StreamEncoder`]
//! hold back a bounded amount of text. It is the one place where encoding may differ from
//! llama.cpp, and only for text with a single run (of letters, digits, whitespace, symbols) longer
//! than 4 KiB.

use super::unicode::{ASCII_DIGIT, LETTER, NUMBER, PUNCT_RUN, WHITESPACE, classify};

/// Pieces longer than this many bytes are cut into chunks of at most this size.
pub const MAX_PIECE_BYTES: usize = 4096;

/// The pre-tokenizer named by a GGUF file's `tokenizer.ggml.pre`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizer {
    /// `"gpt-2"` (llama.cpp also maps `phi-2`, `jina-es`, ... here): the GPT-2 regex.
    Gpt2,
    /// `"default"`, or no `tokenizer.ggml.pre` key: llama.cpp's four-regex default.
    Default,
}

impl PreTokenizer {
    /// The pre-tokenizer for a `tokenizer.ggml.pre` value, or `None` for a name this crate does
    /// not implement. `None` as input (key absent) means [`PreTokenizer::Default`], as in
    /// llama.cpp.
    pub fn from_gguf_name(name: Option<&str>) -> Option<Self> {
        match name {
            None | Some("default") => Some(Self::Default),
            // llama.cpp's LLAMA_VOCAB_PRE_TYPE_GPT2 names that need no other setting.
            Some("gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es")
            | Some("jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert" | "mpt" | "olmo") => Some(Self::Gpt2),
            Some(_) => None,
        }
    }

    /// Splits `text` into pieces, as [`super::Tokenizer::encode`] does before BPE (after special
    /// tokens are split off). For tests and debugging; allocates.
    pub fn split(self, text: &str) -> Vec<&str> {
        let mut ws = PreScratch::default();
        ws.load(text, 0..text.len());
        ws.run(self, false);
        let mut out = Vec::new();
        for p in &ws.pieces {
            let (a, b) = (ws.offs[p.start as usize] as usize, ws.offs[p.end as usize] as usize);
            let mut a = a;
            while b - a > MAX_PIECE_BYTES {
                let cut = chunk_end(text, a);
                out.push(&text[a..cut]);
                a = cut;
            }
            out.push(&text[a..b]);
        }
        out
    }
}

/// End of the first chunk of a too-long piece starting at byte `a`: the last character
/// boundary at most [`MAX_PIECE_BYTES`] past `a`.
pub(crate) fn chunk_end(text: &str, a: usize) -> usize {
    let mut cut = a + MAX_PIECE_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    cut
}

/// A piece: code-point indices `start..end` into [`PreScratch`]'s arrays.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Piece {
    pub start: u32,
    pub end: u32,
    /// The text may not be final here: this piece may still grow, shrink or split.
    pub open: bool,
}

/// Reusable buffers for pre-tokenizing one raw fragment.
#[derive(Default)]
pub(crate) struct PreScratch {
    /// The fragment's code points.
    chars: Vec<char>,
    /// Class bits per code point (see `unicode.rs`).
    cls: Vec<u8>,
    /// Byte offset (into the whole text) of each code point, plus one for the end.
    pub offs: Vec<u32>,
    /// Pieces of the default pre-tokenizer's first three passes.
    lvl1: Vec<Piece>,
    lvl2: Vec<Piece>,
    lvl3: Vec<Piece>,
    /// The result.
    pub pieces: Vec<Piece>,
}

impl PreScratch {
    /// Decodes `text[range]` into code points and classes.
    pub fn load(&mut self, text: &str, range: std::ops::Range<usize>) {
        self.chars.clear();
        self.cls.clear();
        self.offs.clear();
        for (i, c) in text[range.clone()].char_indices() {
            self.chars.push(c);
            self.cls.push(classify(c));
            self.offs.push((range.start + i) as u32);
        }
        self.offs.push(range.end as u32);
    }

    /// Splits the loaded fragment into `self.pieces`. `open`: the fragment's end is not final.
    pub fn run(&mut self, pre: PreTokenizer, open: bool) {
        self.pieces.clear();
        let n = self.chars.len() as u32;
        let all = Piece { start: 0, end: n, open };
        match pre {
            PreTokenizer::Gpt2 => gpt2(&self.chars, &self.cls, all, &mut self.pieces),
            PreTokenizer::Default => {
                let (mut l1, mut l2, mut l3) = (
                    std::mem::take(&mut self.lvl1),
                    std::mem::take(&mut self.lvl2),
                    std::mem::take(&mut self.lvl3),
                );
                l1.clear();
                runs(&self.cls, PUNCT_RUN, all, &mut l1);
                for &p1 in &l1 {
                    l2.clear();
                    gpt2(&self.chars, &self.cls, p1, &mut l2);
                    for &p2 in &l2 {
                        l3.clear();
                        runs(&self.cls, NUMBER, p2, &mut l3);
                        for &p3 in &l3 {
                            digit_triples(&self.cls, p3, &mut self.pieces);
                        }
                    }
                }
                (self.lvl1, self.lvl2, self.lvl3) = (l1, l2, l3);
            }
        }
    }
}

/// Splits `parent` into maximal runs of code points with / without class bit `bit` (a regex
/// `X+` applied with `unicode_regex_split_stl`, which keeps the gaps between matches).
fn runs(cls: &[u8], bit: u8, parent: Piece, out: &mut Vec<Piece>) {
    let (mut i, e) = (parent.start as usize, parent.end as usize);
    while i < e {
        let start = i;
        let inside = cls[i] & bit != 0;
        while i < e && (cls[i] & bit != 0) == inside {
            i += 1;
        }
        // A run that reaches the parent's end would continue with the parent.
        out.push(Piece { start: start as u32, end: i as u32, open: parent.open && i == e });
    }
}

/// Splits `parent` by the regex `[0-9][0-9][0-9]`: leftmost matches, left to right, and the gaps.
fn digit_triples(cls: &[u8], parent: Piece, out: &mut Vec<Piece>) {
    let (s, e) = (parent.start as usize, parent.end as usize);
    let digit = |i: usize| cls[i] & ASCII_DIGIT != 0;
    let (mut gap, mut i) = (s, s);
    while i + 3 <= e {
        if digit(i) && digit(i + 1) && digit(i + 2) {
            if gap < i {
                out.push(Piece { start: gap as u32, end: i as u32, open: false });
            }
            out.push(Piece { start: i as u32, end: (i + 3) as u32, open: false });
            i += 3;
            gap = i;
        } else {
            i += 1;
        }
    }
    if gap < e {
        // The remainder has no match yet; more text could complete one.
        out.push(Piece { start: gap as u32, end: e as u32, open: parent.open });
    }
}

/// Reads class bits inside `..end`, noting any read at or past `end`.
struct Cursor<'a> {
    cls: &'a [u8],
    end: usize,
    touched_end: bool,
}

impl Cursor<'_> {
    /// The class bits at `i`, or `None` (and a note) past the end.
    fn get(&mut self, i: usize) -> Option<u8> {
        if i < self.end {
            Some(self.cls[i])
        } else {
            self.touched_end = true;
            None
        }
    }

    fn has(&mut self, i: usize, bit: u8) -> bool {
        self.get(i).is_some_and(|f| f & bit != 0)
    }
}

/// The GPT-2 regex over `parent`, as `unicode_regex_split_custom_gpt2` matches it.
fn gpt2(chars: &[char], cls: &[u8], parent: Piece, out: &mut Vec<Piece>) {
    const WORD: u8 = WHITESPACE | LETTER | NUMBER;
    let e = parent.end as usize;
    let mut pos = parent.start as usize;
    while pos < e {
        let mut cur = Cursor { cls, end: e, touched_end: false };
        let c = chars[pos];
        let end = 'piece: {
            // 's|'t|'re|'ve|'m|'ll|'d (case-sensitive)
            if c == '\'' && cur.get(pos + 1).is_some() {
                let next = chars[pos + 1];
                if matches!(next, 's' | 't' | 'm' | 'd') {
                    break 'piece pos + 2;
                }
                if cur.get(pos + 2).is_some()
                    && matches!((next, chars[pos + 2]), ('r', 'e') | ('v', 'e') | ('l', 'l'))
                {
                    break 'piece pos + 3;
                }
            }
            let lead = usize::from(c == ' ');
            let first = if c == ' ' { cur.get(pos + 1) } else { Some(cls[pos]) };
            if let Some(f) = first {
                //  ?\p{L}+ |  ?\p{N}+ |  ?[^\s\p{L}\p{N}]+
                for (want, class) in [(true, LETTER), (true, NUMBER), (false, WORD)] {
                    if (f & class != 0) == want {
                        let mut p = pos + lead;
                        while cur.get(p).is_some_and(|g| (g & class != 0) == want) {
                            p += 1;
                        }
                        break 'piece p;
                    }
                }
            }
            let mut n = 0;
            while cur.has(pos + n, WHITESPACE) {
                n += 1;
            }
            if n > 1 && pos + n < e {
                // \s+(?!\S): leave the last whitespace for the next piece
                pos + n - 1
            } else if n > 0 {
                pos + n // \s+
            } else {
                pos + 1 // no match (unreachable: every code point matches something)
            }
        };
        out.push(Piece { start: pos as u32, end: end as u32, open: parent.open && cur.touched_end });
        pos = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_pieces() {
        let mut ws = PreScratch::default();
        let text = "ab  cd 12'r";
        ws.load(text, 0..text.len());
        ws.run(PreTokenizer::Gpt2, true);
        let got: Vec<_> = ws
            .pieces
            .iter()
            .map(|p| (&text[ws.offs[p.start as usize] as usize..ws.offs[p.end as usize] as usize], p.open))
            .collect();
        assert_eq!(
            got,
            [("ab", false), (" ", false), (" cd", false), (" 12", false), ("'", true), ("r", true)]
        );
    }
}
