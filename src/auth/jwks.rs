//! Keys fetched from a JWKS URL or through OIDC discovery, cached, rotated and refreshed.
//!
//! [`RemoteJwks`] holds the [`KeySet`] an identity provider publishes and keeps it current:
//!
//! - **Lazy.** Building it never touches the network, so a service starts while the identity
//!   provider is down. Until keys arrive, [`RemoteJwks::key`] fails with
//!   [`ErrorKind::ServiceUnavailable`] (503), and retries at most once per
//!   [`retry_interval`](RemoteJwksBuilder::retry_interval) (default 5 s).
//! - **Cached** for the response's `Cache-Control: max-age`, clamped to
//!   [`min_ttl`](RemoteJwksBuilder::min_ttl)..=[`max_ttl`](RemoteJwksBuilder::max_ttl)
//!   (default 60 s..=24 h; [`default_ttl`](RemoteJwksBuilder::default_ttl) 5 min when the header
//!   is absent; `no-cache`/`no-store` mean the minimum).
//! - **Refreshed before expiry**: in the last tenth of the lifetime a request starts a refresh
//!   in the background without waiting for it, and a background task (which stops when the last
//!   clone is dropped) refreshes idle instances. A request that finds the keys expired waits for
//!   the refresh, unless refreshes are currently failing.
//! - **Rotation.** A token whose `kid` is unknown triggers a refetch at most once per
//!   [`refetch_cooldown`](RemoteJwksBuilder::refetch_cooldown) (default 30 s, measured from the
//!   last fetch of any kind): a flood of random `kid`s costs at most one fetch per cooldown,
//!   and is otherwise rejected with [`ErrorKind::InvalidToken`] (reason `unknown kid`).
//! - **Single flight.** One fetch at a time; concurrent callers wait on the same fetch. The
//!   fetch runs in its own task, so a cancelled request does not cancel it. No lock is held
//!   across an `.await`: verifications keep using the current keys while a fetch runs.
//! - **Bounded**: fetch timeout (default 5 s, discovery and JWKS together), response size cap
//!   (default 256 KiB), the [`KeySetConfig`] limits on keys, at most 3 redirects.
//! - **Last good keys kept** when a refresh fails (unreachable, timeout, non-200, oversize,
//!   malformed, no usable key). Each failure is logged as `backend.failure` at target
//!   `tower_shield::security`.
//! - **HTTPS required** for the JWKS URL, the discovery URL, the discovered `jwks_uri` and
//!   redirects, except for loopback hosts (`127.0.0.0/8`, `::1`, `localhost`) or with
//!   [`insecure_allow_http`](RemoteJwksBuilder::insecure_allow_http).
//! - **Discovery** (`RemoteJwks::discover(issuer)`) reads
//!   `{issuer}/.well-known/openid-configuration`, requires its `issuer` to equal the configured
//!   issuer exactly (OpenID Connect Discovery 1.0, section 4.3) and follows its `jwks_uri`.
//!
//! Time for cache lifetimes and cooldowns comes from the injected [`Clock`]. A tokio runtime is
//! required (fetches and the refresh task are tokio tasks).
//!
//! # Example
//!
//! ```no_run
//! use jsonwebtoken::Algorithm;
//! use tower_shield::auth::RemoteJwks;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let jwks = RemoteJwks::discover("https://login.example.com/").build()?;
//!
//! // In an authenticator, with the kid and alg of the token's header:
//! match jwks.key(Some("2026-01"), Algorithm::RS256).await {
//!     Ok(key) => { /* jsonwebtoken::decode(token, key.decoding_key(), ..) */ }
//!     Err(error) => { /* 503 while the IdP is unreachable, 401 for an unknown kid */ }
//! }
//! # Ok(()) }
//! ```

use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError, RwLock, Weak,
    },
    time::Duration,
};

use bytes::Bytes;
use http::{header, HeaderMap, StatusCode};
use jsonwebtoken::Algorithm;
use reqwest::{redirect, Url};
use tokio::sync::{oneshot, watch};

