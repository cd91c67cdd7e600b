//! Maps whose keys are already keyed hashes (the bounded per-client state of
//! `rate_limit::MemoryStore` and `telemetry::abuse`): the key is its own hash.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
};

/// A map from a 64-bit keyed hash (made with a per-process random key, so clients cannot aim
/// at one bucket) to a client's state.
pub(crate) type PrehashedMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Passes a `u64` key through unchanged.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::PrehashedMap;

    #[test]
    fn keys_are_their_own_hash() {
        use std::hash::BuildHasher;
        let map: PrehashedMap<()> = PrehashedMap::default();
        assert_eq!(map.hasher().hash_one(0xdead_beef_u64), 0xdead_beef);
        assert_eq!(map.hasher().hash_one(u64::MAX), u64::MAX);
    }
}
