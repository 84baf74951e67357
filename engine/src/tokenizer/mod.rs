//! Byte-level BPE tokenizer for GGUF vocabularies of type `"gpt2"`, matching llama.cpp.
//!
//! How text becomes tokens ([`Tokenizer::encode`]):
//! 1. Special tokens are cut out of the text first (`special.rs`, llama.cpp's
//!    `tokenizer_st_partition`): user-defined tokens always, control and unknown tokens when
//!    `parse_special` is set.
//! 2. Each remaining raw fragment is split into pieces by the pre-tokenizer (`pretokenize.rs`,
//!    [`PreTokenizer`]).
//! 3. Each piece is byte-pair merged (`bpe.rs`): bytes, then merges by rank, then tokens.
//!
//! Tokens back to text ([`Tokenizer::decode_token`]): a normal token's string has GPT-2's
//! byte-to-code-point mapping undone (`bytes.rs`); user-defined tokens are their text; control
//! and unknown tokens are empty unless asked for. [`StreamDecoder`] joins token bytes into
//! complete UTF-8, and [`StreamEncoder`] encodes text that arrives in chunks.
//!
//! Differences from llama.cpp, all on inputs llama.cpp mishandles or that real vocabularies do
//! not contain:
//! * a pre-token piece longer than [`MAX_PIECE_BYTES`] is cut into chunks before BPE;
//! * a BPE symbol missing from the vocabulary falls back to one byte token per byte (llama.cpp
//!   looks up the bytes of the *mapped* string, which drops every non-ASCII byte);
//! * a normal token whose string has code points outside GPT-2's byte alphabet decodes them as
//!   their UTF-8 (llama.cpp writes `[UNK_BYTE_..]`);
//! * end-of-generation detection uses the ids given plus llama.cpp's list of end-of-generation
//!   token texts, without its per-model exceptions (gpt-oss's `<|end|>`, Gemma 4's `</s>`), and
//!   without the name-based `lstrip`/`rstrip` attributes (phi-3, jina).
//!
//! A vocabulary does not need all 256 byte tokens (llama.cpp does not require them either): a
//! byte without a token is dropped from the output, as llama.cpp drops it.
//! [`Tokenizer::missing_byte_tokens`] says how many are missing so a caller can refuse such a
//! vocabulary.
//!
//! Construction is one pass over tokens and merges into flat arrays and two open-addressing
//! tables (no per-token allocation); encoding allocates only scratch buffers proportional to the
//! input.

mod bpe;
mod bytes;
mod gguf;
mod pretokenize;
mod special;
mod stream;
mod table;
mod unicode;

use std::collections::HashMap;

pub use pretokenize::{MAX_PIECE_BYTES, PreTokenizer};
pub use stream::{StreamDecoder, StreamEncoder};

use crate::TokenId;
use bpe::BpeScratch;
use pretokenize::{PreScratch, chunk_end};
use special::Frag;
use table::{PairMap, StrTable};

/// Vocabularies are limited to this many tokens (ids, and ids of merge symbols that are not
/// tokens, must fit in 31 bits).
pub const MAX_VOCAB: usize = 1 << 30;

/// A token's type, from `tokenizer.ggml.token_type` (llama.cpp's `llama_token_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenType {
    /// 0: undefined. Decodes to nothing.
    Undefined,
    /// 1: an ordinary byte-level BPE token.
    Normal,
    /// 2: the unknown token. Treated like a control token.
    Unknown,
    /// 3: a control token (BOS, EOS, ...): decodes to nothing unless asked; matched in text only
    /// when parsing special tokens.
    Control,
    /// 4: a user-defined (added) token: always matched in text before pre-tokenizing; decodes
    /// to its text as is.
    UserDefined,
    /// 5: an unused token. Decodes to nothing.
    Unused,
    /// 6: a byte token `<0xXX>`.
    Byte,
}

