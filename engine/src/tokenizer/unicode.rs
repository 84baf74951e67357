//! Code-point classes for the pre-tokenizers, as llama.cpp's `unicode_cpt_flags` defines them.
//!
//! llama.cpp generates its tables (`unicode-data.cpp`, via `scripts/gen-unicode-data.py`) from
//! Python's `regex` module: `\p{L}`, `\p{N}` and `\p{P}` are the general-category groups L*, N*
//! and P*, and whitespace is `\s`, i.e. the Unicode `White_Space` property (U+0009..=U+000D,
//! U+0020, U+0085, U+00A0, U+1680, U+2000..=U+200A, U+2028, U+2029, U+202F, U+205F, U+3000),
//! which is exactly what [`char::is_whitespace`] tests. The categories here come from the
//! `unicode-general-category` crate; llama.cpp's tables may be of a slightly different Unicode
//! version, which only matters for code points assigned in between.

use unicode_general_category::{GeneralCategory as Gc, get_general_category};

/// `\p{L}`: general category Lu, Ll, Lt, Lm or Lo.
pub(crate) const LETTER: u8 = 1 << 0;
/// `\p{N}`: general category Nd, Nl or No.
pub(crate) const NUMBER: u8 = 1 << 1;
/// `\s`: the `White_Space` property.
pub(crate) const WHITESPACE: u8 = 1 << 2;
/// The first regex of llama.cpp's "default" pre-tokenizer, `[\p{P}\$\+<=>\^~\|]`: punctuation
/// (P*) or one of `$+<=>^~|`. Of the ASCII punctuation and symbols only the backtick is outside it.
pub(crate) const PUNCT_RUN: u8 = 1 << 3;
/// `[0-9]`: an ASCII digit.
pub(crate) const ASCII_DIGIT: u8 = 1 << 4;

/// Classes of the 128 ASCII code points.
const ASCII: [u8; 128] = {
    let mut t = [0u8; 128];
    let mut i = 0usize;
    while i < 128 {
        let c = i as u8;
        t[i] = match c {
            b'a'..=b'z' | b'A'..=b'Z' => LETTER,
            b'0'..=b'9' => NUMBER | ASCII_DIGIT,
            b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ' => WHITESPACE,
            b'`' => 0,
            b'!'..=b'/' | b':'..=b'@' | b'['..=b'^' | b'_' | b'{'..=b'~' => PUNCT_RUN,
            _ => 0,
        };
        i += 1;
    }
    t
};

/// The class bits of `c`.
pub(crate) fn classify(c: char) -> u8 {
    if c.is_ascii() {
        return ASCII[c as usize];
    }
    if c.is_whitespace() {
        return WHITESPACE;
    }
    match get_general_category(c) {
        Gc::UppercaseLetter
        | Gc::LowercaseLetter
        | Gc::TitlecaseLetter
        | Gc::ModifierLetter
        | Gc::OtherLetter => LETTER,
        Gc::DecimalNumber | Gc::LetterNumber | Gc::OtherNumber => NUMBER,
        Gc::ConnectorPunctuation
        | Gc::DashPunctuation
        | Gc::OpenPunctuation
        | Gc::ClosePunctuation
        | Gc::InitialPunctuation
        | Gc::FinalPunctuation
        | Gc::OtherPunctuation => PUNCT_RUN,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(classify('é'), LETTER);
        assert_eq!(classify('中'), LETTER);
        assert_eq!(classify('²'), NUMBER);
        assert_eq!(classify('\u{A0}'), WHITESPACE);
        assert_eq!(classify('\u{85}'), WHITESPACE);
        assert_eq!(classify('\u{1C}'), 0, "U+001C is not White_Space");
        assert_eq!(classify('、'), PUNCT_RUN);
        assert_eq!(classify('€'), 0);
        assert_eq!(classify('😀'), 0);
        assert_eq!(classify('$'), PUNCT_RUN);
        assert_eq!(classify('`'), 0);
        for c in ['\u{2000}', '\u{3000}', '\u{2028}', '\u{202F}'] {
            assert_eq!(classify(c), WHITESPACE);
        }
    }
}
