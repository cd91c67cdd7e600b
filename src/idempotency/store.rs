//! The store trait, the record types it deals in, and the in-memory store.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    fmt,
    future::Future,
    hash::BuildHasher,
    num::NonZeroUsize,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::{
    clock::{Clock, SystemClock},
    BoxError,
};

/// A boxed, `Send`, `'static` future, as returned by [`IdempotencyStore`] methods.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Where one idempotency record lives: a SHA-256 over the caller, the route and the client's
/// key. The client's key itself is never stored or logged.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordKey([u8; 32]);

impl RecordKey {
    /// A record key from its 32 bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex digits, e.g. for a Redis key.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// The first 12 hex digits: enough to correlate log lines, useless to an attacker.
    pub(crate) fn short(&self) -> String {
        hex(&self.0[..6])
    }
}

impl fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordKey({}…)", self.short())
    }
}

/// A SHA-256 over what makes two requests "the same": method, path and query, the selected
/// headers and the body.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// A fingerprint from its 32 bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({}…)", hex(&self.0[..6]))
    }
}

/// Proof of owning a lock: only the request that took a lock may complete or release it, so a
/// request whose lock expired (and was taken by a retry) cannot overwrite the retry's record.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LockToken([u8; 16]);

impl LockToken {
    /// A fresh token, unique with overwhelming probability across processes.
    pub fn new() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        // `RandomState` is seeded from the OS per process and varies per instance, so hashing a
        // counter gives values no two processes share and no client can predict.
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let a = std::collections::hash_map::RandomState::new().hash_one(n);
        let b = std::collections::hash_map::RandomState::new().hash_one(!n);
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&a.to_le_bytes());
        bytes[8..].copy_from_slice(&b.to_le_bytes());
        Self(bytes)
    }

    /// A token from its 16 bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The 16 bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl Default for LockToken {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for LockToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LockToken(..)")
    }
}

/// A completed response as stored: the request's fingerprint, the status, the allowlisted
/// headers and the body.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredResponse {
    fingerprint: Fingerprint,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl StoredResponse {
    const VERSION: u8 = 1;

    /// A stored response.
    pub fn new(
        fingerprint: Fingerprint,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    ) -> Self {
        Self { fingerprint, status, headers, body }
    }

    /// The fingerprint of the request that produced it.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stored headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The fingerprint, status, headers and body.
    pub fn into_parts(self) -> (Fingerprint, StatusCode, HeaderMap, Bytes) {
        (self.fingerprint, self.status, self.headers, self.body)
    }

    /// Approximately how many bytes it occupies, for byte budgets.
    pub fn size(&self) -> usize {
        let headers: usize =
            self.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 16).sum();
        64 + headers + self.body.len()
    }

    /// A compact binary encoding, for stores that keep bytes (versioned; see
    /// [`decode`](Self::decode)).
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.size());
        out.put_u8(Self::VERSION);
        out.put_slice(&self.fingerprint.0);
        out.put_u16(self.status.as_u16());
        out.put_u16(u16::try_from(self.headers.len()).unwrap_or(u16::MAX));
        for (name, value) in self.headers.iter().take(usize::from(u16::MAX)) {
            let name = name.as_str().as_bytes();
            out.put_u16(u16::try_from(name.len()).unwrap_or(u16::MAX));
            out.put_slice(name);
            out.put_u32(u32::try_from(value.len()).unwrap_or(u32::MAX));
            out.put_slice(value.as_bytes());
        }
        out.put_slice(&self.body);
        out.freeze()
    }

    /// Decodes what [`encode`](Self::encode) produced.
    ///
    /// # Errors
    ///
    /// When `bytes` is not a valid encoding (truncated, another version, invalid header).
    pub fn decode(mut bytes: Bytes) -> Result<Self, StoreError> {
        fn corrupt() -> StoreError {
            StoreError::new("stored response is corrupt")
        }
        fn take(bytes: &mut Bytes, n: usize) -> Result<Bytes, StoreError> {
            if bytes.remaining() < n {
                return Err(corrupt());
            }
            Ok(bytes.split_to(n))
        }
        if take(&mut bytes, 1)?[0] != Self::VERSION {
            return Err(corrupt());
        }
        let fingerprint = Fingerprint(take(&mut bytes, 32)?[..].try_into().map_err(|_| corrupt())?);
        let status = StatusCode::from_u16(take(&mut bytes, 2)?.get_u16()).map_err(|_| corrupt())?;
        let count = take(&mut bytes, 2)?.get_u16();
        let mut headers = HeaderMap::with_capacity(usize::from(count));
        for _ in 0..count {
            let len = usize::from(take(&mut bytes, 2)?.get_u16());
            let name = HeaderName::from_bytes(&take(&mut bytes, len)?).map_err(|_| corrupt())?;
            let len = take(&mut bytes, 4)?.get_u32() as usize;
            let value =
                HeaderValue::from_maybe_shared(take(&mut bytes, len)?).map_err(|_| corrupt())?;
            headers.append(name, value);
        }
        Ok(Self { fingerprint, status, headers, body: bytes })
    }
}

