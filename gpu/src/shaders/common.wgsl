// Shared by every op: the per-call sizes, written once per step/prefill before the submission.
struct Run {
    n_tok: u32,    // tokens in this call (rows of every activation buffer in use)
    n_seq: u32,    // sequences in this call (B for a step, 1 for a prefill chunk)
    out_row0: u32, // first token whose logits are wanted
    n_out: u32,    // number of logits rows
}
@group(0) @binding(1) var<uniform> run: Run;

// Token i: tokmeta[4i..4i+4] = (token id, slot, first token of its sequence, position in it).
// Sequence j: tokmeta[4·(max_tok + j)..] = (slot, first token, length, 0).
