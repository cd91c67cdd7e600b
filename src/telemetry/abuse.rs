//! Abuse signals: a penalty box that blocks clients producing too many suspicious responses.
//!
//! [`PenaltyBoxLayer`] watches the responses of the service it wraps and counts, per client
//! key, the *suspicious* ones: by default 401, 403 and 404 (probing for credentials, permissions
//! and resources) and 400, 413, 415 and 422 (malformed input), or a gRPC trailers-only
//! response with the matching `grpc-status` (see [`Outcome::default_rule`];
//! [`PenaltyBoxLayer::suspicious`] replaces the rule). Successes never count.
//!
//! * **Threshold**: the count is a leaky bucket: each suspicious outcome adds one, and the
//!   count drains by `threshold` per `window`. `threshold` suspicious outcomes in quick
//!   succession block the client; a client that stays under `threshold` per `window` on
//!   average is never blocked (defaults: 10 per minute).
//! * **Cool-down**: a blocked client is answered 429 `rate_limited` with `Retry-After` (the
//!   seconds left, rounded up) *without calling the inner service*. The first block lasts the
//!   base cool-down (default 1 minute), each further *strike* doubles it, up to the maximum
//!   (default 1 hour). Strikes are forgotten once the client goes
//!   [`forget_strikes_after`](PenaltyBoxLayer::forget_strikes_after) (default 1 hour) after
//!   the end of its last block without being blocked again; its count restarts from zero after
//!   each block. Responses of requests still in flight when a block starts do not extend it.
//! * **Keys**: the client key comes from an [`AbuseKey`]. With feature `rate-limit`,
//!   [`PenaltyBoxLayer::per_ip`] keys by the same proxy-aware client IP as the rate limiter
//!   ([`ClientIp`](crate::rate_limit::ClientIp), IPv6 grouped by /64), and [`KeyedBy`] adapts
//!   any [`KeyExtractor`](crate::rate_limit::KeyExtractor). A closure
//!   `Fn(&http::request::Parts) -> Option<ClientKey>` works too. A request without a key
//!   (e.g. no peer address) passes through uncounted: put a rate limiter in front for those.
//! * **Bounded memory**: at most [`capacity`](PenaltyBoxLayer::capacity) clients are tracked
//!   (default 100,000), each as a keyed 64-bit hash and about 48 bytes of state. See the
//!   eviction rule below.
//! * **Events** at target `tower_shield::security`: `abuse.blocked` (warn; fields `key_kind`,
//!   `client` (a [`fingerprint`] of the key, never the key), `strikes`,
//!   `cool_down_ms`) when a block starts, and `abuse.unblocked` (info; `key_kind`, `client`,
//!   `strikes`) when the layer next sees the client, or cleans up its entry, after the
//!   cool-down.
//!
//! State is shared by every clone of the layer and of the services it builds: applying one
//! `PenaltyBoxLayer` to several routers gives them one penalty box.
//!
//! # Eviction rule
//!
//! An entry is *idle* when its count has drained to zero, it is not blocked and it has no
//! strike left to remember: dropping it changes nothing. Idle entries are dropped about once a
//! second during normal calls (no background task), and at once when the store is full. An
//! entry that is counting, blocked or remembering strikes is **never evicted**, so flooding the
//! layer with other keys can neither unblock a client nor wipe its count or strikes.
//!
//! When the store is full of such active entries, a new key is **not tracked** until entries
//! go idle: its requests pass through and its suspicious outcomes are not counted. A warning is
//! logged (target `tower_shield::telemetry`) the first time this happens. The rate limiter in
//! front of this layer still applies to those clients; size the capacity for the number of
//! distinct clients that misbehave within about `forget_strikes_after`.
//!
//! # Example
//!
//! ```
//! use std::{convert::Infallible, num::NonZeroU32, time::Duration};
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_shield::telemetry::{abuse::ClientKey, PenaltyBoxLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Keyed by a header here for brevity; use `PenaltyBoxLayer::per_ip()` (feature
//! // `rate-limit`) to key by the proxy-aware client IP.
//! let key = |parts: &http::request::Parts| {
//!     parts.headers.get("x-client").map(|v| ClientKey::new(v.as_bytes()))
//! };
//! let layer = PenaltyBoxLayer::new(key)
//!     .threshold(NonZeroU32::new(3).unwrap(), Duration::from_secs(60))
//!     .unwrap();
//! let mut service = ServiceBuilder::new().layer(layer).service_fn(|_: Request<Full<Bytes>>| async {
//!     let mut response = Response::new(Full::<Bytes>::default());
//!     *response.status_mut() = StatusCode::NOT_FOUND;
//!     Ok::<_, Infallible>(response)
//! });
//!
//! let request = || Request::builder().header("x-client", "c1").body(Full::default()).unwrap();
//! for _ in 0..3 {
//!     let response = service.ready().await.unwrap().call(request()).await.unwrap();
//!     assert_eq!(response.status(), StatusCode::NOT_FOUND);
//! }
//! // The third 404 started a one-minute block.
//! let response = service.ready().await.unwrap().call(request()).await.unwrap();
//! assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(response.headers()["retry-after"], "60");
//! # }
//! ```

use std::{
    borrow::Cow,
    fmt,
    future::Future,
    hash::{BuildHasher, Hasher, RandomState},
    num::NonZeroU32,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    task::{ready, Context, Poll},
    time::Duration,
};

use http::{request::Parts, HeaderMap, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{fingerprint, SECURITY_TARGET};
use crate::{
    clock::{Clock, SystemClock},
    error::ConfigError,
    prehashed::PrehashedMap,
    Error, ErrorKind,
};

/// Clients tracked by default.
pub const DEFAULT_CAPACITY: usize = 100_000;

const SHARDS: usize = 64;

/// How often each shard drops its idle entries (amortised in calls).
const CLEANUP_EVERY: u64 = 1_000_000_000;

// ===== keys =====

/// The identity suspicious outcomes are counted against: opaque bytes (an IP prefix, a
/// subject...). The layer keeps only a keyed 64-bit hash of them, and logs only a
/// [`fingerprint`].
///
/// # Example
///
/// ```
/// use std::net::IpAddr;
/// use tower_shield::{principal::Principal, telemetry::{abuse::ClientKey, PenaltyBoxLayer}};
///
/// let ip: IpAddr = "127.0.0.1".parse().unwrap();
/// assert_eq!(ClientKey::from(ip).as_bytes(), [127, 0, 0, 1]);
/// assert_eq!(ClientKey::from("user-42"), ClientKey::new(b"user-42"));
/// // `Debug` never shows the bytes.
/// assert_eq!(format!("{:?}", ClientKey::from("user-42")), "ClientKey(<7 bytes>)");
///
/// // Count per authenticated subject, then ask whether one is blocked.
/// let layer = PenaltyBoxLayer::new(|parts: &http::request::Parts| {
///     parts.extensions.get::<Principal>().map(|p| ClientKey::from(p.subject()))
/// });
/// assert_eq!(layer.blocked_for(&ClientKey::from("user-42")), None);
/// ```
#[derive(Clone)]
pub struct ClientKey {
    repr: Repr,
}

/// Equal when the bytes are, however the key was made (from a `&str`, a `RateKey`...): the
/// layer counts by the bytes too.
impl PartialEq for ClientKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for ClientKey {}

impl std::hash::Hash for ClientKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

#[derive(Clone)]
enum Repr {
    Bytes(Box<[u8]>),
    #[cfg(feature = "rate-limit")]
    Rate(crate::rate_limit::RateKey),
}

impl ClientKey {
    /// A key from any bytes.
    pub fn new(bytes: impl AsRef<[u8]>) -> Self {
        Self { repr: Repr::Bytes(bytes.as_ref().into()) }
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.repr {
            Repr::Bytes(bytes) => bytes,
            #[cfg(feature = "rate-limit")]
            Repr::Rate(key) => key.as_bytes(),
        }
    }
}

impl From<&str> for ClientKey {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl From<String> for ClientKey {
    fn from(value: String) -> Self {
        Self { repr: Repr::Bytes(value.into_bytes().into_boxed_slice()) }
    }
}

impl From<std::net::IpAddr> for ClientKey {
    fn from(ip: std::net::IpAddr) -> Self {
        match ip {
            std::net::IpAddr::V4(v4) => Self::new(v4.octets()),
            std::net::IpAddr::V6(v6) => Self::new(v6.octets()),
        }
    }
}

#[cfg(feature = "rate-limit")]
impl From<crate::rate_limit::RateKey> for ClientKey {
    fn from(key: crate::rate_limit::RateKey) -> Self {
        Self { repr: Repr::Rate(key) }
    }
}

/// Never prints the bytes: a key may be derived from a credential.
impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientKey(<{} bytes>)", self.as_bytes().len())
    }
}

/// Picks the [`ClientKey`] a request's outcome is counted against.
///
/// Implemented for closures `Fn(&http::request::Parts) -> Option<ClientKey>`, and with feature
/// `rate-limit` for [`ClientIp`](crate::rate_limit::ClientIp) and [`KeyedBy`]. `None` means
/// the key cannot be determined: the request passes through uncounted.
///
/// # Example
///
/// ```
/// use std::borrow::Cow;
/// use http::{request::Parts, Request};
/// use tower_shield::principal::Principal;
/// use tower_shield::telemetry::{abuse::{AbuseKey, ClientKey}, PenaltyBoxLayer};
///
/// /// Counts per tenant: a tenant whose users misbehave is blocked as a whole.
/// struct PerTenant;
///
/// impl AbuseKey for PerTenant {
///     fn extract(&self, parts: &Parts) -> Option<ClientKey> {
///         parts.extensions.get::<Principal>()?.tenant().map(ClientKey::from)
///     }
///
///     fn kind(&self) -> Cow<'static, str> {
///         Cow::Borrowed("tenant")
///     }
/// }
///
/// let mut request = Request::new(());
/// request.extensions_mut().insert(Principal::builder("user-42").tenant("acme").build());
/// let (parts, ()) = request.into_parts();
/// assert_eq!(PerTenant.extract(&parts), Some(ClientKey::from("acme")));
/// assert_eq!(PerTenant.kind(), "tenant");
///
/// let layer = PenaltyBoxLayer::new(PerTenant);
/// # let _ = layer;
/// ```
pub trait AbuseKey: Send + Sync + 'static {
    /// The key of this request, if it can be determined.
    fn extract(&self, parts: &Parts) -> Option<ClientKey>;

    /// A short label for logs (`ip`, `principal`...). Never the key itself.
    fn kind(&self) -> Cow<'static, str> {
        Cow::Borrowed("custom")
    }
}

