//! OAuth 2.0 token introspection (RFC 7662): opaque tokens checked with the authorization
//! server, cached.
//!
//! [`Introspection`] POSTs `token=<token>&token_type_hint=access_token` to the introspection
//! endpoint, authenticated as the resource server with HTTP Basic (`client_id:client_secret`,
//! each form-urlencoded first, as RFC 6749 section 2.3.1 requires), and turns the answer into a
//! [`Principal`]:
//!
//! - `active: false` → [`ErrorKind::InvalidToken`];
//! - `active: true` → a principal with [`AuthMethod::Introspection`]: subject from `sub` (or
//!   `client_id` for client-credentials tokens without `sub`; a `sub` that is not a non-empty
//!   string is refused), scopes from the space-separated
//!   `scope`, `client_id`, the tenant from a configurable claim (default `tenant`), roles from
//!   an optional claim, `auth_time`/`acr`/`amr` when present, and every member of the answer as
//!   a claim;
//! - `exp` and `nbf` are checked against the [`Clock`] (with a leeway, default 60 s), `iss`
//!   against the configured issuer and `aud` against the configured audiences. Both are
//!   required, as for a [`Jwt`](super::jwt::Jwt): an authorization server that serves several
//!   APIs would otherwise let a token issued for one of them into this one. A server whose
//!   answers carry no `iss` or `aud` needs `insecure_skip_issuer` or `insecure_skip_audience`.
//!
//! **Fail closed.** An unreachable endpoint, a timeout (default 5 s), a status other than 200,
//! a body over the size cap (default 64 KiB), or an answer without a boolean `active` is
//! [`ErrorKind::ServiceUnavailable`] (503), logged as `backend.failure` at target
//! `tower_shield::security`. Concurrent calls to the endpoint are capped (default 64); a call
//! that waits longer than the timeout for a slot is a 503 too. Concurrent requests with the
//! same token share one call (single flight).
//!
//! **Caching.** Active results are cached for the configured TTL (default 60 s) but never past
//! the token's `exp`; rejected tokens for a short negative TTL (default 10 s). The caches are
//! bounded (default 10 000 active and 10 000 rejected entries, evicting the least useful first)
//! and keyed by the SHA-256 digest of the token: the token itself is never stored. A revoked
//! token stays accepted until its cache entry expires: keep the TTL short where that matters.
//! In an [`AuthLayer`](super::AuthLayer), a cached answer is given within the layer's `call`
//! (no future and no copy of the token); only a miss waits for the endpoint.
//! Tokens longer than [`max_token_length`](IntrospectionBuilder::max_token_length) (default
//! 8 KiB) are rejected without a call.
//!
//! The client secret never appears in `Debug` output or logs; the token is never logged.
//!
//! # Example
//!
//! ```no_run
//! use tower_shield::auth::Introspection;
//!
//! # async fn run(token: &str) -> Result<(), Box<dyn std::error::Error>> {
//! let introspection = Introspection::builder(
//!     "https://login.example.com/oauth2/introspect",
//!     "orders-api",
//!     std::env::var("INTROSPECTION_SECRET")?,
//! )
//! .issuer("https://login.example.com/")
//! .audience(["orders-api"])
//! .build()?;
//!
//! let principal = introspection.introspect(token).await?;
//! println!("{} may {:?}", principal.subject(), principal.scopes().collect::<Vec<_>>());
//! # Ok(()) }
//! ```

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use http::{header, HeaderValue, StatusCode};
use quick_cache::sync::Cache;
use reqwest::Url;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Semaphore};

use super::{
    jwk::fetch::{check_url, describe, host, read_capped},
    AuthRequest, Authenticator, Verdict,
};
use crate::{
    clock::{Clock, SystemClock},
    error::ConfigError,
    principal::{AuthMethod, Principal},
    Error, ErrorKind,
};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_MAX_RESPONSE_SIZE: usize = 64 * 1024;
const DEFAULT_MAX_TOKEN_LENGTH: usize = 8 * 1024;
const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);
const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(10);
const DEFAULT_CACHE_CAPACITY: usize = 10_000;
const DEFAULT_MAX_CONCURRENT: usize = 64;
const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

