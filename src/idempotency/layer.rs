use std::{borrow::Cow, fmt, sync::Arc, time::Duration};

use http::{header, request::Parts, HeaderName, Method, StatusCode};
use tower_layer::Layer;

use super::{Idempotency, IdempotencyStore, MemoryStore};

/// Scopes the keys of anonymous callers (no [`Principal`](crate::principal::Principal) in the
/// request extensions).
///
/// Returns the scope (e.g. the client IP), or `None` to refuse the request. Implemented for
/// closures `Fn(&Parts) -> Option<String>`. Two anonymous callers that get the same scope
/// share a key space: one could replay the other's response by guessing its key, so the scope
/// must identify a caller as well as the deployment allows (an IP behind a trusted proxy, a
/// session id...).
///
/// With axum serving clients directly (`into_make_service_with_connect_info::<SocketAddr>()`),
/// the TCP peer is one line; behind a proxy, read the client IP your proxy-aware extractor
/// established instead, or every client shares the proxy's address:
///
/// ```ignore
/// use axum::extract::ConnectInfo;
///
/// let layer = IdempotencyLayer::new().anonymous_scope(|request: &http::request::Parts| {
///     let ConnectInfo(peer) = request.extensions.get::<ConnectInfo<SocketAddr>>()?;
///     Some(peer.ip().to_string())
/// });
/// ```
pub trait AnonymousScope: Send + Sync + 'static {
    /// The scope of this anonymous request, or `None` to refuse it.
    fn scope(&self, request: &Parts) -> Option<String>;
}

impl<F> AnonymousScope for F
where
    F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
{
    fn scope(&self, request: &Parts) -> Option<String> {
        self(request)
    }
}

/// What the layer does when the store fails (Redis down or slow, a full memory store).
///
/// # Example
///
/// A [`MemoryStore`] whose only slot holds a live lock refuses new keys, as a store that is
/// down would:
///
/// ```
/// # use std::{convert::Infallible, num::NonZeroUsize, time::Duration};
/// # use bytes::Bytes;
/// # use http::{Request, Response, StatusCode};
/// # use http_body_util::Full;
/// # use tower::{ServiceBuilder, ServiceExt};
/// use tower_shield::idempotency::{
///     BackendFailure, Fingerprint, IdempotencyLayer, IdempotencyStore, MemoryStore, RecordKey,
/// };
/// use tower_shield::principal::Principal;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = MemoryStore::new().capacity(NonZeroUsize::new(1).unwrap());
/// // A request in flight holds the only slot.
/// let (record, print) = (RecordKey::from_bytes([0; 32]), Fingerprint::from_bytes([0; 32]));
/// store.begin(record, print, Duration::from_secs(60)).await.unwrap();
///
/// for (policy, status) in [
///     (BackendFailure::FailClosed, StatusCode::SERVICE_UNAVAILABLE),
///     (BackendFailure::FailOpen, StatusCode::CREATED), // the handler ran, unprotected
/// ] {
///     let layer = IdempotencyLayer::new().with_store(store.clone()).on_backend_failure(policy);
///     let service = ServiceBuilder::new().layer(layer).service_fn(|_| async {
///         let mut response = Response::new(Full::<Bytes>::default());
///         *response.status_mut() = StatusCode::CREATED;
///         Ok::<_, Infallible>(response)
///     });
///     let mut request = Request::post("/orders")
///         .header("idempotency-key", "order-7f3a")
///         .body(Full::<Bytes>::default())
///         .unwrap();
///     request.extensions_mut().insert(Principal::builder("user-42").build());
///     assert_eq!(service.oneshot(request).await.unwrap().status(), status);
/// }
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendFailure {
    /// Answer 503 `service_unavailable` with `Retry-After` (the default): no write runs
    /// without its idempotency guarantee.
    #[default]
    FailClosed,
    /// Run the request without idempotency (logged as `backend.fail_open`): availability over
    /// the guarantee; a retry during the outage may run the write twice.
    FailOpen,
}

/// Makes writes safely retryable with the `Idempotency-Key` header: the first request runs and
/// its response is stored, a retry gets the stored response.
///
/// Defaults: `POST` and `PATCH`, key optional, records kept 24 hours, locks 60 seconds,
/// request bodies up to 1 MiB, responses stored up to 64 KiB, every status below 500 stored
/// except 408, 425 and 429, anonymous callers refused (401), an in-memory store, fail closed.
///
/// See the [module docs](crate::idempotency) for an example.
#[derive(Clone)]
#[must_use]
pub struct IdempotencyLayer {
    pub(crate) config: Arc<Config>,
}

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) store: Arc<dyn IdempotencyStore>,
    pub(crate) methods: Vec<Method>,
    pub(crate) required: bool,
    pub(crate) ttl: Duration,
    pub(crate) lock_ttl: Duration,
    pub(crate) retry_after: Duration,
    pub(crate) max_request_body: usize,
    pub(crate) max_response_body: usize,
    pub(crate) fingerprint_headers: Vec<HeaderName>,
    pub(crate) replay_headers: Vec<HeaderName>,
    pub(crate) store_status: Arc<dyn Fn(StatusCode) -> bool + Send + Sync>,
    pub(crate) anonymous: Option<Arc<dyn AnonymousScope>>,
    pub(crate) backend_failure: BackendFailure,
    pub(crate) realm: Cow<'static, str>,
}

/// The default: every status below 500, except those that invite a retry.
pub(crate) fn default_store_status(status: StatusCode) -> bool {
    !status.is_server_error()
        && !matches!(
            status,
            StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_EARLY | StatusCode::TOO_MANY_REQUESTS
        )
}