impl<F> AbuseKey for F
where
    F: Fn(&Parts) -> Option<ClientKey> + Send + Sync + 'static,
{
    fn extract(&self, parts: &Parts) -> Option<ClientKey> {
        self(parts)
    }
}

/// The rate limiter's proxy-aware client IP (reusing the
/// [`ClientAddr`](crate::rate_limit::ClientAddr) an outer rate limiter resolved).
#[cfg(feature = "rate-limit")]
#[cfg_attr(docsrs, doc(cfg(feature = "rate-limit")))]
impl AbuseKey for crate::rate_limit::ClientIp {
    fn extract(&self, parts: &Parts) -> Option<ClientKey> {
        crate::rate_limit::KeyExtractor::extract(self, parts).map(ClientKey::from)
    }

    fn kind(&self) -> Cow<'static, str> {
        Cow::Borrowed("ip")
    }
}

/// Keys the penalty box by any rate-limit [`KeyExtractor`](crate::rate_limit::KeyExtractor):
/// `KeyedBy(PrincipalKey)`, `KeyedBy((ClientIp::new(), RouteKey))`...
///
/// # Example
///
/// ```
/// # use std::{convert::Infallible, num::NonZeroU32, time::Duration};
/// # use http::{Request, Response, StatusCode};
/// # use tower::{ServiceBuilder, ServiceExt};
/// use tower_shield::{principal::Principal, rate_limit::PrincipalKey};
/// use tower_shield::telemetry::{abuse::{ClientKey, KeyedBy}, PenaltyBoxLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // Behind authentication: count per subject, block after 2 suspicious responses.
/// let layer = PenaltyBoxLayer::new(KeyedBy(PrincipalKey))
///     .threshold(NonZeroU32::new(2).unwrap(), Duration::from_secs(60))
///     .unwrap();
/// let service = ServiceBuilder::new().layer(layer.clone()).service_fn(|_| async {
///     let mut response = Response::new(String::new());
///     *response.status_mut() = StatusCode::FORBIDDEN;
///     Ok::<_, Infallible>(response)
/// });
///
/// for _ in 0..2 {
///     let mut request = Request::new(String::new());
///     request.extensions_mut().insert(Principal::builder("user-42").build());
///     service.clone().oneshot(request).await.unwrap();
/// }
/// assert!(layer.blocked_for(&ClientKey::from("user-42")).is_some());
/// # }
/// ```
#[cfg(feature = "rate-limit")]
#[cfg_attr(docsrs, doc(cfg(feature = "rate-limit")))]
#[derive(Clone, Copy, Debug, Default)]
pub struct KeyedBy<K>(pub K);

