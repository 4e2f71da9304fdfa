//! Which KV blocks are free, used or cached, and the prefix cache. A full block is addressed by a
//! hash chain of (parent hash, its token ids), as vLLM's automatic prefix caching does: a new
//! sequence reuses the longest cached chain of its prompt and prefills only the rest. Freed blocks
//! keep their contents and hash until they are needed again, oldest freed first (LRU).
use crate::model::BLOCK_TOKENS;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

/// The hash of a full block given its parent's (0 for the first block): a chain, so equal hashes
/// mean equal whole prefixes (and the block's tokens are compared too, against collisions).
pub fn block_hash(parent: u64, tokens: &[u32]) -> u64 {
    // SipHash with fixed keys: stable across runs and processes.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(0x6e61_6e6f, 0x7177_656e);
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

/// Counters of the prefix cache, for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixStats {
    /// Prompt tokens looked up, and how many of them came from the cache.
    pub queried_tokens: u64,
    pub hit_tokens: u64,
}

struct Block {
    refs: u32,
    /// Set once the block is full and registered in the prefix cache.
    hash: Option<u64>,
    tokens: [u32; BLOCK_TOKENS],
    /// Position in the LRU of free cached blocks.
    freed_at: u64,
}

pub struct BlockManager {
    blocks: Vec<Block>,
    /// Free blocks holding nothing worth keeping (taken first; a stack, so the same few blocks are
    /// reused and untouched memory stays unmapped).
    free_plain: Vec<u32>,
    /// Free blocks still in the prefix cache, by the time they were freed: evicted oldest first.
    free_cached: BTreeMap<u64, u32>,
    by_hash: HashMap<u64, u32>,
    caching: bool,
    tick: u64,
    pub stats: PrefixStats,
}

impl BlockManager {
    pub fn new(blocks: usize, caching: bool) -> Self {
        Self {
            blocks: (0..blocks).map(|_| Block { refs: 0, hash: None, tokens: [0; BLOCK_TOKENS], freed_at: 0 }).collect(),
            free_plain: (0..blocks as u32).rev().collect(),
            free_cached: BTreeMap::new(),
            by_hash: HashMap::new(),
            caching,
            tick: 0,
            stats: PrefixStats::default(),
        }
    }

    pub fn total(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks that can be handed out now (free, cached or not).
    pub fn available(&self) -> usize {
        self.free_plain.len() + self.free_cached.len()
    }

    /// Blocks referenced by a sequence.
    pub fn used(&self) -> usize {
        self.total() - self.available()
    }

    /// Free blocks that still hold a cached prefix.
    pub fn cached(&self) -> usize {
        self.free_cached.len()
    }

    pub fn caching(&self) -> bool {
        self.caching
    }

    /// The cached blocks of the longest cached prefix of `tokens`, referenced for the caller, with
    /// their hashes. At least one token is left uncached: its logits are still to be computed.
    pub fn match_prefix(&mut self, tokens: &[u32]) -> (Vec<u32>, Vec<u64>) {
        let (mut table, mut hashes) = (Vec::new(), Vec::new());
        if !self.caching {
            return (table, hashes);
        }
        let usable = tokens.len().saturating_sub(1) / BLOCK_TOKENS;
        let mut parent = 0;
        for chunk in tokens.chunks_exact(BLOCK_TOKENS).take(usable) {
            let h = block_hash(parent, chunk);
            match self.by_hash.get(&h) {
                Some(&b) if self.blocks[b as usize].tokens == chunk => {
                    self.reference(b);
                    table.push(b);
                    hashes.push(h);
                    parent = h;
                }
                _ => break,
            }
        }
        self.stats.queried_tokens += tokens.len() as u64;
        self.stats.hit_tokens += (table.len() * BLOCK_TOKENS) as u64;
        (table, hashes)
    }

    fn reference(&mut self, b: u32) {
        let block = &mut self.blocks[b as usize];
        if block.refs == 0 {
            self.free_cached.remove(&block.freed_at);
        }
        block.refs += 1;
    }

    /// `n` fresh blocks, evicting the least recently freed cached blocks if needed; None (and
    /// nothing taken) when fewer than `n` are available.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<u32>> {
        if n > self.available() {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let b = match self.free_plain.pop() {
                Some(b) => b,
                None => {
                    let (_, b) = self.free_cached.pop_first().expect("counted as available");
                    let old = self.blocks[b as usize].hash.take().expect("a cached block has a hash");
                    self.by_hash.remove(&old);
                    b
                }
            };
            self.blocks[b as usize].refs = 1;
            out.push(b);
        }
        Some(out)
    }

