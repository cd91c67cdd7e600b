use std::{sync::Arc, time::Duration};

use quick_cache::sync::Cache;
use sha2::{Digest, Sha256};

use crate::principal::Principal;

/// A verified token, as cached.
#[derive(Debug)]
pub(crate) struct Verified {
    pub(crate) principal: Principal,
    /// `exp` plus leeway, Unix seconds: the token is valid while `now < valid_until`.
    pub(crate) valid_until: u64,
    /// `exp` as a `SystemTime`, for revocation entries.
    pub(crate) jti: Option<Box<str>>,
    pub(crate) issued_at: Option<std::time::SystemTime>,
    pub(crate) expires_at: std::time::SystemTime,
}

pub(crate) type TokenKey = [u8; 32];

/// SHA-256 of the whole token: a collision would let one token stand for another, so no fast
/// non-cryptographic hash.
pub(crate) fn token_key(token: &str) -> TokenKey {
    Sha256::digest(token.as_bytes()).into()
}

struct Entry {
    verified: Arc<Verified>,
    /// Monotonic deadline of the cache entry (configured TTL).
    cached_until: Duration,
}

/// Bounded cache of verified tokens. Only valid tokens get in, so a client cannot fill it
/// with garbage; a client with many valid tokens only evicts its own (quick_cache's
/// CLOCK-Pro keeps frequently used entries).
pub(crate) struct TokenCache {
    cache: Cache<TokenKey, Arc<Entry>>,
    ttl: Duration,
}

impl TokenCache {
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        Self { cache: Cache::new(capacity.max(1)), ttl }
    }

    /// The cached token, if its entry and the token itself are still valid at `now_unix` /
    /// `now_mono`; a stale entry is removed.
    pub(crate) fn get(
        &self,
        key: &TokenKey,
        now_unix: u64,
        now_mono: Duration,
    ) -> Option<Arc<Verified>> {
        let entry = self.cache.get(key)?;
        if now_unix < entry.verified.valid_until && now_mono < entry.cached_until {
            Some(Arc::clone(&entry.verified))
        } else {
            self.cache.remove(key);
            None
        }
    }

    pub(crate) fn insert(&self, key: TokenKey, verified: Arc<Verified>, now_mono: Duration) {
        let cached_until = now_mono.saturating_add(self.ttl);
        self.cache.insert(key, Arc::new(Entry { verified, cached_until }));
    }

    pub(crate) fn remove(&self, key: &TokenKey) {
        self.cache.remove(key);
    }

    pub(crate) fn len(&self) -> usize {
        self.cache.len()
    }
}