#[cfg(feature = "rate-limit")]
impl<K: crate::rate_limit::KeyExtractor> AbuseKey for KeyedBy<K> {
    fn extract(&self, parts: &Parts) -> Option<ClientKey> {
        self.0.extract(parts).map(ClientKey::from)
    }

    fn kind(&self) -> Cow<'static, str> {
        self.0.kind()
    }
}

// ===== outcomes =====

/// What the inner service answered, as the suspicious-outcome rule sees it.
///
/// # Example
///
/// ```
/// use http::{HeaderMap, HeaderValue, StatusCode};
/// use tower_shield::telemetry::{abuse::Outcome, PenaltyBoxLayer};
/// # use tower_shield::telemetry::abuse::ClientKey;
///
/// // On an API where a 404 is routine, count everything else the default rule counts.
/// let rule = |o: &Outcome<'_>| o.default_rule() && o.status() != StatusCode::NOT_FOUND;
///
/// let headers = HeaderMap::new();
/// assert!(rule(&Outcome::new(StatusCode::UNAUTHORIZED, &headers, None)));
/// assert!(!rule(&Outcome::new(StatusCode::NOT_FOUND, &headers, None)));
/// assert!(!rule(&Outcome::new(StatusCode::OK, &headers, None)));
///
/// // A gRPC trailers-only response: HTTP 200, the status in `grpc-status`.
/// let mut grpc = HeaderMap::new();
/// grpc.insert("grpc-status", HeaderValue::from_static("7")); // PERMISSION_DENIED
/// let denied = Outcome::new(StatusCode::OK, &grpc, None);
/// assert_eq!(denied.grpc_status(), Some(7));
/// assert!(rule(&denied));
///
/// # let key = |_: &http::request::Parts| None::<ClientKey>;
/// let layer = PenaltyBoxLayer::new(key).suspicious(rule);
/// # let _ = layer;
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Outcome<'a> {
    status: StatusCode,
    headers: &'a HeaderMap,
    error: Option<&'a Error>,
}