/// An RFC 7662 introspection client with a bounded cache.
///
/// `Clone` is cheap; clones share the caches and the concurrency cap.
///
/// See the [module docs](crate::auth::introspection) for the rules and an example.
#[derive(Clone)]
pub struct Introspection {
    inner: Arc<Inner>,
}

/// Builds an [`Introspection`] client. Made by [`Introspection::builder`].
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_shield::auth::Introspection;
///
/// let endpoint = "http://127.0.0.1:8080/oauth2/introspect";
/// let introspection = Introspection::builder(endpoint, "orders-api", "s3cr3t")
///     .issuer("http://127.0.0.1:8080")
///     .audience(["orders-api"])
///     .cache_ttl(Duration::from_secs(30))
///     .timeout(Duration::from_secs(2))
///     .build()
///     .unwrap();
/// // Building contacts nothing: the first token that is not cached does.
/// assert_eq!(introspection.cached_entries(), 0);
///
/// // Only https (or http to a loopback host), and non-empty credentials.
/// let ftp = "ftp://127.0.0.1/oauth2/introspect";
/// assert!(Introspection::builder(ftp, "orders-api", "s3cr3t").build().is_err());
/// assert!(Introspection::builder(endpoint, "orders-api", "").build().is_err());
/// ```
#[must_use]
pub struct IntrospectionBuilder {
    endpoint: Result<Url, ConfigError>,
    client_id: String,
    client_secret: String,
    config: Config,
    clock: Arc<dyn Clock>,
    client: Option<reqwest::Client>,
}

#[derive(Clone, Debug)]
struct Config {
    timeout: Duration,
    max_response_size: usize,
    max_token_length: usize,
    cache_ttl: Duration,
    negative_ttl: Duration,
    cache_capacity: usize,
    negative_capacity: usize,
    max_concurrent: usize,
    leeway: Duration,
    issuer: Option<String>,
    audiences: Vec<String>,
    skip_issuer: bool,
    skip_audience: bool,
    tenant_claim: String,
    roles_claim: Option<String>,
    insecure_http: bool,
}

struct Inner {
    endpoint: Url,
    client_id: String,
    authorization: HeaderValue,
    config: Config,
    clock: Arc<dyn Clock>,
    client: reqwest::Client,
    active: Cache<[u8; 32], Active>,
    rejected: Cache<[u8; 32], Duration>,
    /// Calls in progress, by token digest. An entry lives only while its call runs.
    flights: Mutex<HashMap<[u8; 32], watch::Receiver<Option<Outcome>>>>,
    slots: Semaphore,
}

type Outcome = Result<Principal, Error>;

#[derive(Clone)]
struct Active {
    principal: Principal,
    /// Monotonic time after which the entry is not used.
    until: Duration,
}

