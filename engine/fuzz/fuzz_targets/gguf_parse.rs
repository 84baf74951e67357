//! Parses arbitrary bytes as GGUF. It must never panic; when parsing succeeds, every value,
//! array element and tensor slice is touched, and the zero-copy promises are checked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tinystate_engine::gguf::{Gguf, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::parse(data) else { return };
    let range = data.as_ptr_range();
    let inside = |s: &[u8]| s.is_empty() || range.contains(&s.as_ptr());
    assert!(g.alignment().is_power_of_two());
    assert_eq!(g.data_offset() % g.alignment(), 0);
    for (key, value) in g.metadata() {
        assert!(inside(key.as_bytes()));
        assert!(std::ptr::eq(g.get(key).unwrap(), value));
        touch(value, &inside);
        let _ = (g.get_u32(key), g.get_u64(key), g.get_f32(key));
        let _ = (g.get_bool(key), g.get_str(key), g.get_array(key));
    }
    let mut total = 0u64;
    for t in g.tensors() {
        assert!(inside(t.data));
        assert_eq!(t.offset % g.alignment(), 0);
        assert!(!t.dims().is_empty() && t.dims().len() <= 4);
        assert_eq!(t.ty.row_bytes(t.n_elements()), Some(t.data.len() as u64));
        assert!(std::ptr::eq(g.tensor(t.name).unwrap(), t));
        total += t.data.iter().map(|&b| u64::from(b)).sum::<u64>();
    }
    std::hint::black_box(total);
});

/// Decodes `v` and, for arrays, every element, through every accessor.
fn touch(v: &Value<'_>, inside: &dyn Fn(&[u8]) -> bool) {
    match v {
        Value::Str(s) => assert!(inside(s.as_bytes())),
        Value::Array(a) => {
            let mut n = 0;
            for e in a.iter() {
                assert_eq!(e.value_type(), a.elem_type());
                touch(&e, inside);
                n += 1;
            }
            assert_eq!(n, a.len());
            if let Some(strings) = a.strings() {
                let n = strings.inspect(|s| assert!(inside(s.as_bytes()))).count();
                assert_eq!(n, a.len());
            }
            for count in [a.i32s().map(Iterator::count), a.f32s().map(Iterator::count)] {
                assert!(count.is_none_or(|c| c == a.len()));
            }
            assert!(a.u32s().map(Iterator::count).is_none_or(|c| c == a.len()));
        }
        other => {
            std::hint::black_box(other.as_int());
        }
    }
}