use super::{
    jwk::fetch::{check_url, describe, host, read_capped},
    jwt::{BoxRefreshFuture, KeySource},
    KeySet, KeySetConfig, VerifyingKey,
};
use crate::{
    clock::{Clock, SystemClock},
    error::ConfigError,
    Error, ErrorKind,
};

const DEFAULT_MIN_TTL: Duration = Duration::from_secs(60);
const DEFAULT_MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);
const DEFAULT_TTL: Duration = Duration::from_secs(5 * 60);
const DEFAULT_COOLDOWN: Duration = Duration::from_secs(30);
const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_MAX_RESPONSE_SIZE: usize = 256 * 1024;
const MAX_REDIRECTS: usize = 3;
/// The shortest real-time pause of the background task between two attempts.
const MIN_BACKGROUND_DELAY: Duration = Duration::from_secs(1);

/// A JWK set fetched from a JWKS URL or an OIDC discovery document, kept current.
///
/// `Clone` is cheap: all clones share one cache, one in-flight fetch and one background
/// refresh task, which stops when the last clone is dropped.
///
/// See the [module docs](crate::auth::jwks) for the rules and an example.
#[derive(Clone)]
pub struct RemoteJwks {
    inner: Arc<Inner>,
}

/// Builds a [`RemoteJwks`]. Made by [`RemoteJwks::from_url`] or [`RemoteJwks::discover`].
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_shield::auth::{jwt::Jwt, RemoteJwks};
///
/// let url = "http://127.0.0.1:8080/.well-known/jwks.json";
/// let jwks = RemoteJwks::from_url(url)
///     .min_ttl(Duration::from_secs(30))
///     .refetch_cooldown(Duration::from_secs(60))
///     .timeout(Duration::from_secs(2))
///     .build()
///     .unwrap();
/// // Building fetches nothing: the first token (or `refresh`) does.
/// assert!(jwks.keys().is_none());
/// let jwt = Jwt::builder()
///     .with_key_source(jwks)
///     .issuer("http://127.0.0.1:8080")
///     .audience("orders-api")
///     .build();
/// assert!(jwt.is_ok());
///
/// // The lifetimes must satisfy `min_ttl <= default_ttl (5 min) <= max_ttl`.
/// assert!(RemoteJwks::from_url(url).min_ttl(Duration::from_secs(600)).build().is_err());
/// ```
#[must_use]
pub struct RemoteJwksBuilder {
    source: Result<Source, ConfigError>,
    config: Config,
    clock: Arc<dyn Clock>,
    client: Option<reqwest::Client>,
}

#[derive(Clone, Debug)]
enum Source {
    Jwks(Url),
    Discovery { url: Url, issuer: String },
}

#[derive(Clone, Debug)]
struct Config {
    min_ttl: Duration,
    max_ttl: Duration,
    default_ttl: Duration,
    cooldown: Duration,
    retry_interval: Duration,
    timeout: Duration,
    max_response_size: usize,
    key_set: KeySetConfig,
    insecure_http: bool,
}

struct Inner {
    source: Source,
    config: Config,
    clock: Arc<dyn Clock>,
    client: reqwest::Client,
    current: RwLock<Option<Arc<Loaded>>>,
    state: Mutex<State>,
    /// Whether the background refresh task was spawned.
    background_started: AtomicBool,
    /// Dropped with `Inner`, which tells the background task to stop.
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

struct Loaded {
    keys: Arc<KeySet>,
    /// The same keys as one slice, handed to [`Jwt`](super::jwt::Jwt) without copying.
    snapshot: Arc<[VerifyingKey]>,
    refresh_at: Duration,
    expires_at: Duration,
}

#[derive(Default)]
struct State {
    in_flight: Option<watch::Receiver<Option<Result<(), Error>>>>,
    last_started: Option<Duration>,
    last_failed: Option<Duration>,
    failing: bool,
    jwks_uri: Option<Url>,
}

/// Why a fetch is wanted; decides whether it may start now.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Why {
    /// No keys yet, keys expired, or due for refresh: at most once per retry interval after a
    /// failure.
    Refresh,
    /// A token named a key that is not in the set: at most once per cooldown.
    UnknownKid,
    /// Asked for explicitly.
    Forced,
}