impl<'a> Outcome<'a> {
    /// An outcome from its parts (for testing a rule).
    pub fn new(status: StatusCode, headers: &'a HeaderMap, error: Option<&'a Error>) -> Self {
        Self { status, headers, error }
    }

    /// The response status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The response headers.
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The tower-shield [`Error`] in the response extensions, when a layer rejected the
    /// request.
    pub fn error(&self) -> Option<&'a Error> {
        self.error
    }

    /// The `grpc-status` header of a trailers-only gRPC response, if any. (A status sent in
    /// the trailers of a streamed body is not seen.)
    pub fn grpc_status(&self) -> Option<i32> {
        self.headers.get("grpc-status")?.to_str().ok()?.parse().ok()
    }

    /// The default rule: status 400, 401, 403, 404, 413, 415 or 422, or a `grpc-status` of
    /// `INVALID_ARGUMENT` (3), `NOT_FOUND` (5), `PERMISSION_DENIED` (7) or
    /// `UNAUTHENTICATED` (16).
    pub fn default_rule(&self) -> bool {
        matches!(self.status.as_u16(), 400 | 401 | 403 | 404 | 413 | 415 | 422)
            || matches!(self.grpc_status(), Some(3 | 5 | 7 | 16))
    }
}

// ===== layer =====

