//! Authentication: turns a credential into a [`Principal`](crate::principal::Principal).
//!
//! [`AuthLayer`] reads the request's credential, asks its [`Authenticator`]s in order (the
//! first that recognises the credential decides) and either puts the `Principal` in the
//! request extensions or answers with a rejection for the
//! [envelope](crate::envelope) to render:
//!
//! | situation | status | `code` | `WWW-Authenticate` |
//! |---|---|---|---|
//! | no credential | 401 | `unauthenticated` | `Bearer realm="api"` |
//! | malformed `Authorization` (several headers, non-visible ASCII, a `Bearer` value that is not a token68) | 400 | `invalid_request` | `Bearer realm="api", error="invalid_request"` |
//! | invalid, expired, revoked credential | 401 | `invalid_token` | `Bearer realm="api", error="invalid_token"` |
//! | a backend the decision needs is down (e.g. Redis revocation) | 503 | `service_unavailable` | none |
//!
//! The public message never says *why* a credential was refused. The reason goes to a
//! `tracing` event at target `tower_shield::security` with `event = "auth.failure"`, `reason`
//! and `auth_method` (never the credential); a success is an `auth.success` event at debug
//! level with the `subject`. The `Authorization` header (and API key headers) are marked
//! sensitive so that tracing layers such as tower-http's redact them.
//!
//! Credentials are read from `Authorization: Bearer <token>` (scheme case-insensitive),
//! `Authorization: ApiKey <key>` or a configured API key header: never from the query string,
//! where they would end up in access logs.
//!
//! Authenticators:
//! - [`jwt::Jwt`]: JWT access tokens verified locally (HS*, RS*, PS*, ES256/384, EdDSA), with
//!   a bounded, revocation-aware cache of verified tokens.
//! - [`api_key::ApiKeys`]: `sk_live_<id>_<secret>` keys stored as SHA-256 hashes.
//! - your own: implement [`Authenticator`].
//!
//! Revocation ([`Revocation`]: [`MemoryRevocation`], `RedisRevocation` with feature `redis`)
//! is checked after verification, by `jti` and by subject ("log out everywhere").
//!
//! Routes can be made public ([`AuthLayer::add_public`], exact match, never by a path trick
//! such as `/health/../orders`), and the whole layer can be [optional](AuthLayer::optional).
//! Over gRPC the rejection becomes `UNAUTHENTICATED` through the envelope.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{header, Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_shield::auth::{jwt::Jwt, AuthLayer};
//! use tower_shield::principal::Principal;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let jwt = Jwt::builder()
//!     .hs256_secret(b"an example secret of at least 32 bytes!!")
//!     .issuer("https://issuer.example")
//!     .audience("orders-api")
//!     .build()?;
//!
//! let service = ServiceBuilder::new()
//!     .layer(AuthLayer::new(jwt).add_public(http::Method::GET, "/health")?)
//!     .service_fn(|request: Request<Full<Bytes>>| async move {
//!         let who: Option<String> =
//!             request.extensions().get::<Principal>().map(|p| p.subject().to_owned());
//!         let body = Full::<Bytes>::from(who.unwrap_or_default());
//!         Ok::<_, std::convert::Infallible>(Response::new(body))
//!     });
//!
//! // No credential: 401 with a challenge.
//! let response = service.clone().oneshot(Request::get("/orders").body(Full::default())?).await?;
//! assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//! assert_eq!(response.headers()[header::WWW_AUTHENTICATE], r#"Bearer realm="api""#);
//!
//! // A public route needs none.
//! let response = service.clone().oneshot(Request::get("/health").body(Full::default())?).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//!
//! // A token that is not valid: 401 invalid_token.
//! let request = Request::get("/orders")
//!     .header(header::AUTHORIZATION, "Bearer eyJhbGciOiJub25lIn0.e30.")
//!     .body(Full::default())?;
//! let response = service.oneshot(request).await?;
//! assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//! # Ok(())
//! # }
//! ```
//!
//! Key sources for JWT verification: [`KeySet`] (a JWK set given inline, see [`jwk`]) and, with
//! feature `jwks`, [`RemoteJwks`] (a JWK set fetched from a JWKS or OIDC discovery URL, see
//! [`jwks`]; pass it to [`JwtBuilder::with_key_source`](jwt::JwtBuilder::with_key_source)).
//! With feature `introspection`, [`Introspection`] checks opaque OAuth 2.0 tokens (RFC 7662,
//! see [`introspection`]); it is an [`Authenticator`] of its own, to chain after a [`Jwt`](jwt::Jwt)
//! built with [`pass_non_jwt_tokens`](jwt::JwtBuilder::pass_non_jwt_tokens).

pub mod api_key;
mod authenticator;
mod cache;
mod future;
#[cfg(feature = "introspection")]
pub mod introspection;
pub mod jwk;
#[cfg(feature = "jwks")]
pub mod jwks;
pub mod jwt;
mod key;
mod layer;
mod public;
pub mod revocation;
mod service;

#[cfg(feature = "introspection")]
pub use self::introspection::{Introspection, IntrospectionBuilder};
#[cfg(feature = "jwks")]
pub use self::jwks::{RemoteJwks, RemoteJwksBuilder};
#[cfg(feature = "redis")]
pub use self::revocation::RedisRevocation;
#[cfg(all(feature = "envelope", feature = "rate-limit"))]
pub(crate) use self::service::{check, mark_sensitive, settle, Step};
pub use self::{
    authenticator::{AuthRequest, Authenticator, Authorization, BoxAuthFuture, Verdict},
    future::ResponseFuture,
    jwk::{KeySet, KeySetConfig},
    key::VerifyingKey,
    layer::AuthLayer,
    revocation::{MemoryRevocation, Revocation},
    service::Auth,
};

#[cfg(test)]
mod tests;