const MIN_DURATION: Duration = Duration::from_millis(1);

impl IdempotencyLayer {
    /// The defaults, with a new [`MemoryStore`].
    pub fn new() -> Self {
        Self {
            config: Arc::new(Config {
                store: Arc::new(MemoryStore::new()),
                methods: vec![Method::POST, Method::PATCH],
                required: false,
                ttl: Duration::from_secs(24 * 60 * 60),
                lock_ttl: Duration::from_secs(60),
                retry_after: Duration::from_secs(1),
                max_request_body: 1024 * 1024,
                max_response_body: 64 * 1024,
                fingerprint_headers: Vec::new(),
                replay_headers: vec![
                    header::CONTENT_TYPE,
                    header::CONTENT_LANGUAGE,
                    header::LOCATION,
                    header::ETAG,
                    header::LAST_MODIFIED,
                    // A replay carries the first response's caching rules: a `no-store` or
                    // `private` response must not become cacheable when replayed.
                    header::CACHE_CONTROL,
                    header::VARY,
                ],
                store_status: Arc::new(default_store_status),
                anonymous: None,
                backend_failure: BackendFailure::FailClosed,
                realm: Cow::Borrowed("api"),
            }),
        }
    }

    fn config(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Replaces the store (default: a [`MemoryStore`] of this layer's own). Layers that share
    /// a store (a clone of one `MemoryStore`, or Redis) share records.
    pub fn with_store(mut self, store: impl IdempotencyStore) -> Self {
        self.config().store = Arc::new(store);
        self
    }

    /// The methods the layer applies to (default `POST` and `PATCH`). Requests with other
    /// methods pass through untouched, key or not.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.config().methods = methods.into_iter().collect();
        self
    }

    /// Whether a request without a key is refused with 400 `idempotency_key_missing`
    /// (default `false`: it runs without idempotency).
    pub fn required(mut self, required: bool) -> Self {
        self.config().required = required;
        self
    }

    /// How long a completed response is replayed (default 24 hours; at least 1 ms).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.config().ttl = ttl.max(MIN_DURATION);
        self
    }

    /// How long a request in flight holds its key (default 60 seconds; at least 1 ms). After
    /// this a retry may run again: set it above your slowest write, so an instance that
    /// crashed mid-request does not block the key for long.
    pub fn lock_ttl(mut self, lock_ttl: Duration) -> Self {
        self.config().lock_ttl = lock_ttl.max(MIN_DURATION);
        self
    }

    /// The `Retry-After` sent with 409 (key in flight) and 503 (store down); default 1 second.
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.config().retry_after = retry_after;
        self
    }

    /// The largest request body read to fingerprint a request (default 1 MiB); a larger one
    /// gets 413.
    pub fn max_request_body(mut self, limit: usize) -> Self {
        self.config().max_request_body = limit;
        self
    }

    /// The largest response body stored (default 64 KiB). A larger response is served in full
    /// but not stored: its lock is released (logged as `idempotency.not_stored`), so a retry
    /// runs the handler again.
    pub fn max_response_body(mut self, limit: usize) -> Self {
        self.config().max_response_body = limit;
        self
    }

    /// Adds a request header to the fingerprint: the same key with a different value of it is
    /// a different request (422).
    pub fn add_fingerprint_header(mut self, name: HeaderName) -> Self {
        self.config().fingerprint_headers.push(name);
        self
    }

    /// Adds a response header to the ones stored and replayed (default `content-type`,
    /// `content-language`, `location`, `etag`, `last-modified`, `cache-control`, `vary`).
    /// Others, `set-cookie` among them, are not replayed.
    pub fn add_replay_header(mut self, name: HeaderName) -> Self {
        self.config().replay_headers.push(name);
        self
    }

    /// Which response statuses are stored; a response that is not stored releases its key so
    /// the client can retry. Default: every status below 500 except 408, 425 and 429.
    pub fn store_when(
        mut self,
        predicate: impl Fn(StatusCode) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.config().store_status = Arc::new(predicate);
        self
    }

    /// Scopes the keys of anonymous callers (default: they are refused with 401
    /// `unauthenticated`). See [`AnonymousScope`].
    pub fn anonymous_scope(mut self, scope: impl AnonymousScope) -> Self {
        self.config().anonymous = Some(Arc::new(scope));
        self
    }

    /// What to do when the store fails (default [`BackendFailure::FailClosed`]).
    pub fn on_backend_failure(mut self, policy: BackendFailure) -> Self {
        self.config().backend_failure = policy;
        self
    }

    /// The realm of the `WWW-Authenticate` challenge sent to refused anonymous callers
    /// (default `"api"`).
    pub fn realm(mut self, realm: impl Into<Cow<'static, str>>) -> Self {
        self.config().realm = realm.into();
        self
    }
}

impl Default for IdempotencyLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config.fmt(f)
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("store", &self.store)
            .field("methods", &self.methods)
            .field("required", &self.required)
            .field("ttl", &self.ttl)
            .field("lock_ttl", &self.lock_ttl)
            .field("retry_after", &self.retry_after)
            .field("max_request_body", &self.max_request_body)
            .field("max_response_body", &self.max_response_body)
            .field("fingerprint_headers", &self.fingerprint_headers)
            .field("replay_headers", &self.replay_headers)
            .field("store_status", &"<fn>")
            .field("anonymous", &self.anonymous.as_ref().map(|_| "<fn>"))
            .field("backend_failure", &self.backend_failure)
            .field("realm", &self.realm)
            .finish()
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency::new(inner, self.clone())
    }
}