impl Introspection {
    /// A client of the introspection endpoint at `endpoint`, authenticating with `client_id` and
    /// `client_secret`.
    ///
    /// An invalid or insecure URL is reported by [`IntrospectionBuilder::build`].
    pub fn builder(
        endpoint: &str,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> IntrospectionBuilder {
        IntrospectionBuilder {
            endpoint: Url::parse(endpoint).map_err(|_| {
                ConfigError::new("introspection endpoint is not a valid absolute URL")
            }),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            config: Config {
                timeout: DEFAULT_TIMEOUT,
                max_response_size: DEFAULT_MAX_RESPONSE_SIZE,
                max_token_length: DEFAULT_MAX_TOKEN_LENGTH,
                cache_ttl: DEFAULT_CACHE_TTL,
                negative_ttl: DEFAULT_NEGATIVE_TTL,
                cache_capacity: DEFAULT_CACHE_CAPACITY,
                negative_capacity: DEFAULT_CACHE_CAPACITY,
                max_concurrent: DEFAULT_MAX_CONCURRENT,
                leeway: DEFAULT_LEEWAY,
                issuer: None,
                audiences: Vec::new(),
                skip_issuer: false,
                skip_audience: false,
                tenant_claim: "tenant".to_owned(),
                roles_claim: None,
                insecure_http: false,
            },
            clock: Arc::new(SystemClock),
            client: None,
        }
    }

    /// The principal of an opaque access token, from the cache or the endpoint.
    ///
    /// # Errors
    ///
    /// - [`ErrorKind::InvalidToken`] when the token is inactive, expired, not yet valid, for
    ///   another issuer or audience, without a subject, empty or too long;
    /// - [`ErrorKind::ServiceUnavailable`] when the endpoint cannot give a valid answer.
    pub async fn introspect(&self, token: &str) -> Result<Principal, Error> {
        let digest = self.check(token)?;
        match self.cached(&digest) {
            Some(answer) => answer,
            None => self.fetch(digest, token.to_owned()).await,
        }
    }

    /// Rejects an empty or oversized token; otherwise its cache key.
    fn check(&self, token: &str) -> Result<[u8; 32], Error> {
        if token.is_empty() {
            return Err(invalid("empty token"));
        }
        if token.len() > self.inner.config.max_token_length {
            return Err(invalid("token too long"));
        }
        Ok(Sha256::digest(token.as_bytes()).into())
    }

    /// The cached answer for a token, if one is still fresh (a stale one is dropped).
    fn cached(&self, digest: &[u8; 32]) -> Option<Result<Principal, Error>> {
        let inner = &self.inner;
        let now = inner.clock.monotonic();
        if let Some(entry) = inner.active.get(digest) {
            if now < entry.until {
                return Some(Ok(entry.principal));
            }
            inner.active.remove(digest);
        }
        if let Some(until) = inner.rejected.get(digest) {
            if now < until {
                return Some(Err(invalid("token rejected (cached)")));
            }
            inner.rejected.remove(digest);
        }
        None
    }

    /// Asks the endpoint (the caches had no answer).
    async fn fetch(&self, digest: [u8; 32], token: String) -> Result<Principal, Error> {
        let inner = &self.inner;
        // Single flight: concurrent requests with the same token share one call, which runs in
        // its own task so that a cancelled request does not cancel it for the others.
        let flight = {
            let mut flights = inner.flights.lock().unwrap_or_else(PoisonError::into_inner);
            match flights.get(&digest) {
                // A flight clears its entry before it answers, so a closed channel is a task
                // that died (a panic, its runtime shut down): start a new one rather than wait
                // on it for ever.
                Some(flight) if flight.has_changed().is_ok() => flight.clone(),
                _ => {
                    let (tx, rx) = watch::channel(None);
                    flights.insert(digest, rx.clone());
                    tokio::spawn(Arc::clone(inner).resolve(digest, token, tx));
                    rx
                }
            }
        };
        wait(flight).await
    }

    /// The number of cached results (active and rejected), for monitoring.
    pub fn cached_entries(&self) -> usize {
        self.inner.active.len() + self.inner.rejected.len()
    }
}

impl fmt::Debug for Introspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Introspection")
            .field("endpoint", &self.inner.endpoint.as_str())
            .field("client_id", &self.inner.client_id)
            .field("client_secret", &"<redacted>")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl IntrospectionBuilder {
    /// The most time one introspection call may take. Default 5 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self
    }

    /// The largest response body read. Default 64 KiB.
    pub fn max_response_size(mut self, bytes: usize) -> Self {
        self.config.max_response_size = bytes;
        self
    }

    /// The longest token sent to the endpoint; longer ones are rejected locally. Default 8 KiB.
    pub fn max_token_length(mut self, bytes: usize) -> Self {
        self.config.max_token_length = bytes;
        self
    }

