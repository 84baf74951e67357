//! Tokenizer tests on small vocabularies built here: round trips, BPE merge order, special
//! tokens, the pre-tokenizers' splits, streaming, and construction time.

use std::time::Instant;

use tinystate_engine::TokenId;
use tinystate_engine::tokenizer::{
    MAX_PIECE_BYTES, PreTokenizer, StreamDecoder, StreamEncoder, TokenType, Tokenizer, TokenizerError, Vocab,
};

/// GPT-2's `bytes_to_unicode`, written out again independently of the crate.
fn byte_char(b: u8) -> char {
    let printable =
        |x: u32| (0x21..=0x7E).contains(&x) || (0xA1..=0xAC).contains(&x) || (0xAE..=0xFF).contains(&x);
    let b = u32::from(b);
    if printable(b) {
        return char::from_u32(b).unwrap();
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap()
}

/// Raw text in the byte-level alphabet.
fn enc(s: &str) -> String {
    enc_bytes(s.as_bytes())
}

fn enc_bytes(s: &[u8]) -> String {
    s.iter().map(|&b| byte_char(b)).collect()
}

/// Tokens: the 256 bytes (ids 0..256, in byte order), then one per merge result, then
/// `extra` (text, type). Merges are given in raw text.
struct Spec<'a> {
    /// Pairs of raw byte strings.
    merges: &'a [(&'a [u8], &'a [u8])],
    extra: &'a [(&'a str, TokenType)],
    pre: PreTokenizer,
}

fn build(spec: &Spec) -> Tokenizer {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    let mut types = vec![1i32; 256];
    let mut merges = Vec::new();
    for (a, b) in spec.merges {
        merges.push(format!("{} {}", enc_bytes(a), enc_bytes(b)));
        let t = enc_bytes(&[*a, *b].concat());
        if !tokens.contains(&t) {
            tokens.push(t);
            types.push(1);
        }
    }
    for (t, ty) in spec.extra {
        tokens.push(t.to_string());
        types.push(match ty {
            TokenType::Control => 3,
            TokenType::UserDefined => 4,
            _ => 1,
        });
    }
    let eos = tokens.iter().position(|t| t == "<|endoftext|>").map(|i| TokenId(i as u32));
    Tokenizer::new(Vocab {
        tokens: tokens.iter().map(String::as_str),
        token_types: Some(&types),
        merges: merges.iter().map(String::as_str),
        pre: spec.pre,
        bos: eos,
        eos,
        eot: None,
        eom: None,
        add_bos: false,
    })
    .unwrap()
}

const MERGES: &[(&[u8], &[u8])] = &[
    (b"h", b"e"),
    (b"l", b"l"),
    (b"he", b"ll"),
    (b"hell", b"o"),
    (b" ", b"w"),
    (b"o", b"r"),
    (b" w", b"or"),
    (b"l", b"d"),
    (b" wor", b"ld"),
    (b"'", b"t"),
    (b"d", b"o"),
    (b"do", b"n"),
    (b"1", b"2"),
    (b"12", b"3"),
    (b" ", b" "),
    (b"\n", b"\n"),
    (b"\xC3", b"\xA9"),  // é
    (b"\xC3\xA9", b"t"), // ét
    (b"\xE4", b"\xB8"),
    (b"\xE4\xB8", b"\xAD"), // 中
    (b"\xE6", b"\x96"),
    (b"\xE6\x96", b"\x87"), // 文
    ("中".as_bytes(), "文".as_bytes()),
];

const SPECIALS: &[(&str, TokenType)] = &[
    ("<|endoftext|>", TokenType::Control),
    ("<a>", TokenType::Control),
    ("a>b", TokenType::Control),
    ("<|user|>", TokenType::UserDefined),
    ("   ", TokenType::UserDefined),
    ("  ", TokenType::UserDefined),
];

fn tok(pre: PreTokenizer) -> Tokenizer {
    build(&Spec { merges: MERGES, extra: SPECIALS, pre })
}

fn encode(t: &Tokenizer, text: &str, parse_special: bool) -> Vec<TokenId> {
    let mut out = Vec::new();
    t.encode(text, parse_special, &mut out);
    out
}

fn decode(t: &Tokenizer, ids: &[TokenId], special: bool) -> Vec<u8> {
    ids.iter().flat_map(|&id| t.decode_token_with(id, special).to_vec()).collect()
}

