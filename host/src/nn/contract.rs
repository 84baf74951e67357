//! The tensor contract of `compute` (see the [module docs](super)): limits, the checks that
//! turn a guest's input tensors into token ids and the greedy flag, and the output tensors.
//! Nothing here panics on guest input.

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
/// The optional input asking for greedy tokens instead of the logits.
pub const INPUT_GREEDY: &str = "greedy";
/// Most greedy tokens one `compute` may ask for (the value of [`INPUT_GREEDY`]).
pub const MAX_GREEDY: u32 = 64;
/// The optional input that starts a greedy run: the guest will take up to this many greedy
/// tokens, so the host may compute them before they are asked for (see the module docs).
pub const INPUT_GREEDY_RUN: &str = "greedy-run";
/// Most tokens of one greedy run (the value of [`INPUT_GREEDY_RUN`]). It bounds what a run may
/// hold for a guest that has not taken its tokens yet: memory per request stays constant.
pub const MAX_GREEDY_RUN: u32 = 1024;
/// The optional input listing stop tokens: greedy tokens end with the first of them.
pub const INPUT_GREEDY_STOP: &str = "greedy-stop";
/// Most stop tokens in [`INPUT_GREEDY_STOP`].
pub const MAX_GREEDY_STOPS: usize = 8;
/// The output's name without [`INPUT_GREEDY`].
pub const OUTPUT_LOGITS: &str = "logits";
/// The output's name with [`INPUT_GREEDY`].
pub const OUTPUT_TOKEN: &str = "token";

/// What one `compute` asks for, from its input tensors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inputs {
    /// The tokens to feed (range unchecked: see [`check_tokens`]).
    pub tokens: Vec<TokenId>,
    /// Greedy tokens the guest wants ([`OUTPUT_TOKEN`]) instead of the logits: 0 for the
    /// logits; n ≥ 1 for the greedy token after the input and the n − 1 that follow when each is
    /// fed back in turn (the state then holds the input and the first n − 1 of them).
    pub greedy: u32,
    /// The greedy run this compute starts ([`INPUT_GREEDY_RUN`]): 0 for none; r ≥ `greedy` for
    /// r greedy tokens in all, which this compute and the ones after it take, at most `greedy`
    /// at a time.
    pub run: u32,
    /// Stop tokens ([`INPUT_GREEDY_STOP`], range unchecked): the greedy tokens (of this compute,
    /// or of the run it starts) end with the first of them.
    pub stop: Vec<TokenId>,
}

/// What one `compute` returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// The logits after the last token, as little-endian f32 bytes ([`logits_bytes`]).
    Logits(Vec<u8>),
    /// The greedy tokens: the highest logit's id after the last input token (the lowest among
    /// equals), then after each of those fed back, as many as asked for.
    Tokens(Vec<TokenId>),
}

impl Output {
    /// The output tensor and its name: [`OUTPUT_LOGITS`] FP32 `[vocab]`, or [`OUTPUT_TOKEN`]
    /// I32 `[n]`.
    pub fn into_tensor(self) -> (&'static str, TensorParts) {
        match self {
            Self::Logits(bytes) => (OUTPUT_LOGITS, logits_output(bytes)),
            Self::Tokens(t) => {
                let data = t.iter().flat_map(|t| t.0.to_le_bytes()).collect();
                (OUTPUT_TOKEN, TensorParts { dims: vec![t.len() as u32], ty: TensorType::I32, data })
            }
        }
    }
}

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

