//! Helpers for your own security tests: a token issuer, principals without tokens, a fake
//! clock, and a negative-test battery that proves a route stays protected.
//!
//! Feature `testing` (opt-in; meant for `[dev-dependencies]`).
//!
//! - [`TestIssuer`] generates HMAC, RSA, EC (P-256, P-384) and Ed25519 keys at run time,
//!   mints tokens through a small builder ([`TokenBuilder`]: subject, scopes, expiry, any
//!   claim) and the deliberately bad ones of [`BadToken`] (expired, not yet valid, wrong
//!   audience or issuer, bad signature, `alg: none`, wrong key, unknown `kid`, malformed). It
//!   is a [`KeySource`](crate::auth::jwt::KeySource) itself ([`TestIssuer::jwt`] gives a
//!   ready [`JwtBuilder`](crate::auth::jwt::JwtBuilder)), serves its public JWK set as a tower
//!   service ([`TestIssuer::jwks_service`]) or on a 127.0.0.1 port ([`TestIssuer::serve`],
//!   stopped on drop) for [`RemoteJwks`](crate::auth::RemoteJwks), and rotates keys on
//!   demand ([`TestIssuer::rotate`], with or without an overlap).
//! - [`with_principal`] and [`FakeAuthLayer`] put a [`Principal`](crate::principal::Principal)
//!   into requests without a token; [`api_key`] makes an [`ApiKeys`](crate::auth::api_key::ApiKeys)
//!   authenticator holding a fresh key.
//! - [`FakeClock`] (re-exported from [`clock`](crate::clock)) is accepted by every
//!   time-dependent part of the crate: `JwtBuilder::with_clock`, `RemoteJwksBuilder::with_clock`,
//!   `IntrospectionBuilder::with_clock`, `MemoryRevocation::with_clock` (and the Redis one),
//!   `ScopeLayer::with_clock` (step-up `max_age`), `RateLimitLayer::with_clock` and
//!   `rate_limit::MemoryStore::with_clock` (and `RedisStore::with_clock`),
//!   `idempotency::MemoryStore::with_clock`, `PenaltyBoxLayer::with_clock`, and
//!   [`TestIssuerBuilder::with_clock`] so minted tokens follow the same time.
//! - [`Battery`] runs the standard negative checks against one route and returns a
//!   [`Report`]; see its docs for the list.
//!
//! Keys are generated with aws-lc-rs whichever JWT backend is enabled (the feature always
//! depends on it); tokens are signed through `jsonwebtoken`, so the helpers work with
//! `jwt-rust-crypto` too.
//!
//! # Example
//!
//! The battery against an in-process axum app, in one line of a `#[tokio::test]`:
//!
//! ```
//! use std::num::NonZeroU32;
//! use axum::{http::Method, routing::post, Json, Router};
//! use serde_json::{json, Value};
//! use tower_shield::{
//!     auth::AuthLayer,
//!     envelope::ErrorEnvelopeLayer,
//!     rate_limit::{GlobalKey, Quota, RateLimitLayer},
//!     scope::{Requirement, ScopeLayer},
//!     testing::{Battery, TestIssuer},
//!     validate::ValidateLayer,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let issuer = TestIssuer::es256();
//! let schema = json!({
//!     "type": "object",
//!     "additionalProperties": false,
//!     "required": ["item"],
//!     "properties": {"item": {"type": "string"}}
//! });
//! let app = Router::new()
//!     .route(
//!         "/orders",
//!         post(|Json(order): Json<Value>| async move { Json(order) })
//!             .route_layer(ValidateLayer::new().max_body_size(1024).schema(&schema)?)
//!             .route_layer(ScopeLayer::new(Requirement::all(["orders:write"]))),
//!     )
//!     .route_layer(AuthLayer::new(issuer.jwt().build()?))
//!     .layer(RateLimitLayer::new(GlobalKey, Quota::per_minute(NonZeroU32::new(30).unwrap())))
//!     .layer(ErrorEnvelopeLayer::new());
//!
//! Battery::new(app)
//!     .route(Method::POST, "/orders")
//!     .bearer(&issuer)
//!     .scope("orders:write")
//!     .json(json!({"item": "book"}))
//!     .max_body(1024)
//!     .burst(30)
//!     .run()
//!     .await
//!     .assert_passed();
//! # Ok(()) }
//! ```
//!
//! A failing check panics with the whole report, one line per check:
//!
//! ```text
//! security battery failed:
//! battery POST /orders: 17 passed, 1 failed, 0 skipped
//!   pass valid_request: 200
//!   FAIL missing_credential: expected 401, got 200 {"item":"book"}
//!   ...
//! ```

mod battery;
mod issuer;
mod principal;
mod server;

pub use self::{
    battery::{Battery, CheckResult, Outcome, Report},
    issuer::{BadToken, KeyKind, Rotation, TestIssuer, TestIssuerBuilder, TokenBuilder},
    principal::{add_api_key, api_key, with_principal, FakeAuth, FakeAuthLayer},
    server::{JwksServer, JwksService, DISCOVERY_PATH, JWKS_PATH},
};
pub use crate::clock::FakeClock;

#[cfg(test)]
mod tests;
