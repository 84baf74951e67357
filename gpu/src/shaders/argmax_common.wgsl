// ids[t] = the index of the highest logit of row t (t < n_out): the greedy token, read back in
// 4 bytes instead of the row's vocab × 4. The same choice as the engine's sampler: the lowest
// index among equals, NaN counts as −∞, and a row of only −∞/NaN gives 0.
//
// Values are compared as integers (`order_key`), never as floats: WGSL lets implementations
// assume there are no NaNs or infinities, so float comparisons could not be trusted on them.
// Two dispatches: argmax_part.wgsl splits each row into PARTS slices (PARTS ≤ 64, from
// kernels.rs), a 256-thread workgroup per slice (one workgroup per row scanned 50k logits in
// 140 µs on an H200); argmax.wgsl reduces a row's PARTS winners.
struct Params {
    cols: u32,   // vocab: logits per row
    stride: u32, // floats from one row to the next
    _pad0: u32,
    _pad1: u32,
}
@group(0) @binding(0) var<uniform> p: Params;

const WG_PART: u32 = 256u;

var<workgroup> best_key: array<u32, 256>;
var<workgroup> best_id: array<u32, 256>;

const NO_ID: u32 = 0xffffffffu;
// order_key(−∞): NaN maps here too.
const KEY_NEG_INF: u32 = 0x007fffffu;

// A u32 whose unsigned order is the float order: for x < y, order_key(x) < order_key(y);
// −0 and +0 get one key; NaN gets −∞'s.
fn order_key(x: f32) -> u32 {
    var b = bitcast<u32>(x);
    if (b & 0x7fffffffu) > 0x7f800000u {
        return KEY_NEG_INF;
    }
    if b == 0x80000000u {
        b = 0u;
    }
    if (b & 0x80000000u) != 0u {
        return ~b; // negative: a larger magnitude is smaller
    }
    return b | 0x80000000u;
}

// Whether (ka, ia) beats (kb, ib): a higher key, or the same key and a lower id.
fn beats(ka: u32, ia: u32, kb: u32, ib: u32) -> bool {
    return ka > kb || (ka == kb && ia < ib);
}


// The best of the first n (a power of two) entries of best_key / best_id ends in entry 0.
// Every thread of the workgroup calls it.
fn tree(lid: u32, n: u32) {
    workgroupBarrier();
    for (var h = n / 2u; h > 0u; h >>= 1u) {
        if lid < h && beats(best_key[lid + h], best_id[lid + h], best_key[lid], best_id[lid]) {
            best_key[lid] = best_key[lid + h];
            best_id[lid] = best_id[lid + h];
        }
        workgroupBarrier();
    }
}
