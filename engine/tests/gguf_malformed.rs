//! The GGUF reader against a valid file with every value type, and against a corpus of broken
//! files: each must fail with a specific error whose message names the key or tensor.
//!
//! The corpus is also written to `tests/fixtures/gguf_corpus/` (the fuzzer's seeds). After
//! changing a case, regenerate it with `GGUF_UPDATE_CORPUS=1 cargo test -p tinystate-engine
//! --test gguf_malformed`.

mod gguf_support;

use std::path::{Path, PathBuf};

use gguf_support::{Builder, TensorSpec, enc, ty};
use tinystate_engine::gguf::{
    ALIGNMENT_KEY, Gguf, GgufError, MAX_ARRAY_LEN, MAX_KV, MAX_NESTING, MAX_STRING_LEN, MAX_TENSOR_NAME_LEN,
    MAX_TENSORS, Value, ValueType,
};
use tinystate_engine::tensor::GgmlType;

fn s(v: &str) -> Vec<u8> {
    enc::string(v.as_bytes())
}

fn le32s(v: &[u32]) -> Vec<Vec<u8>> {
    v.iter().map(|x| x.to_le_bytes().to_vec()).collect()
}

/// A valid file: every value type, arrays (nested too), five tensors of every type, alignment 64.
fn valid() -> Builder {
    let f32s: Vec<Vec<u8>> = [0.5f32, -1.0].iter().map(|x| x.to_le_bytes().to_vec()).collect();
    let i32s: Vec<Vec<u8>> = [-7i32, 0, 9].iter().map(|x| x.to_le_bytes().to_vec()).collect();
    let inner_a = enc::array(ty::U8, &[vec![1], vec![2]]);
    let inner_b = enc::array(ty::STRING, &[s("x")]);
    let nested = enc::array(ty::ARRAY, &[inner_a, inner_b, enc::array(ty::F64, &[])]);
    let b = Builder { alignment: 64, ..Builder::default() }
        .kv_str("general.architecture", "mamba")
        .kv_u32(ALIGNMENT_KEY, 64)
        .kv("t.u8", ty::U8, [200])
        .kv("t.i8", ty::I8, (-3i8).to_le_bytes())
        .kv("t.u16", ty::U16, 65535u16.to_le_bytes())
        .kv("t.i16", ty::I16, (-300i16).to_le_bytes())
        .kv("t.i32", ty::I32, (-5i32).to_le_bytes())
        .kv("t.f32", ty::F32, 0.25f32.to_le_bytes())
        .kv("t.bool", ty::BOOL, [1])
        .kv("t.u64", ty::U64, (1u64 << 40).to_le_bytes())
        .kv("t.i64", ty::I64, (-1i64 << 40).to_le_bytes())
        .kv("t.f64", ty::F64, 1.5f64.to_le_bytes())
        .kv_str("t.unicode", "süß ✓")
        .kv("t.strings", ty::ARRAY, enc::array(ty::STRING, &[s("a"), s(""), s("ünï")]))
        .kv("t.i32s", ty::ARRAY, enc::array(ty::I32, &i32s))
        .kv("t.f32s", ty::ARRAY, enc::array(ty::F32, &f32s))
        .kv("t.u32s", ty::ARRAY, enc::array(ty::U32, &le32s(&[1, u32::MAX])))
        .kv("t.bools", ty::ARRAY, enc::array(ty::BOOL, &[vec![0], vec![1]]))
        .kv("t.empty", ty::ARRAY, enc::array(ty::U64, &[]))
        .kv("t.nested", ty::ARRAY, nested);
    b.tensor("token_embd.weight", &[8, 4], GgmlType::F32)
        .tensor("blk.0.ssm_in.weight", &[32, 3], GgmlType::Q8_0)
        .tensor("blk.0.ssm_d", &[5], GgmlType::F16)
        .tensor("blk.0.ssm_out.weight", &[64, 2], GgmlType::Q4_0)
        .tensor("output_norm.weight", &[3, 1, 1, 2], GgmlType::BF16)
}

