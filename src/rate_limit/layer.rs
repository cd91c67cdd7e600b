use std::{borrow::Cow, fmt, num::NonZeroU32, sync::Arc};

use http::{request::Parts, StatusCode};
use tower_layer::Layer;

use super::{
    client_ip::ClientIp, handle::RateLimiter, key::KeyExtractor, memory::MemoryStore,
    quota::Limits, store::Store, Quota, RateLimit,
};
use crate::clock::Clock;

/// What the layer does with a request whose key cannot be extracted (no principal, no peer
/// address, no header...).
///
/// # Example
///
/// ```
/// use std::{convert::Infallible, num::NonZeroU32};
/// use http::{Request, Response, StatusCode};
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_shield::rate_limit::{MissingKey, PrincipalKey, Quota, RateLimitLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let per_principal = || RateLimitLayer::new(PrincipalKey, Quota::per_minute(NonZeroU32::MAX));
/// let handler = |_: Request<String>| async { Ok::<_, Infallible>(Response::new(String::new())) };
/// // An anonymous request: no principal, so no key.
/// let anonymous = || Request::new(String::new());
///
/// let strict = ServiceBuilder::new().layer(per_principal()).service_fn(handler);
/// let response = strict.oneshot(anonymous()).await.unwrap();
/// assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
///
/// let layer = per_principal().on_missing_key(MissingKey::Skip);
/// let lenient = ServiceBuilder::new().layer(layer).service_fn(handler);
/// let response = lenient.oneshot(anonymous()).await.unwrap();
/// assert_eq!(response.status(), StatusCode::OK);
/// assert!(!response.headers().contains_key("ratelimit"));
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum MissingKey {
    /// Answer 500 `internal` and log a warning (the default): a missing key is a wiring
    /// mistake (a principal key before the auth layer, a server without peer addresses), and a
    /// limit that silently stops applying is worse than a loud failure.
    #[default]
    Reject,
    /// Count the request against the client IP instead (the [`ClientAddr`](super::ClientAddr)
    /// an outer layer resolved, else the TCP peer); 500 if even that is missing.
    ClientIp,
    /// Let the request through unlimited and without headers, e.g. for a per-principal limit on
    /// routes that also serve anonymous callers (who are limited by an outer per-IP layer).
    Skip,
}

/// Applies [`Quota`]s per key and answers 429 when one is exhausted.
///
/// Defaults: keyed by client IP ([`ClientIp::new`]: the TCP peer), the in-memory store,
/// `RateLimit`/`RateLimit-Policy` headers on every response, cost 1 per request, a missing key
/// answered 500 ([`MissingKey::Reject`]).
///
/// See the [module docs](crate::rate_limit) for an example.
#[must_use]
pub struct RateLimitLayer<K = ClientIp, St = MemoryStore> {
    pub(crate) key: Arc<K>,
    pub(crate) store: St,
    pub(crate) shared: Arc<Shared>,
}

pub(crate) enum LimitsSource {
    Fixed(Limits),
    Dynamic(Arc<dyn Fn(&Parts) -> Limits + Send + Sync>),
}

pub(crate) struct Shared {
    pub(crate) limits: LimitsSource,
    pub(crate) cost: Option<Arc<dyn Fn(&Parts) -> NonZeroU32 + Send + Sync>>,
    pub(crate) missing: MissingKey,
    pub(crate) headers: bool,
    pub(crate) legacy_headers: bool,
    pub(crate) count_only: Option<Arc<dyn Fn(StatusCode) -> bool + Send + Sync>>,
    pub(crate) kind: Cow<'static, str>,
    pub(crate) client_ip: Option<ClientIp>,
    pub(crate) fallback_ip: ClientIp,
}

impl Clone for Shared {
    fn clone(&self) -> Self {
        Self {
            limits: match &self.limits {
                LimitsSource::Fixed(l) => LimitsSource::Fixed(l.clone()),
                LimitsSource::Dynamic(f) => LimitsSource::Dynamic(Arc::clone(f)),
            },
            cost: self.cost.clone(),
            missing: self.missing,
            headers: self.headers,
            legacy_headers: self.legacy_headers,
            count_only: self.count_only.clone(),
            kind: self.kind.clone(),
            client_ip: self.client_ip.clone(),
            fallback_ip: self.fallback_ip.clone(),
        }
    }
}

impl RateLimitLayer {
    /// Limits each client IP (the TCP peer; see [`ClientIp`] for proxies) to `quota`.
    pub fn per_ip(quota: impl Into<Limits>) -> Self {
        Self::new(ClientIp::new(), quota)
    }
}

impl<K: KeyExtractor> RateLimitLayer<K> {
    /// Limits each key that `key` extracts to `limits` (a [`Quota`] or a [`Limits`] set), in
    /// a [`MemoryStore`] with the default capacity.
    pub fn new(key: K, limits: impl Into<Limits>) -> Self {
        let client_ip = key.client_ip().cloned();
        let kind = key.kind();
        Self {
            key: Arc::new(key),
            store: MemoryStore::new(),
            shared: Arc::new(Shared {
                limits: LimitsSource::Fixed(limits.into()),
                cost: None,
                missing: MissingKey::Reject,
                headers: true,
                legacy_headers: false,
                count_only: None,
                kind,
                fallback_ip: client_ip.clone().unwrap_or_default(),
                client_ip,
            }),
        }
    }
}

impl<K> RateLimitLayer<K, MemoryStore> {
    /// Uses `clock` for the in-memory store's time (tests pass a
    /// [`FakeClock`](crate::clock::FakeClock)).
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.store = self.store.with_clock(clock);
        self
    }
}