#[derive(Clone)]
struct Config {
    threshold: NonZeroU32,
    window: Duration,
    base: Duration,
    max: Duration,
    forget_after: Duration,
    capacity: usize,
    clock: Arc<dyn Clock>,
    suspicious: Arc<dyn Fn(&Outcome<'_>) -> bool + Send + Sync>,
    kind: Cow<'static, str>,
}

/// Counts suspicious responses per client and blocks clients past a threshold, with a
/// cool-down that doubles on each repeat (a penalty box).
///
/// Defaults: 10 suspicious outcomes per minute, cool-downs from 1 minute doubling up to 1 hour,
/// strikes forgotten 1 hour after a block ends, 100,000 clients tracked, the system clock,
/// [`Outcome::default_rule`]. Clones share the state.
///
/// See the [module docs](crate::telemetry::abuse) for an example.
#[must_use]
pub struct PenaltyBoxLayer<K> {
    key: Arc<K>,
    state: Arc<State>,
}

#[cfg(feature = "rate-limit")]
impl PenaltyBoxLayer<crate::rate_limit::ClientIp> {
    /// Keys clients by their IP: the TCP peer, or with proxies configured,
    /// `PenaltyBoxLayer::new(ClientIp::new().trusted_proxies(..))`.
    #[cfg_attr(docsrs, doc(cfg(feature = "rate-limit")))]
    pub fn per_ip() -> Self {
        Self::new(crate::rate_limit::ClientIp::new())
    }
}

impl<K: AbuseKey> PenaltyBoxLayer<K> {
    /// Counts suspicious outcomes per key that `key` extracts, with the defaults.
    pub fn new(key: K) -> Self {
        let config = Config {
            threshold: NonZeroU32::new(10).expect("non-zero"),
            window: Duration::from_secs(60),
            base: Duration::from_secs(60),
            max: Duration::from_secs(3600),
            forget_after: Duration::from_secs(3600),
            capacity: DEFAULT_CAPACITY,
            clock: Arc::new(SystemClock),
            suspicious: Arc::new(|outcome: &Outcome<'_>| outcome.default_rule()),
            kind: key.kind(),
        };
        Self { key: Arc::new(key), state: Arc::new(State::new(config)) }
    }
}

impl<K> PenaltyBoxLayer<K> {
    fn with_config(mut self, change: impl FnOnce(&mut Config)) -> Self {
        let mut config = self.state.config.clone();
        change(&mut config);
        self.state = Arc::new(State::new(config));
        self
    }

    /// Blocks a client after `count` suspicious outcomes within `window` (the count drains by
    /// `count` per `window`). Default 10 per minute. Resets the state.
    ///
    /// # Errors
    ///
    /// When `window` is shorter than a millisecond.
    pub fn threshold(self, count: NonZeroU32, window: Duration) -> Result<Self, ConfigError> {
        if window < Duration::from_millis(1) {
            return Err(ConfigError::new("a penalty-box window is at least 1 ms"));
        }
        Ok(self.with_config(|c| {
            c.threshold = count;
            c.window = window;
        }))
    }

    /// The first block lasts `first`; each further strike doubles it, up to `max`. Default 1
    /// minute up to 1 hour. Resets the state.
    ///
    /// # Errors
    ///
    /// When `first` is zero or `max` is shorter than `first`.
    pub fn cool_down(self, first: Duration, max: Duration) -> Result<Self, ConfigError> {
        if first.is_zero() {
            return Err(ConfigError::new("a penalty-box cool-down must be above zero"));
        }
        if max < first {
            return Err(ConfigError::new(
                "the maximum penalty-box cool-down is shorter than the first",
            ));
        }
        Ok(self.with_config(|c| {
            c.base = first;
            c.max = max;
        }))
    }

    /// Forgets a client's strikes (its next block lasts the first cool-down again) once it
    /// goes `after` past the end of its last block without a new one. Default 1 hour. Entries
    /// remembering strikes are never evicted, so this also bounds how long they stay. Resets
    /// the state.
    pub fn forget_strikes_after(self, after: Duration) -> Self {
        self.with_config(|c| c.forget_after = after)
    }

    /// Tracks at most `capacity` clients (default [`DEFAULT_CAPACITY`]). Resets the state.
    ///
    /// # Errors
    ///
    /// When `capacity` is zero.
    pub fn capacity(self, capacity: usize) -> Result<Self, ConfigError> {
        if capacity == 0 {
            return Err(ConfigError::new("a penalty box needs a capacity above zero"));
        }
        Ok(self.with_config(|c| c.capacity = capacity))
    }