#[test]
fn valid_file_parses_with_every_value_type() {
    let bytes = valid().build();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!((g.version(), g.alignment()), (3, 64));
    assert_eq!(g.data_offset() % 64, 0);
    let keys: Vec<&str> = g.metadata().map(|(k, _)| k).collect();
    assert_eq!(keys.len(), 20);
    assert_eq!(keys[..3], ["general.architecture", ALIGNMENT_KEY, "t.u8"]);
    assert_eq!(g.get_str("general.architecture"), Ok("mamba"));
    assert_eq!(g.get("t.u8"), Some(&Value::U8(200)));
    assert_eq!(g.get("t.i8"), Some(&Value::I8(-3)));
    assert_eq!(g.get("t.u16"), Some(&Value::U16(65535)));
    assert_eq!(g.get("t.i16"), Some(&Value::I16(-300)));
    assert_eq!(g.get("t.i32"), Some(&Value::I32(-5)));
    assert_eq!(g.get("t.i64"), Some(&Value::I64(-1 << 40)));
    assert_eq!(g.get_u32("t.u8"), Ok(200));
    assert_eq!(g.get_u32("t.u16"), Ok(65535));
    assert_eq!(g.get_u64("t.u64"), Ok(1 << 40));
    assert_eq!(g.get_f32("t.f32"), Ok(0.25));
    assert_eq!(g.get_f32("t.f64"), Ok(1.5));
    assert_eq!(g.get_bool("t.bool"), Ok(true));
    assert_eq!(g.get_str("t.unicode"), Ok("süß ✓"));
    let strings = g.get_array("t.strings").unwrap();
    assert_eq!(strings.strings().unwrap().collect::<Vec<_>>(), ["a", "", "ünï"]);
    assert_eq!(g.get_array("t.i32s").unwrap().i32s().unwrap().collect::<Vec<_>>(), [-7, 0, 9]);
    assert_eq!(g.get_array("t.f32s").unwrap().f32s().unwrap().collect::<Vec<_>>(), [0.5, -1.0]);
    assert_eq!(g.get_array("t.u32s").unwrap().u32s().unwrap().collect::<Vec<_>>(), [1, u32::MAX]);
    let bools: Vec<Value> = g.get_array("t.bools").unwrap().iter().collect();
    assert_eq!(bools, [Value::Bool(false), Value::Bool(true)]);
    let empty = g.get_array("t.empty").unwrap();
    assert!(empty.is_empty() && empty.elem_type() == ValueType::U64);
    assert_eq!(empty.iter().count(), 0);

    let nested = g.get_array("t.nested").unwrap();
    assert_eq!((nested.len(), nested.elem_type()), (3, ValueType::Array));
    let inner: Vec<_> = nested
        .iter()
        .map(|v| match v {
            Value::Array(a) => a.iter().collect::<Vec<_>>(),
            other => panic!("not an array: {other:?}"),
        })
        .collect();
    let xs: Vec<Value> = vec![Value::Str("x")];
    assert_eq!(inner, [vec![Value::U8(1), Value::U8(2)], xs, vec![]]);
}

#[test]
fn valid_file_tensors_are_zero_copy_slices() {
    let bytes = valid().build();
    let g = Gguf::parse(&bytes).unwrap();
    let names: Vec<&str> = g.tensors().iter().map(|t| t.name).collect();
    assert_eq!(names[0], "token_embd.weight");
    assert_eq!(names.len(), 5);
    let want = [(32, 128), (96, 102), (5, 10), (128, 72), (6, 12)];
    let data_offset = g.data_offset() as usize;
    for (t, (n, size)) in g.tensors().iter().zip(want) {
        assert_eq!((t.n_elements(), t.data.len()), (n, size), "{}", t.name);
        assert_eq!(t.offset % 64, 0);
        let start = data_offset + t.offset as usize;
        assert_eq!(t.data.as_ptr(), bytes[start..].as_ptr(), "{} is not a slice", t.name);
        assert_eq!(t.data[0], (t.offset * 7 + 1) as u8);
    }
    let last = g.tensors().last().unwrap();
    assert_eq!(data_offset + last.offset as usize + last.data.len(), bytes.len());
    let t = g.tensor("blk.0.ssm_in.weight").unwrap();
    assert_eq!((t.ty, t.dims()), (GgmlType::Q8_0, &[32, 3][..]));
    assert_eq!(g.tensor("output_norm.weight").unwrap().dims(), [3, 1, 1, 2]);
    assert!(g.tensor("missing").is_none());
}

#[test]
fn version_2_and_files_without_tensors_parse() {
    let bytes = Builder { version: 2, ..valid() }.build();
    assert_eq!(Gguf::parse(&bytes).unwrap().version(), 2);
    let bytes = Builder::default().kv_str("general.name", "x").build();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!((g.tensors().len(), g.alignment()), (0, 32));
    let bytes = Builder::default().build();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!((g.metadata().count(), g.data_offset()), (0, 32));
}

