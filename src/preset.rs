//! The recommended stack in one layer: [`Shield::builder()`].
//!
//! A [`Shield`] is one tower [`Layer`] that wraps a service (an axum `Router`, a tonic server's
//! routes, any `Service<http::Request<B>>`) in the outer half of the recommended request path,
//! in this order, outermost first:
//!
//! 1. [`ErrorEnvelopeLayer`]: request ids, one safe error body for every failure, panics
//!    caught. Outermost, so that every rejection below is rendered.
//! 2. A per-client-IP [`RateLimitLayer`] (default 600 per minute): **shed load before any
//!    crypto**. A flood of forged tokens from one address costs a hash lookup per request,
//!    never a signature check.
//! 3. [`AuthLayer`]: a [`Principal`](crate::principal::Principal) in the request, or 401.
//!    There is no default: a shield without authentication is a [`ConfigError`], never an
//!    open API. Routes that need no credential are listed with [`ShieldBuilder::add_public`].
//! 4. A per-principal [`RateLimitLayer`] (default 600 per minute): **authenticate before
//!    per-principal quotas**, so a quota belongs to a verified caller, wherever they connect
//!    from, and cannot be spent by someone naming another caller. Public routes (no principal)
//!    are limited by step 2 only.
//!
//! The inner half depends on the route:
//!
//! 5. [`ScopeLayer`]: **authorize before validating bodies**, so an unauthorized caller learns
//!    nothing about the expected shape and costs no body parsing. Either in the shield, one
//!    table for every route ([`ShieldBuilder::with_scopes`] with
//!    [`ScopeLayer::per_route`]: denied by default, public routes skipped, the cheaper way),
//!    or per route with axum's `route_layer` ([`Shield::standard`]).
//! 6. [`ValidateLayer`](crate::validate::ValidateLayer): size, content type, JSON shape.
//! 7. [`IdempotencyLayer`](crate::idempotency::IdempotencyLayer): **validate before
//!    idempotency**, so an invalid request never reserves or stores a record.
//!
//! Steps 6 and 7 go on their routes with `route_layer`, inside the shield. axum runs the last
//! `route_layer` first, so a write route reads
//! `post(h).route_layer(idempotency).route_layer(validate)` (then
//! `.route_layer(shield.standard(req))` when the scope is per route).
//!
//! # Risk classes
//!
//! Routes differ in what an attacker gains from them. The shield hands out the per-route
//! layers of three classes, sharing its client-IP rules and its store:
//!
//! | class | helper | what it adds |
//! |---|---|---|
//! | public (health, docs, sign-up) | [`Shield::public`] | a stricter per-IP limit (default 60 per minute); list the route with [`ShieldBuilder::add_public`] too |
//! | standard | [`Shield::standard`] | a scope [`Requirement`] |
//! | sensitive (login, password reset, token refresh, payments, admin) | [`Shield::sensitive`], [`Shield::sensitive_with_step_up`] | a strict limit per IP and per principal (default 5 per minute) counting only failures (4xx other than 429), so a legitimate user is never slowed down and a guesser is stopped; optionally a step-up requirement (RFC 9470) |
//!
//! Each class's limit is one budget per client IP (and per principal), shared by every route
//! of that class.
//!
//! # Replacing pieces
//!
//! Every piece is replaceable on the builder: [`with_auth`](ShieldBuilder::with_auth),
//! [`with_envelope`](ShieldBuilder::with_envelope), [`with_client_ip`](ShieldBuilder::with_client_ip)
//! or [`trusted_proxies_from_str`](ShieldBuilder::trusted_proxies_from_str) (believe
//! `X-Forwarded-For` only from your proxies), the quotas
//! ([`with_ip_quota`](ShieldBuilder::with_ip_quota),
//! [`with_principal_quota`](ShieldBuilder::with_principal_quota),
//! [`with_public_quota`](ShieldBuilder::with_public_quota),
//! [`with_sensitive_quota`](ShieldBuilder::with_sensitive_quota)) and the store
//! ([`with_store`](ShieldBuilder::with_store), e.g. a `RedisStore` shared by every instance).
//! For anything else, build the layers by hand in the order above: the shield answers exactly
//! as they do, stacked. It runs steps 2 to 4 as one service, the [`Guard`] (one future
//! instead of three), which also writes both limits' items on one `RateLimit-Policy` and one
//! `RateLimit` line, per-principal first: `RateLimit: "per-principal";r=599;t=1,
//! "per-ip";r=599;t=1` (the stacked layers write the same list on two lines).
//!
//! # Client addresses
//!
//! The per-IP limit needs the peer address: serve axum with
//! `into_make_service_with_connect_info::<SocketAddr>()`, serve tonic with its transport server
//! and feature `tonic-server` (its `TcpConnectInfo` is read), or insert a
//! [`PeerAddr`](crate::rate_limit::PeerAddr) into each request (plain hyper, tonic over TLS).
//! Without it the answer is a 500 (a wiring mistake is loud, never an unlimited API).
//!
//! # Unknown routes
//!
//! With `router.layer(shield)` authentication runs before routing, so an unauthenticated
//! request to an unknown path gets 401, not 404: route names are not revealed to anonymous
//! callers. With a scope table ([`ShieldBuilder::with_scopes`]) an authenticated caller gets
//! 403 there too, as for any route the table does not list (deny by default).
//!
//! # Cost
//!
//! With the default features, the shield with its scope table adds about 1.1 to 1.5 µs to an
//! accepted request over bare axum (which takes about 1 to 1.3 µs in process on the same
//! machines), 2.5 to 2.7 times less than tower_governor + jwt-authorizer; figures and
//! commands in `BENCHMARKS.md`. Three choices change that:
//!
//! - Each `Router::layer` or `route_layer` makes axum box and clone the layered route on
//!   every request, about 0.1 to 0.15 µs each. Scopes in the shield's table
//!   ([`with_scopes`](ShieldBuilder::with_scopes)) cost one layered route for the shield and
//!   its scopes; a [`Shield::standard`] `route_layer` per route adds one more.
//! - Wrapping the whole router (`shield.layer(router)`, or a `ServiceBuilder` around it)
//!   saves the shield's layered route too, but the envelope and the scope table then run
//!   before routing: the span and metrics know no route template (the `route` field stays
//!   empty, the metric label is `unmatched`), and a table matches request paths exactly, so
//!   list no templates (`/orders/{id}`) in it there, or use per-route layers for them.
//! - Feature `metrics` adds about 0.2 µs (a latency histogram and counters per request,
//!   recorded whether or not a recorder is installed).
//!
//! # Example
//!
//! ```
//! use std::{convert::Infallible, net::SocketAddr};
//! use bytes::Bytes;
//! use http::{header, Method, Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_shield::{auth::{jwt::Jwt, AuthLayer}, preset::Shield, rate_limit::PeerAddr};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let jwt = Jwt::builder()
//!     .hs256_secret(b"an example secret of at least 32 bytes!!")
//!     .issuer("https://issuer.example")
//!     .audience("orders-api")
//!     .build()?;
//! let shield = Shield::builder()
//!     .with_auth(AuthLayer::new(jwt))
//!     .add_public(Method::GET, "/health")
//!     .build()?;
//!
//! let service = ServiceBuilder::new().layer(shield).service_fn(|_: Request<Full<Bytes>>| async {
//!     Ok::<_, Infallible>(Response::new(Full::<Bytes>::from("ok")))
//! });
//!
//! let request = |path: &str| {
//!     let mut request = Request::get(path).body(Full::default()).unwrap();
//!     // axum's ConnectInfo works too; plain hyper and tonic insert the peer address.
//!     request.extensions_mut().insert(PeerAddr(SocketAddr::from(([203, 0, 113, 7], 4711))));
//!     request
//! };
//! let response = service.clone().oneshot(request("/health")).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! assert!(response.headers().contains_key("x-request-id"));
//!
//! let response = service.oneshot(request("/orders")).await?;
//! assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//! assert_eq!(response.headers()[header::WWW_AUTHENTICATE], r#"Bearer realm="api""#);
//! # Ok(())
//! # }
//! ```
//!
//! With axum, in a few lines: who may call what in one table, in the shield (routes not in it
//! are denied; public routes need no entry):
//!
//! ```
//! # #[cfg(feature = "axum")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{http::Method, routing::{get, post}, Router};
//! use tower_shield::{
//!     auth::{jwt::Jwt, AuthLayer},
//!     preset::Shield,
//!     scope::{Requirement, RouteRequirements, ScopeLayer},
//! };
//!
//! let jwt = Jwt::builder()
//!     .hs256_secret(b"an example secret of at least 32 bytes!!")
//!     .issuer("https://issuer.example")
//!     .audience("orders-api")
//!     .build()?;
//! let scopes = RouteRequirements::new()
//!     .route(Method::GET, "/orders", Requirement::scope("orders:read"))?
//!     .route(Method::GET, "/orders/{id}", Requirement::scope("orders:read"))?
//!     .route(Method::DELETE, "/orders/{id}", Requirement::scope("orders:admin"))?;
//! let shield = Shield::builder()
//!     .with_auth(AuthLayer::new(jwt))
//!     .add_public(Method::GET, "/health")
//!     .add_public(Method::POST, "/login")
//!     .with_scopes(ScopeLayer::per_route(scopes))
//!     .build()?;
//!
//! let app: Router = Router::new()
//!     // The public and sensitive classes add their stricter limits per route.
//!     .route("/health", get(|| async { "ok" }).route_layer(shield.public()))
//!     .route("/login", post(|| async { "token" }).route_layer(shield.sensitive()))
//!     .route("/orders", get(|| async { "[]" }))
//!     .route("/orders/{id}", get(|| async { "one" }).delete(|| async { "deleted" }))
//!     // Inside the router, where axum's route templates are known.
//!     .layer(shield);
//! // axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
//! # let _ = app;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "axum"))]
//! # fn main() {}
//! ```
//!
//! With tonic, the shield goes around the whole server, with a scope per gRPC method in it
//! (`examples/grpc` is a complete service):
//!
//! ```no_run
//! # #[cfg(all(feature = "tonic-server", feature = "scope"))]
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tower_shield::{
//!     auth::{jwt::Jwt, AuthLayer},
//!     preset::Shield,
//!     scope::{MethodRequirements, Requirement, ScopeLayer},
//! };
//!
//! let jwt = Jwt::builder()
//!     .hs256_secret(b"an example secret of at least 32 bytes!!")
//!     .issuer("https://issuer.example")
//!     .audience("health-api")
//!     .build()?;
//! // Methods not listed are denied (PERMISSION_DENIED).
//! let scopes = ScopeLayer::per_method(
//!     MethodRequirements::new()
//!         .method("/grpc.health.v1.Health/Check", Requirement::scope("health:read"))?,
//! );
//! let shield = Shield::builder().with_auth(AuthLayer::new(jwt)).with_scopes(scopes).build()?;
//! let (_, health) = tonic_health::server::health_reporter();
//!
//! tonic::transport::Server::builder()
//!     .layer(shield) // feature `tonic-server`: the per-IP limit reads tonic's TcpConnectInfo
//!     .add_service(health)
//!     .serve("127.0.0.1:50051".parse()?)
//!     .await?;
//! # Ok(())
//! # }
//! # #[cfg(not(all(feature = "tonic-server", feature = "scope")))]
//! # fn main() {}
//! ```

use std::{fmt, num::NonZeroU32, sync::Arc};

use http::{Method, StatusCode};
use tower_layer::{Layer, Stack};

#[cfg(feature = "scope")]
use crate::scope::{Requirement, ScopeLayer};
use crate::{
    auth::AuthLayer,
    envelope::{ErrorEnvelope, ErrorEnvelopeLayer},
    error::ConfigError,
    rate_limit::{ClientIp, MemoryStore, MissingKey, PrincipalKey, Quota, RateLimitLayer},
};

mod guard;

use self::guard::GuardConfig;
pub use self::guard::{Guard, ResponseFuture};

/// The service a [`Shield`] wraps around `S`: the envelope around the [`Guard`] (per-IP
/// limit, auth, per-principal limit).
pub type ShieldService<S, St = MemoryStore> = ErrorEnvelope<Guard<S, St>>;

/// The layers [`Shield::sensitive`] returns: a per-IP limit around a per-principal one, both
/// counting only failures.
pub type SensitiveLayer<St = MemoryStore> =
    Stack<RateLimitLayer<PrincipalKey, St>, RateLimitLayer<ClientIp, St>>;

/// The recommended outer stack as one [`Layer`]: envelope → per-IP limit → auth →
/// per-principal limit. Also hands out the per-route layers of each risk class.
///
/// Cheap to clone; clones share the quota state.
///
/// See the [module docs](crate::preset) for an example.
#[must_use]
pub struct Shield<St = MemoryStore> {
    envelope: ErrorEnvelopeLayer,
    per_ip: RateLimitLayer<ClientIp, St>,
    auth: AuthLayer,
    per_principal: RateLimitLayer<PrincipalKey, St>,
    /// The three above, as the guard applies them.
    guard: Arc<GuardConfig<St>>,
    public: RateLimitLayer<ClientIp, St>,
    sensitive_ip: RateLimitLayer<ClientIp, St>,
    sensitive_principal: RateLimitLayer<PrincipalKey, St>,
}

impl Shield {
    /// A builder with the secure defaults; [`with_auth`](ShieldBuilder::with_auth) is
    /// required.
    pub fn builder() -> ShieldBuilder {
        ShieldBuilder::new()
    }
}

impl<St: Clone> Shield<St> {
    /// The per-route layer of a **public** route: a stricter per-client-IP limit (default 60
    /// per minute), one budget per IP shared by every public route. The route must also be
    /// listed with [`ShieldBuilder::add_public`] for the shield to let it through without a
    /// credential.
    pub fn public(&self) -> RateLimitLayer<ClientIp, St> {
        self.public.clone()
    }

    /// The per-route layer of a **standard** route: the caller must meet `requirement`
    /// (401 without a principal, 403 with `insufficient_scope`).
    #[cfg(feature = "scope")]
    #[cfg_attr(docsrs, doc(cfg(feature = "scope")))]
    pub fn standard(&self, requirement: Requirement) -> ScopeLayer {
        ScopeLayer::new(requirement)
    }

    /// The per-route layers of a **sensitive** route (login, password reset, token refresh,
    /// payments, admin): a strict limit per client IP and per principal (default 5 per minute
    /// each), counting only failures (4xx other than 429). Once exhausted, the route answers
    /// 429 without running. Anonymous callers (a login) are limited per IP only.
    pub fn sensitive(&self) -> SensitiveLayer<St> {
        Stack::new(self.sensitive_principal.clone(), self.sensitive_ip.clone())
    }

    /// [`sensitive`](Self::sensitive), and the caller must also meet `requirement`, typically
    /// a step-up: `Requirement::max_age(..)` or `Requirement::acr(["mfa"])` (401
    /// `insufficient_user_authentication`, RFC 9470). A failed step-up counts as a failure.
    #[cfg(feature = "scope")]
    #[cfg_attr(docsrs, doc(cfg(feature = "scope")))]
    pub fn sensitive_with_step_up(
        &self,
        requirement: Requirement,
    ) -> Stack<ScopeLayer, SensitiveLayer<St>> {
        Stack::new(ScopeLayer::new(requirement), self.sensitive())
    }
}

impl<St> Shield<St> {
    /// The authentication layer.
    pub fn auth(&self) -> &AuthLayer {
        &self.auth
    }

    /// The per-client-IP limit (the second layer).
    pub fn ip_limit(&self) -> &RateLimitLayer<ClientIp, St> {
        &self.per_ip
    }

    /// The per-principal limit (the fourth layer).
    pub fn principal_limit(&self) -> &RateLimitLayer<PrincipalKey, St> {
        &self.per_principal
    }
}

impl<St: Clone> Clone for Shield<St> {
    fn clone(&self) -> Self {
        Self {
            envelope: self.envelope.clone(),
            per_ip: self.per_ip.clone(),
            auth: self.auth.clone(),
            per_principal: self.per_principal.clone(),
            guard: Arc::clone(&self.guard),
            public: self.public.clone(),
            sensitive_ip: self.sensitive_ip.clone(),
            sensitive_principal: self.sensitive_principal.clone(),
        }
    }
}

impl<St: fmt::Debug> fmt::Debug for Shield<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shield")
            .field("envelope", &self.envelope)
            .field("per_ip", &self.per_ip)
            .field("auth", &self.auth)
            .field("per_principal", &self.per_principal)
            .field("public", &self.public)
            .field("sensitive_ip", &self.sensitive_ip)
            .field("sensitive_principal", &self.sensitive_principal)
            .finish()
    }
}