    /// Register a full block under its chain hash. If another block already holds that prefix,
    /// this one stays unregistered (it is freed as plain).
    pub fn register(&mut self, b: u32, hash: u64, tokens: &[u32]) {
        if !self.caching || self.by_hash.contains_key(&hash) {
            return;
        }
        let block = &mut self.blocks[b as usize];
        block.hash = Some(hash);
        block.tokens.copy_from_slice(tokens);
        self.by_hash.insert(hash, b);
    }

    /// Drop one reference to each block; a block nobody uses becomes free, and stays in the prefix
    /// cache if it is registered there. Freed last-first, so a sequence's tail is evicted first.
    pub fn release(&mut self, table: &[u32]) {
        for &b in table.iter().rev() {
            let block = &mut self.blocks[b as usize];
            assert!(block.refs > 0, "block {b} released twice");
            block.refs -= 1;
            if block.refs == 0 {
                if block.hash.is_some() {
                    self.tick += 1;
                    block.freed_at = self.tick;
                    self.free_cached.insert(self.tick, b);
                } else {
                    self.free_plain.push(b);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(start: u32, n: usize) -> Vec<u32> {
        (start..start + n as u32).collect()
    }

    #[test]
    fn a_released_prefix_is_found_again_and_leaves_one_token_to_compute() {
        let mut m = BlockManager::new(8, true);
        let prompt = seq(100, 3 * BLOCK_TOKENS);
        let table = m.allocate(3).unwrap();
        let mut parent = 0;
        for (b, chunk) in table.iter().zip(prompt.chunks(BLOCK_TOKENS)) {
            parent = block_hash(parent, chunk);
            m.register(*b, parent, chunk);
        }
        m.release(&table);
        assert_eq!((m.used(), m.cached()), (0, 3));
        // Exactly the 3 blocks: the last is not reused (its last token's logits are needed).
        let (hit, _) = m.match_prefix(&prompt);
        assert_eq!(hit, table[..2]);
        // One more token: all 3 blocks.
        let mut longer = prompt.clone();
        longer.push(7);
        let (hit3, hashes) = m.match_prefix(&longer);
        assert_eq!((hit3.as_slice(), hashes.len()), (&table[..], 3));
        assert_eq!(m.stats.hit_tokens, 5 * BLOCK_TOKENS as u64);
        // A different first block shares nothing, even with equal later blocks.
        let mut other = longer.clone();
        other[0] = 1;
        assert!(m.match_prefix(&other).0.is_empty());
        m.release(&hit);
        m.release(&hit3);
        assert_eq!((m.used(), m.cached()), (0, 3));
    }

    #[test]
    fn allocation_takes_plain_blocks_first_then_evicts_the_oldest_cached() {
        let mut m = BlockManager::new(3, true);
        let a = m.allocate(2).unwrap();
        m.register(a[0], 11, &seq(0, BLOCK_TOKENS));
        m.register(a[1], 22, &seq(50, BLOCK_TOKENS));
        m.release(&a[1..]);
        m.release(&a[..1]); // freed last: the most recently used
        assert_eq!((m.available(), m.cached()), (3, 2));
        let b = m.allocate(1).unwrap();
        assert_eq!(m.cached(), 2, "the plain block goes first");
        let c = m.allocate(1).unwrap();
        assert_eq!(c, vec![a[1]], "then the oldest freed cached block");
        assert!(m.match_prefix(&seq(50, BLOCK_TOKENS + 1)).0.is_empty(), "its hash is gone");
        assert!(m.allocate(2).is_none() && m.available() == 1, "a failed allocation takes nothing");
        m.release(&b);
        m.release(&c);
        assert_eq!(m.used(), 0);
    }

    #[test]
    fn shared_blocks_are_freed_by_the_last_user_and_off_means_no_matches() {
        let mut m = BlockManager::new(2, true);
        let prompt = seq(0, BLOCK_TOKENS + 1);
        let a = m.allocate(1).unwrap();
        m.register(a[0], block_hash(0, &prompt[..BLOCK_TOKENS]), &prompt[..BLOCK_TOKENS]);
        let (hit, _) = m.match_prefix(&prompt);
        assert_eq!(hit, a);
        m.release(&a);
        assert_eq!(m.used(), 1, "still used by the second sequence");
        m.release(&hit);
        assert_eq!(m.used(), 0);
        let mut off = BlockManager::new(2, false);
        let b = off.allocate(1).unwrap();
        off.register(b[0], block_hash(0, &prompt[..BLOCK_TOKENS]), &prompt[..BLOCK_TOKENS]);
        off.release(&b);
        assert!(off.match_prefix(&prompt).0.is_empty() && off.cached() == 0);
    }
}
