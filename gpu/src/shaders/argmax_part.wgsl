// Stage 1 of the argmax (see argmax_common.wgsl): workgroup (part, t) finds the best of its
// slice of row t and writes it to parts[t, part].
@group(0) @binding(4) var<storage, read> logits: array<f32>;          // (n_out, stride)
@group(0) @binding(6) var<storage, read_write> parts: array<u32>;     // (n_out, PARTS, 2) key, id

const UNROLL: u32 = 4u;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wid.y;
    if t >= run.n_out {
        return; // uniform across the workgroup
    }
    let span = (p.cols + PARTS - 1u) / PARTS;
    let c0 = wid.x * span;
    let c1 = min(c0 + span, p.cols);
    let row = t * p.stride;
    // A thread with no element holds (lowest key, NO_ID): it loses to any real element, even
    // a −∞ one, by the id.
    var k = 0u;
    var id = NO_ID;
    // UNROLL elements per pass, loaded before any is compared: the loop's trip count is not a
    // constant, so its loads would otherwise go one round trip at a time.
    for (var c = c0 + lid; c < c1; c += UNROLL * WG_PART) {
        var keys: array<u32, UNROLL>;
        for (var j = 0u; j < UNROLL; j++) {
            let cj = min(c + j * WG_PART, c1 - 1u); // in bounds; compared only when < c1 below
            keys[j] = order_key(logits[row + cj]);
        }
        for (var j = 0u; j < UNROLL; j++) {
            let cj = c + j * WG_PART;
            // Strictly higher only: cj grows, so among equals this thread keeps its lowest.
            if cj < c1 && (id == NO_ID || keys[j] > k) {
                k = keys[j];
                id = cj;
            }
        }
    }
    best_key[lid] = k;
    best_id[lid] = id;
    tree(lid, WG_PART);
    if lid == 0u {
        let o = 2u * (t * PARTS + wid.x);
        parts[o] = best_key[0];
        parts[o + 1u] = best_id[0];
    }
}