    /// How long an active result is cached, at most (never past the token's `exp`). Zero
    /// disables caching of active results. Default 60 s.
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.config.cache_ttl = ttl;
        self
    }

    /// How long a rejected token is remembered. Zero disables the negative cache. Default 10 s.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.config.negative_ttl = ttl;
        self
    }

    /// The most active results cached. Default 10 000.
    pub fn cache_capacity(mut self, entries: usize) -> Self {
        self.config.cache_capacity = entries;
        self
    }

    /// The most rejected tokens remembered. Default 10 000.
    pub fn negative_capacity(mut self, entries: usize) -> Self {
        self.config.negative_capacity = entries;
        self
    }

    /// The most introspection calls in flight at once. Default 64.
    pub fn max_concurrent(mut self, calls: usize) -> Self {
        self.config.max_concurrent = calls;
        self
    }

    /// Clock skew tolerated on `exp` and `nbf`. Default 60 s.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.config.leeway = leeway;
        self
    }

    /// Requires the answer's `iss` to equal `issuer`. Required, unless
    /// [`insecure_skip_issuer`](Self::insecure_skip_issuer).
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.config.issuer = Some(issuer.into());
        self
    }

    /// Requires the answer's `aud` (a string or an array) to contain one of `audiences`.
    /// Required, unless [`insecure_skip_audience`](Self::insecure_skip_audience).
    pub fn audience(mut self, audiences: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.config.audiences = audiences.into_iter().map(Into::into).collect();
        self
    }

    /// Accepts an answer whatever its `iss`. Insecure where the endpoint answers for several
    /// issuers; for a server whose answers carry no `iss`.
    pub fn insecure_skip_issuer(mut self) -> Self {
        self.config.skip_issuer = true;
        self
    }

    /// Accepts an answer whatever its `aud`. Insecure: a token the authorization server
    /// issued for another API is accepted; for a server whose answers carry no `aud`.
    pub fn insecure_skip_audience(mut self) -> Self {
        self.config.skip_audience = true;
        self
    }

    /// The member holding the tenant. Default `tenant`.
    pub fn tenant_claim(mut self, claim: impl Into<String>) -> Self {
        self.config.tenant_claim = claim.into();
        self
    }

    /// The member holding the roles (an array of strings or a space-separated string). None by
    /// default.
    pub fn roles_claim(mut self, claim: impl Into<String>) -> Self {
        self.config.roles_claim = Some(claim.into());
        self
    }

    /// Replaces the clock used for `exp`, `nbf` and cache lifetimes.
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Uses this HTTP client (for proxies, custom roots...). The timeout and size cap still
    /// apply.
    pub fn with_client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Allows a plain `http` endpoint on a non-loopback host. The client secret and every
    /// token then cross the network in clear: for isolated test environments only.
    pub fn insecure_allow_http(mut self) -> Self {
        self.config.insecure_http = true;
        self
    }

    /// Builds the client. Does not contact the endpoint.
    ///
    /// # Errors
    ///
    /// When the endpoint URL is invalid or insecure, the client id or secret is empty, no
    /// issuer or no audience is set (without the matching `insecure_skip_*`), the timeout,
    /// cache capacities or concurrency cap are zero, or the HTTP client cannot be built.
    pub fn build(self) -> Result<Introspection, ConfigError> {
        let endpoint = self.endpoint?;
        let config = self.config;
        check_url(&endpoint, config.insecure_http).map_err(ConfigError::new)?;
        if self.client_id.is_empty() || self.client_secret.is_empty() {
            return Err(ConfigError::new("introspection client id and secret must not be empty"));
        }
        if config.issuer.is_none() && !config.skip_issuer {
            return Err(ConfigError::new(
                "introspection needs an issuer (IntrospectionBuilder::issuer), or \
                 insecure_skip_issuer",
            ));
        }
        if config.audiences.is_empty() && !config.skip_audience {
            return Err(ConfigError::new(
                "introspection needs an audience (IntrospectionBuilder::audience), or \
                 insecure_skip_audience",
            ));
        }
        if config.timeout.is_zero() {
            return Err(ConfigError::new("introspection timeout must not be zero"));
        }
        if config.cache_capacity == 0 || config.negative_capacity == 0 || config.max_concurrent == 0
        {
            return Err(ConfigError::new(
                "introspection cache capacities and concurrency cap must not be zero",
            ));
        }
        let mut credentials = form_urlencode(&self.client_id);
        credentials.push(':');
        credentials.push_str(&form_urlencode(&self.client_secret));
        let mut authorization =
            HeaderValue::try_from(format!("Basic {}", STANDARD.encode(credentials)))
                .map_err(|_| ConfigError::new("introspection credentials cannot form a header"))?;
        authorization.set_sensitive(true);
        let client = match self.client {
            Some(client) => client,
            None => reqwest::Client::builder()
                .timeout(config.timeout)
                // A redirect would resend the token elsewhere.
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("tower-shield/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|_| ConfigError::new("cannot build the HTTP client for introspection"))?,
        };
        Ok(Introspection {
            inner: Arc::new(Inner {
                endpoint,
                client_id: self.client_id,
                authorization,
                active: Cache::new(config.cache_capacity),
                rejected: Cache::new(config.negative_capacity),
                flights: Mutex::new(HashMap::new()),
                slots: Semaphore::new(config.max_concurrent),
                config,
                clock: self.clock,
                client,
            }),
        })
    }
}

