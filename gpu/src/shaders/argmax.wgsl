// Stage 2 of the argmax (see argmax_common.wgsl): one workgroup per row t reduces the row's
// PARTS slice winners and writes ids[t].
@group(0) @binding(5) var<storage, read_write> ids: array<u32>;       // (n_out,)
@group(0) @binding(6) var<storage, read_write> parts: array<u32>;     // (n_out, PARTS, 2) key, id

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wid.y;
    if t >= run.n_out {
        return; // uniform across the workgroup
    }
    // PARTS ≤ 64: threads past it hold (lowest key, NO_ID), which loses to any part.
    best_key[lid] = 0u;
    best_id[lid] = NO_ID;
    if lid < PARTS {
        let o = 2u * (t * PARTS + lid);
        best_key[lid] = parts[o];
        best_id[lid] = parts[o + 1u];
    }
    tree(lid, 64u);
    if lid == 0u {
        // An empty row (cols 0) has no winner (NO_ID); the sampler answers 0 for it.
        ids[t] = select(best_id[0], 0u, p.cols == 0u);
    }
}