fn texts(t: &Tokenizer, ids: &[TokenId]) -> Vec<String> {
    ids.iter().map(|&id| String::from_utf8_lossy(t.decode_token_with(id, true)).into_owned()).collect()
}

const SAMPLES: &[&str] = &[
    "",
    "hello world",
    "Hello  world",
    "héllo été, naïve café",
    "中文 and 日本語のテキスト",
    "emoji 😀👍🏽 and 👨‍👩‍👧 family",
    "numbers 123 4567 1,234.56 ²³ ١٢٣",
    "  leading and trailing spaces   ",
    "tabs\tand\nnewlines\n\n\n  \n x\r\n",
    "don't I'M we're they'VE you'll he'd 's",
    "x!!! y ?? ... `code` $100 <=> a|b ~ ^",
    "a\u{00A0}b\u{2003}c\u{3000}d\u{85}e",
    "<|endoftext|>hello<|endoftext|> <|user|>x<a>b<a>a>b",
    "     five spaces then    four",
    "\u{1F}\u{7F}\u{0}control bytes",
];

#[test]
fn round_trip() {
    for pre in [PreTokenizer::Gpt2, PreTokenizer::Default] {
        let t = tok(pre);
        assert_eq!(t.missing_byte_tokens(), 0);
        for &s in SAMPLES {
            for parse_special in [false, true] {
                let ids = encode(&t, s, parse_special);
                assert_eq!(decode(&t, &ids, true), s.as_bytes(), "{pre:?} {s:?} {parse_special}");
            }
        }
    }
}

#[test]
fn merges_apply_by_rank() {
    let t = tok(PreTokenizer::Gpt2);
    let id = |s: &str| t.token_id(&enc(s)).unwrap();
    assert_eq!(encode(&t, "hello world", false), [id("hello"), id(" world")]);
    assert_eq!(encode(&t, "don't", false), [id("don"), id("'t")]);
    assert_eq!(encode(&t, "1234", false), [id("123"), id("4")]);
    assert_eq!(encode(&t, "été", false), [id("ét"), id("é")]);
    assert_eq!(encode(&t, "中文", false), [id("中文")]);
    // Lowest rank first: ("b","c") before ("a","b"); leftmost among equal ranks.
    let t = build(&Spec {
        merges: &[(b"b", b"c"), (b"a", b"b"), (b"a", b"a")],
        extra: &[],
        pre: PreTokenizer::Gpt2,
    });
    let id = |s: &str| t.token_id(&enc(s)).unwrap();
    assert_eq!(encode(&t, "abc", false), [id("a"), id("bc")]);
    assert_eq!(encode(&t, "aaa", false), [id("aa"), id("a")]);
    assert_eq!(encode(&t, "aaaaa", false), [id("aa"), id("aa"), id("a")]);
}

#[test]
fn merge_results_missing_from_vocab() {
    // "x y" merges to "xy", which is not a token; "xy z" merges to "xyz", which is.
    let tokens: Vec<String> =
        (0..=255u8).map(|b| byte_char(b).to_string()).chain(["xyz".to_string()]).collect();
    let t = Tokenizer::new(Vocab {
        tokens: tokens.iter().map(String::as_str),
        token_types: None,
        merges: ["x y", "xy z", "no-space-line"],
        pre: PreTokenizer::Gpt2,
        bos: None,
        eos: None,
        eot: None,
        eom: None,
        add_bos: false,
    })
    .unwrap();
    let b = |c: u8| TokenId(u32::from(c));
    assert_eq!(encode(&t, "xyz", false), [TokenId(256)]);
    assert_eq!(encode(&t, "xy", false), [b(b'x'), b(b'y')], "byte fallback");
    assert_eq!(encode(&t, "xyzxy", false), [TokenId(256), b(b'x'), b(b'y')]);
}

