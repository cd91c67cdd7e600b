//! Composable [tower] middleware for API security.
//!
//! tower-shield gives any tower-compatible server (axum, tonic, plain hyper) the controls a
//! production API needs, as layers that share one [`Error`] type and compose in any stack:
//!
//! | module | what it does |
//! |---|---|
//! | [`envelope`] | request ids, one safe error body for every failure (JSON, RFC 9457 problem details, gRPC status), panic catching |
//! | [`scope`] | authorization: scopes, roles, step-up (RFC 9470), tenant isolation, resource policies |
//! | [`validate`] | input validation: body size, content type, JSON shape, JSON Schema, typed DTOs, query and headers |
//! | [`auth`] | credentials (JWT, API keys) → a [`Principal`](principal::Principal) in the request, 401 otherwise |
//! | [`rate_limit`] | quotas per client IP (proxy-aware), principal, tenant, API key or route; 429 with `RateLimit` headers; in-memory or Redis |
//! | [`idempotency`] | safe retries of writes with `Idempotency-Key`: replay, 409 in flight, 422 on reuse; memory or Redis store |
//! | [`preset`] | the recommended stack as one layer, `Shield::builder()`, and per-route risk classes (public, standard, sensitive) |
//! | [`principal`] | who the caller is, as authenticating layers put it in the request |
//! | [`clock`] | time, replaceable by a fake clock in tests |
//! | [`body`] | capped body reading for layers that must see the whole body |
//! | [`telemetry`] | the security event target, log-injection escaping, secret fingerprints; the abuse penalty box (`PenaltyBoxLayer`) |
//! | [`error`] | the shared error type, its stable codes and protocol headers |
//! | [`testing`] | helpers for your own security tests: a test token issuer and JWKS server, principals, a fake clock, the negative-test `Battery` |
//!
//! Every layer rejects with a *response*, never an `Err`: the status, the protocol headers
//! (`WWW-Authenticate`, `Retry-After`) and the [`Error`] in the response extensions. The
//! [`ErrorEnvelopeLayer`](envelope::ErrorEnvelopeLayer), outermost, renders the body.
//!
//! # Example with axum
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use tower_shield::envelope::ErrorEnvelopeLayer;
//!
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! let app = Router::new()
//!     .route("/health", get(|| async { "ok" }))
//!     // Outermost: renders every error (a 404 for unknown paths included) as the envelope.
//!     .layer(ErrorEnvelopeLayer::new());
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await
//! # }
//! ```
//!
//! # Example with tonic
//!
//! ```ignore
//! // With feature `tonic`: rejections become trailers-only responses with the gRPC status.
//! tonic::transport::Server::builder()
//!     .layer(tower_shield::envelope::ErrorEnvelopeLayer::new())
//!     .add_service(GreeterServer::new(MyGreeter))
//!     .serve("127.0.0.1:50051".parse()?)
//!     .await?;
//! ```
//!
//! # Feature flags
//!
//! | Name | Description | Default |
//! |---|---|---|
//! | `envelope` | [`envelope`]: `ErrorEnvelopeLayer`, request ids | yes |
//! | `telemetry` | [`telemetry`]: security event target, redaction helpers, `PenaltyBoxLayer` | yes |
//! | `scope` | [`scope`]: `ScopeLayer`, `Requirement`, `Policy` | yes |
//! | `validate` | [`validate`]: `ValidateLayer`, `Validated<T>` (with `axum`) | yes |
//! | `auth` | [`auth`]: `AuthLayer`, JWT (aws-lc-rs backend), API keys, revocation | yes |
//! | `jwt-aws-lc-rs` | JWT signatures with aws-lc-rs (fast RSA/ECDSA); `auth` needs it or `jwt-rust-crypto`. HMAC (`HS*`) uses RustCrypto's `hmac` with either | yes |
//! | `jwt-rust-crypto` | JWT signatures with RustCrypto (pure Rust, slower RSA); with both, aws-lc-rs is used | no |
//! | `rate-limit` | [`rate_limit`]: `RateLimitLayer`, GCRA quotas, bounded in-memory store | yes |
//! | `redis` | Redis-backed stores (`rate_limit::RedisStore`) | no |
//! | `idempotency` | [`idempotency`]: `IdempotencyLayer`, `MemoryStore` | yes |
//! | `redis` | Redis stores (`idempotency::RedisStore`) | no |
//! | `jwks` | `auth::RemoteJwks`: JWT keys from a JWKS or OIDC discovery URL, cached and rotated | no |
//! | `introspection` | `auth::Introspection`: RFC 7662 opaque token introspection, cached | no |
//! | `axum` | `IntoResponse` for [`Error`], extractors for `Principal` and `RequestId` | no |
//! | `tonic` | `From<Error> for tonic::Status` | no |
//! | `tonic-server` | `tonic` and tonic's transport server: `rate_limit::ClientIp` reads the peer from its `TcpConnectInfo` | no |
//! | `testing` | [`testing`]: test issuer (HMAC, RSA, EC, Ed25519 keys; JWKS served in-process or on 127.0.0.1), principals, the negative-test `Battery` | no |
//! | `metrics` | counters and a per-route latency histogram through the `metrics` facade ([`telemetry::metrics`]) | no |
//! | `full` | every feature above | no |
//!
//! [tower]: https://docs.rs/tower

#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

#[cfg(all(feature = "auth", not(any(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))))]
compile_error!(
    "feature `auth` needs a JWT crypto backend: enable `jwt-aws-lc-rs` (the default) or \
     `jwt-rust-crypto`"
);

#[macro_use]
mod macros;

pub mod body;
pub mod clock;
pub mod error;
pub mod principal;
#[cfg(feature = "telemetry")]
pub mod telemetry;

#[cfg(feature = "auth")]
pub mod auth;
#[cfg(feature = "envelope")]
pub mod envelope;
#[cfg(feature = "rate-limit")]
#[cfg_attr(docsrs, doc(cfg(feature = "rate-limit")))]
pub mod rate_limit;
#[cfg(feature = "scope")]
pub mod scope;
#[cfg(feature = "validate")]
pub mod validate;

#[cfg(feature = "idempotency")]
pub mod idempotency;

#[cfg(all(feature = "envelope", feature = "auth", feature = "rate-limit"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "envelope", feature = "auth", feature = "rate-limit"))))]
pub mod preset;

#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

mod builder;
#[cfg(any(feature = "rate-limit", feature = "telemetry"))]
mod prehashed;
// Which helpers are used depends on the layers enabled.
#[allow(dead_code)]
mod observe;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
#[path = "fuzz.rs"]
pub mod __fuzz;

pub use self::builder::ServiceBuilderExt;
pub use self::error::{BoxError, Error, ErrorKind};

#[cfg(test)]
#[allow(dead_code, unused_imports)] // which helpers a feature set's tests use varies
mod test_helpers;