#[test]
fn typed_getters_report_missing_keys_and_wrong_types() {
    let bytes = valid().kv("t.neg", ty::I64, (-1i64).to_le_bytes()).build();
    let g = Gguf::parse(&bytes).unwrap();
    let err = g.get_u32("general.architecture").unwrap_err();
    assert!(matches!(
        &err,
        GgufError::WrongType { key, found: ValueType::String, .. } if key == "general.architecture"
    ));
    assert_eq!(
        err.to_string(),
        "metadata key 'general.architecture': expected an integer fitting u32, found String"
    );
    let err = g.get_u32("t.u64").unwrap_err();
    assert!(matches!(&err, GgufError::IntOutOfRange { key, value: 0x100_0000_0000, .. } if key == "t.u64"));
    assert!(err.to_string().contains("1099511627776"), "{err}");
    assert!(matches!(g.get_u64("t.neg"), Err(GgufError::IntOutOfRange { value: -1, .. })));
    assert!(matches!(g.get_u32("nope"), Err(GgufError::MissingKey { key }) if key == "nope"));
    assert_eq!(g.get_u32("nope").unwrap_err().to_string(), "metadata key 'nope' not found");
    let wrong = |r: Result<(), GgufError>, k: &str, found: ValueType| match r {
        Err(GgufError::WrongType { key, found: f, .. }) => assert!(key == k && f == found),
        other => panic!("{k}: {other:?}"),
    };
    wrong(g.get_f32("t.i32").map(drop), "t.i32", ValueType::I32);
    wrong(g.get_bool("t.u8").map(drop), "t.u8", ValueType::U8);
    wrong(g.get_str("t.strings").map(drop), "t.strings", ValueType::Array);
    wrong(g.get_array("t.f32").map(drop), "t.f32", ValueType::F32);
    wrong(g.get_u64("t.bool").map(drop), "t.bool", ValueType::Bool);
    let a = g.get_array("t.strings").unwrap();
    assert!(a.i32s().is_none() && a.f32s().is_none() && a.u32s().is_none());
}

#[test]
fn every_prefix_of_a_valid_file_fails() {
    let bytes = valid().build();
    for len in 0..bytes.len() {
        match Gguf::parse(&bytes[..len]) {
            Err(GgufError::Truncated { offset, remaining, .. }) => {
                assert_eq!(offset + remaining, len as u64, "prefix {len}");
            }
            Err(GgufError::TensorOutOfBounds { .. }) => {}
            other => panic!("prefix of {len} bytes: {other:?}"),
        }
    }
}

#[test]
fn single_byte_corruptions_never_panic() {
    let bytes = valid().build();
    let mut ok = 0;
    for i in 0..bytes.len() {
        for v in [0u8, 1, 0x7f, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[i] = v;
            ok += usize::from(Gguf::parse(&b).is_ok());
        }
    }
    assert!(ok > 0);
}

/// A broken file, the error it must give, and text its message must contain.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    check: fn(&GgufError) -> bool,
    mentions: &'static str,
}

/// A file's bytes: a builder's output, or bytes as they are.
trait IntoBytes {
    fn into_bytes(self) -> Vec<u8>;
}

impl IntoBytes for Builder {
    fn into_bytes(self) -> Vec<u8> {
        self.build()
    }
}

impl IntoBytes for Vec<u8> {
    fn into_bytes(self) -> Vec<u8> {
        self
    }
}

/// `case!(name, file, error pattern [if guard], text the message must contain)`.
macro_rules! case {
    ($name:literal, $file:expr, $pat:pat $(if $guard:expr)?, $mentions:expr $(,)?) => {
        Case {
            name: $name,
            bytes: IntoBytes::into_bytes($file),
            check: |e| matches!(e, $pat $(if $guard)?),
            mentions: $mentions,
        }
    };
}

/// One F32 tensor at offset 0, no metadata: the tensor table starts at byte 24.
fn one_tensor() -> Builder {
    Builder::default().tensor("w", &[4], GgmlType::F32)
}

/// Only metadata entries `entries`.
fn kv_only(entries: &[Vec<u8>]) -> Builder {
    entries.iter().fold(Builder::default(), |b, e| b.kv_raw(e.clone()))
}