    /// Replaces the rule deciding which outcomes are suspicious (default
    /// [`Outcome::default_rule`]), e.g. `|o| o.default_rule() && o.status() != 404` for
    /// routes where a 404 is routine. Resets the state.
    pub fn suspicious<F>(self, rule: F) -> Self
    where
        F: Fn(&Outcome<'_>) -> bool + Send + Sync + 'static,
    {
        self.with_config(|c| c.suspicious = Arc::new(rule))
    }

    /// Uses `clock` for time (a [`FakeClock`](crate::clock::FakeClock) in tests). Resets the
    /// state.
    pub fn with_clock(self, clock: impl Clock) -> Self {
        self.with_config(|c| c.clock = Arc::new(clock))
    }

    /// The number of clients tracked now.
    pub fn len(&self) -> usize {
        self.state.len.load(Ordering::Relaxed)
    }

    /// Whether no client is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How long `key` stays blocked, or `None` when it is not blocked.
    pub fn blocked_for(&self, key: &ClientKey) -> Option<Duration> {
        let state = &*self.state;
        let now = state.now();
        let hash = state.hash(key);
        let shard = lock(&state.shards[shard_of(hash)]);
        let until = shard.map.get(&hash)?.blocked_until;
        (until > now).then(|| Duration::from_nanos(until - now))
    }
}

impl<K> Clone for PenaltyBoxLayer<K> {
    fn clone(&self) -> Self {
        Self { key: Arc::clone(&self.key), state: Arc::clone(&self.state) }
    }
}

impl<K> fmt::Debug for PenaltyBoxLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.state.config;
        f.debug_struct("PenaltyBoxLayer")
            .field("key_kind", &c.kind)
            .field("threshold", &c.threshold)
            .field("window", &c.window)
            .field("cool_down", &c.base)
            .field("max_cool_down", &c.max)
            .field("forget_strikes_after", &c.forget_after)
            .field("capacity", &c.capacity)
            .field("len", &self.len())
            .field("clock", &c.clock)
            .field("suspicious", &format_args!("<fn>"))
            .finish()
    }
}

impl<S, K> Layer<S> for PenaltyBoxLayer<K> {
    type Service = PenaltyBox<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        PenaltyBox { inner, layer: self.clone() }
    }
}

// ===== state =====

struct State {
    config: Config,
    shards: Box<[Mutex<Shard>]>,
    len: AtomicUsize,
    hasher: RandomState,
    /// Nanoseconds one suspicious outcome adds to the count (`window / threshold`).
    increment: u64,
    warned_full: AtomicBool,
}

#[derive(Default)]
struct Shard {
    map: PrehashedMap<Entry>,
    next_cleanup: u64,
    /// When the shard was last found full of active entries: the earliest one goes idle.
    next_idle: u64,
}

struct Entry {
    /// When the count drains to zero (GCRA's theoretical arrival time).
    tat: u64,
    /// End of the current block; 0 when not blocked (or its end was reported).
    blocked_until: u64,
    strikes: u32,
    /// When the strikes are forgotten.
    forget_at: u64,
    /// The client's fingerprint, kept for the `abuse.unblocked` event.
    client: [u8; 12],
}

impl Entry {
    /// When dropping this entry changes nothing.
    fn idle_at(&self) -> u64 {
        let strikes = if self.strikes > 0 { self.forget_at } else { 0 };
        self.tat.max(self.blocked_until).max(strikes)
    }
}

/// A block that just started or ended, reported after the lock is released.
enum Report {
    Blocked { client: [u8; 12], strikes: u32, cool_down: u64 },
    Unblocked { client: [u8; 12], strikes: u32 },
}