#[test]
fn special_tokens() {
    let t = tok(PreTokenizer::Gpt2);
    let eot = t.token_id("<|endoftext|>").unwrap();
    let user = t.token_id("<|user|>").unwrap();
    assert!(t.is_control(eot) && t.is_eog(eot) && !t.is_control(user));
    assert_eq!(t.eos(), Some(eot));

    let ids = encode(&t, "hello<|endoftext|>", true);
    assert_eq!(ids.last(), Some(&eot));
    let ids = encode(&t, "hello<|endoftext|>", false);
    assert!(!ids.contains(&eot), "control tokens are text unless parse_special");
    assert!(encode(&t, "a<|user|>b", false).contains(&user), "user-defined tokens always match");

    // Control tokens decode to nothing unless asked.
    assert_eq!(t.decode_token(eot), b"");
    assert_eq!(t.decode_token_with(eot, true), b"<|endoftext|>");
    assert_eq!(t.decode_token(user), b"<|user|>");

    // Longest special first: "   " (3) before "  " (2); "<a>" before "a>b" by id.
    let sp3 = t.token_id("   ").unwrap();
    let sp2 = t.token_id("  ").unwrap();
    let a = t.token_id("<a>").unwrap();
    let ab = t.token_id("a>b").unwrap();
    let got = encode(&t, "x     y", false);
    assert_eq!(&got[1..3], [sp3, sp2]);
    assert_eq!(encode(&t, "<a>b", true), [a, TokenId(u32::from(b'b'))]);
    assert_eq!(texts(&t, &encode(&t, "a>b<a>", true)), ["a>b", "<a>"]);
    assert_eq!(ab.0, a.0 + 1);
}

fn split(pre: PreTokenizer, s: &str) -> Vec<&str> {
    pre.split(s)
}

#[test]
fn gpt2_pre_tokenizer() {
    let g = PreTokenizer::Gpt2;
    assert_eq!(split(g, "Hello  world"), ["Hello", " ", " world"]);
    assert_eq!(split(g, "  \n\n x"), ["  \n\n", " x"]);
    assert_eq!(split(g, "don't"), ["don", "'t"]);
    assert_eq!(split(g, "I'M"), ["I", "'", "M"], "contractions are case-sensitive");
    assert_eq!(split(g, "we're you'll they've"), ["we", "'re", " you", "'ll", " they", "'ve"]);
    assert_eq!(split(g, "123abc"), ["123", "abc"]);
    assert_eq!(split(g, "a\u{00A0}b"), ["a", "\u{a0}", "b"]);
    assert_eq!(split(g, "x!!! y"), ["x", "!!!", " y"]);
    assert_eq!(split(g, "hi  "), ["hi", "  "]);
    assert_eq!(split(g, "hi \n"), ["hi", " \n"]);
    assert_eq!(split(g, "a \n b"), ["a", " \n", " b"]);
    assert_eq!(split(g, " 42 é中"), [" 42", " é中"]);
    assert_eq!(split(g, "'''s"), ["'''", "s"]);
    assert_eq!(split(g, "x 😀😀 y"), ["x", " 😀😀", " y"]);
    assert_eq!(split(g, "a\u{1F}b"), ["a", "\u{1F}", "b"], "U+001F is not whitespace");
}

#[test]
fn default_pre_tokenizer() {
    let d = PreTokenizer::Default;
    assert_eq!(split(d, "don't"), ["don", "'", "t"], "punctuation is split off first");
    assert_eq!(split(d, "12345"), ["123", "45"]);
    assert_eq!(split(d, "a 1234567b"), ["a", " ", "123", "456", "7", "b"]);
    assert_eq!(split(d, "Hello, world!"), ["Hello", ",", " world", "!"]);
    assert_eq!(split(d, "$100"), ["$", "100"]);
    assert_eq!(split(d, "`x`"), ["`", "x", "`"]);
    assert_eq!(split(d, "1²345"), ["1²", "345"]);
    assert_eq!(split(d, "x!!! y"), ["x", "!!!", " y"]);
    assert_eq!(split(d, "Hello  world"), ["Hello", " ", " world"]);
    assert_eq!(split(d, "a—b"), ["a", "—", "b"]);
}

#[test]
fn long_runs_are_chunked() {
    let s = "a".repeat(MAX_PIECE_BYTES * 2 + 5);
    let pieces = split(PreTokenizer::Gpt2, &s);
    assert_eq!(pieces.iter().map(|p| p.len()).collect::<Vec<_>>(), [MAX_PIECE_BYTES, MAX_PIECE_BYTES, 5]);
    let s = "é".repeat(MAX_PIECE_BYTES);
    assert!(split(PreTokenizer::Gpt2, &s).iter().all(|p| p.len() <= MAX_PIECE_BYTES));
}