impl<S, St: Clone> Layer<S> for Shield<St> {
    type Service = ShieldService<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        self.envelope.layer(Guard::new(inner, Arc::clone(&self.guard)))
    }
}

/// Builds a [`Shield`]. Start from [`Shield::builder`].
///
/// Defaults: the default [`ErrorEnvelopeLayer`]; client IP = the TCP peer (no trusted
/// proxies); 600 requests per minute per client IP and per principal; public routes 60 per
/// minute per IP; sensitive routes 5 failures per minute per IP and per principal; an
/// in-memory store. No authentication: [`with_auth`](Self::with_auth) is required.
///
/// See the [module docs](crate::preset) for an example.
#[must_use]
pub struct ShieldBuilder<St = MemoryStore> {
    envelope: ErrorEnvelopeLayer,
    auth: Option<AuthLayer>,
    public_routes: Vec<(Method, String)>,
    client_ip: ClientIp,
    ip_quota: Quota,
    principal_quota: Quota,
    public_quota: Quota,
    sensitive_quota: Quota,
    #[cfg(feature = "scope")]
    scopes: Option<ScopeLayer>,
    store: St,
}

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

/// Gives an unnamed quota the layer's name, so that two layers sharing a store (Redis keys are
/// named after the quota) never share a budget by accident.
fn name(quota: Quota, default: &str) -> Quota {
    if quota.name() == "default" {
        quota.named(default)
    } else {
        quota
    }
}