impl State {
    fn new(config: Config) -> Self {
        let increment = nanos(config.window) / u64::from(config.threshold.get());
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            len: AtomicUsize::new(0),
            hasher: RandomState::new(),
            increment: increment.max(1),
            warned_full: AtomicBool::new(false),
            config,
        }
    }

    fn now(&self) -> u64 {
        nanos(self.config.clock.monotonic())
    }

    fn hash(&self, key: &ClientKey) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(key.as_bytes());
        h.finish()
    }

    /// The time left in `hash`'s block, if blocked.
    fn check(&self, hash: u64, now: u64) -> Option<Duration> {
        let mut shard = lock(&self.shards[shard_of(hash)]);
        let mut reports = self.maybe_clean(&mut shard, now);
        let remaining = match shard.map.get_mut(&hash) {
            Some(entry) if entry.blocked_until > now => {
                Some(Duration::from_nanos(entry.blocked_until - now))
            }
            Some(entry) => {
                if entry.blocked_until != 0 {
                    entry.blocked_until = 0;
                    reports
                        .push(Report::Unblocked { client: entry.client, strikes: entry.strikes });
                }
                None
            }
            None => None,
        };
        drop(shard);
        self.report_all(&reports);
        remaining
    }

    /// Counts one suspicious outcome of `key`.
    fn record(&self, hash: u64, key: &ClientKey, now: u64) {
        let report = {
            let mut shard = lock(&self.shards[shard_of(hash)]);
            let mut reports = self.maybe_clean(&mut shard, now);
            if !shard.map.contains_key(&hash) {
                let room = self.reserve()
                    || (now >= shard.next_idle && {
                        reports.extend(self.sweep(&mut shard, now));
                        self.reserve()
                    });
                if !room {
                    drop(shard);
                    self.report_all(&reports);
                    if !self.warned_full.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            target: "tower_shield::telemetry",
                            capacity = self.config.capacity,
                            "the penalty box is full of active clients; new clients are not \
                             tracked until entries go idle (consider a larger capacity)"
                        );
                    }
                    return;
                }
                shard.map.insert(
                    hash,
                    Entry { tat: 0, blocked_until: 0, strikes: 0, forget_at: 0, client: [0; 12] },
                );
            }
            let entry = shard.map.get_mut(&hash).expect("inserted above");
            let report = self.count(entry, key, now);
            drop(shard);
            self.report_all(&reports);
            report
        };
        if let Some(report) = report {
            self.report(&report);
        }
    }

    fn count(&self, entry: &mut Entry, key: &ClientKey, now: u64) -> Option<Report> {
        if entry.blocked_until > now {
            // Responses of requests in flight when the block started do not extend it.
            return None;
        }
        let mut unblocked = None;
        if entry.blocked_until != 0 {
            entry.blocked_until = 0;
            unblocked = Some(Report::Unblocked { client: entry.client, strikes: entry.strikes });
        }
        if entry.strikes > 0 && now >= entry.forget_at {
            entry.strikes = 0;
        }
        entry.tat = entry.tat.max(now).saturating_add(self.increment);
        // Blocks when the count exceeds `threshold - 1` (GCRA's burst test), so `threshold`
        // outcomes close together block even though the count drained a little in between.
        let allowed = self.increment.saturating_mul(u64::from(self.config.threshold.get() - 1));
        if entry.tat - now <= allowed {
            return unblocked;
        }
        if let Some(report) = unblocked {
            // Reported now: the block that follows would otherwise hide it.
            self.report(&report);
        }
        entry.strikes = entry.strikes.saturating_add(1);
        let cool_down = self.cool_down(entry.strikes);
        entry.tat = now;
        entry.blocked_until = now.saturating_add(cool_down).max(1);
        entry.forget_at = entry.blocked_until.saturating_add(nanos(self.config.forget_after));
        let print = fingerprint(key.as_bytes());
        entry.client.copy_from_slice(&print.as_bytes()[..12]);
        Some(Report::Blocked { client: entry.client, strikes: entry.strikes, cool_down })
    }

    /// `base * 2^(strikes - 1)`, capped.
    fn cool_down(&self, strikes: u32) -> u64 {
        let base = nanos(self.config.base);
        let max = nanos(self.config.max);
        let factor = 1u64.checked_shl(strikes.saturating_sub(1)).unwrap_or(u64::MAX);
        base.saturating_mul(factor).min(max)
    }

    fn maybe_clean(&self, shard: &mut Shard, now: u64) -> Vec<Report> {
        if now < shard.next_cleanup {
            return Vec::new();
        }
        shard.next_cleanup = now.saturating_add(CLEANUP_EVERY);
        self.sweep(shard, now)
    }

    /// Drops the idle entries of one shard; returns the unblocks to report.
    fn sweep(&self, shard: &mut Shard, now: u64) -> Vec<Report> {
        let before = shard.map.len();
        let mut next_idle = u64::MAX;
        let mut reports = Vec::new();
        shard.map.retain(|_, entry| {
            if entry.blocked_until != 0 && entry.blocked_until <= now {
                entry.blocked_until = 0;
                reports.push(Report::Unblocked { client: entry.client, strikes: entry.strikes });
            }
            let idle_at = entry.idle_at();
            if idle_at <= now {
                false
            } else {
                next_idle = next_idle.min(idle_at);
                true
            }
        });
        shard.next_idle = next_idle;
        self.len.fetch_sub(before - shard.map.len(), Ordering::AcqRel);
        reports
    }

    /// Takes one slot of the capacity.
    fn reserve(&self) -> bool {
        self.len
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.config.capacity).then_some(n + 1)
            })
            .is_ok()
    }

    fn report_all(&self, reports: &[Report]) {
        for report in reports {
            self.report(report);
        }
    }

    fn report(&self, report: &Report) {
        let kind = &*self.config.kind;
        match report {
            Report::Blocked { client, strikes, cool_down } => {
                crate::observe::abuse_blocked(kind);
                tracing::warn!(
                    target: SECURITY_TARGET,
                    event = "abuse.blocked",
                    key_kind = kind,
                    client = fingerprint_str(client),
                    strikes,
                    cool_down_ms = cool_down / 1_000_000,
                    "client blocked after repeated suspicious responses"
                )
            }
            Report::Unblocked { client, strikes } => tracing::info!(
                target: SECURITY_TARGET,
                event = "abuse.unblocked",
                key_kind = kind,
                client = fingerprint_str(client),
                strikes,
                "client cool-down ended"
            ),
        }
    }
}