impl fmt::Debug for StoredResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredResponse")
            .field("fingerprint", &self.fingerprint)
            .field("status", &self.status)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// What [`IdempotencyStore::begin`] found.
#[derive(Debug)]
#[non_exhaustive]
pub enum Begin {
    /// No record existed: the caller now holds the lock and must complete or release it.
    Acquired(LockToken),
    /// Another request holds the lock.
    InFlight {
        /// The fingerprint of the request holding the lock.
        fingerprint: Fingerprint,
        /// How long until the lock expires, if the store knows.
        expires_in: Option<Duration>,
    },
    /// A response was stored.
    Completed(StoredResponse),
}

/// A store failure (Redis down, a timeout, a full memory store). The layer then fails closed
/// (503) or open, as configured. The message is for logs only.
#[derive(Debug, thiserror::Error)]
#[error("idempotency store: {message}")]
pub struct StoreError {
    message: Cow<'static, str>,
    #[source]
    source: Option<BoxError>,
}

impl StoreError {
    /// A failure described by `message` (no secrets: it is logged).
    pub fn new(message: impl Into<Cow<'static, str>>) -> Self {
        Self { message: message.into(), source: None }
    }

    /// Attaches the cause.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// What failed.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Where idempotency records live: locks for requests in flight and completed responses.
///
/// Implementations must make [`begin`](Self::begin) atomic (two concurrent calls with the same
/// key: exactly one gets [`Begin::Acquired`]), check the [`LockToken`] in
/// [`complete`](Self::complete) and [`release`](Self::release), and expire every entry: locks
/// after the lock TTL, responses after the record TTL.
///
/// The futures are `'static` so they can be spawned; all arguments are owned and `Copy` or
/// cheap.
///
/// # Example
///
/// The contract, exercised through the trait (a test of a custom store can run the same
/// steps):
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use bytes::Bytes;
/// use http::{HeaderMap, StatusCode};
/// use tower_shield::idempotency::{
///     Begin, Fingerprint, IdempotencyStore, MemoryStore, RecordKey, StoredResponse,
/// };
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store: Arc<dyn IdempotencyStore> = Arc::new(MemoryStore::new());
/// let (key, print) = (RecordKey::from_bytes([1; 32]), Fingerprint::from_bytes([2; 32]));
/// let ttl = Duration::from_secs(60);
///
/// let Ok(Begin::Acquired(token)) = store.begin(key, print, ttl).await else { panic!() };
/// // A concurrent retry finds the lock.
/// assert!(matches!(store.begin(key, print, ttl).await, Ok(Begin::InFlight { .. })));
///
/// let response = StoredResponse::new(print, StatusCode::CREATED, HeaderMap::new(), Bytes::new());
/// assert!(store.complete(key, token, response, ttl).await.unwrap());
/// // A later retry gets the stored response.
/// let Ok(Begin::Completed(stored)) = store.begin(key, print, ttl).await else { panic!() };
/// assert_eq!(stored.status(), StatusCode::CREATED);
/// # }
/// ```
pub trait IdempotencyStore: fmt::Debug + Send + Sync + 'static {
    /// Takes the lock for `key` if there is no live record, atomically; otherwise says what is
    /// there. A new lock remembers `fingerprint` and expires after `lock_ttl`.
    fn begin(
        &self,
        key: RecordKey,
        fingerprint: Fingerprint,
        lock_ttl: Duration,
    ) -> BoxFuture<Result<Begin, StoreError>>;

    /// Replaces the lock held with `token` by `response`, kept for `ttl`. Returns `false`
    /// (storing nothing) when the lock is no longer held with `token` (it expired and
    /// possibly another request took it) or the response does not fit.
    fn complete(
        &self,
        key: RecordKey,
        token: LockToken,
        response: StoredResponse,
        ttl: Duration,
    ) -> BoxFuture<Result<bool, StoreError>>;

    /// Deletes the lock held with `token`, so the client can retry. A no-op when the lock is
    /// not held with `token`.
    fn release(&self, key: RecordKey, token: LockToken) -> BoxFuture<Result<(), StoreError>>;

    /// Releases from synchronous code: a request future that was dropped or panicked. Must
    /// not block; a remote store spawns the release (or leaves the lock to expire).
    fn release_on_drop(&self, key: RecordKey, token: LockToken);
}

