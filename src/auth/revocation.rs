//! Token revocation: by `jti`, and by subject for "log out everywhere".

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::{
    clock::{Clock, SystemClock},
    Error, ErrorKind,
};

/// A boxed future, for revocation stores that need I/O.
pub type BoxRevocationFuture<T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'static>>;

/// The facts about a verified token that revocation is decided on.
#[derive(Clone, Copy, Debug)]
pub struct RevocationQuery<'a> {
    /// The token's `jti`, if any.
    pub jti: Option<&'a str>,
    /// The token's subject.
    pub subject: &'a str,
    /// The token's `iat`, if any. A token without `iat` counts as issued before any
    /// subject-wide revocation.
    pub issued_at: Option<SystemTime>,
}

/// The answer of [`Revocation::check`]: ready now (a memory store) or after I/O (Redis).
pub enum RevocationCheck {
    /// `Ok(true)`: revoked.
    Ready(Result<bool, Error>),
    /// The answer needs I/O.
    Pending(BoxRevocationFuture<bool>),
}

impl fmt::Debug for RevocationCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ready(r) => f.debug_tuple("Ready").field(r).finish(),
            Self::Pending(_) => f.write_str("Pending(<future>)"),
        }
    }
}

/// A store of revoked tokens, checked after a token's signature and claims are verified (and
/// on every hit of the verified-token cache).
///
/// A store that cannot answer must fail closed: [`Revocation::check`] returns an
/// [`ErrorKind::ServiceUnavailable`] error, answered 503.
pub trait Revocation: fmt::Debug + Send + Sync + 'static {
    /// Whether the token described by `query` is revoked.
    fn check(&self, query: &RevocationQuery<'_>) -> RevocationCheck;

    /// Revokes the token with id `jti` until `expires_at` (its `exp`: after that the token is
    /// rejected anyway and the entry may go).
    fn revoke_jti(&self, jti: &str, expires_at: SystemTime) -> BoxRevocationFuture<()>;

    /// Revokes every token of `subject` issued before `issued_before` ("log out everywhere"),
    /// remembered for `ttl` (at least the longest lifetime of a token).
    fn revoke_subject(
        &self,
        subject: &str,
        issued_before: SystemTime,
        ttl: Duration,
    ) -> BoxRevocationFuture<()>;
}

/// An in-process [`Revocation`] store, bounded, whose entries expire with the tokens.
///
/// When full, expired entries are dropped first; if it is still full, `revoke_*` fails rather
/// than forget a revocation. Clones share the store.
#[derive(Clone)]
pub struct MemoryRevocation {
    inner: Arc<MemoryInner>,
}

struct MemoryInner {
    clock: Arc<dyn Clock>,
    capacity: usize,
    state: Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    /// jti → expiry (Unix seconds).
    jtis: HashMap<Box<str>, u64>,
    /// subject → (issued before, expiry), Unix seconds.
    subjects: HashMap<Box<str>, (u64, u64)>,
}

impl MemoryRevocation {
    /// A store for up to 100 000 revocations, on the system clock.
    pub fn new() -> Self {
        Self::with_capacity(100_000)
    }

    /// A store for up to `capacity` revocations (jtis and subjects together).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            inner: Arc::new(MemoryInner {
                clock: Arc::new(SystemClock),
                capacity,
                state: Mutex::new(MemoryState::default()),
            }),
        }
    }

    /// Replaces the clock (tests use a [`FakeClock`](crate::clock::FakeClock)).
    pub fn with_clock(self, clock: impl Clock) -> Self {
        let capacity = self.inner.capacity;
        Self {
            inner: Arc::new(MemoryInner {
                clock: Arc::new(clock),
                capacity,
                state: Mutex::new(MemoryState::default()),
            }),
        }
    }

    /// How many revocations are stored (expired ones included until they are purged).
    pub fn len(&self) -> usize {
        let state = self.inner.lock();
        state.jtis.len() + state.subjects.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn now(&self) -> u64 {
        unix(self.inner.clock.now())
    }

    fn insert(&self, f: impl FnOnce(&mut MemoryState)) -> Result<(), Error> {
        let now = self.now();
        let mut state = self.inner.lock();
        if state.jtis.len() + state.subjects.len() >= self.inner.capacity {
            state.jtis.retain(|_, exp| *exp > now);
            state.subjects.retain(|_, (_, exp)| *exp > now);
            if state.jtis.len() + state.subjects.len() >= self.inner.capacity {
                tracing::warn!(
                    target: "tower_shield::security",
                    event = "backend.failure",
                    backend = "memory_revocation",
                    reason = "revocation store full",
                );
                return Err(Error::new(ErrorKind::ServiceUnavailable)
                    .with_reason("revocation store full"));
            }
        }
        f(&mut state);
        Ok(())
    }
}

