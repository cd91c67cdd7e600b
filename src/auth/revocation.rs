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
///
/// # Example
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_shield::auth::revocation::{RevocationCheck, RevocationQuery};
/// use tower_shield::auth::{MemoryRevocation, Revocation};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = MemoryRevocation::new();
/// let now = SystemTime::now();
/// // "Log out everywhere" for alice: every token issued before now.
/// store.revoke_subject("alice", now, Duration::from_secs(3600)).await.unwrap();
///
/// let issued_at = Some(now - Duration::from_secs(60));
/// let old = RevocationQuery { jti: Some("token-1"), subject: "alice", issued_at };
/// assert!(matches!(store.check(&old), RevocationCheck::Ready(Ok(true))));
/// // A token without `iat` is covered too; one issued later is not.
/// let no_iat = RevocationQuery { issued_at: None, ..old };
/// assert!(matches!(store.check(&no_iat), RevocationCheck::Ready(Ok(true))));
/// let fresh = RevocationQuery { issued_at: Some(now + Duration::from_secs(60)), ..old };
/// assert!(matches!(store.check(&fresh), RevocationCheck::Ready(Ok(false))));
/// # }
/// ```
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
///
/// # Example
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_shield::auth::revocation::{RevocationCheck, RevocationQuery};
/// use tower_shield::auth::{MemoryRevocation, Revocation};
/// use tower_shield::Error;
///
/// /// The answer, whether the store has it at hand or needs I/O.
/// async fn is_revoked(check: RevocationCheck) -> Result<bool, Error> {
///     match check {
///         RevocationCheck::Ready(answer) => answer,
///         RevocationCheck::Pending(future) => future.await,
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Error> {
/// let store = MemoryRevocation::new();
/// let query = RevocationQuery { jti: Some("token-1"), subject: "alice", issued_at: None };
/// assert!(!is_revoked(store.check(&query)).await?);
/// store.revoke_jti("token-1", SystemTime::now() + Duration::from_secs(600)).await?;
/// assert!(is_revoked(store.check(&query)).await?);
/// # Ok(())
/// # }
/// ```
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
///
/// # Example
///
/// ```
/// use std::{collections::HashSet, time::{Duration, SystemTime}};
/// use tower_shield::auth::revocation::{BoxRevocationFuture, RevocationCheck, RevocationQuery};
/// use tower_shield::auth::{jwt::Jwt, Revocation};
/// use tower_shield::Error;
///
/// /// A fixed deny-list of token ids, loaded at startup.
/// #[derive(Debug)]
/// struct DenyList(HashSet<String>);
///
/// impl Revocation for DenyList {
///     fn check(&self, query: &RevocationQuery<'_>) -> RevocationCheck {
///         RevocationCheck::Ready(Ok(query.jti.is_some_and(|jti| self.0.contains(jti))))
///     }
///     fn revoke_jti(&self, _: &str, _: SystemTime) -> BoxRevocationFuture<()> {
///         Box::pin(async { Err(Error::internal("the deny-list is read-only")) })
///     }
///     fn revoke_subject(&self, _: &str, _: SystemTime, _: Duration) -> BoxRevocationFuture<()> {
///         Box::pin(async { Err(Error::internal("the deny-list is read-only")) })
///     }
/// }
///
/// let deny = DenyList(HashSet::from(["leaked-token".to_owned()]));
/// let query = RevocationQuery { jti: Some("leaked-token"), subject: "alice", issued_at: None };
/// assert!(matches!(deny.check(&query), RevocationCheck::Ready(Ok(true))));
/// # let secret = b"an example secret of at least 32 bytes!!";
/// let builder = Jwt::builder().hs256_secret(secret).issuer("https://issuer.example");
/// let jwt = builder.audience("orders-api").with_revocation(deny).build().unwrap();
/// # let _ = jwt;
/// ```
pub trait Revocation: fmt::Debug + Send + Sync + 'static {
    /// Whether the token described by `query` is revoked.
    fn check(&self, query: &RevocationQuery<'_>) -> RevocationCheck;

    /// Revokes the token with id `jti` until `expires_at` (its `exp`: after that the token is
    /// rejected anyway and the entry may go).
    fn revoke_jti(&self, jti: &str, expires_at: SystemTime) -> BoxRevocationFuture<()>;

    /// Revokes every token of `subject` issued before `issued_before` ("log out everywhere"),
    /// remembered for `ttl` (at least the longest lifetime of a token). The built-in stores
    /// round `issued_before` up to a whole second, as `iat` has whole seconds only: a token
    /// of the same second is revoked.
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
///
/// # Example
///
/// ```
/// use tower_shield::auth::{jwt::Jwt, MemoryRevocation, Verdict};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// const SECRET: &[u8] = b"an example secret of at least 32 bytes!!";
/// let store = MemoryRevocation::new();
/// let jwt = Jwt::builder()
///     .hs256_secret(SECRET)
///     .issuer("https://issuer.example")
///     .audience("orders-api")
///     .with_revocation(store.clone()) // clones share the store
///     .build()
///     .unwrap();
/// # let claims = serde_json::json!({
/// #     "iss": "https://issuer.example", "aud": "orders-api", "sub": "alice", "jti": "token-1",
/// #     "exp": 4_000_000_000u64,
/// # });
/// # let key = jsonwebtoken::EncodingKey::from_secret(SECRET);
/// # let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
/// assert!(matches!(jwt.verify(&token), Verdict::Authenticated(_)));
///
/// jwt.revoke(&token).await.unwrap(); // by its `jti`, until its `exp`
/// assert_eq!(store.len(), 1);
/// assert!(matches!(jwt.verify(&token), Verdict::Rejected(_)));
/// # }
/// ```
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

    /// Replaces the clock (tests use a [`FakeClock`](crate::clock::FakeClock)). Call it while
    /// building: the returned store starts empty and is not shared with clones of `self`.
    #[must_use]
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
                crate::observe::backend_failure("memory_revocation");
                tracing::warn!(
                    target: "tower_shield::security",
                    event = "backend.failure",
                    backend = "memory_revocation",
                    reason = "revocation store full",
                );
                return Err(
                    Error::new(ErrorKind::ServiceUnavailable).with_reason("revocation store full")
                );
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
        let before = unix_rounded_up(issued_before);
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

/// A "revoke what was issued before" instant in whole seconds, rounded up: `iat` has whole
/// seconds only, so a token issued earlier in the same second as the revocation (`iat` = that
/// second) must count as before it. One issued later in that second counts too: a fresh login
/// in the second of a "log out everywhere" logs in again.
fn unix_rounded_up(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0)))
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

        // `iat` has whole seconds: a token of the revocation's second (issued before it, at
        // .2 s) is revoked; the next second's is not.
        let second = clock.now() + Duration::from_secs(5);
        let logout = second + Duration::from_millis(900);
        store.revoke_subject("carol", logout, Duration::from_secs(3600)).await.unwrap();
        let carol = RevocationQuery { jti: None, subject: "carol", issued_at: Some(second) };
        assert!(revoked(&store, &carol));
        let next = Some(second + Duration::from_secs(1));
        assert!(!revoked(&store, &RevocationQuery { issued_at: next, ..carol }));
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