fn fingerprint_str(client: &[u8; 12]) -> &str {
    std::str::from_utf8(client).unwrap_or("")
}

fn shard_of(hash: u64) -> usize {
    // The low bits select the shard; the map hashes the whole value.
    (hash as usize) % SHARDS
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The critical sections cannot panic midway through an update; a poisoned lock still
    // holds consistent state.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

// ===== service =====

/// Counts suspicious responses per client and answers 429 while the client is blocked.
///
/// See the [module docs](crate::telemetry::abuse) for an example.
pub struct PenaltyBox<S, K> {
    inner: S,
    layer: PenaltyBoxLayer<K>,
}

impl<S, K> PenaltyBox<S, K> {
    /// Wraps `inner` with the configuration (and state) of `layer`.
    pub fn new(inner: S, layer: PenaltyBoxLayer<K>) -> Self {
        Self { inner, layer }
    }

    /// A [`PenaltyBoxLayer`] keyed by `key`, with the defaults.
    pub fn layer(key: K) -> PenaltyBoxLayer<K>
    where
        K: AbuseKey,
    {
        PenaltyBoxLayer::new(key)
    }

    define_inner_service_accessors!();
}

impl<S: Clone, K> Clone for PenaltyBox<S, K> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), layer: self.layer.clone() }
    }
}

impl<S: fmt::Debug, K> fmt::Debug for PenaltyBox<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PenaltyBox")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, K, ReqBody, ResBody> Service<Request<ReqBody>> for PenaltyBox<S, K>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    K: AbuseKey,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let (parts, body) = request.into_parts();
        let Some(key) = self.layer.key.extract(&parts) else {
            let future = self.inner.call(Request::from_parts(parts, body));
            return ResponseFuture { state: FutureState::Calling { future }, cx: None };
        };
        let state = &self.layer.state;
        let hash = state.hash(&key);
        if let Some(remaining) = state.check(hash, state.now()) {
            crate::observe::abuse_rejected(&parts.extensions, &state.config.kind);
            let response = Error::new(ErrorKind::RateLimited)
                .with_reason("client in the abuse penalty box")
                .with_retry_after(remaining)
                .to_response();
            return ResponseFuture {
                state: FutureState::Rejected { response: Some(response) },
                cx: None,
            };
        }
        let future = self.inner.call(Request::from_parts(parts, body));
        ResponseFuture {
            state: FutureState::Calling { future },
            cx: Some(Ctx { state: Arc::clone(state), key, hash }),
        }
    }
}

// ===== future =====

struct Ctx {
    state: Arc<State>,
    key: ClientKey,
    hash: u64,
}

pin_project! {
    /// Response future of [`PenaltyBox`].
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: FutureState<F, B>,
        cx: Option<Ctx>,
    }
}

pin_project! {
    #[project = StateProj]
    enum FutureState<F, B> {
        Calling { #[pin] future: F },
        Rejected { response: Option<Response<B>> },
        Done,
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        match this.state.as_mut().project() {
            StateProj::Calling { future } => {
                let result = ready!(future.poll(cx));
                this.state.set(FutureState::Done);
                if let (Ok(response), Some(ctx)) = (&result, this.cx.take()) {
                    let outcome = Outcome {
                        status: response.status(),
                        headers: response.headers(),
                        error: response.extensions().get::<Error>(),
                    };
                    let state = &*ctx.state;
                    if (state.config.suspicious)(&outcome) {
                        state.record(ctx.hash, &ctx.key, state.now());
                    }
                }
                Poll::Ready(result)
            }
            StateProj::Rejected { response } => {
                let response = response.take().expect("rejection present");
                this.state.set(FutureState::Done);
                Poll::Ready(Ok(response))
            }
            StateProj::Done => panic!("abuse::ResponseFuture polled after completion"),
        }
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
