//! The tensor contract of `compute` (see the [module docs](super)): limits, and the checks that
//! turn a guest's input tensors into token ids. Nothing here panics on guest input.

use tinystate_engine::TokenId;

use super::NnError;
use super::wit::TensorType;

/// Most tokens in one `compute` (a prefill chunk); longer prompts are sent in chunks.
pub const MAX_CHUNK: usize = 512;
/// Most live execution contexts in one instance (a request needs one).
pub const MAX_CONTEXTS_PER_INSTANCE: usize = 4;
/// Most bytes of tensor data an instance may hold in host memory at once (inputs it made and
/// outputs it has not dropped).
pub const MAX_TENSOR_BYTES: usize = 16 << 20;
/// The input's name.
pub const INPUT_TOKENS: &str = "tokens";
/// The output's name.
pub const OUTPUT_LOGITS: &str = "logits";

/// A tensor as the guest built it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorParts {
    /// Dimensions.
    pub dims: Vec<u32>,
    /// Element type.
    pub ty: TensorType,
    /// Element bytes.
    pub data: Vec<u8>,
}

/// Checks that `inputs` is exactly one tensor named [`INPUT_TOKENS`], `I32`, `[n]` or `[1, n]`
/// with 4·n bytes, and returns its ids (range is checked by [`check_tokens`]).
pub fn tokens_input<'t>(
    inputs: impl ExactSizeIterator<Item = (&'t str, &'t TensorParts)>,
) -> Result<Vec<TokenId>, NnError> {
    let n_inputs = inputs.len();
    let mut tokens = None;
    for (name, t) in inputs {
        if name != INPUT_TOKENS {
            return Err(NnError::Input(format!(
                "unknown input '{name}'; the only input is '{INPUT_TOKENS}'"
            )));
        }
        if n_inputs != 1 {
            return Err(NnError::Input(format!(
                "expected one input '{INPUT_TOKENS}', got {n_inputs} inputs"
            )));
        }
        tokens = Some(decode_tokens(t)?);
    }
    tokens.ok_or_else(|| NnError::Input(format!("no inputs; expected '{INPUT_TOKENS}'")))
}

fn decode_tokens(t: &TensorParts) -> Result<Vec<TokenId>, NnError> {
    if t.ty != TensorType::I32 {
        return Err(NnError::Input(format!("input '{INPUT_TOKENS}' must be I32, not {:?}", t.ty)));
    }
    let n = match t.dims.as_slice() {
        [n] | [1, n] => *n as usize,
        d => {
            return Err(NnError::Input(format!(
                "input '{INPUT_TOKENS}' must have dimensions [n] or [1, n], not {d:?}"
            )));
        }
    };
    if t.data.len() != n.saturating_mul(4) {
        return Err(NnError::Input(format!(
            "input '{INPUT_TOKENS}' has dimensions {:?} ({n} × 4 bytes) but {} bytes of data",
            t.dims,
            t.data.len()
        )));
    }
    Ok(t.data.chunks_exact(4).map(|b| TokenId(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect())
}

/// Checks a chunk: 1..=[`MAX_CHUNK`] ids, each below `vocab` (an I32 -1 arrives as a huge id and
/// fails here too).
pub fn check_tokens(tokens: &[TokenId], vocab: usize) -> Result<(), NnError> {
    if tokens.is_empty() {
        return Err(NnError::Empty);
    }
    if tokens.len() > MAX_CHUNK {
        return Err(NnError::ChunkTooLong { n: tokens.len(), max: MAX_CHUNK });
    }
    match tokens.iter().position(|t| t.index() >= vocab) {
        Some(position) => Err(NnError::TokenOutOfRange { token: tokens[position].0, position, vocab }),
        None => Ok(()),
    }
}

/// f32s as little-endian bytes, the layout of the `"logits"` tensor. Backends call it on their
/// own threads, off the async executor; the result becomes the output tensor without a copy.
pub fn logits_bytes(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 * v.len());
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// The output tensor: logits (vocab,) as FP32.
pub fn logits_output(bytes: Vec<u8>) -> TensorParts {
    let vocab = (bytes.len() / 4) as u32;
    TensorParts { dims: vec![vocab], ty: TensorType::Fp32, data: bytes }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(ids: &[i32], dims: Vec<u32>) -> TensorParts {
        TensorParts { dims, ty: TensorType::I32, data: ids.iter().flat_map(|i| i.to_le_bytes()).collect() }
    }

    fn parse(inputs: &[(&str, TensorParts)]) -> Result<Vec<TokenId>, NnError> {
        tokens_input(inputs.iter().map(|(n, t)| (*n, t)))
    }

    #[test]
    fn accepts_n_and_1_by_n() {
        assert_eq!(parse(&[("tokens", tokens(&[1, 2], vec![2]))]).unwrap(), [TokenId(1), TokenId(2)]);
        assert_eq!(parse(&[("tokens", tokens(&[7], vec![1, 1]))]).unwrap(), [TokenId(7)]);
    }

    #[test]
    fn rejects_bad_inputs() {
        let ok = tokens(&[1], vec![1]);
        let cases = [
            parse(&[]),
            parse(&[("input_ids", ok.clone())]),
            parse(&[("tokens", ok.clone()), ("tokens", ok.clone())]),
            parse(&[("tokens", TensorParts { ty: TensorType::Fp32, ..ok.clone() })]),
            parse(&[("tokens", tokens(&[1, 2], vec![2, 1]))]),
            parse(&[("tokens", tokens(&[1, 2], vec![3]))]),
            parse(&[("tokens", tokens(&[1, 2], vec![u32::MAX]))]),
        ];
        for c in cases {
            let e = c.unwrap_err();
            assert_eq!(e.code(), crate::nn::wit::ErrorCode::InvalidArgument, "{e}");
        }
    }

    #[test]
    fn checks_range_and_length() {
        assert_eq!(check_tokens(&[], 10), Err(NnError::Empty));
        assert_eq!(
            check_tokens(&[TokenId(3), TokenId(10)], 10),
            Err(NnError::TokenOutOfRange { token: 10, position: 1, vocab: 10 })
        );
        let long = vec![TokenId(0); MAX_CHUNK + 1];
        assert_eq!(check_tokens(&long, 10).unwrap_err().code(), crate::nn::wit::ErrorCode::TooLarge);
        assert!(check_tokens(&long[..MAX_CHUNK], 10).is_ok());
    }
}
