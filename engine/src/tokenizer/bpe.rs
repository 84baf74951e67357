//! Byte-pair merging of one pre-token piece, as llama.cpp's `llm_tokenizer_bpe_session`.
//!
//! The piece starts as one symbol per byte. The adjacent pair with the lowest merge rank is
//! merged, the leftmost first among equal ranks, until no adjacent pair has a merge. Each
//! symbol then becomes its token; a symbol that is not in the vocabulary (a merge result missing
//! from it, only in malformed vocabularies) falls back to one byte token per byte.
//!
//! Symbols are ids: a token id, or an id past the vocabulary for a merge part or result that is
//! not a token. A queued pair is stale once either symbol has changed since it was queued; this
//! is llama.cpp's "left text + right text == queued text" check, on ids.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::Tokenizer;
use crate::TokenId;

/// No symbol (end of the linked list).
const NONE: u32 = u32::MAX;

/// One symbol of the piece being merged: bytes `start..start + len` of the piece.
#[derive(Clone, Copy)]
struct Sym {
    id: u32,
    start: u32,
    /// 0 once merged into its left neighbour.
    len: u32,
    prev: u32,
    next: u32,
}

/// A queued merge: `((rank << 32) | left, right, left id, right id, merged id)`; the heap
/// pops the lowest rank, then the leftmost.
type Queued = Reverse<(u64, u32, u32, u32, u32)>;

/// Buffers reused across pieces.
#[derive(Default)]
pub(crate) struct BpeScratch {
    syms: Vec<Sym>,
    heap: BinaryHeap<Queued>,
}

impl Tokenizer {
    /// Appends the tokens of one pre-token piece (raw bytes) to `out`.
    pub(crate) fn bpe(&self, piece: &[u8], s: &mut BpeScratch, out: &mut Vec<TokenId>) {
        if let [b] = piece {
            out.extend(self.byte_tok[*b as usize]);
            return;
        }
        s.syms.clear();
        s.heap.clear();
        let n = piece.len() as u32;
        for (i, &b) in piece.iter().enumerate() {
            let i = i as u32;
            s.syms.push(Sym {
                id: self.byte_sym[b as usize],
                start: i,
                len: 1,
                prev: if i == 0 { NONE } else { i - 1 },
                next: if i + 1 == n { NONE } else { i + 1 },
            });
        }
        for i in 1..n {
            self.queue(s, i - 1, i);
        }
        while let Some(Reverse((key, right, left_id, right_id, merged))) = s.heap.pop() {
            let left = key as u32;
            let (l, r) = (s.syms[left as usize], s.syms[right as usize]);
            if l.len == 0 || r.len == 0 || l.id != left_id || r.id != right_id {
                continue; // stale
            }
            let sym = &mut s.syms[left as usize];
            sym.id = merged;
            sym.len += r.len;
            sym.next = r.next;
            s.syms[right as usize].len = 0;
            if r.next != NONE {
                s.syms[r.next as usize].prev = left;
            }
            self.queue(s, l.prev, left);
            self.queue(s, left, r.next);
        }
        let mut i = 0u32;
        while i != NONE {
            let sym = s.syms[i as usize];
            if (sym.id as usize) < self.vocab_size() {
                out.push(TokenId(sym.id));
            } else {
                let bytes = &piece[sym.start as usize..(sym.start + sym.len) as usize];
                out.extend(bytes.iter().filter_map(|&b| self.byte_tok[b as usize]));
            }
            i = sym.next;
        }
    }

    /// Queues the merge of symbols `left` and `right`, if they have one.
    fn queue(&self, s: &mut BpeScratch, left: u32, right: u32) {
        if left == NONE || right == NONE {
            return;
        }
        let (lid, rid) = (s.syms[left as usize].id, s.syms[right as usize].id);
        if let Some((rank, merged)) = self.merges.get(lid, rid) {
            let key = (u64::from(rank) << 32) | u64::from(left);
            s.heap.push(Reverse((key, right, lid, rid, merged)));
        }
    }
}