impl<K, St> RateLimitLayer<K, St> {
    fn shared(&mut self) -> &mut Shared {
        Arc::make_mut(&mut self.shared)
    }

    /// Adds a quota to the fixed set: requests must fit in every quota. Ignored after
    /// [`select_limits`](Self::select_limits).
    pub fn add_quota(mut self, quota: Quota) -> Self {
        let shared = self.shared();
        if let LimitsSource::Fixed(limits) = &shared.limits {
            shared.limits = LimitsSource::Fixed(limits.clone().add_quota(quota));
        }
        self
    }

    /// Chooses the quotas per request, e.g. by the principal's tier. Build each [`Limits`]
    /// once (outside the closure) and return clones: their header values are precomputed and
    /// their state is kept apart.
    pub fn select_limits<F>(mut self, select: F) -> Self
    where
        F: Fn(&Parts) -> Limits + Send + Sync + 'static,
    {
        self.shared().limits = LimitsSource::Dynamic(Arc::new(select));
        self
    }

    /// Sets the cost (weight) of each request, default 1. A request costing more than the
    /// smallest burst can never pass: it is answered 429 without `Retry-After`.
    pub fn cost<F>(mut self, cost: F) -> Self
    where
        F: Fn(&Parts) -> NonZeroU32 + Send + Sync + 'static,
    {
        self.shared().cost = Some(Arc::new(cost));
        self
    }

    /// Sets what happens when the key cannot be extracted (default [`MissingKey::Reject`]).
    pub fn on_missing_key(mut self, missing: MissingKey) -> Self {
        self.shared().missing = missing;
        self
    }

    /// The client IP used by [`MissingKey::ClientIp`] when no outer layer resolved one
    /// (default: the TCP peer, or the key's own [`ClientIp`]).
    pub fn fallback_client_ip(mut self, client_ip: ClientIp) -> Self {
        self.shared().fallback_ip = client_ip;
        self
    }

    /// Sends no `RateLimit`/`RateLimit-Policy` headers (`Retry-After` on a 429 stays).
    pub fn no_headers(mut self) -> Self {
        self.shared().headers = false;
        self
    }

    /// Also sends `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset` (seconds
    /// until the quota is whole), for older clients.
    pub fn legacy_headers(mut self) -> Self {
        self.shared().legacy_headers = true;
        self
    }

    /// Counts only the responses `predicate` selects, for brute-force protection: e.g.
    /// `|status| status == StatusCode::UNAUTHORIZED` on a login route. A request is first
    /// checked without being charged (already over the limit: 429 without calling the inner
    /// service); after the response, it is charged if the predicate holds.
    ///
    /// Concurrent requests may all pass the check before any is charged, so up to the number
    /// of in-flight requests can exceed the quota; the charges still all land.
    pub fn count_only<F>(mut self, predicate: F) -> Self
    where
        F: Fn(StatusCode) -> bool + Send + Sync + 'static,
    {
        self.shared().count_only = Some(Arc::new(predicate));
        self
    }

    /// Uses `store` for the quota state, e.g. a `RedisStore` shared by all instances.
    pub fn with_store<St2: Store>(self, store: St2) -> RateLimitLayer<K, St2> {
        RateLimitLayer { key: self.key, store, shared: self.shared }
    }

    /// The store.
    pub fn store(&self) -> &St {
        &self.store
    }

    /// A handle on this layer's fixed quotas and store, for handlers that decide themselves
    /// (see [`RateLimiter`]). `None` when the quotas are selected per request.
    pub fn limiter(&self) -> Option<RateLimiter<St>>
    where
        St: Clone,
    {
        match &self.shared.limits {
            LimitsSource::Fixed(limits) => {
                Some(RateLimiter::from_parts(limits.clone(), self.store.clone()))
            }
            LimitsSource::Dynamic(_) => None,
        }
    }
}

impl<K, St: Clone> Clone for RateLimitLayer<K, St> {
    fn clone(&self) -> Self {
        Self {
            key: Arc::clone(&self.key),
            store: self.store.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K, St: fmt::Debug> fmt::Debug for RateLimitLayer<K, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RateLimitLayer");
        d.field("key", &self.shared.kind);
        match &self.shared.limits {
            LimitsSource::Fixed(limits) => d.field("limits", limits),
            LimitsSource::Dynamic(_) => d.field("limits", &"<fn>"),
        };
        d.field("store", &self.store)
            .field("missing_key", &self.shared.missing)
            .field("headers", &self.shared.headers)
            .field("legacy_headers", &self.shared.legacy_headers)
            .field("count_only", &self.shared.count_only.as_ref().map(|_| "<fn>"))
            .finish()
    }
}

impl<S, K, St: Clone> Layer<S> for RateLimitLayer<K, St> {
    type Service = RateLimit<S, K, St>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self.clone())
    }
}