#[test]
fn stream_decoder_never_splits_characters() {
    let t = build(&Spec { merges: &[], extra: &[], pre: PreTokenizer::Gpt2 });
    let text = "a😀é中👨‍👩‍👧!";
    let ids = encode(&t, text, false);
    assert_eq!(ids.len(), text.len(), "no merges: one token per byte");
    let mut dec = StreamDecoder::new();
    let mut out = String::new();
    for &id in &ids {
        let part = dec.push(&t, id);
        // Every returned part is whole characters of the text, in order.
        out.push_str(part);
        assert!(text.starts_with(&out));
    }
    out.push_str(dec.finish());
    assert_eq!(out, text);

    // Invalid and truncated UTF-8.
    let mut dec = StreamDecoder::new();
    assert_eq!(dec.push_bytes(&[b'a', 0xF0, 0x9F]), "a");
    assert_eq!(dec.push_bytes(&[0x98]), "");
    assert_eq!(dec.push_bytes(b"b"), "\u{FFFD}b");
    assert_eq!(dec.push_bytes(&[0xFF, 0xE4, 0xB8]), "\u{FFFD}");
    assert_eq!(dec.finish(), "\u{FFFD}");
    let bytes = [0xE4, 0xB8, b'x', 0x80, 0xF0, 0x9F, 0x98, 0x80];
    let mut dec = StreamDecoder::new();
    let mut out = String::new();
    for b in bytes {
        out.push_str(dec.push_bytes(&[b]));
    }
    out.push_str(dec.finish());
    assert_eq!(out, String::from_utf8_lossy(&bytes));
}

/// A small xorshift generator for reproducible test inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn stream_encode(t: &Tokenizer, bytes: &[u8], cuts: &[usize], parse_special: bool) -> Vec<TokenId> {
    let mut enc = StreamEncoder::new(parse_special);
    let mut out = Vec::new();
    let mut at = 0;
    for &c in cuts {
        enc.push(t, &bytes[at..c], &mut out);
        at = c;
    }
    enc.push(t, &bytes[at..], &mut out);
    enc.finish(t, &mut out);
    out
}

#[test]
fn stream_encoder_matches_encode_at_every_split() {
    for pre in [PreTokenizer::Gpt2, PreTokenizer::Default] {
        let t = tok(pre);
        for &s in SAMPLES {
            for parse_special in [false, true] {
                let want = encode(&t, s, parse_special);
                for i in 0..=s.len() {
                    let got = stream_encode(&t, s.as_bytes(), &[i], parse_special);
                    assert_eq!(got, want, "{pre:?} {s:?} split at {i}");
                }
                // One byte at a time.
                let cuts: Vec<usize> = (1..s.len()).collect();
                assert_eq!(
                    stream_encode(&t, s.as_bytes(), &cuts, parse_special),
                    want,
                    "{pre:?} {s:?} bytewise"
                );
            }
        }
    }
}