impl TokenType {
    /// The type for a GGUF `token_type` value.
    pub fn from_gguf(value: i32) -> Option<Self> {
        Some(match value {
            0 => Self::Undefined,
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => return None,
        })
    }
}

/// Errors building a [`Tokenizer`].
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// `tokenizer.ggml.pre` names a pre-tokenizer this crate does not implement.
    #[error("unsupported pre-tokenizer {0:?} (supported: \"gpt-2\" and its aliases, \"default\")")]
    UnsupportedPre(String),
    /// The vocabulary has no tokens.
    #[error("the vocabulary is empty")]
    EmptyVocab,
    /// More tokens than [`MAX_VOCAB`].
    #[error("the vocabulary has more than {max} tokens", max = MAX_VOCAB)]
    TooManyTokens,
    /// Two tokens have the same text (llama.cpp rejects this too).
    #[error("duplicate token in vocabulary: {text:?} has ids {first} and {second}")]
    DuplicateToken {
        /// The text.
        text: String,
        /// The first id with it.
        first: u32,
        /// The second id with it.
        second: u32,
    },
    /// `token_type` has fewer entries than there are tokens.
    #[error("token_type has {found} entries for {expected} tokens")]
    TokenTypesTooShort {
        /// Entries in `token_type`.
        found: usize,
        /// Tokens in the vocabulary.
        expected: usize,
    },
    /// A `token_type` value outside llama.cpp's 0..=6.
    #[error("token {id} has token type {value}; the known types are 0..=6")]
    InvalidTokenType {
        /// The token.
        id: u32,
        /// Its type value.
        value: i32,
    },
    /// A special token id (BOS, EOS, ...) is not in the vocabulary.
    #[error("{which} token id {id} is out of range for a vocabulary of {n_vocab} tokens")]
    SpecialOutOfRange {
        /// Which one: "bos", "eos", "eot" or "eom".
        which: &'static str,
        /// The id.
        id: u32,
        /// Tokens in the vocabulary.
        n_vocab: usize,
    },
    /// `add_bos` is set but there is no BOS id (llama.cpp: "add_bos is true, but bos_id is not
    /// set").
    #[error("add_bos is set, but no BOS token id is given")]
    MissingBos,
    /// More merges than ranks fit in 32 bits, or merge symbols than ids fit in 31 bits.
    #[error("too many merges: {0}")]
    TooManyMerges(usize),
    /// `tokenizer.ggml.model` names a tokenizer other than byte-level BPE.
    #[error("unsupported tokenizer model {0:?} (supported: \"gpt2\")")]
    UnsupportedModel(String),
    /// The GGUF metadata is missing or mistyped.
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
}

/// The inputs of a tokenizer, as a GGUF file holds them (`tokenizer.ggml.*`).
pub struct Vocab<'a, T, M>
where
    T: IntoIterator<Item = &'a str>,
    M: IntoIterator<Item = &'a str>,
{
    /// `tokens`: token strings in id order, in GPT-2's byte-level alphabet.
    pub tokens: T,
    /// `token_type`: one per token (more are ignored); `None` makes every token normal.
    pub token_types: Option<&'a [i32]>,
    /// `merges`: `"left right"` in rank order (rank 0 first).
    pub merges: M,
    /// From `pre`; see [`PreTokenizer::from_gguf`].
    pub pre: PreTokenizer,
    /// `bos_token_id`.
    pub bos: Option<TokenId>,
    /// `eos_token_id`.
    pub eos: Option<TokenId>,
    /// `eot_token_id` (end of turn).
    pub eot: Option<TokenId>,
    /// `eom_token_id` (end of message).
    pub eom: Option<TokenId>,
    /// `add_bos_token`: callers should start prompts with BOS.
    pub add_bos: bool,
}