impl fmt::Debug for IntrospectionBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntrospectionBuilder")
            .field("endpoint", &self.endpoint.as_ref().map(Url::as_str))
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// Calls the endpoint, caches the outcome, ends the flight and publishes the outcome.
    async fn resolve(
        self: Arc<Self>,
        digest: [u8; 32],
        token: String,
        tx: watch::Sender<Option<Outcome>>,
    ) {
        let outcome = self.resolve_uncached(digest, &token).await;
        drop(token);
        self.flights.lock().unwrap_or_else(PoisonError::into_inner).remove(&digest);
        tx.send_replace(Some(outcome));
    }

    async fn resolve_uncached(&self, digest: [u8; 32], token: &str) -> Outcome {
        let answer = self.call(token).await.inspect_err(|error| {
            crate::observe::backend_failure("introspection");
            tracing::warn!(
                target: "tower_shield::security",
                event = "backend.failure",
                backend = "introspection",
                reason = error.reason().unwrap_or_default(),
                "token introspection failed"
            );
        })?;
        let now = self.clock.monotonic();
        match self.check(answer) {
            Ok((principal, lifetime)) => {
                let lifetime = lifetime.min(self.config.cache_ttl);
                if !lifetime.is_zero() {
                    self.active.insert(
                        digest,
                        Active {
                            principal: principal.clone(),
                            until: now.saturating_add(lifetime),
                        },
                    );
                }
                Ok(principal)
            }
            Err(reason) => {
                if !self.config.negative_ttl.is_zero() {
                    self.rejected.insert(digest, now.saturating_add(self.config.negative_ttl));
                }
                Err(invalid(reason))
            }
        }
    }

    /// One call to the endpoint, within the timeout and the concurrency cap.
    async fn call(&self, token: &str) -> Result<Map<String, Value>, Error> {
        let work = async {
            let _slot = self.slots.acquire().await.map_err(|_| "closed".to_owned())?;
            let mut body = String::with_capacity(token.len() + 40);
            body.push_str("token=");
            body.push_str(&form_urlencode(token));
            body.push_str("&token_type_hint=access_token");
            let mut response = self
                .client
                .post(self.endpoint.clone())
                .header(header::AUTHORIZATION, self.authorization.clone())
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(header::ACCEPT, "application/json")
                .timeout(self.config.timeout)
                .body(body)
                .send()
                .await
                .map_err(|e| {
                    format!("request to {} failed: {}", host(&self.endpoint), describe(&e))
                })?;
            if response.status() != StatusCode::OK {
                return Err(format!("{} answered {}", host(&self.endpoint), response.status()));
            }
            let body = read_capped(&mut response, self.config.max_response_size).await?;
            let answer: Map<String, Value> = serde_json::from_slice(&body)
                .map_err(|_| "answer is not a JSON object".to_owned())?;
            match answer.get("active") {
                Some(Value::Bool(_)) => {}
                _ => return Err("answer has no boolean `active`".to_owned()),
            }
            Ok(answer)
        };
        match tokio::time::timeout(self.config.timeout, work).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(reason)) => Err(unavailable(format!("introspection failed: {reason}"))),
            Err(_) => Err(unavailable("introspection failed: timed out")),
        }
    }

    /// Checks an answer; the principal and how long it may be cached, or why it is rejected.
    fn check(&self, answer: Map<String, Value>) -> Result<(Principal, Duration), &'static str> {
        if answer.get("active") != Some(&Value::Bool(true)) {
            return Err("token inactive");
        }
        let now = unix_seconds(self.clock.now());
        let leeway = self.config.leeway.as_secs_f64();
        let exp = numeric(&answer, "exp")?;
        if let Some(exp) = exp {
            if exp + leeway <= now {
                return Err("token expired");
            }
        }
        if let Some(nbf) = numeric(&answer, "nbf")? {
            if nbf > now + leeway {
                return Err("token not yet valid");
            }
        }
        if let Some(issuer) = &self.config.issuer {
            if answer.get("iss").and_then(Value::as_str) != Some(issuer.as_str()) {
                return Err("issuer mismatch");
            }
        }
        if !self.config.audiences.is_empty() {
            let matches = |aud: &str| self.config.audiences.iter().any(|a| a == aud);
            let ok = match answer.get("aud") {
                Some(Value::String(aud)) => matches(aud),
                Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).any(matches),
                _ => false,
            };
            if !ok {
                return Err("audience mismatch");
            }
        }
        let string =
            |name: &str| answer.get(name).and_then(Value::as_str).filter(|s| !s.is_empty());
        // `client_id` names the caller only when there is no `sub` at all (a client
        // credentials token): a `sub` that is not a non-empty string is malformed, and must not
        // turn a user's token into its client.
        let subject = match answer.get("sub") {
            None => string("client_id").ok_or("no subject")?,
            Some(_) => string("sub").ok_or("sub is not a non-empty string")?,
        };

        let mut builder = Principal::builder(subject).auth_method(AuthMethod::Introspection);
        if let Some(scope) = answer.get("scope").and_then(Value::as_str) {
            builder = builder.scopes(scope.split(' ').filter(|s| !s.is_empty()));
        }
        if let Some(client_id) = string("client_id") {
            builder = builder.client_id(client_id);
        }
        if let Some(tenant) = string(&self.config.tenant_claim) {
            builder = builder.tenant(tenant);
        }
        if let Some(claim) = &self.config.roles_claim {
            match answer.get(claim) {
                Some(Value::Array(roles)) => {
                    builder = builder.roles(roles.iter().filter_map(Value::as_str))
                }
                Some(Value::String(roles)) => {
                    builder = builder.roles(roles.split(' ').filter(|s| !s.is_empty()));
                }
                _ => {}
            }
        }
        if let Ok(Some(auth_time)) = numeric(&answer, "auth_time") {
            if auth_time >= 0.0 {
                builder =
                    builder.auth_time(UNIX_EPOCH + Duration::from_secs_f64(auth_time.min(1e12)));
            }
        }
        if let Some(acr) = string("acr") {
            builder = builder.acr(acr);
        }
        if let Some(Value::Array(amr)) = answer.get("amr") {
            builder = builder.amr(amr.iter().filter_map(Value::as_str));
        }
        let lifetime = match exp {
            Some(exp) if exp > now => Duration::from_secs_f64((exp - now).min(1e9)),
            Some(_) => Duration::ZERO,
            None => Duration::MAX,
        };
        Ok((builder.claims(answer).build(), lifetime))
    }
}