#[test]
fn stream_encoder_matches_encode_random_chunks() {
    let alphabet = [
        "a",
        "b",
        "he",
        "llo",
        " ",
        "  ",
        "\n",
        "\t",
        "'",
        "t",
        "s",
        "re",
        "1",
        "2",
        "3",
        "!",
        ".",
        "é",
        "中",
        "😀",
        "\u{a0}",
        "<a>",
        "a>b",
        "<|endoftext|>",
        "<|user|>",
        "<",
        ">",
        "|",
        "$",
        "`",
        "²",
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for pre in [PreTokenizer::Gpt2, PreTokenizer::Default] {
        let t = tok(pre);
        for round in 0..300 {
            let mut s = String::new();
            for _ in 0..rng.below(60) {
                s.push_str(alphabet[rng.below(alphabet.len())]);
            }
            if round % 50 == 0 {
                // Runs longer than a piece may be.
                let run = [" ", "x", "!", "7", "é"][rng.below(5)];
                s.push_str(&run.repeat(MAX_PIECE_BYTES + rng.below(300)));
                s.push_str(alphabet[rng.below(alphabet.len())]);
            }
            let parse_special = rng.below(2) == 1;
            let want = encode(&t, &s, parse_special);
            for _ in 0..4 {
                let mut cuts: Vec<usize> = (0..rng.below(12)).map(|_| rng.below(s.len() + 1)).collect();
                cuts.sort();
                let got = stream_encode(&t, s.as_bytes(), &cuts, parse_special);
                assert_eq!(got, want, "{pre:?} {s:?} cuts {cuts:?}");
            }
        }
    }
}

#[test]
fn stream_encoder_holds_back_little() {
    let t = tok(PreTokenizer::Gpt2);
    let mut enc = StreamEncoder::new(false);
    let mut out = Vec::new();
    let text = "hello world ".repeat(1000);
    for chunk in text.as_bytes().chunks(7) {
        enc.push(&t, chunk, &mut out);
        assert!(enc.held_back() < 32, "held back {}", enc.held_back());
    }
    // A space run with user-defined space tokens chains overlapping matches: still bounded.
    for _ in 0..5000 {
        enc.push(&t, b" ", &mut out);
        assert!(enc.held_back() <= MAX_PIECE_BYTES + 16);
    }
    enc.finish(&t, &mut out);
    assert_eq!(enc.held_back(), 0);
}

#[test]
fn construction_errors() {
    let base = |tokens: Vec<&'static str>| Vocab {
        tokens,
        token_types: None,
        merges: Vec::<&str>::new(),
        pre: PreTokenizer::Gpt2,
        bos: None,
        eos: None,
        eot: None,
        eom: None,
        add_bos: false,
    };
    let e = Tokenizer::new(base(vec!["a", "b", "a"])).err().unwrap();
    assert!(matches!(e, TokenizerError::DuplicateToken { first: 0, second: 2, .. }), "{e}");
    assert!(e.to_string().contains("\"a\" has ids 0 and 2"));
    assert!(matches!(Tokenizer::new(base(vec![])), Err(TokenizerError::EmptyVocab)));
    let mut v = base(vec!["a", "b"]);
    v.eos = Some(TokenId(7));
    let e = Tokenizer::new(v).err().unwrap();
    assert_eq!(e.to_string(), "eos token id 7 is out of range for a vocabulary of 2 tokens");
    let mut v = base(vec!["a", "b"]);
    v.token_types = Some(&[1, 9]);
    assert!(matches!(Tokenizer::new(v), Err(TokenizerError::InvalidTokenType { id: 1, value: 9 })));
    let mut v = base(vec!["a", "b"]);
    v.token_types = Some(&[1]);
    assert!(matches!(Tokenizer::new(v), Err(TokenizerError::TokenTypesTooShort { found: 1, expected: 2 })));
    let mut v = base(vec!["a", "b"]);
    v.add_bos = true;
    assert!(matches!(Tokenizer::new(v), Err(TokenizerError::MissingBos)));
    assert!(
        matches!(PreTokenizer::from_gguf(Some("llama3")), Err(TokenizerError::UnsupportedPre(n)) if n == "llama3")
    );
    assert_eq!(PreTokenizer::from_gguf(None).unwrap(), PreTokenizer::Default);
    assert_eq!(PreTokenizer::from_gguf(Some("gpt-2")).unwrap(), PreTokenizer::Gpt2);
    // An empty token string is renamed, as llama.cpp does.
    let t = Tokenizer::new(base(vec!["a", ""])).unwrap();
    assert_eq!(t.token_text(TokenId(1)), "[EMPTY_1]");
    assert_eq!(t.missing_byte_tokens(), 255);
    let mut out = Vec::new();
    t.encode("ab", false, &mut out);
    assert_eq!(out, [TokenId(0)], "bytes without a token are dropped, as in llama.cpp");
}

/// A synthetic 50k-token, 50k-merge vocabulary, like GPT-2's in size and shape.
fn synthetic(n_merges: usize) -> (Vec<String>, Vec<String>) {
    let mut rng = Rng(42);
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    let mut seen: std::collections::HashSet<String> = tokens.iter().cloned().collect();
    let mut merges = Vec::with_capacity(n_merges);
    // Draw early (short) tokens more often, so token lengths stay near real vocabularies'.
    let pick = |rng: &mut Rng, n: usize| {
        let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((u * u * u) * n as f64) as usize
    };
    while merges.len() < n_merges {
        let (a, b) = (pick(&mut rng, tokens.len()), pick(&mut rng, tokens.len()));
        let m = format!("{}{}", tokens[a], tokens[b]);
        if m.len() > 24 || !seen.insert(m.clone()) {
            continue;
        }
        merges.push(format!("{} {}", tokens[a], tokens[b]));
        tokens.push(m);
    }
    (tokens, merges)
}