impl<T: IdempotencyStore + ?Sized> IdempotencyStore for Arc<T> {
    fn begin(
        &self,
        key: RecordKey,
        fingerprint: Fingerprint,
        lock_ttl: Duration,
    ) -> BoxFuture<Result<Begin, StoreError>> {
        (**self).begin(key, fingerprint, lock_ttl)
    }

    fn complete(
        &self,
        key: RecordKey,
        token: LockToken,
        response: StoredResponse,
        ttl: Duration,
    ) -> BoxFuture<Result<bool, StoreError>> {
        (**self).complete(key, token, response, ttl)
    }

    fn release(&self, key: RecordKey, token: LockToken) -> BoxFuture<Result<(), StoreError>> {
        (**self).release(key, token)
    }

    fn release_on_drop(&self, key: RecordKey, token: LockToken) {
        (**self).release_on_drop(key, token);
    }
}

/// The in-memory store: bounded in entries and bytes, expiring by an injected [`Clock`].
///
/// # Bounds and eviction
///
/// At most [`capacity`](Self::capacity) entries (default 10 000) and
/// [`max_bytes`](Self::max_bytes) of stored responses (default 64 MiB). Expired entries go
/// first; then, to admit a new key, the **oldest completed** response is evicted. A lock of a
/// request in flight is never evicted: when every entry is a live lock, a new key is refused
/// with a [`StoreError`] (the layer answers 503, or runs the request without idempotency if
/// it fails open) until locks complete or expire after the lock TTL. A flood of new keys
/// therefore costs old completed records (whose retries would run again), never correctness
/// for requests in flight, and never memory beyond the bounds.
///
/// Records live in one process: behind a load balancer with several instances, use the Redis
/// store so a retry that lands elsewhere still replays.
///
/// Clones share the same records.
///
/// # Example
///
/// ```
/// # use std::convert::Infallible;
/// # use bytes::Bytes;
/// # use http::{Request, Response, StatusCode};
/// # use http_body_util::Full;
/// # use tower::{ServiceBuilder, ServiceExt};
/// use std::num::NonZeroUsize;
/// use tower_shield::{idempotency::{IdempotencyLayer, MemoryStore}, principal::Principal};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = MemoryStore::new()
///     .capacity(NonZeroUsize::new(50_000).unwrap())
///     .max_bytes(16 * 1024 * 1024);
/// // The layer gets a clone: both see the same records.
/// let layer = IdempotencyLayer::new().with_store(store.clone());
/// let service = ServiceBuilder::new().layer(layer).service_fn(|_| async {
///     Ok::<_, Infallible>(Response::new(Full::<Bytes>::from(r#"{"id":1}"#)))
/// });
///
/// let mut request = Request::post("/orders")
///     .header("idempotency-key", "order-7f3a")
///     .body(Full::<Bytes>::default())
///     .unwrap();
/// request.extensions_mut().insert(Principal::builder("user-42").build());
/// assert_eq!(service.oneshot(request).await.unwrap().status(), StatusCode::OK);
/// assert_eq!(store.len(), 1); // the stored response
/// assert!(store.bytes() > 0);
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    clock: Arc<dyn Clock>,
    capacity: usize,
    max_bytes: usize,
}

#[derive(Default)]
struct State {
    map: HashMap<RecordKey, Entry>,
    /// Locks by expiry.
    locks: BTreeMap<(Duration, u64), RecordKey>,
    /// Completed responses by age.
    done: BTreeMap<u64, RecordKey>,
    bytes: usize,
    seq: u64,
}

struct Entry {
    seq: u64,
    expires: Duration,
    kind: EntryKind,
}

enum EntryKind {
    Lock { token: LockToken, fingerprint: Fingerprint },
    Done { response: StoredResponse, size: usize },
}

impl State {
    fn remove(&mut self, key: &RecordKey) {
        if let Some(entry) = self.map.remove(key) {
            match entry.kind {
                EntryKind::Lock { .. } => {
                    self.locks.remove(&(entry.expires, entry.seq));
                }
                EntryKind::Done { size, .. } => {
                    self.done.remove(&entry.seq);
                    self.bytes -= size;
                }
            }
        }
    }

    /// Drops up to a few expired entries from the front of each index: amortised cleanup.
    fn sweep(&mut self, now: Duration) {
        for _ in 0..2 {
            match self.locks.first_key_value() {
                Some((&(expires, _), &key)) if expires <= now => self.remove(&key),
                _ => break,
            }
        }
        for _ in 0..2 {
            let Some((_, &key)) = self.done.first_key_value() else { break };
            if self.map.get(&key).is_some_and(|e| e.expires <= now) {
                self.remove(&key);
            } else {
                break;
            }
        }
    }