/// A failure, for the sensitive class: a client error other than 429.
fn is_failure(status: StatusCode) -> bool {
    status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS
}

impl ShieldBuilder {
    fn new() -> Self {
        Self {
            envelope: ErrorEnvelopeLayer::new(),
            auth: None,
            public_routes: Vec::new(),
            client_ip: ClientIp::new(),
            ip_quota: per_minute(600).named("per-ip"),
            principal_quota: per_minute(600).named("per-principal"),
            public_quota: per_minute(60).named("public"),
            sensitive_quota: per_minute(5).named("sensitive"),
            #[cfg(feature = "scope")]
            scopes: None,
            store: MemoryStore::new(),
        }
    }
}

impl<St> ShieldBuilder<St> {
    /// Authenticates with `auth` (required). Routes listed with
    /// [`add_public`](Self::add_public) are added to it.
    pub fn with_auth(mut self, auth: AuthLayer) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Lets `method path` through without a credential (see [`AuthLayer::add_public`]: exact
    /// match, no path tricks). Give the route [`Shield::public`] (or [`Shield::sensitive`], for
    /// a login) as its per-route layer.
    ///
    /// An invalid path is reported by [`build`](Self::build).
    pub fn add_public(mut self, method: Method, path: &str) -> Self {
        self.public_routes.push((method, path.to_owned()));
        self
    }

    /// Replaces the envelope (e.g. problem+json by default, another request-id header).
    pub fn with_envelope(mut self, envelope: ErrorEnvelopeLayer) -> Self {
        self.envelope = envelope;
        self
    }

    /// How the client IP is found (trusted proxies, IPv6 prefix), for every per-IP limit.
    pub fn with_client_ip(mut self, client_ip: ClientIp) -> Self {
        self.client_ip = client_ip;
        self
    }

    /// Believes forwarding headers only from these comma-separated CIDRs (your proxies or load
    /// balancer), e.g. `"10.0.0.0/8, 192.168.0.0/16"`. See [`ClientIp`].
    ///
    /// # Errors
    ///
    /// A range that does not parse.
    pub fn trusted_proxies_from_str(mut self, ranges: &str) -> Result<Self, ConfigError> {
        self.client_ip = self.client_ip.trusted_proxies_from_str(ranges)?;
        Ok(self)
    }

    /// The limit per client IP on every request, before authentication (default 600 per
    /// minute). An unnamed quota is named `per-ip`.
    pub fn with_ip_quota(mut self, quota: Quota) -> Self {
        self.ip_quota = name(quota, "per-ip");
        self
    }

    /// The limit per principal on every authenticated request (default 600 per minute). An
    /// unnamed quota is named `per-principal`.
    pub fn with_principal_quota(mut self, quota: Quota) -> Self {
        self.principal_quota = name(quota, "per-principal");
        self
    }

    /// The extra per-IP limit of [`Shield::public`] routes (default 60 per minute). An unnamed
    /// quota is named `public`.
    pub fn with_public_quota(mut self, quota: Quota) -> Self {
        self.public_quota = name(quota, "public");
        self
    }

    /// The failure limit of [`Shield::sensitive`] routes, per IP and per principal (default 5
    /// per minute). An unnamed quota is named `sensitive`.
    pub fn with_sensitive_quota(mut self, quota: Quota) -> Self {
        self.sensitive_quota = name(quota, "sensitive");
        self
    }

    /// Checks `scopes` on every route but the public ones, after the per-principal limit:
    /// typically [`ScopeLayer::per_route`](crate::scope::ScopeLayer::per_route), one table of
    /// who may call what, denied by default. In axum, apply the shield with `router.layer(..)`,
    /// where route templates are known (see
    /// [`RouteRequirements`](crate::scope::RouteRequirements)).
    ///
    /// The same check as a [`Shield::standard`] layer on each route, without the cost of a
    /// `route_layer` per route (axum boxes and clones each layered route on every request).
    #[cfg(feature = "scope")]
    #[cfg_attr(docsrs, doc(cfg(feature = "scope")))]
    pub fn with_scopes(mut self, scopes: ScopeLayer) -> Self {
        self.scopes = Some(scopes);
        self
    }

    /// Keeps quota state in `store`, e.g. a `RedisStore` shared by every instance, or a
    /// [`MemoryStore`] with a fake clock in tests. Every limit of the shield uses it.
    pub fn with_store<St2>(self, store: St2) -> ShieldBuilder<St2> {
        ShieldBuilder {
            envelope: self.envelope,
            auth: self.auth,
            public_routes: self.public_routes,
            client_ip: self.client_ip,
            ip_quota: self.ip_quota,
            principal_quota: self.principal_quota,
            public_quota: self.public_quota,
            sensitive_quota: self.sensitive_quota,
            #[cfg(feature = "scope")]
            scopes: self.scopes,
            store,
        }
    }
}

impl<St: crate::rate_limit::Store + Clone> ShieldBuilder<St> {
    /// Builds the shield.
    ///
    /// # Errors
    ///
    /// No authentication was configured (a shield never defaults to an open API), a public
    /// route is not a plain absolute path, or two limits would share a budget (the same quota
    /// name for the per-IP and the per-principal limit, or for the public and the sensitive
    /// one).
    pub fn build(self) -> Result<Shield<St>, ConfigError> {
        let Some(mut auth) = self.auth else {
            return Err(ConfigError::new(
                "a Shield needs authentication: call `with_auth(AuthLayer::new(..))`; list the \
                 routes that need none with `add_public`",
            ));
        };
        for (method, path) in self.public_routes {
            auth = auth.add_public(method, &path)?;
        }
        let names = [
            self.ip_quota.name(),
            self.principal_quota.name(),
            self.public_quota.name(),
            self.sensitive_quota.name(),
        ];
        for (i, a) in names.iter().enumerate() {
            if names[i + 1..].contains(a) {
                return Err(ConfigError::new(format!(
                    "two limits of a Shield are both named `{a}`: give each quota its own name"
                )));
            }
        }
        // Its own name, so its Redis keys never meet the per-IP ones.
        let sensitive_principal = self
            .sensitive_quota
            .clone()
            .named(format!("{}-principal", self.sensitive_quota.name()));
        let ip = |quota: Quota| {
            RateLimitLayer::new(self.client_ip.clone(), quota).with_store(self.store.clone())
        };
        let principal = |quota: Quota| {
            RateLimitLayer::new(PrincipalKey, quota)
                .on_missing_key(MissingKey::Skip)
                .with_store(self.store.clone())
        };
        let (per_ip, per_principal) = (ip(self.ip_quota), principal(self.principal_quota));
        let guard = GuardConfig::new(
            per_ip.clone(),
            auth.clone(),
            per_principal.clone(),
            #[cfg(feature = "scope")]
            self.scopes,
        );
        Ok(Shield {
            envelope: self.envelope,
            per_ip,
            auth,
            per_principal,
            guard: Arc::new(guard),
            public: ip(self.public_quota),
            sensitive_ip: ip(self.sensitive_quota.clone()).count_only(is_failure),
            sensitive_principal: principal(sensitive_principal).count_only(is_failure),
        })
    }
}

impl<St: fmt::Debug> fmt::Debug for ShieldBuilder<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShieldBuilder")
            .field("envelope", &self.envelope)
            .field("auth", &self.auth)
            .field("public_routes", &self.public_routes)
            .field("client_ip", &self.client_ip)
            .field("ip_quota", &self.ip_quota)
            .field("principal_quota", &self.principal_quota)
            .field("public_quota", &self.public_quota)
            .field("sensitive_quota", &self.sensitive_quota)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