/// A numeric member: `None` when absent, an error when present but not a number.
fn numeric(answer: &Map<String, Value>, name: &'static str) -> Result<Option<f64>, &'static str> {
    match answer.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value.as_f64().map(Some).ok_or("malformed time claim"),
    }
}

fn unix_seconds(time: SystemTime) -> f64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

async fn wait(mut flight: watch::Receiver<Option<Outcome>>) -> Outcome {
    match flight.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.clone().unwrap_or_else(|| Err(unavailable("introspection ended"))),
        Err(_) => Err(unavailable("introspection task ended without a result")),
    }
}

fn invalid(reason: &'static str) -> Error {
    Error::new(ErrorKind::InvalidToken).with_reason(reason)
}

fn unavailable(reason: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::ServiceUnavailable).with_reason(reason)
}

/// `application/x-www-form-urlencoded` encoding of one name or value.
fn form_urlencode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(byte as char)
            }
            b' ' => out.push('+'),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(HEX[usize::from(byte >> 4)] as char);
                out.push(HEX[usize::from(byte & 0xf)] as char);
            }
        }
    }
    out
}

/// Checks `Authorization: Bearer` tokens by introspection. Each uncached token costs one call
/// to the endpoint (shared by concurrent requests with the same token).
impl Authenticator for Introspection {
    fn authenticate(&self, request: &AuthRequest<'_>) -> Verdict {
        let Some(token) = request.bearer() else { return Verdict::NotMine };
        // Cache hits (active or recently rejected) are answered here, without a future.
        let digest = match self.check(token) {
            Ok(digest) => digest,
            Err(error) => return Verdict::Rejected(error),
        };
        match self.cached(&digest) {
            Some(Ok(principal)) => Verdict::Authenticated(principal),
            Some(Err(error)) => Verdict::Rejected(error),
            None => {
                let this = self.clone();
                let token = token.to_owned();
                Verdict::Pending(Box::pin(async move { this.fetch(digest, token).await }))
            }
        }
    }

