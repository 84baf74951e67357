//! GPT-2's byte-level alphabet (`bytes_to_unicode` in OpenAI's `encoder.py`, and
//! `unicode_byte_to_utf8_map` in llama.cpp's `unicode.cpp`).
//!
//! Byte-level BPE vocabularies never store raw bytes: each byte is first replaced by one printable
//! code point. The 188 printable bytes `!`..=`~`, `¡`..=`¬` and `®`..=`ÿ` stand for themselves; the
//! other 68 (controls, space, DEL, NBSP, soft hyphen, ...) map to U+0100, U+0101, ... in byte order.
//! A space is therefore stored as `Ġ` (U+0120) and a newline as `Ċ` (U+010A).

/// Whether `b` is one of the 188 bytes that map to the code point of the same value.
const fn maps_to_itself(b: u8) -> bool {
    matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// `BYTE_TO_CHAR[b]`: the code point that stands for byte `b` in vocabulary strings.
pub(crate) const BYTE_TO_CHAR: [char; 256] = {
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    let mut b = 0usize;
    while b < 256 {
        let cp = if maps_to_itself(b as u8) {
            b as u32
        } else {
            shifted += 1;
            255 + shifted
        };
        // Every value is below 0x144, so always a valid scalar value.
        table[b] = match char::from_u32(cp) {
            Some(c) => c,
            None => '\0',
        };
        b += 1;
    }
    table
};

/// One past the largest code point in [`BYTE_TO_CHAR`] (U+0143).
const CHAR_LIMIT: usize = 0x144;

/// `CHAR_TO_BYTE[cp]`: the byte that code point `cp` stands for, or -1.
const CHAR_TO_BYTE: [i16; CHAR_LIMIT] = {
    let mut table = [-1i16; CHAR_LIMIT];
    let mut b = 0usize;
    while b < 256 {
        table[BYTE_TO_CHAR[b] as usize] = b as i16;
        b += 1;
    }
    table
};

/// The byte that `c` stands for in a byte-level vocabulary string, if any.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as usize;
    if cp < CHAR_LIMIT { u8::try_from(CHAR_TO_BYTE[cp]).ok() } else { None }
}

/// Undoes the byte-level mapping of a vocabulary string, appending the raw bytes to `out`.
///
/// llama.cpp's `llama_decode_text` emits `[UNK_BYTE_0x..]` for a code point outside the alphabet;
/// here such a code point is kept as its own UTF-8 bytes, which is what the string says.
pub(crate) fn decode_into(text: &str, out: &mut Vec<u8>) {
    for c in text.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabet_round_trips() {
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(BYTE_TO_CHAR[b as usize]), Some(b));
        }
        assert_eq!(BYTE_TO_CHAR[b' ' as usize], 'Ġ');
        assert_eq!(BYTE_TO_CHAR[b'\n' as usize], 'Ċ');
        assert_eq!(BYTE_TO_CHAR[b'a' as usize], 'a');
        assert_eq!(BYTE_TO_CHAR[0xAD], '\u{143}');
    }
}