impl RemoteJwks {
    /// Keys from the JWK set at `url`.
    ///
    /// An invalid or insecure URL is reported by [`RemoteJwksBuilder::build`].
    pub fn from_url(url: &str) -> RemoteJwksBuilder {
        RemoteJwksBuilder::new(
            Url::parse(url)
                .map(Source::Jwks)
                .map_err(|_| ConfigError::new("JWKS URL is not a valid absolute URL")),
        )
    }

    /// Keys of the OpenID Connect provider `issuer`, found through
    /// `{issuer}/.well-known/openid-configuration`. The discovery document's `issuer` must equal
    /// `issuer` exactly.
    pub fn discover(issuer: &str) -> RemoteJwksBuilder {
        let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
        Self::discover_at(&url, issuer)
    }

    /// Like [`discover`](Self::discover) with a discovery document at a URL of its own.
    pub fn discover_at(discovery_url: &str, issuer: &str) -> RemoteJwksBuilder {
        RemoteJwksBuilder::new(
            Url::parse(discovery_url)
                .map(|url| Source::Discovery { url, issuer: issuer.to_owned() })
                .map_err(|_| ConfigError::new("OIDC discovery URL is not a valid absolute URL")),
        )
    }

    /// The key for a token with header `kid` and `alg`, from the cache when it is there.
    /// Never fetches. See [`KeySet::find`] for how `kid` and `alg` match.
    pub fn cached(&self, kid: Option<&str>, alg: Algorithm) -> Option<Arc<VerifyingKey>> {
        self.inner.loaded()?.keys.find(kid, alg).cloned()
    }

    /// The current key set, if one was fetched.
    pub fn keys(&self) -> Option<Arc<KeySet>> {
        self.inner.loaded().map(|loaded| Arc::clone(&loaded.keys))
    }

    /// The key for a token with header `kid` and `alg`, fetching the set when there is none
    /// yet, when it expired, or (at most once per cooldown) when `kid` is unknown.
    ///
    /// # Errors
    ///
    /// - [`ErrorKind::ServiceUnavailable`] when no key set could be fetched yet;
    /// - [`ErrorKind::InvalidToken`] (reason `unknown kid`) when the set has no matching key,
    ///   after the refetch the cooldown allows.
    pub async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<Arc<VerifyingKey>, Error> {
        let inner = &self.inner;
        inner.start_background();
        let now = inner.clock.monotonic();
        let mut last_error = None;
        if let Some(loaded) = inner.loaded() {
            if now >= loaded.expires_at {
                let failing = inner.state().failing;
                if let Some(fetch) = inner.start_fetch(now, Why::Refresh) {
                    if !failing {
                        last_error = wait(fetch).await.err();
                    }
                }
            } else if now >= loaded.refresh_at {
                inner.start_fetch(now, Why::Refresh);
            }
        } else if let Some(fetch) = inner.start_fetch(now, Why::Refresh) {
            last_error = wait(fetch).await.err();
        }

        let Some(loaded) = inner.loaded() else {
            return Err(last_error.unwrap_or_else(|| unavailable("no JWKS fetched yet")));
        };
        if let Some(key) = loaded.keys.find(kid, alg) {
            return Ok(Arc::clone(key));
        }
        if let Some(fetch) = inner.start_fetch(now, Why::UnknownKid) {
            // A failed refetch keeps the last good keys; the token is still unknown to them.
            let _ = wait(fetch).await;
            if let Some(key) = inner.loaded().and_then(|l| l.keys.find(kid, alg).cloned()) {
                return Ok(key);
            }
        }
        Err(Error::new(ErrorKind::InvalidToken).with_reason("unknown kid"))
    }