#[test]
fn construction_time_50k() {
    let (tokens, merges) = synthetic(50_000);
    let avg = tokens.iter().map(String::len).sum::<usize>() as f64 / tokens.len() as f64;
    let mut best = f64::MAX;
    let mut t = None;
    for _ in 0..5 {
        let start = Instant::now();
        let built = Tokenizer::new(Vocab {
            tokens: tokens.iter().map(String::as_str),
            token_types: None,
            merges: merges.iter().map(String::as_str),
            pre: PreTokenizer::Gpt2,
            bos: None,
            eos: None,
            eot: None,
            eom: None,
            add_bos: false,
        })
        .unwrap();
        best = best.min(start.elapsed().as_secs_f64());
        t = Some(built);
    }
    let t = t.unwrap();
    println!(
        "construction: {} tokens (avg {avg:.1} bytes), {} merges: best of 5 {:.2} ms",
        t.vocab_size(),
        merges.len(),
        best * 1e3
    );
    // Encoding throughput on mixed text.
    let text = SAMPLES.concat().repeat(200);
    let start = Instant::now();
    let mut out = Vec::new();
    t.encode(&text, false, &mut out);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "encode: {} bytes -> {} tokens in {:.2} ms ({:.1} MB/s)",
        text.len(),
        out.len(),
        secs * 1e3,
        text.len() as f64 / secs / 1e6
    );
    assert_eq!(decode(&t, &out, true), text.as_bytes());
    assert!(best < 1.0, "construction took {best} s");
}

/// `engine/tests/fixtures/tokenizer/` (made by `make_fixtures.py` / `make_llamacpp_refs.py`), or
/// `None` to skip when it is absent and `CI` is not set.
fn fixture_dir() -> Option<std::path::PathBuf> {
    // The relative path is for wasm, where only the package directory is visible.
    let abs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer");
    for dir in [abs.clone(), "tests/fixtures/tokenizer".into()] {
        if dir.join("tokenizer.json").exists() {
            return Some(dir);
        }
    }
    assert!(std::env::var_os("CI").is_none(), "tokenizer fixtures missing: {}", abs.display());
    eprintln!("skipping: no tokenizer fixtures at {}", abs.display());
    None
}

/// The fixture tokenizer, from HF's `tokenizer.json`: the same tokens, types and merges that
/// `convert_hf_to_gguf.py` writes into the parity GGUFs (`tokenizer.ggml.pre = "gpt-2"`,
/// special added tokens as control tokens).
/// TODO: build it from `parity/tiny/model-f32.gguf` once the GGUF reader lands.
/// The fixture tokenizer as users get it: read from the GGUF that the converter wrote from
/// `tokenizer/tokenizer.json` (the tiny parity model carries it).
fn fixture_tokenizer(dir: &std::path::Path) -> Tokenizer {
    let path = dir.join("../parity/tiny/model-f32.gguf");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let g = tinystate_engine::gguf::Gguf::parse(&bytes).expect("fixture GGUF parses");
    Tokenizer::from_gguf(&g).expect("fixture GGUF has a usable tokenizer")
}

fn check_cases(t: &Tokenizer, path: &std::path::Path, plain: &str, special: &str) -> usize {
    let cases: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<TokenId> {
        v.as_array().unwrap().iter().map(|x| TokenId(x.as_u64().unwrap() as u32)).collect()
    };
    let mut failures = Vec::new();
    let cases = cases.as_array().unwrap();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        for (key, parse_special) in [(plain, false), (special, true)] {
            let want = ids(&case[key]);
            let got = encode(t, text, parse_special);
            if got != want {
                failures.push(format!("{text:?} parse_special={parse_special}: got {got:?}, want {want:?}"));
            }
            // Streaming gives the same, and decoding gives the text back.
            let bytes = text.as_bytes();
            let cuts: Vec<usize> = (1..bytes.len()).step_by(3).collect();
            assert_eq!(stream_encode(t, bytes, &cuts, parse_special), got, "{text:?} streamed");
            assert_eq!(decode(t, &got, true), bytes, "{text:?} decoded");
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ in {}:\n{}",
        failures.len(),
        cases.len(),
        path.display(),
        failures.join("\n")
    );
    cases.len()
}

#[test]
fn fixture_cases_match_hf_and_llama_cpp() {
    let Some(dir) = fixture_dir() else { return };
    let t = fixture_tokenizer(&dir);
    assert_eq!(t.missing_byte_tokens(), 0);
    // HF: "ids" parses special tokens (HF's default), "ids_special_as_text" does not.
    let n = check_cases(&t, &dir.join("cases.json"), "ids_special_as_text", "ids");
    // llama.cpp: "ids" with parse_special = false, "ids_special" with true.
    let m = check_cases(&t, &dir.join("cases_llamacpp.json"), "ids", "ids_special");
    println!("fixture cases: {n} HF, {m} llama.cpp, all equal");
}
