//! Two small open-addressing hash tables, built once per tokenizer without per-entry allocation:
//! token text → id (keys live in the tokenizer's text arena), and (left, right) symbol pair →
//! (merge rank, merged symbol).

/// A hash of several byte slices as if concatenated: 8 bytes at a time (FxHash-style steps),
/// then a final mix so the low bits (used as the slot index) depend on every input byte.
fn hash_parts(parts: &[&[u8]]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h: u64 = 0;
    let mut word: u64 = 0;
    let mut filled = 0u32;
    let mut total = 0u64;
    for part in parts {
        total += part.len() as u64;
        let mut rest = *part;
        // Fast path: whole words when no partial word is pending.
        if filled == 0 {
            let mut chunks = rest.chunks_exact(8);
            for c in &mut chunks {
                let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
                h = (h.rotate_left(5) ^ w).wrapping_mul(K);
            }
            rest = chunks.remainder();
        }
        for &b in rest {
            word |= u64::from(b) << (8 * filled);
            filled += 1;
            if filled == 8 {
                h = (h.rotate_left(5) ^ word).wrapping_mul(K);
                word = 0;
                filled = 0;
            }
        }
    }
    h = (h.rotate_left(5) ^ word).wrapping_mul(K);
    mix(h ^ total)
}

/// A 64-bit finalizer (from splitmix64).
fn mix(mut h: u64) -> u64 {
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Slots for `n` entries at a load factor of at most 1/2.
fn capacity_for(n: usize) -> usize {
    (n.max(4) * 2).next_power_of_two()
}

/// Maps token text to token id. The texts themselves are held by the caller (an arena plus
/// offsets), so lookups take a closure that returns the text of an id.
pub(crate) struct StrTable {
    /// `id + 1`, or 0 for an empty slot.
    slots: Vec<u32>,
}

impl StrTable {
    pub fn with_capacity(n: usize) -> Self {
        Self { slots: vec![0; capacity_for(n)] }
    }

    /// Finds the id whose text equals the concatenation of `parts`.
    pub fn get<'t>(&self, parts: &[&[u8]], text_of: impl Fn(u32) -> &'t [u8]) -> Option<u32> {
        let mask = self.slots.len() - 1;
        let mut i = hash_parts(parts) as usize & mask;
        loop {
            let slot = self.slots[i];
            if slot == 0 {
                return None;
            }
            if concat_eq(parts, text_of(slot - 1)) {
                return Some(slot - 1);
            }
            i = (i + 1) & mask;
        }
    }

    /// Inserts `id` under `text`, or returns the id already there.
    pub fn insert<'t>(&mut self, text: &[u8], id: u32, text_of: impl Fn(u32) -> &'t [u8]) -> Result<(), u32> {
        let mask = self.slots.len() - 1;
        let mut i = hash_parts(&[text]) as usize & mask;
        loop {
            let slot = self.slots[i];
            if slot == 0 {
                self.slots[i] = id + 1;
                return Ok(());
            }
            if text_of(slot - 1) == text {
                return Err(slot - 1);
            }
            i = (i + 1) & mask;
        }
    }
}

/// Whether `whole` equals the concatenation of `parts`.
fn concat_eq(parts: &[&[u8]], whole: &[u8]) -> bool {
    let mut rest = whole;
    for part in parts {
        match rest.strip_prefix(*part) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    rest.is_empty()
}

/// Maps a pair of symbol ids to a merge: `(rank, merged symbol id)`.
pub(crate) struct PairMap {
    /// `(key, value)`; key `u64::MAX` marks an empty slot (symbol ids are below 2^31).
    slots: Vec<(u64, u64)>,
    len: usize,
}

const EMPTY: u64 = u64::MAX;

fn pair_key(left: u32, right: u32) -> u64 {
    (u64::from(left) << 32) | u64::from(right)
}

impl PairMap {
    pub fn with_capacity(n: usize) -> Self {
        Self { slots: vec![(EMPTY, 0); capacity_for(n)], len: 0 }
    }

    fn slot(&self, key: u64) -> usize {
        let mask = self.slots.len() - 1;
        let mut i = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize & mask;
        while self.slots[i].0 != EMPTY && self.slots[i].0 != key {
            i = (i + 1) & mask;
        }
        i
    }

    /// The merge of `left` followed by `right`: `(rank, merged)`.
    #[inline]
    pub fn get(&self, left: u32, right: u32) -> Option<(u32, u32)> {
        let (key, val) = self.slots[self.slot(pair_key(left, right))];
        (key != EMPTY).then_some(((val >> 32) as u32, val as u32))
    }

    /// Inserts a merge unless the pair already has one (the first, lowest-rank merge wins, as
    /// `bpe_ranks.emplace` does in llama.cpp).
    pub fn insert_first(&mut self, left: u32, right: u32, rank: u32, merged: u32) {
        if (self.len + 1) * 2 > self.slots.len() {
            let grown = vec![(EMPTY, 0); self.slots.len() * 2];
            let old = std::mem::replace(&mut self.slots, grown);
            for (key, val) in old.into_iter().filter(|s| s.0 != EMPTY) {
                let i = self.slot(key);
                self.slots[i] = (key, val);
            }
        }
        let key = pair_key(left, right);
        let i = self.slot(key);
        if self.slots[i].0 == EMPTY {
            self.slots[i] = (key, (u64::from(rank) << 32) | u64::from(merged));
            self.len += 1;
        }
    }
}