    /// Fetches the key set now (or waits for the fetch already running), whatever the cache
    /// and cooldown say. Useful to warm the cache at startup.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::ServiceUnavailable`] when the fetch fails; the last good keys are kept.
    pub async fn refresh(&self) -> Result<(), Error> {
        self.inner.start_background();
        let now = self.inner.clock.monotonic();
        match self.inner.start_fetch(now, Why::Forced) {
            Some(fetch) => wait(fetch).await,
            None => Ok(()),
        }
    }
}

/// A [`Jwt`](super::jwt::Jwt) verifies with the current snapshot of the set; a token naming an
/// unknown `kid` starts a refetch (at most once per cooldown, joined by concurrent requests),
/// and before the first set arrives every token waits for a fetch, or is answered 503 while
/// fetches are failing.
///
/// ```no_run
/// use tower_shield::auth::{jwt::Jwt, RemoteJwks};
///
/// # fn main() -> Result<(), tower_shield::error::ConfigError> {
/// let jwks = RemoteJwks::discover("https://login.example.com").build()?;
/// let jwt = Jwt::builder()
///     .with_key_source(jwks)
///     .issuer("https://login.example.com")
///     .audience("orders-api")
///     .build()?;
/// # let _ = jwt;
/// # Ok(())
/// # }
/// ```
impl KeySource for RemoteJwks {
    fn keys(&self) -> Arc<[VerifyingKey]> {
        self.inner.start_background();
        match self.inner.loaded() {
            Some(loaded) => Arc::clone(&loaded.snapshot),
            None => Arc::from(Vec::new()),
        }
    }

    fn refresh(&self, _kid: &str) -> Option<BoxRefreshFuture> {
        let inner = &self.inner;
        inner.start_background();
        let why = if inner.loaded().is_some() { Why::UnknownKid } else { Why::Refresh };
        let fetch = inner.start_fetch(inner.clock.monotonic(), why)?;
        Some(Box::pin(wait(fetch)))
    }
}

impl fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteJwks")
            .field("source", &self.inner.source)
            .field("keys", &self.inner.loaded().map(|l| Arc::clone(&l.keys)))
            .finish_non_exhaustive()
    }
}

impl RemoteJwksBuilder {
    fn new(source: Result<Source, ConfigError>) -> Self {
        Self {
            source,
            config: Config {
                min_ttl: DEFAULT_MIN_TTL,
                max_ttl: DEFAULT_MAX_TTL,
                default_ttl: DEFAULT_TTL,
                cooldown: DEFAULT_COOLDOWN,
                retry_interval: DEFAULT_RETRY_INTERVAL,
                timeout: DEFAULT_TIMEOUT,
                max_response_size: DEFAULT_MAX_RESPONSE_SIZE,
                key_set: KeySetConfig::new(),
                insecure_http: false,
            },
            clock: Arc::new(SystemClock),
            client: None,
        }
    }

    /// The shortest time a fetched set is cached, whatever `max-age` says. Default 60 s.
    pub fn min_ttl(mut self, ttl: Duration) -> Self {
        self.config.min_ttl = ttl;
        self
    }

    /// The longest time a fetched set is cached, whatever `max-age` says. Default 24 h.
    pub fn max_ttl(mut self, ttl: Duration) -> Self {
        self.config.max_ttl = ttl;
        self
    }

