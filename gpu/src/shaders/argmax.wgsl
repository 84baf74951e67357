// ids[t] = the index of the highest logit of row t (t < n_out): the greedy token, read back in
// 4 bytes instead of the row's vocab × 4. The same choice as the engine's sampler: the lowest
// index among equals, NaN counts as −∞, and a row of only −∞/NaN gives 0.
//
// Values are compared as integers (`order_key`), never as floats: WGSL lets implementations
// assume there are no NaNs or infinities, so float comparisons could not be trusted on them.
// One workgroup per row; each thread keeps the best of a strided slice, then a tree.
struct Params {
    cols: u32,   // vocab: logits per row
    stride: u32, // floats from one row to the next
    _pad0: u32,
    _pad1: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read> logits: array<f32>;        // (n_out, stride)
@group(0) @binding(5) var<storage, read_write> ids: array<u32>;     // (n_out,)

var<workgroup> best_key: array<u32, 64>;
var<workgroup> best_id: array<u32, 64>;

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

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wid.y;
    if t >= run.n_out {
        return; // uniform across the workgroup
    }
    let row = t * p.stride;
    // A thread with no element holds (lowest key, NO_ID): it loses to any real element, even
    // a −∞ one, by the id.
    var k = 0u;
    var id = NO_ID;
    for (var c = lid; c < p.cols; c += 64u) {
        let kc = order_key(logits[row + c]);
        // Strictly higher only: c grows, so among equals this thread keeps its lowest.
        if id == NO_ID || kc > k {
            k = kc;
            id = c;
        }
    }
    best_key[lid] = k;
    best_id[lid] = id;
    workgroupBarrier();
    for (var h = 32u; h > 0u; h >>= 1u) {
        if lid < h && beats(best_key[lid + h], best_id[lid + h], best_key[lid], best_id[lid]) {
            best_key[lid] = best_key[lid + h];
            best_id[lid] = best_id[lid + h];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        // NO_ID only for an empty row (cols 0), for which the sampler answers 0 too.
        ids[t] = select(best_id[0], 0u, best_id[0] == NO_ID);
    }
}