/// Texts that llama.cpp treats as end of generation (and as control tokens) in any vocabulary.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// A byte-level BPE tokenizer. Immutable once built; share it between threads or requests.
pub struct Tokenizer {
    pre: PreTokenizer,
    /// All token strings, concatenated; token `i` is `text[text_offs[i]..text_offs[i + 1]]`.
    text: String,
    /// (n_vocab + 1,)
    text_offs: Vec<u32>,
    /// What each token decodes to (byte mapping undone), concatenated like `text`.
    piece: Vec<u8>,
    /// (n_vocab + 1,)
    piece_offs: Vec<u32>,
    /// (n_vocab,)
    types: Vec<TokenType>,
    /// (n_vocab,) end of generation
    eog: Vec<bool>,
    /// Token string → id.
    lookup: StrTable,
    /// (left symbol, right symbol) → (rank, merged symbol).
    merges: PairMap,
    /// The BPE symbol of each byte: its token, or an id past the vocabulary if it has none.
    byte_sym: [u32; 256],
    /// The token of each byte, if the vocabulary has it.
    byte_tok: [Option<TokenId>; 256],
    /// Control, user-defined and unknown tokens, longest text first, then by id.
    special: Vec<TokenId>,
    /// Summed text lengths of the user-defined / all special tokens (streaming look-ahead).
    lookahead_user: usize,
    lookahead_all: usize,
    bos: Option<TokenId>,
    eos: Option<TokenId>,
    eot: Option<TokenId>,
    add_bos: bool,
}

/// Scratch buffers for encoding, reused across calls by [`StreamEncoder`].
#[derive(Default)]
pub(crate) struct Workspace {
    frags: Vec<Frag>,
    frags_tmp: Vec<Frag>,
    pre: PreScratch,
    bpe: BpeScratch,
}

impl PreTokenizer {
    /// The pre-tokenizer for a `tokenizer.ggml.pre` value (`None`: the key is absent, which
    /// llama.cpp treats as `"default"`).
    pub fn from_gguf(name: Option<&str>) -> Result<Self, TokenizerError> {
        Self::from_gguf_name(name)
            .ok_or_else(|| TokenizerError::UnsupportedPre(name.unwrap_or("").to_owned()))
    }
}

