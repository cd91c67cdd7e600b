//! One stable, safe error body for every failure, request ids, and panic catching.
//!
//! [`ErrorEnvelopeLayer`] goes outermost. It is the only writer of error bodies:
//!
//! - A rejection from a tower-shield layer arrives as a response with an [`Error`](crate::Error) in its
//!   extensions and is rendered from it: `{"code", "message", "request_id", "details"?}` as
//!   `application/json`, or RFC 9457 `application/problem+json` when the client's `Accept` asks
//!   for it (or [`ErrorEnvelopeLayer::format`] says so).
//! - A gRPC request (`content-type: application/grpc*` over HTTP/2, or gRPC-Web's
//!   `application/grpc-web*`) gets a trailers-only response instead: HTTP 200 with
//!   `grpc-status` and a percent-encoded `grpc-message`. A service that serves no gRPC turns
//!   this off with [`ErrorEnvelopeLayer::grpc`].
//! - A bare error response of the inner service (a router's 404 or 405, a handler's 500) is
//!   normalised into the same envelope. Its body is dropped, so internal text never reaches the
//!   client; [`ErrorEnvelopeLayer::keep_client_error_bodies`] lets a service's own 4xx bodies
//!   through.
//! - A panic in the inner service becomes a 500 envelope, logged with the request id, instead of
//!   a dropped connection.
//! - Every request gets a [`RequestId`]: the client's `X-Request-Id` when it is 1 to 64
//!   characters of `[A-Za-z0-9._-]`, otherwise a new UUID v4. It is echoed in the response
//!   header, put in the request extensions and headers for handlers, and recorded in the
//!   `request` tracing span.
//!
//! # The request span
//!
//! The envelope opens one `tracing` span per request, `request` at target `tower_shield`
//! (level `INFO`), and puts a [`RequestSpan`] handle on it in the request extensions. Every
//! tower-shield layer records its outcome into that span, however many spans other middleware
//! (tower-http's `TraceLayer`...) opened in between, so one span carries the whole story of a
//! request. Its fields are plain `tracing` fields: `tracing-subscriber`'s JSON formatter prints
//! them with each event inside the span (and on span close with `with_span_events`), and
//! `tracing-opentelemetry` exports them as span attributes. A field stays empty when the layer
//! that fills it is not in the stack or did not decide.
//!
//! | field | recorded by | value |
//! |---|---|---|
//! | `request_id` | envelope | the [`RequestId`] answered in `x-request-id` |
//! | `method` | envelope | the HTTP method |
//! | `route` | envelope | axum's matched route template (`/orders/{id}`, feature `axum`, when the envelope runs inside the router as with `Router::layer`), or a gRPC request's path (`/package.Service/Method`); never a raw HTTP path with ids |
//! | `client_ip` | rate limit | the client IP as keyed: the peer, or the proxy-aware address from `X-Forwarded-For`/`Forwarded` of trusted proxies |
//! | `subject`, `tenant` | auth | the authenticated principal |
//! | `auth.method` | auth | `jwt`, `api_key`, `introspection`, a custom authenticator's name, or `none` |
//! | `auth.outcome` | auth | `success`, `failure` (401/400), `error` (a backend failed: 503), `anonymous` (optional auth, no credential), `public` (public route) |
//! | `rate_limit.policy` | rate limit | the quota's name (the innermost limit layer that decided) |
//! | `rate_limit.outcome` | rate limit | `allowed`, `rejected` (429), `error` (store failed closed) |
//! | `abuse.outcome` | penalty box | `blocked` (a blocked client's request refused with 429) |
//! | `scope.outcome` | scope | `allowed`, `open` (an open route of a table), `forbidden`, `step_up`, `tenant_forbidden`, `not_found`, `unauthenticated`, `unmapped` |
//! | `validation.outcome` | validate | `passed`, `rejected` |
//! | `idempotency.outcome` | idempotency | `stored`, `replayed`, `conflict`, `mismatch`, `missing`, `invalid`, `anonymous`, `not_stored`, `fail_open`, `error` |
//! | `error.code` | envelope | the rendered [`Error::code`](crate::Error::code), when the response is an error |
//! | `status` | envelope | the HTTP status sent (gRPC: 200, see `error.code`); 500 after a panic |
//! | `latency_ms` | envelope | milliseconds (fractional) from the request to its response head |
//!
//! When the response head is ready, the envelope emits a `request completed` event at `DEBUG`
//! (target `tower_shield::envelope`) inside the span: with `tower_shield::envelope=debug`, a
//! JSON log gets one line per request with every field above (or use `tracing-subscriber`'s
//! `with_span_events(FmtSpan::CLOSE)`).
//!
//! Nothing here holds a credential; values from the client are recorded as strings, which
//! formatters quote and escape. When no subscriber records the span, the envelope adds no
//! handle and the layers skip all of it.
//!
//! The public `message` is fixed per [`ErrorKind`](crate::ErrorKind); the internal
//! [`reason`](crate::Error::reason) is logged, never rendered. Responses of the inner service with an
//! `Err` (not a response) pass through as errors: axum and tonic services never produce them.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_shield::envelope::ErrorEnvelopeLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let service = ServiceBuilder::new()
//!     .layer(ErrorEnvelopeLayer::new())
//!     .service_fn(|_request: Request<Full<Bytes>>| async {
//!         // A handler that fails with internal text in its body.
//!         let mut response = Response::new(Full::from("db password is hunter2"));
//!         *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
//!         Ok::<_, std::convert::Infallible>(response)
//!     });
//!
//! let request = Request::builder().header("x-request-id", "req-1").body(Full::default()).unwrap();
//! let response = service.oneshot(request).await.unwrap();
//!
//! assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
//! assert_eq!(response.headers()["x-request-id"], "req-1");
//! let body = response.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(
//!     body,
//!     r#"{"code":"internal","message":"Internal server error","request_id":"req-1"}"#,
//! );
//! # }
//! ```

mod body;
mod future;
mod layer;
mod render;
mod request_id;
mod service;

pub use self::{
    body::ResponseBody,
    future::ResponseFuture,
    layer::ErrorEnvelopeLayer,
    render::{DefaultRender, Format, Render, RenderContext, Rendered},
    request_id::{MakeRequestId, MakeRequestUuid, RequestId},
    service::ErrorEnvelope,
};
pub use crate::observe::RequestSpan;

#[cfg(test)]
mod tests;