#[cfg(feature = "redis")]
pub use self::redis_store::RedisRevocation;

#[cfg(feature = "redis")]
mod redis_store {
    use std::{
        fmt,
        sync::Arc,
        time::{Duration, SystemTime},
    };

    use redis::aio::ConnectionManager;
    use sha2::{Digest, Sha256};

    use super::{
        unix, unix_rounded_up, BoxRevocationFuture, Revocation, RevocationCheck, RevocationQuery,
    };
    use crate::{
        clock::{Clock, SystemClock},
        Error, ErrorKind,
    };

    /// Keeps the later of two "revoked before" times.
    const SUBJECT_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[1])
if (not current) or tonumber(current) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
  local ttl = redis.call('TTL', KEYS[1])
  if ttl < tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
end
return 1
";

    /// A [`Revocation`] store in Redis (feature `redis`), shared by every instance of a
    /// service.
    ///
    /// Keys are `<prefix>jti:<sha256(jti)>` and `<prefix>sub:<sha256(subject)>` (hashed, so a
    /// token's claims cannot shape the key space), each with a TTL: a `jti` entry lives until
    /// the token's `exp`, a subject entry for the TTL given to
    /// [`revoke_subject`](Revocation::revoke_subject).
    ///
    /// Every call has a timeout (default 250 ms). When Redis fails or is slow, the check
    /// fails closed: 503 `service_unavailable`, logged as a `backend.failure` security event.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use std::time::{Duration, SystemTime};
    /// use redis::aio::ConnectionManager;
    /// use tower_shield::auth::{jwt::Jwt, RedisRevocation, Revocation};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = redis::Client::open("redis://127.0.0.1:6379")?;
    /// let revocation = RedisRevocation::new(ConnectionManager::new(client).await?)
    ///     .prefix("orders-api:revoked:")
    ///     .timeout(Duration::from_millis(100));
    ///
    /// // "Log out everywhere" for alice, seen by every instance of the service.
    /// revocation.revoke_subject("alice", SystemTime::now(), Duration::from_secs(3600)).await?;
    ///
    /// let jwt = Jwt::builder()
    ///     .hs256_secret(b"an example secret of at least 32 bytes!!")
    ///     .issuer("https://issuer.example")
    ///     .audience("orders-api")
    ///     .with_revocation(revocation)
    ///     .build()?;
    /// # let _ = jwt;
    /// # Ok(())
    /// # }
    /// ```
    #[derive(Clone)]
    pub struct RedisRevocation {
        connection: ConnectionManager,
        prefix: Arc<str>,
        timeout: Duration,
        clock: Arc<dyn Clock>,
        subject_script: Arc<redis::Script>,
    }

    impl RedisRevocation {
        /// A store on `connection`, with key prefix `tower_shield:revoked:`.
        pub fn new(connection: ConnectionManager) -> Self {
            Self {
                connection,
                prefix: Arc::from("tower_shield:revoked:"),
                timeout: Duration::from_millis(250),
                clock: Arc::new(SystemClock),
                subject_script: Arc::new(redis::Script::new(SUBJECT_SCRIPT)),
            }
        }

        /// The key prefix (default `tower_shield:revoked:`).
        #[must_use]
        pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
            self.prefix = Arc::from(prefix.into());
            self
        }

        /// The timeout of each Redis call (default 250 ms).
        #[must_use]
        pub fn timeout(mut self, timeout: Duration) -> Self {
            self.timeout = timeout;
            self
        }

        /// Replaces the clock used to compute TTLs.
        #[must_use]
        pub fn with_clock(mut self, clock: impl Clock) -> Self {
            self.clock = Arc::new(clock);
            self
        }

        fn key(&self, kind: &str, value: &str) -> String {
            let digest = Sha256::digest(value.as_bytes());
            let mut key = String::with_capacity(self.prefix.len() + kind.len() + 65);
            key.push_str(&self.prefix);
            key.push_str(kind);
            key.push(':');
            for b in digest {
                use fmt::Write;
                let _ = write!(key, "{b:02x}");
            }
            key
        }
    }

    fn unavailable(error: impl Into<crate::BoxError>) -> Error {
        let error = error.into();
        crate::observe::backend_failure("redis_revocation");
        tracing::warn!(
            target: "tower_shield::security",
            event = "backend.failure",
            backend = "redis_revocation",
            reason = %error,
        );
        Error::new(ErrorKind::ServiceUnavailable)
            .with_reason("revocation store unavailable")
            .with_source(error)
    }

    async fn timed<T>(
        timeout: Duration,
        future: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(timeout, future).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(unavailable("redis call timed out")),
        }
    }

    impl Revocation for RedisRevocation {
        fn check(&self, query: &RevocationQuery<'_>) -> RevocationCheck {
            let mut pipe = redis::pipe();
            pipe.get(self.key("sub", query.subject));
            let has_jti = query.jti.is_some();
            if let Some(jti) = query.jti {
                pipe.get(self.key("jti", jti));
            }
            let issued_at = query.issued_at.map(unix);
            let mut connection = self.connection.clone();
            let timeout = self.timeout;
            RevocationCheck::Pending(Box::pin(async move {
                let (subject, jti): (Option<u64>, Option<String>) = if has_jti {
                    timed(timeout, pipe.query_async(&mut connection)).await?
                } else {
                    let (subject,): (Option<u64>,) =
                        timed(timeout, pipe.query_async(&mut connection)).await?;
                    (subject, None)
                };
                let subject_revoked =
                    subject.is_some_and(|before| issued_at.is_none_or(|iat| iat < before));
                Ok(jti.is_some() || subject_revoked)
            }))
        }

        fn revoke_jti(&self, jti: &str, expires_at: SystemTime) -> BoxRevocationFuture<()> {
            let ttl = unix(expires_at).saturating_sub(unix(self.clock.now()));
            let key = self.key("jti", jti);
            let mut connection = self.connection.clone();
            let timeout = self.timeout;
            Box::pin(async move {
                if ttl == 0 {
                    return Ok(()); // already expired: rejected anyway
                }
                let mut cmd = redis::cmd("SET");
                cmd.arg(&key).arg(1).arg("EX").arg(ttl);
                timed(timeout, cmd.query_async::<()>(&mut connection)).await
            })
        }

        fn revoke_subject(
            &self,
            subject: &str,
            issued_before: SystemTime,
            ttl: Duration,
        ) -> BoxRevocationFuture<()> {
            let key = self.key("sub", subject);
            let before = unix_rounded_up(issued_before);
            let ttl = ttl.as_secs().max(1);
            let script = Arc::clone(&self.subject_script);
            let mut connection = self.connection.clone();
            let timeout = self.timeout;
            Box::pin(async move {
                let mut invocation = script.key(key);
                invocation.arg(before).arg(ttl);
                timed(timeout, invocation.invoke_async::<i64>(&mut connection)).await.map(drop)
            })
        }
    }

    impl fmt::Debug for RedisRevocation {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("RedisRevocation")
                .field("prefix", &self.prefix)
                .field("timeout", &self.timeout)
                .finish_non_exhaustive()
        }
    }

    #[cfg(test)]
    mod tests {
        use std::time::Duration;

        use redis::aio::{ConnectionManager, ConnectionManagerConfig};

        use super::*;
        use crate::{
            clock::FakeClock,
            test_helpers::{redis_url, unique_prefix},
        };

        async fn check(store: &RedisRevocation, query: RevocationQuery<'_>) -> Result<bool, Error> {
            match store.check(&query) {
                RevocationCheck::Pending(f) => f.await,
                RevocationCheck::Ready(r) => r,
            }
        }

        #[tokio::test]
        async fn revocations_in_redis() {
            let Some(url) = redis_url() else { return };
            let client = redis::Client::open(url).unwrap();
            let mut raw = ConnectionManager::new(client.clone()).await.unwrap();
            let connection = ConnectionManager::new(client).await.unwrap();
            let clock = FakeClock::new();
            let prefix = unique_prefix("revocation");
            let store = RedisRevocation::new(connection).prefix(&prefix).with_clock(clock.clone());
            let now = clock.now();
            let q = RevocationQuery { jti: Some("t1"), subject: "alice", issued_at: Some(now) };
            assert!(!check(&store, q).await.unwrap());
            store.revoke_jti("t1", now + Duration::from_secs(120)).await.unwrap();
            assert!(check(&store, q).await.unwrap());
            assert!(!check(&store, RevocationQuery { jti: Some("t2"), ..q }).await.unwrap());
            let ttl: i64 =
                redis::cmd("TTL").arg(store.key("jti", "t1")).query_async(&mut raw).await.unwrap();
            assert!((1..=120).contains(&ttl), "ttl {ttl}");
            // The key is hashed and prefixed: the raw jti never appears.
            assert!(store.key("jti", "t1").starts_with(&prefix));
            assert!(!store.key("jti", "t1").contains("t1"));

            let later = now + Duration::from_secs(10);
            store.revoke_subject("bob", later, Duration::from_secs(3600)).await.unwrap();
            // An earlier time never lowers the mark.
            store.revoke_subject("bob", now, Duration::from_secs(3600)).await.unwrap();
            let bob = RevocationQuery { jti: None, subject: "bob", issued_at: Some(now) };
            assert!(check(&store, bob).await.unwrap());
            assert!(check(&store, RevocationQuery { issued_at: None, ..bob }).await.unwrap());
            let fresh = RevocationQuery { issued_at: Some(later + Duration::from_secs(1)), ..bob };
            assert!(!check(&store, fresh).await.unwrap());
            // A token of the revocation's own second (iat in whole seconds) is revoked.
            store
                .revoke_subject(
                    "bob",
                    later + Duration::from_millis(900),
                    Duration::from_secs(3600),
                )
                .await
                .unwrap();
            let same_second = RevocationQuery { issued_at: Some(later), ..bob };
            assert!(check(&store, same_second).await.unwrap());

            let _: () = redis::cmd("DEL")
                .arg(store.key("jti", "t1"))
                .arg(store.key("sub", "bob"))
                .query_async(&mut raw)
                .await
                .unwrap();
        }

        #[tokio::test]
        async fn unreachable_redis_fails_closed() {
            // A port nothing listens on.
            let port =
                std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
            let config = ConnectionManagerConfig::new().set_number_of_retries(0);
            let connection = ConnectionManager::new_lazy_with_config(client, config).unwrap();
            let store = RedisRevocation::new(connection).timeout(Duration::from_secs(5));
            let q = RevocationQuery { jti: Some("t1"), subject: "alice", issued_at: None };
            let error = check(&store, q).await.unwrap_err();
            assert_eq!(error.kind(), ErrorKind::ServiceUnavailable);
            assert_eq!(error.reason(), Some("revocation store unavailable"));
        }
    }
}