    /// How long a set is cached when the response has no `max-age`. Default 5 min.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.config.default_ttl = ttl;
        self
    }

    /// The least time between a fetch and a refetch caused by an unknown `kid`. Default 30 s.
    pub fn refetch_cooldown(mut self, cooldown: Duration) -> Self {
        self.config.cooldown = cooldown;
        self
    }

    /// The least time between a failed fetch and the next attempt. Default 5 s.
    pub fn retry_interval(mut self, interval: Duration) -> Self {
        self.config.retry_interval = interval;
        self
    }

    /// The most time one fetch may take, discovery included. Default 5 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self
    }

    /// The largest response body read (discovery document or JWK set). Default 256 KiB.
    pub fn max_response_size(mut self, bytes: usize) -> Self {
        self.config.max_response_size = bytes;
        self
    }

    /// How the fetched JWK set becomes a [`KeySet`] (key count limit, RSA keys without `alg`).
    pub fn key_set_config(mut self, config: KeySetConfig) -> Self {
        self.config.key_set = config;
        self
    }

    /// Replaces the clock used for cache lifetimes and cooldowns.
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Uses this HTTP client (for proxies, custom roots...). Its redirect policy applies as
    /// configured on it; the fetch timeout and size cap still apply.
    pub fn with_client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Allows plain `http` URLs for non-loopback hosts. Anyone on the network path can then
    /// replace the keys and forge tokens: for isolated test environments only.
    pub fn insecure_allow_http(mut self) -> Self {
        self.config.insecure_http = true;
        self
    }

    /// Builds the key source. Does not fetch anything.
    ///
    /// # Errors
    ///
    /// When the URL is invalid or insecure, the lifetimes are inconsistent (`min_ttl <=
    /// default_ttl <= max_ttl`), the timeout is zero, or the HTTP client cannot be built.
    pub fn build(self) -> Result<RemoteJwks, ConfigError> {
        let source = self.source?;
        let config = self.config;
        match &source {
            Source::Jwks(url) | Source::Discovery { url, .. } => {
                check_url(url, config.insecure_http).map_err(ConfigError::new)?;
            }
        }
        if !(config.min_ttl <= config.default_ttl && config.default_ttl <= config.max_ttl) {
            return Err(ConfigError::new(
                "JWKS lifetimes must satisfy min_ttl <= default_ttl <= max_ttl",
            ));
        }
        if config.timeout.is_zero() {
            return Err(ConfigError::new("JWKS fetch timeout must not be zero"));
        }
        let client = match self.client {
            Some(client) => client,
            None => {
                let insecure = config.insecure_http;
                reqwest::Client::builder()
                    .timeout(config.timeout)
                    .redirect(redirect::Policy::custom(move |attempt| {
                        if attempt.previous().len() >= MAX_REDIRECTS {
                            attempt.error("too many redirects")
                        } else if let Err(reason) = check_url(attempt.url(), insecure) {
                            attempt.error(reason)
                        } else {
                            attempt.follow()
                        }
                    }))
                    .user_agent(concat!("tower-shield/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|_| ConfigError::new("cannot build the HTTP client for JWKS"))?
            }
        };
        Ok(RemoteJwks {
            inner: Arc::new(Inner {
                source,
                config,
                clock: self.clock,
                client,
                current: RwLock::new(None),
                state: Mutex::new(State::default()),
                background_started: AtomicBool::new(false),
                stop: Mutex::new(None),
            }),
        })
    }
}

impl fmt::Debug for RemoteJwksBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteJwksBuilder")
            .field("source", &self.source)
            .field("config", &self.config)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn loaded(&self) -> Option<Arc<Loaded>> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a fetch if none is running and `why` allows one now; joins the running one
    /// otherwise. `None` when no fetch runs or may start.
    fn start_fetch(
        self: &Arc<Self>,
        now: Duration,
        why: Why,
    ) -> Option<watch::Receiver<Option<Result<(), Error>>>> {
        let mut state = self.state();
        if let Some(fetch) = &state.in_flight {
            // A finished fetch clears `in_flight` before it answers, so a closed channel here
            // is a task that died (a panic, its runtime shut down): it will never answer, and
            // joining it would wedge the source. Start anew.
            if fetch.has_changed().is_ok() {
                return Some(fetch.clone());
            }
            state.in_flight = None;
        }
        let since = |t: Option<Duration>| t.map_or(Duration::MAX, |t| now.saturating_sub(t));
        let allowed = match why {
            Why::Forced => true,
            Why::Refresh => {
                !state.failing || since(state.last_failed) >= self.config.retry_interval
            }
            Why::UnknownKid => since(state.last_started) >= self.config.cooldown,
        };
        if !allowed {
            return None;
        }
        state.last_started = Some(now);
        let (tx, rx) = watch::channel(None);
        state.in_flight = Some(rx.clone());
        drop(state);
        tokio::spawn(Arc::clone(self).run_fetch(tx));
        Some(rx)
    }

    async fn run_fetch(self: Arc<Self>, tx: watch::Sender<Option<Result<(), Error>>>) {
        let result = match tokio::time::timeout(self.config.timeout, self.fetch()).await {
            Ok(result) => result,
            Err(_) => Err("timed out".to_owned()),
        };
        let now = self.clock.monotonic();
        let outcome = match result {
            Ok((keys, ttl)) => {
                let loaded = Loaded {
                    snapshot: keys.iter().map(|key| VerifyingKey::clone(key)).collect(),
                    keys: Arc::new(keys),
                    refresh_at: now + ttl - ttl / 10,
                    expires_at: now + ttl,
                };
                *self.current.write().unwrap_or_else(PoisonError::into_inner) =
                    Some(Arc::new(loaded));
                let mut state = self.state();
                state.failing = false;
                state.in_flight = None;
                Ok(())
            }
            Err(reason) => {
                crate::observe::backend_failure("jwks");
                tracing::warn!(
                    target: "tower_shield::security",
                    event = "backend.failure",
                    backend = "jwks",
                    reason = %reason,
                    kept_keys = self.loaded().is_some(),
                    "JWKS fetch failed"
                );
                let mut state = self.state();
                state.failing = true;
                state.last_failed = Some(now);
                state.jwks_uri = None;
                state.in_flight = None;
                Err(unavailable(format!("JWKS fetch failed: {reason}")))
            }
        };
        tx.send_replace(Some(outcome));
    }

    /// One fetch: discovery when configured (and not yet resolved), then the JWK set.
    async fn fetch(&self) -> Result<(KeySet, Duration), String> {
        let jwks_uri = match &self.source {
            Source::Jwks(url) => url.clone(),
            Source::Discovery { url, issuer } => {
                let cached = self.state().jwks_uri.clone();
                match cached {
                    Some(uri) => uri,
                    None => {
                        let uri = self.discover(url, issuer).await?;
                        self.state().jwks_uri = Some(uri.clone());
                        uri
                    }
                }
            }
        };
        let (headers, body) =
            self.get(&jwks_uri, "application/jwk-set+json, application/json").await?;
        let keys = KeySet::from_json_with(&body, &self.config.key_set)
            .map_err(|e| format!("JWKS rejected: {}", e.message()))?;
        Ok((keys, self.ttl(&headers)))
    }

    async fn discover(&self, url: &Url, issuer: &str) -> Result<Url, String> {
        #[derive(serde::Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let (_, body) = self.get(url, "application/json").await?;
        let document: Discovery = serde_json::from_slice(&body).map_err(|_| {
            "discovery document is not JSON with `issuer` and `jwks_uri`".to_owned()
        })?;
        if document.issuer != issuer {
            return Err("discovery document issuer does not match the configured issuer".to_owned());
        }
        let jwks_uri = Url::parse(&document.jwks_uri)
            .map_err(|_| "discovered jwks_uri is not a valid URL".to_owned())?;
        check_url(&jwks_uri, self.config.insecure_http)
            .map_err(|e| format!("discovered jwks_uri: {e}"))?;
        Ok(jwks_uri)
    }

    async fn get(&self, url: &Url, accept: &'static str) -> Result<(HeaderMap, Bytes), String> {
        let mut response = self
            .client
            .get(url.clone())
            .header(header::ACCEPT, accept)
            .timeout(self.config.timeout)
            .send()
            .await
            .map_err(|e| format!("request to {} failed: {}", host(url), describe(&e)))?;
        if response.status() != StatusCode::OK {
            return Err(format!("{} answered {}", host(url), response.status()));
        }
        let body = read_capped(&mut response, self.config.max_response_size)
            .await
            .map_err(|e| format!("{} response: {e}", host(url)))?;
        Ok((response.headers().clone(), body))
    }

    fn ttl(&self, headers: &HeaderMap) -> Duration {
        let ttl = max_age(headers).unwrap_or(self.config.default_ttl);
        ttl.clamp(self.config.min_ttl, self.config.max_ttl)
    }

    /// Starts the background refresh task once, if a tokio runtime is running.
    fn start_background(self: &Arc<Self>) {
        if self.background_started.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        if self.background_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let (tx, rx) = oneshot::channel();
        *self.stop.lock().unwrap_or_else(PoisonError::into_inner) = Some(tx);
        runtime.spawn(background(Arc::downgrade(self), rx));
    }

    /// How long the background task sleeps before its next attempt.
    fn background_delay(&self) -> Duration {
        let now = self.clock.monotonic();
        let mut due = self.loaded().map_or(now, |loaded| loaded.refresh_at);
        let state = self.state();
        if state.failing {
            if let Some(failed) = state.last_failed {
                due = due.max(failed + self.config.retry_interval);
            }
        }
        due.saturating_sub(now).max(MIN_BACKGROUND_DELAY)
    }
}