/// A metadata entry `key` of type `ty`.
fn entry(key: &str, ty: u32, payload: &[u8]) -> Vec<u8> {
    [s(key), ty.to_le_bytes().to_vec(), payload.to_vec()].concat()
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn header_and_kv_cases() -> Vec<Case> {
    use GgufError as E;
    let mut deep = enc::array(ty::U8, &[]);
    for _ in 0..MAX_NESTING {
        deep = enc::array(ty::ARRAY, &[deep]);
    }
    let two = kv_only(&[entry("a", ty::STRING, &s("b")), entry("c", ty::STRING, &s("d"))]);
    let kv_over = (two.build().len() as u64 - 24) / 13 + 1;
    let max = u64::MAX.to_le_bytes();
    let bad_str_array = enc::array(ty::STRING, &[s("ok"), enc::string(b"\xe2\x82")]);
    let b = Builder::default;
    #[rustfmt::skip]
    let cases = vec![
        case!("bad_magic", Builder { magic: *b"GGML", ..valid() },
            E::BadMagic { found } if found == b"GGML", "GGUF"),
        case!("version_1", Builder { version: 1, ..valid() },
            E::UnsupportedVersion { version: 1 }, "version 1"),
        case!("version_4", Builder { version: 4, ..valid() },
            E::UnsupportedVersion { version: 4 }, "version 4"),
        case!("big_endian", Builder { version: 3u32.swap_bytes(), ..valid() },
            E::BigEndian { .. }, "big-endian"),
        case!("kv_count_max", Builder { n_kv: Some(u64::MAX), ..valid() },
            E::TooManyKv { count: u64::MAX, limit: MAX_KV }, "18446744073709551615"),
        case!("kv_count_over_remaining", Builder { n_kv: Some(kv_over), ..two },
            E::Truncated { what, offset: 24, .. } if what.contains("metadata table"),
            "metadata table"),
        case!("key_len_max", b().kv_raw(cat(&[&max, b"abcdefgh"])),
            E::StringTooLong { len: u64::MAX, limit: MAX_STRING_LEN, .. },
            "key of metadata entry #0"),
        case!("key_len_over_remaining", b().kv_raw(cat(&[&9u64.to_le_bytes(), b"abcdefgh"])),
            E::Truncated { needed: 9, remaining: 8, .. }, "key of metadata entry #0"),
        case!("key_invalid_utf8", b().kv_raw_key(b"bad\xc3(", ty::U8, [0]),
            E::InvalidUtf8 { offset: 32, .. }, "key of metadata entry #0"),
        case!("string_len_max", b().kv("s", ty::STRING, max),
            E::StringTooLong { len: u64::MAX, .. }, "metadata key 's'"),
        case!("string_len_over_remaining",
            b().kv("s", ty::STRING, cat(&[&11u64.to_le_bytes(), b"0123456789"])),
            E::Truncated { needed: 11, remaining: 10, .. }, "metadata key 's'"),
        case!("string_invalid_utf8", b().kv("s", ty::STRING, enc::string(b"\xff\xfe")),
            E::InvalidUtf8 { .. }, "metadata key 's'"),
        case!("string_array_invalid_utf8", b().kv("v", ty::ARRAY, bad_str_array),
            E::InvalidUtf8 { .. }, "metadata key 'v'"),
        case!("array_len_max", b().kv("a", ty::ARRAY, enc::array_raw(ty::U8, u64::MAX, &[])),
            E::ArrayTooLong { len: u64::MAX, limit: MAX_ARRAY_LEN, .. }, "metadata key 'a'"),
        case!("array_len_over_remaining",
            b().kv("a", ty::ARRAY, enc::array_raw(ty::U32, 3, &[0; 11])),
            E::Truncated { needed: 12, remaining: 11, .. }, "metadata key 'a'"),
        case!("string_array_len_over_remaining",
            b().kv("a", ty::ARRAY, enc::array_raw(ty::STRING, 1 << 20, &s("x"))),
            E::Truncated { needed: 0x80_0000, .. }, "metadata key 'a'"),
        case!("array_nested_too_deep", b().kv("deep", ty::ARRAY, deep),
            E::NestingTooDeep { limit: MAX_NESTING, .. }, "metadata key 'deep'"),
        case!("unknown_value_type", b().kv("u", 13, [0; 8]),
            E::UnknownValueType { id: 13, .. }, "metadata key 'u': unknown value type 13"),
        case!("unknown_array_type", b().kv("u", ty::ARRAY, enc::array_raw(u32::MAX, 0, &[])),
            E::UnknownValueType { id: u32::MAX, .. }, "metadata key 'u'"),
        case!("truncated_value", b().kv_raw(entry("k", ty::U64, &[1, 2])),
            E::Truncated { needed: 8, remaining: 2, .. }, "metadata key 'k'"),
        case!("duplicate_key", valid().kv_u32("t.u8", 1),
            E::DuplicateKey { key } if key == "t.u8", "duplicate metadata key 't.u8'"),
        case!("alignment_zero", b().kv_u32(ALIGNMENT_KEY, 0),
            E::BadAlignment { value: 0 }, "general.alignment: 0"),
        case!("alignment_three", b().kv_u32(ALIGNMENT_KEY, 3),
            E::BadAlignment { value: 3 }, "general.alignment: 3"),
        case!("alignment_wrong_type", b().kv(ALIGNMENT_KEY, ty::U64, 32u64.to_le_bytes()),
            E::WrongType { expected: "U32", found: ValueType::U64, .. },
            "metadata key 'general.alignment': expected U32, found U64"),
    ];
    cases
}

fn tensor_cases() -> Vec<Case> {
    use GgufError as E;
    let n_over = (one_tensor().build().len() as u64 - 24) / 32 + 1;
    let spec = |n_dims: u32, dims: &[u64]| TensorSpec {
        name: b"blk.0.ssm_a".to_vec(),
        n_dims,
        dims: dims.to_vec(),
        ty: 0,
        offset: 0,
    };
    let bad_name = TensorSpec { name: b"w\xc0".to_vec(), ..spec(1, &[4]) };
    let long_name = vec![b'n'; MAX_TENSOR_NAME_LEN as usize + 1];
    let long_name = TensorSpec { name: long_name, ..spec(1, &[4]) };
    let valid_len = valid().build().len();
    let trunc = |cut: usize| valid().build()[..cut].to_vec();
    let b = Builder::default;
    let q8 = GgmlType::Q8_0.id();
    #[rustfmt::skip]
    let cases = vec![
        case!("tensor_count_max", Builder { n_tensors: Some(u64::MAX), ..valid() },
            E::TooManyTensors { count: u64::MAX, limit: MAX_TENSORS }, "18446744073709551615"),
        case!("tensor_count_over_remaining", Builder { n_tensors: Some(n_over), ..one_tensor() },
            E::Truncated { what, offset: 24, .. } if what.contains("tensor table"),
            "tensor table"),
        case!("tensor_name_invalid_utf8", b().tensor_spec(bad_name),
            E::InvalidUtf8 { .. }, "name of tensor #0"),
        case!("tensor_name_too_long", b().tensor_spec(long_name),
            E::StringTooLong { len: 64, limit: 63, .. }, "name of tensor #0"),
        case!("n_dims_0", b().tensor_spec(spec(0, &[])),
            E::BadDimCount { n_dims: 0, .. }, "tensor 'blk.0.ssm_a': 0 dimensions"),
        case!("n_dims_5", b().tensor_spec(spec(5, &[1; 5])),
            E::BadDimCount { n_dims: 5, limit: 4, .. }, "tensor 'blk.0.ssm_a': 5 dimensions"),
        case!("n_dims_max", b().tensor_spec(spec(u32::MAX, &[])),
            E::BadDimCount { n_dims: u32::MAX, .. }, "'blk.0.ssm_a'"),
        case!("dims_truncated", Builder { data_len: Some(0), ..b().tensor_spec(spec(4, &[1, 1])) },
            E::Truncated { .. }, "tensor 'blk.0.ssm_a': dimensions"),
        case!("zero_dim", b().tensor_at("w", &[4, 0], 0, 0),
            E::ZeroDim { tensor, index: 1 } if tensor == "w", "tensor 'w': dimension 1 is 0"),
        case!("dims_overflow", b().tensor_at("w", &[u64::MAX, 2], 0, 0),
            E::ShapeOverflow { .. }, "tensor 'w'"),
        case!("dims_overflow_4d", b().tensor_at("w", &[1 << 16; 4], 0, 0),
            E::ShapeOverflow { .. }, "'w': element count of shape [65536, 65536, 65536, 65536]"),
        case!("size_overflow", b().tensor_at("w", &[1 << 62, 1], 0, 0),
            E::SizeOverflow { .. }, "tensor 'w'"),
        case!("partial_block", b().tensor_at("q", &[48, 2], q8, 0),
            E::PartialBlock { ne0: 48, block_len: 32, .. }, "tensor 'q': row of 48"),
        case!("unknown_tensor_type", b().tensor_at("q", &[32], 3, 0),
            E::UnknownTensorType { id: 3, .. }, "'q': unknown or unsupported ggml type id 3"),
        case!("unknown_tensor_type_max", b().tensor_at("q", &[32], u32::MAX, 0),
            E::UnknownTensorType { id: u32::MAX, .. }, "'q': unknown or unsupported ggml type id 4294"),
        case!("misaligned_offset", one_tensor().tensor_at("blk.0.ssm_in.weight", &[4], 0, 36),
            E::MisalignedOffset { offset: 36, alignment: 32, .. },
            "tensor 'blk.0.ssm_in.weight': offset 36 is not a multiple of alignment 32"),
        case!("offset_out_of_range",
            Builder { data_len: Some(16), ..b().tensor_at("w", &[4], 0, 32) },
            E::TensorOutOfBounds { offset: 32, size: 16, data_len: 16, .. }, "tensor 'w'"),
        case!("offset_max",
            Builder { data_len: Some(16), ..b().tensor_at("w", &[16], 0, u64::MAX - 31) },
            E::TensorOutOfBounds { .. }, "tensor 'w'"),
        case!("overlapping_tensors", one_tensor().tensor_at("w2", &[8], 0, 0),
            E::TensorOverlap { tensor, other, .. } if tensor == "w2" && other == "w",
            "tensor 'w2' at offset 0 overlaps tensor 'w' ending at 16"),
        case!("overlap_out_of_order",
            one_tensor().tensor_at("w3", &[4], 0, 96).tensor_at("w2", &[16], 0, 64),
            E::TensorOverlap { tensor, other, .. } if tensor == "w3" && other == "w2",
            "tensor 'w3' at offset 96 overlaps tensor 'w2' ending at 128"),
        case!("duplicate_tensor", one_tensor().tensor("w", &[4], GgmlType::F32),
            E::DuplicateTensor { tensor } if tensor == "w", "duplicate tensor name 'w'"),
        case!("truncated_data", trunc(valid_len - 1),
            E::TensorOutOfBounds { .. }, "tensor 'output_norm.weight'"),
        case!("truncated_header", trunc(10),
            E::Truncated { offset: 8, .. }, "header: tensor count"),
        case!("truncated_magic", trunc(3), E::Truncated { offset: 0, .. }, "header: magic"),
        case!("empty", Vec::new(), E::Truncated { offset: 0, .. }, "header: magic"),
        case!("truncated_metadata", trunc(200), E::Truncated { .. }, "metadata"),
    ];
    cases
}

fn cases() -> Vec<Case> {
    let mut all = header_and_kv_cases();
    all.extend(tensor_cases());
    all
}

#[test]
fn broken_files_fail_with_specific_errors() {
    let mut failures = Vec::new();
    for c in cases() {
        match Gguf::parse(&c.bytes) {
            Err(e) if (c.check)(&e) && e.to_string().contains(c.mentions) => {}
            other => failures.push(format!(
                "{}: {other:?} / {}",
                c.name,
                other.as_ref().err().map(ToString::to_string).unwrap_or_default()
            )),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf_corpus")
}

/// Regenerates the corpus (and the fuzzer's valid seed) when `GGUF_UPDATE_CORPUS` is set;
/// otherwise checks that the committed corpus matches the cases.
#[test]
fn corpus_matches_cases() {
    let dir = corpus_dir();
    let update = std::env::var_os("GGUF_UPDATE_CORPUS").is_some();
    if update {
        std::fs::create_dir_all(&dir).unwrap();
        let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
        std::fs::create_dir_all(&seeds).unwrap();
        std::fs::write(seeds.join("valid.gguf"), valid().build()).unwrap();
    }
    for c in cases() {
        assert!(c.bytes.len() < 4096, "{} is {} bytes", c.name, c.bytes.len());
        let path = dir.join(format!("{}.gguf", c.name));
        if update {
            std::fs::write(&path, &c.bytes).unwrap();
        }
        let on_disk = std::fs::read(&path).unwrap_or_default();
        assert!(on_disk == c.bytes, "{} is stale: rerun with GGUF_UPDATE_CORPUS=1", path.display());
    }
}

#[test]
fn every_corpus_file_fails() {
    if std::env::var_os("GGUF_UPDATE_CORPUS").is_some() {
        return; // being rewritten concurrently by `corpus_matches_cases`
    }
    let mut n = 0;
    for entry in std::fs::read_dir(corpus_dir()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        assert!(Gguf::parse(&bytes).is_err(), "{} parsed", path.display());
        n += 1;
    }
    assert!(n >= cases().len(), "only {n} corpus files");
}