impl MemoryInner {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Default for MemoryRevocation {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryRevocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryRevocation")
            .field("capacity", &self.inner.capacity)
            .field("len", &self.len())
            .finish()
    }
}

impl Revocation for MemoryRevocation {
    fn check(&self, query: &RevocationQuery<'_>) -> RevocationCheck {
        let now = self.now();
        let state = self.inner.lock();
        if let Some(jti) = query.jti {
            if state.jtis.get(jti).is_some_and(|exp| *exp > now) {
                return RevocationCheck::Ready(Ok(true));
            }
        }
        if let Some((before, exp)) = state.subjects.get(query.subject) {
            if *exp > now && query.issued_at.is_none_or(|iat| unix(iat) < *before) {
                return RevocationCheck::Ready(Ok(true));
            }
        }
        RevocationCheck::Ready(Ok(false))
    }

    fn revoke_jti(&self, jti: &str, expires_at: SystemTime) -> BoxRevocationFuture<()> {
        let result = self.insert(|state| {
            state.jtis.insert(jti.into(), unix(expires_at));
        });
        Box::pin(std::future::ready(result))
    }

    fn revoke_subject(
        &self,
        subject: &str,
        issued_before: SystemTime,
        ttl: Duration,
    ) -> BoxRevocationFuture<()> {
        let expires = self.now().saturating_add(ttl.as_secs());
        let before = unix(issued_before);
        let result = self.insert(|state| {
            let entry = state.subjects.entry(subject.into()).or_insert((before, expires));
            entry.0 = entry.0.max(before);
            entry.1 = entry.1.max(expires);
        });
        Box::pin(std::future::ready(result))
    }
}

pub(crate) fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;

    fn revoked(store: &MemoryRevocation, query: &RevocationQuery<'_>) -> bool {
        match store.check(query) {
            RevocationCheck::Ready(r) => r.unwrap(),
            RevocationCheck::Pending(_) => panic!("memory store is synchronous"),
        }
    }

    #[tokio::test]
    async fn jti_revocation_expires_with_the_token() {
        let clock = FakeClock::new();
        let store = MemoryRevocation::new().with_clock(clock.clone());
        let now = clock.now();
        let q = RevocationQuery { jti: Some("t1"), subject: "alice", issued_at: Some(now) };
        assert!(!revoked(&store, &q));
        store.revoke_jti("t1", now + Duration::from_secs(60)).await.unwrap();
        assert!(revoked(&store, &q));
        assert!(!revoked(&store, &RevocationQuery { jti: Some("t2"), ..q }));
        clock.advance(Duration::from_secs(61));
        assert!(!revoked(&store, &q));
    }

    #[tokio::test]
    async fn subject_revocation_covers_older_tokens_only() {
        let clock = FakeClock::new();
        let store = MemoryRevocation::new().with_clock(clock.clone());
        let old = clock.now();
        clock.advance(Duration::from_secs(10));
        store.revoke_subject("alice", clock.now(), Duration::from_secs(3600)).await.unwrap();
        let q = RevocationQuery { jti: None, subject: "alice", issued_at: Some(old) };
        assert!(revoked(&store, &q));
        assert!(revoked(&store, &RevocationQuery { issued_at: None, ..q }));
        clock.advance(Duration::from_secs(1));
        assert!(!revoked(&store, &RevocationQuery { issued_at: Some(clock.now()), ..q }));
        assert!(!revoked(&store, &RevocationQuery { subject: "bob", ..q }));
    }

    #[tokio::test]
    async fn bounded_and_purges_expired_entries() {
        let clock = FakeClock::new();
        let store = MemoryRevocation::with_capacity(100).with_clock(clock.clone());
        let exp = clock.now() + Duration::from_secs(60);
        for i in 0..100 {
            store.revoke_jti(&format!("j{i}"), exp).await.unwrap();
        }
        let full = store.revoke_jti("one-more", exp).await.unwrap_err();
        assert_eq!(full.kind(), ErrorKind::ServiceUnavailable);
        assert_eq!(store.len(), 100);
        clock.advance(Duration::from_secs(61));
        store.revoke_jti("one-more", clock.now() + Duration::from_secs(60)).await.unwrap();
        assert_eq!(store.len(), 1);
    }
}
