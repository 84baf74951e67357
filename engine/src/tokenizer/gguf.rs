//! Building a [`Tokenizer`] from a GGUF file's `tokenizer.ggml.*` metadata.

use super::{PreTokenizer, Tokenizer, TokenizerError, Vocab};
use crate::TokenId;
use crate::gguf::{Gguf, GgufError};

impl Tokenizer {
    /// The tokenizer a GGUF file describes. Only `tokenizer.ggml.model = "gpt2"` (byte-level
    /// BPE) is supported.
    pub fn from_gguf(g: &Gguf<'_>) -> Result<Self, TokenizerError> {
        let model = g.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel(model.to_owned()));
        }
        let strings = |key: &str| -> Result<_, TokenizerError> {
            g.get_array(key)?.strings().ok_or_else(|| {
                GgufError::WrongType {
                    key: key.to_owned(),
                    expected: "array of strings",
                    found: crate::gguf::ValueType::Array,
                }
                .into()
            })
        };
        let types: Option<Vec<i32>> = match g.get("tokenizer.ggml.token_type") {
            None => None,
            Some(_) => Some(
                g.get_array("tokenizer.ggml.token_type")?
                    .i32s()
                    .ok_or_else(|| GgufError::WrongType {
                        key: "tokenizer.ggml.token_type".to_owned(),
                        expected: "array of i32",
                        found: crate::gguf::ValueType::Array,
                    })?
                    .collect(),
            ),
        };
        let merges = match g.get("tokenizer.ggml.merges") {
            Some(_) => Some(strings("tokenizer.ggml.merges")?),
            None => None,
        };
        let pre = match g.get("tokenizer.ggml.pre") {
            Some(_) => Some(g.get_str("tokenizer.ggml.pre")?),
            None => None,
        };
        Tokenizer::new(Vocab {
            tokens: strings("tokenizer.ggml.tokens")?,
            token_types: types.as_deref(),
            merges: merges.into_iter().flatten(),
            pre: PreTokenizer::from_gguf(pre)?,
            bos: special_id(g, "tokenizer.ggml.bos_token_id")?,
            eos: special_id(g, "tokenizer.ggml.eos_token_id")?,
            eot: special_id(g, "tokenizer.ggml.eot_token_id")?,
            eom: special_id(g, "tokenizer.ggml.eom_token_id")?,
            add_bos: match g.get("tokenizer.ggml.add_bos_token") {
                Some(_) => g.get_bool("tokenizer.ggml.add_bos_token")?,
                None => false,
            },
        })
    }
}

fn special_id(g: &Gguf<'_>, key: &str) -> Result<Option<TokenId>, GgufError> {
    match g.get(key) {
        None => Ok(None),
        Some(_) => g.get_u32(key).map(|id| Some(TokenId(id))),
    }
}