impl Tokenizer {
    /// Builds a tokenizer. Token strings and merges are validated as llama.cpp's
    /// `llama_vocab::impl::load` does: duplicate tokens are an error, an empty token string is
    /// renamed `[EMPTY_<id>]`, a merge line without a space is ignored, and of two identical
    /// merges the first (lower rank) counts.
    pub fn new<'a, T, M>(vocab: Vocab<'a, T, M>) -> Result<Self, TokenizerError>
    where
        T: IntoIterator<Item = &'a str>,
        M: IntoIterator<Item = &'a str>,
    {
        // Token strings into one arena.
        let mut text = String::new();
        let mut text_offs = vec![0u32];
        for (i, tok) in vocab.tokens.into_iter().enumerate() {
            if i >= MAX_VOCAB || text.len() + tok.len() + 32 > u32::MAX as usize {
                return Err(TokenizerError::TooManyTokens);
            }
            if tok.is_empty() {
                use std::fmt::Write;
                let _ = write!(text, "[EMPTY_{i}]");
            } else {
                text.push_str(tok);
            }
            text_offs.push(text.len() as u32);
        }
        let n = text_offs.len() - 1;
        if n == 0 {
            return Err(TokenizerError::EmptyVocab);
        }
        let text_of =
            |id: u32| &text.as_bytes()[text_offs[id as usize] as usize..text_offs[id as usize + 1] as usize];

        let mut lookup = StrTable::with_capacity(n);
        for id in 0..n as u32 {
            if let Err(first) = lookup.insert(text_of(id), id, text_of) {
                return Err(TokenizerError::DuplicateToken {
                    text: String::from_utf8_lossy(text_of(id)).into_owned(),
                    first,
                    second: id,
                });
            }
        }

        let mut types = vec![TokenType::Normal; n];
        if let Some(raw) = vocab.token_types {
            if raw.len() < n {
                return Err(TokenizerError::TokenTypesTooShort { found: raw.len(), expected: n });
            }
            for (id, (&value, ty)) in raw.iter().zip(types.iter_mut()).enumerate() {
                *ty = TokenType::from_gguf(value)
                    .ok_or(TokenizerError::InvalidTokenType { id: id as u32, value })?;
            }
        }

        let check = |which: &'static str, id: Option<TokenId>| match id {
            Some(t) if t.index() >= n => {
                Err(TokenizerError::SpecialOutOfRange { which, id: t.0, n_vocab: n })
            }
            _ => Ok(id),
        };
        let bos = check("bos", vocab.bos)?;
        let eos = check("eos", vocab.eos)?;
        let eot = check("eot", vocab.eot)?;
        let eom = check("eom", vocab.eom)?;
        if vocab.add_bos && bos.is_none() {
            return Err(TokenizerError::MissingBos);
        }

        // End of generation; llama.cpp also makes such tokens control tokens.
        let mut eog = vec![false; n];
        for t in EOG_TEXTS {
            if let Some(id) = lookup.get(&[t.as_bytes()], text_of) {
                eog[id as usize] = true;
                types[id as usize] = TokenType::Control;
            }
        }
        for id in [eos, eot, eom].into_iter().flatten() {
            eog[id.index()] = true;
        }

        // What each token decodes to.
        let mut piece = Vec::with_capacity(text.len());
        let mut piece_offs = Vec::with_capacity(n + 1);
        piece_offs.push(0u32);
        for id in 0..n {
            let t = &text[text_offs[id] as usize..text_offs[id + 1] as usize];
            match types[id] {
                TokenType::Normal => bytes::decode_into(t, &mut piece),
                TokenType::Byte => match parse_byte_token(t) {
                    Some(b) => piece.push(b),
                    None => bytes::decode_into(t, &mut piece),
                },
                TokenType::Control | TokenType::Unknown | TokenType::UserDefined => {
                    piece.extend_from_slice(t.as_bytes())
                }
                TokenType::Unused | TokenType::Undefined => {}
            }
            piece_offs.push(piece.len() as u32);
        }

        // Merge symbols: token ids, and ids past the vocabulary for strings that are not tokens.
        let mut virtual_syms: HashMap<Vec<u8>, u32> = HashMap::new();
        let mut sym_of = |parts: &[&[u8]]| -> Result<u32, TokenizerError> {
            if let Some(id) = lookup.get(parts, text_of) {
                return Ok(id);
            }
            let key = parts.concat();
            let next = (n + virtual_syms.len()) as u32;
            if next as usize >= MAX_VOCAB * 2 {
                return Err(TokenizerError::TooManyMerges(virtual_syms.len()));
            }
            Ok(*virtual_syms.entry(key).or_insert(next))
        };
        let mut byte_sym = [0u32; 256];
        let mut byte_tok = [None; 256];
        for b in 0..256 {
            let mut buf = [0u8; 4];
            let s = bytes::BYTE_TO_CHAR[b].encode_utf8(&mut buf).as_bytes();
            byte_sym[b] = sym_of(&[s])?;
            if (byte_sym[b] as usize) < n {
                byte_tok[b] = Some(TokenId(byte_sym[b]));
            }
        }
        let merges_iter = vocab.merges.into_iter();
        let mut merges = PairMap::with_capacity(merges_iter.size_hint().0);
        for (rank, line) in merges_iter.enumerate() {
            let rank = u32::try_from(rank).map_err(|_| TokenizerError::TooManyMerges(rank))?;
            // llama.cpp: split at the first space after the first byte.
            let Some(sp) = line.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1) else {
                continue;
            };
            let (left, right) = (&line.as_bytes()[..sp], &line.as_bytes()[sp + 1..]);
            let l = sym_of(&[left])?;
            let r = sym_of(&[right])?;
            let m = sym_of(&[left, right])?;
            merges.insert_first(l, r, rank, m);
        }

        let mut special: Vec<TokenId> = (0..n as u32)
            .map(TokenId)
            .filter(|t| {
                matches!(types[t.index()], TokenType::Control | TokenType::UserDefined | TokenType::Unknown)
            })
            .collect();
        let len_of = |t: &TokenId| text_offs[t.index() + 1] - text_offs[t.index()];
        special.sort_by(|a, b| len_of(b).cmp(&len_of(a)).then(a.cmp(b)));
        let lookahead_all = special.iter().map(|t| len_of(t) as usize).sum();
        let lookahead_user = special
            .iter()
            .filter(|t| types[t.index()] == TokenType::UserDefined)
            .map(|t| len_of(t) as usize)
            .sum();

        Ok(Self {
            pre: vocab.pre,
            text,
            text_offs,
            piece,
            piece_offs,
            types,
            eog,
            lookup,
            merges,
            byte_sym,
            byte_tok,
            special,
            lookahead_user,
            lookahead_all,
            bos,
            eos,
            eot,
            add_bos: vocab.add_bos,
        })
    }

    /// Appends the tokens of `text` to `out`. Adds no BOS: see [`Tokenizer::add_bos`].
    ///
    /// `parse_special`: also match control tokens (`<|endoftext|>`, ...) written in the text;
    /// otherwise their text is encoded as ordinary text. User-defined tokens always match.
    pub fn encode(&self, text: &str, parse_special: bool, out: &mut Vec<TokenId>) {
        let mut ws = Workspace::default();
        self.partition(text, parse_special, &mut ws.frags, &mut ws.frags_tmp);
        let frags = std::mem::take(&mut ws.frags);
        for frag in &frags {
            match *frag {
                Frag::Token { id, .. } => out.push(id),
                Frag::Raw { start, end } => {
                    self.encode_raw(text, start..end, false, &mut ws, out);
                }
            }
        }
    }

    /// Pre-tokenizes and encodes the raw fragment `text[range]`. If `open`, the text after the
    /// fragment is not known yet: stops before the first piece that might still change and
    /// returns where it stopped; otherwise returns `range.end`.
    pub(crate) fn encode_raw(
        &self,
        text: &str,
        range: std::ops::Range<usize>,
        open: bool,
        ws: &mut Workspace,
        out: &mut Vec<TokenId>,
    ) -> usize {
        ws.pre.load(text, range.clone());
        ws.pre.run(self.pre, open);
        let bytes = text.as_bytes();
        for p in &ws.pre.pieces {
            let mut a = ws.pre.offs[p.start as usize] as usize;
            let b = ws.pre.offs[p.end as usize] as usize;
            while b - a > MAX_PIECE_BYTES {
                // An open piece may lose one trailing character at most (whitespace followed
                // by a non-space), so this chunk is certain once more than 4 bytes remain.
                if p.open && b - a <= MAX_PIECE_BYTES + 4 {
                    return a;
                }
                let cut = chunk_end(text, a);
                self.bpe(&bytes[a..cut], &mut ws.bpe, out);
                a = cut;
            }
            if p.open {
                return a;
            }
            self.bpe(&bytes[a..b], &mut ws.bpe, out);
        }
        range.end
    }

    /// The decoded bytes of a token: its string with the byte-level mapping undone. Control and
    /// unknown tokens give nothing (see [`Tokenizer::decode_token_with`]); so do unused
    /// tokens and ids outside the vocabulary.
    pub fn decode_token(&self, id: TokenId) -> &[u8] {
        self.decode_token_with(id, false)
    }

    /// [`Tokenizer::decode_token`]; with `render_special`, control and unknown tokens give
    /// their text (llama.cpp's `token_to_piece(.., special = true)`).
    pub fn decode_token_with(&self, id: TokenId, render_special: bool) -> &[u8] {
        let i = id.index();
        if i >= self.vocab_size() {
            return &[];
        }
        if !render_special && matches!(self.types[i], TokenType::Control | TokenType::Unknown) {
            return &[];
        }
        &self.piece[self.piece_offs[i] as usize..self.piece_offs[i + 1] as usize]
    }

    /// A token's string as stored in the vocabulary (`""` for ids outside it).
    pub fn token_text(&self, id: TokenId) -> &str {
        let i = id.index();
        if i >= self.vocab_size() {
            return "";
        }
        &self.text[self.text_offs[i] as usize..self.text_offs[i + 1] as usize]
    }

    /// The id of a vocabulary string, if it is one.
    pub fn token_id(&self, text: &str) -> Option<TokenId> {
        let text_of = |id: u32| self.token_text(TokenId(id)).as_bytes();
        self.lookup.get(&[text.as_bytes()], text_of).map(TokenId)
    }

    /// A token's type ([`TokenType::Undefined`] for ids outside the vocabulary).
    pub fn token_type(&self, id: TokenId) -> TokenType {
        self.types.get(id.index()).copied().unwrap_or(TokenType::Undefined)
    }

    /// A 64-bit FNV-1a hash of every token's string and type, in id order: two tokenizers with
    /// the same vocabulary size and fingerprint map text to the same ids. (Merges are not
    /// hashed; a vocabulary change almost always comes with its own token list.)
    pub fn fingerprint(&self) -> u64 {
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |b: u8| h = (h ^ u64::from(b)).wrapping_mul(PRIME);
        for i in 0..self.vocab_size() {
            self.token_text(TokenId(i as u32)).bytes().for_each(&mut eat);
            eat(0xff); // not UTF-8: separates tokens
            eat(self.types[i] as u8);
        }
        h
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.types.len()
    }

    /// The pre-tokenizer.
    pub fn pre_tokenizer(&self) -> PreTokenizer {
        self.pre
    }

    /// The beginning-of-sequence token.
    pub fn bos(&self) -> Option<TokenId> {
        self.bos
    }

    /// The end-of-sequence token.
    pub fn eos(&self) -> Option<TokenId> {
        self.eos
    }

    /// The end-of-turn token.
    pub fn eot(&self) -> Option<TokenId> {
        self.eot
    }

    /// Whether prompts should start with [`Tokenizer::bos`].
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether the token is a control token (including the end-of-generation texts llama.cpp
    /// promotes to control).
    pub fn is_control(&self, id: TokenId) -> bool {
        self.token_type(id) == TokenType::Control
    }

    /// Whether the token ends generation: EOS, EOT, EOM, or one of llama.cpp's
    /// end-of-generation texts (`<|endoftext|>`, `<|im_end|>`, ...).
    pub fn is_eog(&self, id: TokenId) -> bool {
        self.eog.get(id.index()).copied().unwrap_or(false)
    }

    /// Every end-of-generation token ([`Tokenizer::is_eog`]), lowest id first.
    pub fn eog_tokens(&self) -> impl Iterator<Item = TokenId> + '_ {
        self.eog.iter().enumerate().filter(|(_, e)| **e).map(|(i, _)| TokenId(i as u32))
    }

    /// How many of the 256 byte tokens the vocabulary lacks (such bytes are dropped when
    /// encoding).
    pub fn missing_byte_tokens(&self) -> usize {
        self.byte_tok.iter().filter(|t| t.is_none()).count()
    }

    /// Summed lengths of the special tokens taking part in partitioning.
    pub(crate) fn lookahead(&self, parse_special: bool) -> usize {
        if parse_special { self.lookahead_all } else { self.lookahead_user }
    }
}

/// The byte of a `<0xXX>` token.
fn parse_byte_token(t: &str) -> Option<u8> {
    let hex = t.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}
