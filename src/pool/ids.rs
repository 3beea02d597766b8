//! The map of a pool's connections by id, hashed with one multiplication.
//!
//! Ids come from a process-wide counter, never from a peer, so SipHash's resistance to
//! chosen keys buys nothing; it cost ~150 instructions per lookup, and a checkout and a
//! return each do one. A multiplication by an odd constant maps consecutive ids to distinct
//! low bits (the table's bucket) and mixes them into the high bits (its tag).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Connections by id (see the module's note on the hash).
pub(super) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// 2^64 / φ, odd: the multiplier of Fibonacci hashing.
const K: u64 = 0x9e37_79b9_7f4a_7c15;

#[derive(Default, Clone, Copy)]
pub(super) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write_u64(&mut self, id: u64) {
        self.0 = (self.0 ^ id).wrapping_mul(K);
    }

    /// Not called for `u64` keys; correct (if slower) for anything else.
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn consecutive_ids_land_in_distinct_buckets_and_mixed_tags() {
        let build = BuildHasherDefault::<IdHasher>::default();
        let hashes: Vec<u64> = (1..=64u64).map(|id| build.hash_one(id)).collect();
        // The low 6 bits (a 64-bucket table) differ for 64 consecutive ids.
        let mut buckets: Vec<u64> = hashes.iter().map(|h| h & 63).collect();
        buckets.sort_unstable();
        buckets.dedup();
        assert_eq!(buckets.len(), 64);
        // The top 7 bits (hashbrown's tag) are not all the same.
        let tags: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert!(tags.len() > 16, "{tags:?}");
    }

    #[test]
    fn the_map_finds_what_it_holds() {
        let mut m: IdMap<u64> = IdMap::default();
        for id in 1..1000 {
            m.insert(id, id * 2);
        }
        m.remove(&500);
        assert_eq!(m.get(&999), Some(&1998));
        assert_eq!(m.get(&500), None);
        assert_eq!(m.len(), 998);
    }
}