    fn evict_oldest_done(&mut self) -> bool {
        match self.done.first_key_value() {
            Some((_, &key)) => {
                self.remove(&key);
                true
            }
            None => false,
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

impl MemoryStore {
    /// A store with the default bounds (10 000 entries, 64 MiB of responses) and the system
    /// clock.
    pub fn new() -> Self {
        Self {
            state: Arc::default(),
            clock: Arc::new(SystemClock),
            capacity: 10_000,
            max_bytes: 64 * 1024 * 1024,
        }
    }

    /// The most entries (locks and responses) kept at once.
    #[must_use]
    pub fn capacity(mut self, capacity: NonZeroUsize) -> Self {
        self.capacity = capacity.get();
        self
    }

    /// The most bytes of stored responses kept at once. A response larger than this is not
    /// stored (its lock is released).
    #[must_use]
    pub fn max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Replaces the clock that expires entries (a `FakeClock` in tests).
    #[must_use]
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// How many entries (locks and responses) are held, expired ones not yet dropped
    /// included.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of stored responses held.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent at every step, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn begin_now(
        &self,
        key: RecordKey,
        fingerprint: Fingerprint,
        lock_ttl: Duration,
    ) -> Result<Begin, StoreError> {
        let now = self.clock.monotonic();
        let mut state = self.lock();
        state.sweep(now);
        if let Some(entry) = state.map.get(&key) {
            if entry.expires > now {
                return Ok(match &entry.kind {
                    EntryKind::Lock { fingerprint, .. } => Begin::InFlight {
                        fingerprint: *fingerprint,
                        expires_in: Some(entry.expires - now),
                    },
                    EntryKind::Done { response, .. } => Begin::Completed(response.clone()),
                });
            }
            state.remove(&key);
        }
        while state.map.len() >= self.capacity {
            match state.locks.first_key_value() {
                Some((&(expires, _), &old)) if expires <= now => state.remove(&old),
                _ => {
                    if !state.evict_oldest_done() {
                        return Err(StoreError::new(
                            "memory store full of requests in flight; new key refused",
                        ));
                    }
                }
            }
        }
        let token = LockToken::new();
        let seq = state.next_seq();
        let expires = now.saturating_add(lock_ttl);
        state.locks.insert((expires, seq), key);
        state.map.insert(key, Entry { seq, expires, kind: EntryKind::Lock { token, fingerprint } });
        Ok(Begin::Acquired(token))
    }

    fn complete_now(
        &self,
        key: RecordKey,
        token: LockToken,
        response: StoredResponse,
        ttl: Duration,
    ) -> bool {
        let now = self.clock.monotonic();
        let mut state = self.lock();
        let owned = matches!(
            state.map.get(&key),
            Some(Entry { kind: EntryKind::Lock { token: held, .. }, .. }) if *held == token
        );
        if !owned {
            return false;
        }
        state.remove(&key);
        let size = response.size();
        if size > self.max_bytes {
            return false;
        }
        while state.bytes + size > self.max_bytes && state.evict_oldest_done() {}
        let seq = state.next_seq();
        state.done.insert(seq, key);
        state.bytes += size;
        state.map.insert(
            key,
            Entry {
                seq,
                expires: now.saturating_add(ttl),
                kind: EntryKind::Done { response, size },
            },
        );
        true
    }

    fn release_now(&self, key: RecordKey, token: LockToken) {
        let mut state = self.lock();
        let owned = matches!(
            state.map.get(&key),
            Some(Entry { kind: EntryKind::Lock { token: held, .. }, .. }) if *held == token
        );
        if owned {
            state.remove(&key);
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("capacity", &self.capacity)
            .field("max_bytes", &self.max_bytes)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

/// All work happens before the future is returned, so dropping it unpolled loses nothing.
impl IdempotencyStore for MemoryStore {
    fn begin(
        &self,
        key: RecordKey,
        fingerprint: Fingerprint,
        lock_ttl: Duration,
    ) -> BoxFuture<Result<Begin, StoreError>> {
        Box::pin(std::future::ready(self.begin_now(key, fingerprint, lock_ttl)))
    }

    fn complete(
        &self,
        key: RecordKey,
        token: LockToken,
        response: StoredResponse,
        ttl: Duration,
    ) -> BoxFuture<Result<bool, StoreError>> {
        Box::pin(std::future::ready(Ok(self.complete_now(key, token, response, ttl))))
    }

    fn release(&self, key: RecordKey, token: LockToken) -> BoxFuture<Result<(), StoreError>> {
        self.release_now(key, token);
        Box::pin(std::future::ready(Ok(())))
    }

    fn release_on_drop(&self, key: RecordKey, token: LockToken) {
        self.release_now(key, token);
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}
