//! Authorization: scopes, roles, step-up authentication, tenant isolation and resource policies.
//!
//! Authentication says who the caller is; this module decides what they may do, apart from the
//! handlers, so access policy can change without touching business code. It reads the
//! [`Principal`](crate::principal::Principal) that an authenticating layer put in the request
//! extensions.
//!
//! - [`ScopeLayer`] checks a [`Requirement`] before the inner service: all or any of a set of
//!   scopes, roles, freshness and strength of the login (RFC 9470 step-up), the caller's tenant,
//!   and `and`/`or` combinations. Use it per route (axum `route_layer`), as one table for a
//!   whole axum router, denied by default ([`ScopeLayer::per_route`] with
//!   [`RouteRequirements`], or in the preset's shield), or per gRPC method
//!   ([`ScopeLayer::per_method`] with [`MethodRequirements`]).
//! - [`Policy`] is object-level authorization (OWASP API1, "BOLA"): may this caller act on
//!   *this* order? Call it from a handler with [`authorize`], or before the handler with a
//!   [`PolicyLayer`].
//!
//! # The answers
//!
//! | situation | status | `WWW-Authenticate` | [`ErrorKind`](crate::ErrorKind) | gRPC |
//! |---|---|---|---|---|
//! | no principal | 401 | `Bearer realm="api"` | `Unauthenticated` | `UNAUTHENTICATED` |
//! | a scope is missing | 403 | `Bearer realm="api", error="insufficient_scope", scope="orders:write"` | `Forbidden` | `PERMISSION_DENIED` |
//! | a role is missing (no scope would help) | 403 | `Bearer realm="api", error="insufficient_scope"` | `Forbidden` | `PERMISSION_DENIED` |
//! | login too old or too weak | 401 | `Bearer realm="api", error="insufficient_user_authentication", acr_values="mfa", max_age="300"` | `StepUpRequired` | `UNAUTHENTICATED` |
//! | another tenant (default) | 404 | none | `NotFound` | `NOT_FOUND` |
//! | another tenant ([`Tenant::deny_as_forbidden`]) | 403 | none | `Forbidden` | `PERMISSION_DENIED` |
//! | gRPC method without a requirement | 403 | none | `Forbidden` | `PERMISSION_DENIED` |
//! | [`Decision::NotFound`] / [`Decision::Deny`] | 404 / 403 | none | `NotFound` / `Forbidden` | `NOT_FOUND` / `PERMISSION_DENIED` |
//!
//! Which scopes the challenge names, and which denial wins in a combination, is set out on
//! [`Requirement`]. Bodies are rendered by the
//! [`ErrorEnvelopeLayer`](crate::envelope::ErrorEnvelopeLayer); the layer answers with the
//! status, the header and an empty body.
//!
//! # Logs
//!
//! Every decision is a `tracing` event at target `tower_shield::security` with the fields
//! `event` (`scope.denied`, `step_up.required`, or `scope.allowed` at `debug`), `outcome`
//! (`unauthenticated`, `forbidden`, `step_up`, `tenant_forbidden`, `not_found`, `unmapped`,
//! `allowed`), `subject`, `tenant`, `route` (axum's `MatchedPath` template when available, else
//! the path without the query), `requirement` (e.g. `all(orders:write) or role(admin)`) and, for
//! policies, `policy`. Denials are at `info` (`warn` for an unmapped gRPC method). No token or
//! claim value is ever logged.
//!
//! # Example
//!
//! ```
//! use http::{header, Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_shield::{principal::Principal, scope::{Requirement, ScopeLayer}};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let service = ServiceBuilder::new()
//!     .layer(ScopeLayer::new(Requirement::all(["orders:write"]).or(Requirement::role("admin"))))
//!     .service_fn(|_: Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(String::from("created")))
//!     });
//!
//! // An authenticating layer puts the principal in the extensions.
//! let reader = Principal::builder("alice").scopes(["orders:read"]).build();
//! let mut request = Request::post("/orders").body(String::new()).unwrap();
//! request.extensions_mut().insert(reader);
//!
//! let response = service.clone().oneshot(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::FORBIDDEN);
//! assert_eq!(
//!     response.headers()[header::WWW_AUTHENTICATE],
//!     r#"Bearer realm="api", error="insufficient_scope", scope="orders:write""#,
//! );
//!
//! let mut request = Request::post("/orders").body(String::new()).unwrap();
//! request.extensions_mut().insert(Principal::builder("root").roles(["admin"]).build());
//! assert_eq!(service.oneshot(request).await.unwrap().status(), StatusCode::OK);
//! # }
//! ```
//!
//! With axum, guard each route with `route_layer`, so the router's own 404 and 405 answers stay
//! as they are (or list every route in one [`RouteRequirements`] table and apply it with
//! `Router::layer`: one layered route instead of one per route, and a route nobody listed is
//! denied rather than open):
//!
//! ```
//! # #[cfg(feature = "axum")]
//! # {
//! use axum::{routing::{delete, get}, Router};
//! use tower_shield::scope::{Requirement, ScopeLayer};
//!
//! let app: Router = Router::new()
//!     .route(
//!         "/orders",
//!         get(|| async { "[]" })
//!             .route_layer(ScopeLayer::new(Requirement::scope("orders:read")))
//!             .merge(axum::routing::post(|| async { "created" })
//!                 .route_layer(ScopeLayer::new(Requirement::scope("orders:write")))),
//!     )
//!     .route(
//!         "/orders/{id}",
//!         delete(|| async { "deleted" })
//!             .route_layer(ScopeLayer::new(Requirement::scope("orders:admin"))),
//!     );
//! # }
//! ```

mod future;
mod layer;
mod policy;
mod requirement;
mod service;

#[cfg(all(feature = "envelope", feature = "auth", feature = "rate-limit"))]
pub(crate) use self::service::{decide, Head};
pub use self::{
    future::ResponseFuture,
    layer::{MethodRequirements, RouteRequirements, ScopeLayer},
    policy::{authorize, Decision, Policy, PolicyFuture, PolicyLayer, PolicyService},
    requirement::{Requirement, Tenant},
    service::Scope,
};

#[cfg(test)]
mod tests;