/// Refreshes the keys before they expire while no request does. Holds only a `Weak`, and ends
/// when `stop` resolves (its sender is dropped with the last clone).
async fn background(weak: Weak<Inner>, mut stop: oneshot::Receiver<()>) {
    loop {
        let delay = match weak.upgrade() {
            Some(inner) => inner.background_delay(),
            None => return,
        };
        if tokio::time::timeout(delay, &mut stop).await.is_ok() {
            return;
        }
        let fetch = match weak.upgrade() {
            Some(inner) => {
                let now = inner.clock.monotonic();
                let due = inner.loaded().is_none_or(|loaded| now >= loaded.refresh_at);
                if due {
                    inner.start_fetch(now, Why::Refresh)
                } else {
                    None
                }
            }
            None => return,
        };
        if let Some(fetch) = fetch {
            let _ = wait(fetch).await;
        }
    }
}

async fn wait(mut fetch: watch::Receiver<Option<Result<(), Error>>>) -> Result<(), Error> {
    match fetch.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.clone().unwrap_or(Ok(())),
        Err(_) => Err(unavailable("JWKS fetch task ended without a result")),
    }
}

fn unavailable(reason: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::ServiceUnavailable).with_reason(reason)
}

/// `Cache-Control: max-age`, with `no-cache`/`no-store` as zero.
fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let mut max_age = None;
    for value in headers.get_all(header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',') {
            let directive = directive.trim();
            let (name, arg) = directive.split_once('=').unwrap_or((directive, ""));
            let name = name.trim();
            if name.eq_ignore_ascii_case("no-cache") || name.eq_ignore_ascii_case("no-store") {
                return Some(Duration::ZERO);
            }
            if name.eq_ignore_ascii_case("max-age") {
                if let Ok(seconds) = arg.trim().trim_matches('"').parse::<u64>() {
                    max_age = Some(Duration::from_secs(seconds));
                }
            }
        }
    }
    max_age
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(header::CACHE_CONTROL, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn cache_control_parsing() {
        assert_eq!(max_age(&headers(&[])), None);
        assert_eq!(max_age(&headers(&["public, max-age=3600"])), Some(Duration::from_secs(3600)));
        assert_eq!(max_age(&headers(&["Max-Age = 120 "])), Some(Duration::from_secs(120)));
        assert_eq!(max_age(&headers(&["max-age=\"90\""])), Some(Duration::from_secs(90)));
        assert_eq!(max_age(&headers(&["public", "max-age=7"])), Some(Duration::from_secs(7)));
        assert_eq!(max_age(&headers(&["max-age=60, no-store"])), Some(Duration::ZERO));
        assert_eq!(max_age(&headers(&["no-cache"])), Some(Duration::ZERO));
        assert_eq!(max_age(&headers(&["max-age=-1"])), None);
        assert_eq!(max_age(&headers(&["max-age=99999999999999999999999"])), None);
    }

    #[test]
    fn ttl_is_clamped() {
        let jwks = RemoteJwks::from_url("https://idp.example/jwks").build().unwrap();
        let inner = &jwks.inner;
        assert_eq!(inner.ttl(&headers(&[])), DEFAULT_TTL);
        assert_eq!(inner.ttl(&headers(&["max-age=5"])), DEFAULT_MIN_TTL);
        assert_eq!(inner.ttl(&headers(&["max-age=120"])), Duration::from_secs(120));
        assert_eq!(inner.ttl(&headers(&["max-age=31536000"])), DEFAULT_MAX_TTL);
    }

    #[test]
    fn https_is_required_except_for_loopback_or_insecure() {
        for ok in [
            "https://idp.example/jwks",
            "http://127.0.0.1:8080/jwks",
            "http://127.1.2.3/jwks",
            "http://[::1]:9000/jwks",
            "http://localhost/jwks",
            "http://LOCALHOST:1/jwks",
        ] {
            assert!(RemoteJwks::from_url(ok).build().is_ok(), "{ok}");
        }
        for bad in [
            "http://idp.example/jwks",
            "http://10.0.0.1/jwks",
            "ftp://idp.example/jwks",
            "file:///etc/jwks",
            "not a url",
            "/jwks",
        ] {
            assert!(RemoteJwks::from_url(bad).build().is_err(), "{bad}");
        }
        assert!(RemoteJwks::from_url("http://idp.example/jwks")
            .insecure_allow_http()
            .build()
            .is_ok());
        assert!(RemoteJwks::discover("http://idp.example").build().is_err());
        assert!(RemoteJwks::discover("https://idp.example").build().is_ok());
    }

    #[test]
    fn discovery_url_is_derived_from_the_issuer() {
        let jwks = RemoteJwks::discover("https://idp.example/realms/x/").build().unwrap();
        match &jwks.inner.source {
            Source::Discovery { url, issuer } => {
                assert_eq!(
                    url.as_str(),
                    "https://idp.example/realms/x/.well-known/openid-configuration"
                );
                assert_eq!(issuer, "https://idp.example/realms/x/");
            }
            Source::Jwks(_) => panic!("expected discovery"),
        }
    }

    #[test]
    fn inconsistent_config_is_refused() {
        let url = "https://idp.example/jwks";
        assert!(RemoteJwks::from_url(url).min_ttl(Duration::from_secs(600)).build().is_err());
        assert!(RemoteJwks::from_url(url).max_ttl(Duration::from_secs(10)).build().is_err());
        assert!(RemoteJwks::from_url(url).timeout(Duration::ZERO).build().is_err());
    }

    #[tokio::test]
    async fn background_task_stops_with_the_last_clone() {
        let jwks = RemoteJwks::from_url("http://127.0.0.1:9/jwks")
            .retry_interval(Duration::from_secs(3600))
            .build()
            .unwrap();
        let metrics = tokio::runtime::Handle::current().metrics();
        let before = metrics.num_alive_tasks();
        jwks.inner.start_background();
        assert!(jwks.inner.background_started.load(Ordering::Acquire));
        assert_eq!(metrics.num_alive_tasks(), before + 1);
        let weak = Arc::downgrade(&jwks.inner);
        let clone = jwks.clone();
        drop(jwks);
        assert!(weak.upgrade().is_some());
        drop(clone);
        assert!(weak.upgrade().is_none(), "the background task must not keep the cache alive");
        for _ in 0..100 {
            if metrics.num_alive_tasks() == before {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(metrics.num_alive_tasks(), before, "the background task must end");
    }

    #[test]
    fn debug_shows_no_key_material() {
        let jwks = RemoteJwks::from_url("https://idp.example/jwks").build().unwrap();
        let debug = format!("{jwks:?}");
        assert!(debug.contains("idp.example"), "{debug}");
    }
}