/// Checks that `inputs` holds exactly one tensor named [`INPUT_TOKENS`], `I32`, `[n]` or
/// `[1, n]` with 4·n bytes, at most one [`INPUT_GREEDY`] (`U8`, `[1]`, 0..=[`MAX_GREEDY`]), at
/// most one [`INPUT_GREEDY_RUN`] (`I32`, `[1]`, from the greedy count to [`MAX_GREEDY_RUN`], only
/// with a greedy count), at most one [`INPUT_GREEDY_STOP`] (`I32`, `[k]`, 1 ≤ k ≤
/// [`MAX_GREEDY_STOPS`], only with a greedy count), and nothing else; returns the ids (range is
/// checked by [`check_tokens`]) and the counts.
pub fn parse_inputs<'t>(inputs: impl Iterator<Item = (&'t str, &'t TensorParts)>) -> Result<Inputs, NnError> {
    let (mut tokens, mut greedy, mut run, mut stop) = (None, None, None, None);
    for (name, t) in inputs {
        match name {
            INPUT_TOKENS if tokens.is_none() => tokens = Some(decode_tokens(t)?),
            INPUT_GREEDY if greedy.is_none() => greedy = Some(decode_greedy(t)?),
            INPUT_GREEDY_RUN if run.is_none() => run = Some(decode_run(t)?),
            INPUT_GREEDY_STOP if stop.is_none() => stop = Some(decode_stop(t)?),
            INPUT_TOKENS | INPUT_GREEDY | INPUT_GREEDY_RUN | INPUT_GREEDY_STOP => {
                return Err(NnError::Input(format!("input '{name}' is given twice; give it once")));
            }
            _ => {
                return Err(NnError::Input(format!(
                    "unknown input '{name}'; the inputs are '{INPUT_TOKENS}' and, optionally, \
                     '{INPUT_GREEDY}', '{INPUT_GREEDY_RUN}' and '{INPUT_GREEDY_STOP}'"
                )));
            }
        }
    }
    let tokens = tokens.ok_or_else(|| NnError::Input(format!("no input '{INPUT_TOKENS}'")))?;
    let (greedy, run) = (greedy.unwrap_or(0), run.unwrap_or(0));
    if run > 0 && (greedy == 0 || run < greedy) {
        return Err(NnError::Input(format!(
            "input '{INPUT_GREEDY_RUN}' ({run}) must be at least '{INPUT_GREEDY}' ({greedy}), \
             which must be given"
        )));
    }
    let stop = stop.unwrap_or_default();
    if !stop.is_empty() && greedy == 0 {
        return Err(NnError::Input(format!("input '{INPUT_GREEDY_STOP}' needs '{INPUT_GREEDY}'")));
    }
    Ok(Inputs { tokens, greedy, run, stop })
}