    fn method(&self) -> AuthMethod {
        AuthMethod::Introspection
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// For answers that carry neither `iss` nor `aud`.
    fn unchecked(builder: IntrospectionBuilder) -> IntrospectionBuilder {
        builder.insecure_skip_issuer().insecure_skip_audience()
    }
    use crate::clock::FakeClock;

    fn client(clock: &FakeClock) -> Introspection {
        Introspection::builder("https://as.example/introspect", "api", "s3cr3t-value")
            .with_clock(clock.clone())
            .issuer("https://as.example")
            .audience(["orders", "billing"])
            .tenant_claim("org")
            .roles_claim("roles")
            .build()
            .unwrap()
    }

    fn answer(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn form_urlencoding() {
        assert_eq!(form_urlencode("abc-._*XYZ09"), "abc-._*XYZ09");
        assert_eq!(form_urlencode("a b+c:d/é%"), "a+b%2Bc%3Ad%2F%C3%A9%25");
    }

    #[test]
    fn basic_credentials_are_encoded_then_base64() {
        let introspection =
            unchecked(Introspection::builder("https://as.example/i", "my client", "p:w+d"))
                .build()
                .unwrap();
        let expected = format!("Basic {}", STANDARD.encode("my+client:p%3Aw%2Bd"));
        assert_eq!(introspection.inner.authorization, expected.as_str());
        assert!(introspection.inner.authorization.is_sensitive());
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let builder =
            unchecked(Introspection::builder("https://as.example/i", "api", "s3cr3t-value"));
        assert!(!format!("{builder:?}").contains("s3cr3t"));
        let debug = format!("{:?}", builder.build().unwrap());
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(debug.contains("<redacted>"));
    }

    #[test]
    fn builder_refuses_insecure_or_empty_config() {
        let build = |url: &str, id: &str, secret: &str| {
            unchecked(Introspection::builder(url, id, secret)).build()
        };
        assert!(build("http://as.example/i", "a", "b").is_err());
        assert!(build("http://127.0.0.1:1/i", "a", "b").is_ok());
        assert!(build("https://as.example/i", "", "b").is_err());
        assert!(build("https://as.example/i", "a", "").is_err());
        assert!(build("nope", "a", "b").is_err());
        assert!(unchecked(Introspection::builder("http://as.example/i", "a", "b"))
            .insecure_allow_http()
            .build()
            .is_ok());
        assert!(unchecked(Introspection::builder("https://as.example/i", "a", "b"))
            .cache_capacity(0)
            .build()
            .is_err());
        assert!(unchecked(Introspection::builder("https://as.example/i", "a", "b"))
            .timeout(Duration::ZERO)
            .build()
            .is_err());
        // Issuer and audience are required, or skipped by name.
        let bare = || Introspection::builder("https://as.example/i", "a", "b");
        let error = bare().audience(["orders"]).build().unwrap_err();
        assert!(error.message().contains("insecure_skip_issuer"), "{error}");
        let error = bare().issuer("https://as.example").build().unwrap_err();
        assert!(error.message().contains("insecure_skip_audience"), "{error}");
        assert!(bare().insecure_skip_issuer().insecure_skip_audience().build().is_ok());
    }

    #[test]
    fn active_answer_becomes_a_principal() {
        let clock = FakeClock::new();
        let now = unix_seconds(clock.now());
        let (principal, lifetime) = client(&clock)
            .inner
            .check(answer(json!({
                "active": true, "sub": "alice", "client_id": "web", "scope": "orders:read  orders:write",
                "org": "acme", "roles": ["admin"], "iss": "https://as.example", "aud": ["other", "orders"],
                "exp": now + 120.0, "nbf": now - 5.0, "auth_time": now - 30.0, "acr": "mfa", "amr": ["pwd", "otp"],
                "custom": {"plan": "gold"}
            })))
            .unwrap();
        assert_eq!(principal.subject(), "alice");
        assert_eq!(principal.scopes().collect::<Vec<_>>(), ["orders:read", "orders:write"]);
        assert_eq!(principal.client_id(), Some("web"));
        assert_eq!(principal.tenant(), Some("acme"));
        assert!(principal.has_role("admin"));
        assert_eq!(principal.auth_method(), AuthMethod::Introspection);
        assert_eq!(principal.acr(), Some("mfa"));
        assert_eq!(principal.amr().collect::<Vec<_>>(), ["pwd", "otp"]);
        assert!(principal.auth_time().is_some());
        assert_eq!(principal.claim("custom").unwrap()["plan"], "gold");
        assert_eq!(lifetime, Duration::from_secs(120));
    }

    #[test]
    fn subject_falls_back_to_client_id() {
        let clock = FakeClock::new();
        let introspection = unchecked(Introspection::builder("https://as.example/i", "a", "b"))
            .with_clock(clock)
            .build()
            .unwrap();
        let (principal, lifetime) = introspection
            .inner
            .check(answer(json!({"active": true, "client_id": "batch"})))
            .unwrap();
        assert_eq!(principal.subject(), "batch");
        assert_eq!(lifetime, Duration::MAX);
        assert_eq!(
            introspection.inner.check(answer(json!({"active": true}))).unwrap_err(),
            "no subject"
        );
        // Only an absent `sub` falls back: a malformed one is refused, not replaced by the
        // client (a user's token would become its client's principal).
        for sub in [json!(12345), json!(""), json!(null), json!(["alice"])] {
            let answer = answer(json!({"active": true, "sub": sub, "client_id": "web-app"}));
            let error = introspection.inner.check(answer).unwrap_err();
            assert_eq!(error, "sub is not a non-empty string", "{sub}");
        }
    }

    #[test]
    fn rejected_answers() {
        let clock = FakeClock::new();
        let inner = client(&clock).inner;
        let now = unix_seconds(clock.now());
        let base = json!({"active": true, "sub": "a", "iss": "https://as.example", "aud": "orders", "exp": now + 60.0});
        let with = |field: &str, value: Value| {
            let mut a = answer(base.clone());
            a.insert(field.to_owned(), value);
            a
        };
        assert!(inner.check(answer(base.clone())).is_ok());
        assert_eq!(inner.check(with("active", json!(false))).unwrap_err(), "token inactive");
        assert_eq!(inner.check(with("exp", json!(now - 61.0))).unwrap_err(), "token expired");
        assert!(inner.check(with("exp", json!(now - 59.0))).is_ok(), "leeway");
        assert_eq!(inner.check(with("exp", json!("soon"))).unwrap_err(), "malformed time claim");
        assert_eq!(inner.check(with("nbf", json!(now + 61.0))).unwrap_err(), "token not yet valid");
        assert_eq!(
            inner.check(with("iss", json!("https://evil.example"))).unwrap_err(),
            "issuer mismatch"
        );
        assert_eq!(inner.check(with("aud", json!(["shipping"]))).unwrap_err(), "audience mismatch");
        assert_eq!(inner.check(with("aud", json!(7))).unwrap_err(), "audience mismatch");
        let mut no_aud = answer(base.clone());
        no_aud.remove("aud");
        assert_eq!(inner.check(no_aud).unwrap_err(), "audience mismatch");
    }
}
