//! Quotas per client, principal, tenant, API key or route, with 429s and the IETF `RateLimit`
//! headers.
//!
//! [`RateLimitLayer`] extracts a [`RateKey`] from each request with a [`KeyExtractor`]
//! ([`ClientIp`], [`PrincipalKey`], [`TenantKey`], [`ApiKeyId`], [`HeaderKey`], `RouteKey`,
//! [`GlobalKey`], tuples of those, or a closure), then charges the request against one or
//! more [`Quota`]s in a [`Store`]. Decisions are made in `call` (never by `poll_ready`
//! backpressure) and shared by every clone of the service.
//!
//! * **Algorithm**: GCRA with [governor]'s semantics (a sustained rate and a burst), computed
//!   on the store's state so several quotas are checked and charged atomically (a request is
//!   charged only if every quota has room), a request can cost more than one unit
//!   ([`RateLimitLayer::cost`]) and state can be peeked without charging. Time comes from the
//!   injectable [`Clock`](crate::clock::Clock).
//! * **Quotas per request**: [`RateLimitLayer::select_limits`] picks a [`Limits`] set from the
//!   request (e.g. by the principal's tier).
//! * **Responses**: a rejection is a 429 through the shared [`Error`](crate::Error) (code
//!   `rate_limited`, gRPC `RESOURCE_EXHAUSTED`) with `Retry-After` in whole seconds, rounded
//!   up. Every response under a limit, accepted or rejected, carries (IETF draft-10 syntax)
//!   `RateLimit-Policy: "<name>";q=<burst>;w=<seconds to refill the burst>` and
//!   `RateLimit: "<name>";r=<remaining>;t=<seconds until the quota is whole>` for the most
//!   restrictive quota: the one with the longest wait when rejected, else the one with the
//!   fewest remaining units. Under nested limit layers (a per-route limit inside a per-IP one)
//!   each layer adds its entry to both lists, innermost first. [`RateLimitLayer::legacy_headers`] adds `X-RateLimit-*`;
//!   [`RateLimitLayer::no_headers`] turns them off. Policy values are built once per quota.
//! * **Only-failures counting** ([`RateLimitLayer::count_only`]) and a programmatic
//!   [`RateLimiter`] handle for brute-force protection keyed by what the handler learns
//!   (the attempted username).
//! * **Bounded memory**: [`MemoryStore`] tracks at most a fixed number of keys and never
//!   evicts a key that still carries debt; see its docs for the overflow rule.
//! * **Redis** (feature `redis`): `RedisStore` shares budgets across instances, with an
//!   explicit fail-open or fail-closed policy.
//!
//! A request whose key cannot be extracted is answered 500 by default (a wiring mistake);
//! see [`MissingKey`].
//!
//! Rejections emit a `tracing` event `rate_limit.rejected` at target
//! `tower_shield::security` with fields `policy`, `key_kind` and `route`; the key itself is
//! never logged.
//!
//! # Example
//!
//! ```
//! use std::{convert::Infallible, net::SocketAddr, num::NonZeroU32};
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_shield::rate_limit::{PeerAddr, Quota, RateLimitLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let quota = Quota::per_minute(NonZeroU32::new(2).unwrap()).named("per-ip");
//! let mut service = ServiceBuilder::new()
//!     .layer(RateLimitLayer::per_ip(quota))
//!     .service_fn(|_: Request<Full<Bytes>>| async {
//!         Ok::<_, Infallible>(Response::new(Full::<Bytes>::from("ok")))
//!     });
//!
//! let request = || {
//!     let mut request = Request::new(Full::default());
//!     // axum's ConnectInfo is read too; with plain hyper, insert the peer address.
//!     request.extensions_mut().insert(PeerAddr(SocketAddr::from(([203, 0, 113, 7], 4711))));
//!     request
//! };
//! let response = service.ready().await.unwrap().call(request()).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(response.headers()["ratelimit-policy"], r#""per-ip";q=2;w=60"#);
//! assert_eq!(response.headers()["ratelimit"], r#""per-ip";r=1;t=30"#);
//!
//! service.ready().await.unwrap().call(request()).await.unwrap();
//! let response = service.ready().await.unwrap().call(request()).await.unwrap();
//! assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(response.headers()["retry-after"], "30");
//! # }
//! ```
//!
//! [governor]: https://docs.rs/governor

mod admit;
#[cfg(all(feature = "envelope", feature = "auth"))]
pub(crate) use admit::{ratelimit_value, Admission, Check, Verdict};
pub(crate) use admit::{RATELIMIT, RATELIMIT_POLICY};
mod client_ip;
mod future;
mod gcra;
mod handle;
mod key;
mod layer;
mod memory;
mod quota;
#[cfg(feature = "redis")]
mod redis;
mod service;
mod store;

#[cfg(feature = "axum")]
pub use self::key::RouteKey;
#[cfg(feature = "redis")]
pub use self::redis::{FailurePolicy, RedisStore};
pub use self::{
    client_ip::{ClientAddr, ClientIp, ForwardedHeader, PeerAddr},
    future::ResponseFuture,
    gcra::{Decision, Mode},
    handle::RateLimiter,
    key::{ApiKeyId, GlobalKey, HeaderKey, KeyExtractor, PrincipalKey, RateKey, TenantKey},
    layer::{MissingKey, RateLimitLayer},
    memory::{MemoryStore, DEFAULT_CAPACITY},
    quota::{Limits, Quota},
    service::RateLimit,
    store::Store,
};

#[cfg(test)]
mod tests;