/// The [`INPUT_GREEDY_STOP`] ids: `I32`, dimensions `[k]`, 1 ≤ k ≤ [`MAX_GREEDY_STOPS`].
fn decode_stop(t: &TensorParts) -> Result<Vec<TokenId>, NnError> {
    let k = t.data.len() / 4;
    if t.ty != TensorType::I32
        || t.dims != [k as u32]
        || !t.data.len().is_multiple_of(4)
        || !(1..=MAX_GREEDY_STOPS).contains(&k)
    {
        return Err(NnError::Input(format!(
            "input '{INPUT_GREEDY_STOP}' must be I32 with dimensions [k], 1 ≤ k ≤ {MAX_GREEDY_STOPS}, and 4·k \
             bytes, not {:?} with {:?} and {} bytes",
            t.ty,
            t.dims,
            t.data.len()
        )));
    }
    Ok(t.data.chunks_exact(4).map(|b| TokenId(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect())
}

/// The [`INPUT_GREEDY_RUN`] length: `I32`, dimensions `[1]`, 4 bytes, 0 (no run) to
/// [`MAX_GREEDY_RUN`].
fn decode_run(t: &TensorParts) -> Result<u32, NnError> {
    if t.ty != TensorType::I32 || t.dims != [1] || t.data.len() != 4 {
        return Err(NnError::Input(format!(
            "input '{INPUT_GREEDY_RUN}' must be I32 with dimensions [1] and 4 bytes, not {:?} with {:?} \
             and {} bytes",
            t.ty,
            t.dims,
            t.data.len()
        )));
    }
    match i32::from_le_bytes([t.data[0], t.data[1], t.data[2], t.data[3]]) {
        v @ 0.. if v as u32 <= MAX_GREEDY_RUN => Ok(v as u32),
        v => {
            Err(NnError::Input(format!("input '{INPUT_GREEDY_RUN}' must be 0 to {MAX_GREEDY_RUN}, not {v}")))
        }
    }
}

/// The [`INPUT_GREEDY`] count: `U8`, dimensions `[1]`, one byte, 0 (logits) to [`MAX_GREEDY`].
fn decode_greedy(t: &TensorParts) -> Result<u32, NnError> {
    if t.ty != TensorType::U8 {
        return Err(NnError::Input(format!("input '{INPUT_GREEDY}' must be U8, not {:?}", t.ty)));
    }
    if t.dims != [1] || t.data.len() != 1 {
        return Err(NnError::Input(format!(
            "input '{INPUT_GREEDY}' must have dimensions [1] and 1 byte, not {:?} and {} bytes",
            t.dims,
            t.data.len()
        )));
    }
    match u32::from(t.data[0]) {
        v if v <= MAX_GREEDY => Ok(v),
        v => Err(NnError::Input(format!("input '{INPUT_GREEDY}' must be 0 to {MAX_GREEDY}, not {v}"))),
    }
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

    fn greedy(dims: Vec<u32>, ty: TensorType, data: &[u8]) -> TensorParts {
        TensorParts { dims, ty, data: data.to_vec() }
    }

    fn flag(v: u8) -> TensorParts {
        greedy(vec![1], TensorType::U8, &[v])
    }

    fn parse_all(inputs: &[(&str, TensorParts)]) -> Result<Inputs, NnError> {
        parse_inputs(inputs.iter().map(|(n, t)| (*n, t)))
    }

    fn parse(inputs: &[(&str, TensorParts)]) -> Result<Vec<TokenId>, NnError> {
        parse_all(inputs).map(|i| i.tokens)
    }

    #[test]
    fn accepts_n_and_1_by_n() {
        assert_eq!(parse(&[("tokens", tokens(&[1, 2], vec![2]))]).unwrap(), [TokenId(1), TokenId(2)]);
        assert_eq!(parse(&[("tokens", tokens(&[7], vec![1, 1]))]).unwrap(), [TokenId(7)]);
    }

    #[test]
    fn greedy_is_optional_in_either_order_and_0_means_absent() {
        let t = tokens(&[4, 5], vec![2]);
        let ids = vec![TokenId(4), TokenId(5)];
        let cases = [
            (vec![("tokens", t.clone())], 0),
            (vec![("tokens", t.clone()), ("greedy", flag(1))], 1),
            (vec![("greedy", flag(1)), ("tokens", t.clone())], 1),
            (vec![("tokens", t.clone()), ("greedy", flag(0))], 0),
            (vec![("tokens", t.clone()), ("greedy", flag(64))], 64),
        ];
        for (inputs, want) in cases {
            assert_eq!(
                parse_all(&inputs).unwrap(),
                Inputs { tokens: ids.clone(), greedy: want, run: 0, stop: Vec::new() },
                "{inputs:?}"
            );
        }
    }

    #[test]
    fn rejects_bad_greedy_inputs_with_a_message() {
        let t = tokens(&[1], vec![1]);
        let cases = [
            (greedy(vec![1], TensorType::I32, &[1, 0, 0, 0]), "must be U8"),
            (greedy(vec![1, 1], TensorType::U8, &[1]), "dimensions [1]"),
            (greedy(vec![2], TensorType::U8, &[1, 1]), "dimensions [1]"),
            (greedy(vec![1], TensorType::U8, &[]), "1 byte"),
            (greedy(vec![1], TensorType::U8, &[1, 0]), "1 byte"),
            (flag(65), "must be 0 to 64, not 65"),
            (flag(255), "must be 0 to 64, not 255"),
        ];
        for (g, want) in cases {
            let e = parse_all(&[("tokens", t.clone()), ("greedy", g.clone())]).unwrap_err();
            assert_eq!(e.code(), crate::nn::wit::ErrorCode::InvalidArgument, "{e}");
            assert!(e.to_string().contains("'greedy'") && e.to_string().contains(want), "{g:?}: {e}");
        }
        let e = parse_all(&[("tokens", t.clone()), ("greedy", flag(1)), ("greedy", flag(1))]).unwrap_err();
        assert!(e.to_string().contains("'greedy' is given twice"), "{e}");
        // Still exactly one "tokens": greedy alone is not enough.
        let e = parse_all(&[("greedy", flag(1))]).unwrap_err();
        assert!(e.to_string().contains("no input 'tokens'"), "{e}");
    }

    fn run(v: i32) -> TensorParts {
        TensorParts { dims: vec![1], ty: TensorType::I32, data: v.to_le_bytes().to_vec() }
    }

    #[test]
    fn a_greedy_run_needs_a_greedy_count_no_larger() {
        let t = tokens(&[1], vec![1]);
        let ok = parse_all(&[("greedy-run", run(100)), ("tokens", t.clone()), ("greedy", flag(8))]).unwrap();
        assert_eq!((ok.greedy, ok.run), (8, 100));
        let ok = parse_all(&[("tokens", t.clone()), ("greedy", flag(8)), ("greedy-run", run(0))]).unwrap();
        assert_eq!((ok.greedy, ok.run), (8, 0));
        let max = MAX_GREEDY_RUN as i32;
        assert_eq!(
            parse_all(&[("tokens", t.clone()), ("greedy", flag(1)), ("greedy-run", run(max))]).unwrap().run,
            1024
        );
        let cases = [
            (vec![("greedy-run", run(5))], "must be given"),
            (vec![("greedy", flag(0)), ("greedy-run", run(5))], "must be given"),
            (vec![("greedy", flag(8)), ("greedy-run", run(7))], "(7) must be at least 'greedy' (8)"),
            (vec![("greedy", flag(1)), ("greedy-run", run(max + 1))], "0 to 1024, not 1025"),
            (vec![("greedy", flag(1)), ("greedy-run", run(-1))], "0 to 1024, not -1"),
            (
                vec![("greedy", flag(1)), ("greedy-run", TensorParts { ty: TensorType::U8, ..run(2) })],
                "must be I32",
            ),
            (
                vec![("greedy", flag(1)), ("greedy-run", TensorParts { dims: vec![2], ..run(2) })],
                "dimensions [1]",
            ),
            (vec![("greedy", flag(1)), ("greedy-run", run(2)), ("greedy-run", run(2))], "given twice"),
        ];
        for (mut inputs, want) in cases {
            inputs.push(("tokens", t.clone()));
            let e = parse_all(&inputs).unwrap_err();
            assert_eq!(e.code(), crate::nn::wit::ErrorCode::InvalidArgument, "{e}");
            assert!(
                e.to_string().contains("'greedy-run'") && e.to_string().contains(want),
                "{inputs:?}: {e}"
            );
        }
    }

    #[test]
    fn stop_tokens_need_a_greedy_count_and_at_most_8() {
        let t = tokens(&[1], vec![1]);
        let ok = parse_all(&[
            ("tokens", t.clone()),
            ("greedy", flag(4)),
            ("greedy-stop", tokens(&[0, 7], vec![2])),
        ]);
        assert_eq!(ok.unwrap().stop, [TokenId(0), TokenId(7)]);
        let cases = [
            (vec![("greedy-stop", tokens(&[0], vec![1]))], "needs 'greedy'"),
            (vec![("greedy", flag(1)), ("greedy-stop", tokens(&[], vec![0]))], "1 ≤ k ≤ 8"),
            (vec![("greedy", flag(1)), ("greedy-stop", tokens(&[0; 9], vec![9]))], "1 ≤ k ≤ 8"),
            (vec![("greedy", flag(1)), ("greedy-stop", tokens(&[0, 1], vec![1]))], "dimensions [k]"),
            (
                vec![
                    ("greedy", flag(1)),
                    ("greedy-stop", TensorParts { ty: TensorType::U8, ..tokens(&[0], vec![1]) }),
                ],
                "I32",
            ),
            (
                vec![
                    ("greedy", flag(1)),
                    ("greedy-stop", tokens(&[0], vec![1])),
                    ("greedy-stop", tokens(&[0], vec![1])),
                ],
                "given twice",
            ),
        ];
        for (mut inputs, want) in cases {
            inputs.push(("tokens", t.clone()));
            let e = parse_all(&inputs).unwrap_err();
            assert_eq!(e.code(), crate::nn::wit::ErrorCode::InvalidArgument, "{e}");
            assert!(
                e.to_string().contains("'greedy-stop'") && e.to_string().contains(want),
                "{inputs:?}: {e}"
            );
        }
    }

    #[test]
    fn outputs_are_named_tensors() {
        let (name, t) = Output::Tokens(vec![TokenId(258)]).into_tensor();
        assert_eq!(
            (name, &t.dims[..], t.ty, &t.data[..]),
            ("token", &[1][..], TensorType::I32, &[2, 1, 0, 0][..])
        );
        let (name, t) = Output::Tokens(vec![TokenId(258), TokenId(3)]).into_tensor();
        assert_eq!(
            (name, &t.dims[..], t.ty, &t.data[..]),
            ("token", &[2][..], TensorType::I32, &[2, 1, 0, 0, 3, 0, 0, 0][..])
        );
        let (name, t) = Output::Logits(logits_bytes(&[1.0, -2.5])).into_tensor();
        assert_eq!((name, &t.dims[..], t.ty), ("logits", &[2][..], TensorType::Fp32));
        assert_eq!(t.data, [1.0f32.to_le_bytes(), (-2.5f32).to_le_bytes()].concat());
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
