use std::{
    hash::{Hash, Hasher},
    sync::Arc,
    time::Duration,
};

use quick_cache::{sync::Cache, Equivalent};

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
    /// Until when the cache may answer for the token (its TTL after verification), as time
    /// since the Unix epoch: the same clock as `exp`, so a lookup reads the clock once. Set
    /// by [`TokenCache::insert`] before the entry is shared.
    pub(crate) cached_until: Duration,
}

/// A cache key: the whole token, kept so a hit can be checked byte for byte.
///
/// Entries are found by quick_cache's keyed fast hash (randomly seeded per process), then the
/// token is compared in full, in constant time: an entry is only ever returned for exactly the
/// token that was verified. No digest is needed, so a cache hit costs no cryptographic hash.
/// Only verified tokens are inserted, so a client cannot choose the keys that fill the table.
struct TokenKey(Box<str>);

/// A token looked up by reference (no allocation per request).
#[derive(Clone, Copy)]
pub(crate) struct Token<'a>(pub(crate) &'a str);

impl Hash for TokenKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl Hash for Token<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialEq for TokenKey {
    fn eq(&self, other: &Self) -> bool {
        Token(&other.0).equivalent(self)
    }
}

impl Eq for TokenKey {}

impl Equivalent<TokenKey> for Token<'_> {
    fn equivalent(&self, key: &TokenKey) -> bool {
        constant_time_eq(self.0.as_bytes(), key.0.as_bytes())
    }
}

/// Whether `a == b`, without an early exit on the first differing byte: the lengths are
/// public (the token is in the request), the bytes are not. Eight bytes per step (`subtle`
/// compares one byte per step, which costs more than the rest of a cache hit).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (a_words, a_rest) = a.as_chunks::<8>();
    let (b_words, b_rest) = b.as_chunks::<8>();
    let mut diff = 0u64;
    for (x, y) in a_words.iter().zip(b_words) {
        diff |= u64::from_ne_bytes(*x) ^ u64::from_ne_bytes(*y);
    }
    for (x, y) in a_rest.iter().zip(b_rest) {
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// Bounded cache of verified tokens. Only valid tokens get in, so a client cannot fill it
/// with garbage; a client with many valid tokens only evicts its own (quick_cache's
/// CLOCK-Pro keeps frequently used entries).
pub(crate) struct TokenCache {
    cache: Cache<TokenKey, Arc<Verified>>,
    ttl: Duration,
}

impl TokenCache {
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        Self { cache: Cache::new(capacity.max(1)), ttl }
    }

    /// The cached token, if its entry and the token itself are still valid at `now` (time
    /// since the Unix epoch); a stale entry is removed.
    pub(crate) fn get(&self, token: Token<'_>, now: Duration) -> Option<Arc<Verified>> {
        let verified = self.cache.get(&token)?;
        if now.as_secs() < verified.valid_until && now < verified.cached_until {
            Some(verified)
        } else {
            self.cache.remove(&token);
            None
        }
    }

    /// Caches `verified` for `token` until its TTL after `now` (or its expiry, if sooner).
    pub(crate) fn insert(
        &self,
        token: Token<'_>,
        mut verified: Verified,
        now: Duration,
    ) -> Arc<Verified> {
        verified.cached_until = now.saturating_add(self.ttl);
        let verified = Arc::new(verified);
        self.cache.insert(TokenKey(token.0.into()), Arc::clone(&verified));
        verified
    }

    pub(crate) fn remove(&self, token: Token<'_>) {
        self.cache.remove(&token);
    }

    pub(crate) fn len(&self) -> usize {
        self.cache.len()
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::{constant_time_eq, Token, TokenCache, Verified};
    use crate::principal::Principal;

    #[test]
    fn entries_last_their_ttl_or_the_token_s_expiry_whichever_is_sooner() {
        let verified = |valid_until| Verified {
            principal: Principal::builder("alice").build(),
            valid_until,
            jti: None,
            issued_at: None,
            expires_at: std::time::UNIX_EPOCH,
            cached_until: Duration::ZERO,
        };
        let cache = TokenCache::new(8, Duration::from_secs(60));
        let at = Duration::from_secs;
        let entry = cache.insert(Token("a.b.c"), verified(1_000), at(100));
        assert_eq!(entry.cached_until, at(160));
        assert!(cache.get(Token("a.b.c"), at(159)).is_some_and(|hit| Arc::ptr_eq(&hit, &entry)));
        assert!(cache.get(Token("a.b.c"), at(160)).is_none(), "past the TTL");
        assert_eq!(cache.len(), 0, "a stale entry is removed");

        cache.insert(Token("d.e.f"), verified(130), at(100));
        assert!(cache.get(Token("d.e.f"), at(129)).is_some());
        assert!(cache.get(Token("d.e.f"), at(130)).is_none(), "past the token's expiry");
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn constant_time_eq_compares_every_byte() {
        let token = b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";
        assert!(constant_time_eq(token, token));
        assert!(constant_time_eq(b"", b""));
        for i in 0..token.len() {
            let mut other = *token;
            other[i] ^= 1;
            assert!(!constant_time_eq(token, &other), "byte {i}");
        }
        assert!(!constant_time_eq(token, &token[..token.len() - 1]));
        assert!(!constant_time_eq(&token[..7], &token[1..8]));
    }
}
