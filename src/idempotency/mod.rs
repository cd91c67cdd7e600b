//! Safe retries of writes with the `Idempotency-Key` header (IETF
//! `draft-ietf-httpapi-idempotency-key-header`), in memory or in Redis.
//!
//! A client that times out on `POST /payments` cannot know whether the payment happened. With
//! [`IdempotencyLayer`], it sends an `Idempotency-Key` and retries with the same key: the
//! handler runs once, every retry gets the stored response.
//!
//! # What happens to a request
//!
//! - Methods other than the configured ones (default `POST` and `PATCH`) pass through, as do
//!   requests without a key unless the key is [required](IdempotencyLayer::required) (then 400
//!   `idempotency_key_missing`).
//! - The key is accepted as a structured-field string (`"abc"`, with `\"` and `\\` escapes)
//!   or bare (`abc`); it must be 1 to 255 characters of visible ASCII. Otherwise, or with
//!   several `Idempotency-Key` headers, 400 `invalid_request` with a detail
//!   `{"field": "header:idempotency-key", "issue": "empty" | "too_long" |
//!   "invalid_character" | "malformed" | "duplicate", "message": "..."}`. The value is never
//!   echoed or logged.
//! - **Scope.** Keys belong to a caller and a route, so one caller can never replay another's
//!   response. The caller is the [`Principal`](crate::principal::Principal) in the request
//!   extensions: its API key id for API keys, else its subject (with its tenant), in both
//!   cases with how it authenticated: the auth method, the token's `iss` claim and its client
//!   id (a subject is only unique within its issuer). Anonymous callers are refused with 401
//!   `unauthenticated` (the layer belongs behind authentication) unless an
//!   [`AnonymousScope`] is configured. The route is the method and the **concrete path** (not
//!   a router template): the same key sent to `/orders/1/pay` and `/orders/2/pay` names two
//!   independent records, so a response for one resource is never replayed for another. Under
//!   an axum `Router::nest` the path is the whole one the client sent (axum's `OriginalUri`),
//!   not the part the nested router sees.
//! - **Fingerprint.** Method, path and query, a SHA-256 of the body (read up to
//!   [`max_request_body`](IdempotencyLayer::max_request_body), else 413) and optionally
//!   [selected headers](IdempotencyLayer::add_fingerprint_header).
//! - **First request.** A lock is taken atomically, the inner service runs, and the response
//!   (status, [allowlisted headers](IdempotencyLayer::add_replay_header), body) is stored for
//!   the [TTL](IdempotencyLayer::ttl) (default 24 hours).
//! - **Retry, same fingerprint.** The stored response, with `Idempotent-Replayed: true`; the
//!   handler does not run (event `idempotency.replayed`).
//! - **Same key, another fingerprint.** 422 `idempotency_key_reused` (event
//!   `idempotency.mismatch`), whether the first request is done or still in flight.
//! - **Same key while the first is in flight.** 409 `idempotency_key_in_use` with
//!   `Retry-After` (event `idempotency.conflict`).
//!
//! # What is stored
//!
//! By default every status below 500 except 408, 425 and 429: a 4xx from the handler is an
//! answer the retry would get again. A 5xx, a rejection carrying a tower-shield
//! [`Error`](crate::Error) (it would lose its details in a replay; it has no side effect to
//! protect), a response not stored by
//! [`store_when`](IdempotencyLayer::store_when), an `Err` from the inner service, a panic, and
//! a request future dropped before the end (client gone, timeout) all **release the lock**, so
//! the client can retry. A response body over
//! [`max_response_body`](IdempotencyLayer::max_response_body) (default 64 KiB) is served in
//! full but not stored, its lock released, and logged (`idempotency.not_stored`). A lock left
//! by a crashed instance expires after the [lock TTL](IdempotencyLayer::lock_ttl).
//!
//! To be stored, a response with a key is held back until its body ends or passes
//! `max_response_body`: a streamed response (server-sent events, a long download) reaches
//! the client only then. Keep streaming routes out of the layer.
//!
//! # Stores
//!
//! [`IdempotencyStore`] is an async trait with two implementations: [`MemoryStore`] (the
//! default; bounded in entries and bytes, see its docs for the eviction rule) and, with
//! feature `redis`, [`RedisStore`] (`SET NX PX` for locks, Lua scripts for atomic
//! owner-checked completion and release, TTLs on every key, a timeout per call). When the
//! store fails the layer fails closed with 503 `service_unavailable` (the default) or fails
//! open and runs the request without idempotency, as [configured](BackendFailure).
//!
//! # Placement and types
//!
//! Put the layer after authentication (it needs the `Principal`) and after validation, just
//! before the handler. The inner service receives a [`RequestBody`]: the body the layer read
//! (a [`Buffered`](crate::body::Buffered)) or, when the layer does not apply, the client's body
//! untouched; axum routers accept it as is. The response body is a [`ResponseBody`]. Requests
//! the layer does not apply to cost one method check; those with a key run their store round
//! trips in one boxed future.
//!
//! Security events go to target `tower_shield::security` with the key only as a short hash
//! (`key`), never the key itself or the body.
//!
//! # Example
//!
//! ```
//! use std::sync::{atomic::{AtomicUsize, Ordering}, Arc};
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_shield::{idempotency::IdempotencyLayer, principal::Principal};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let runs = Arc::new(AtomicUsize::new(0));
//! let counter = runs.clone();
//! let service = ServiceBuilder::new()
//!     .layer(IdempotencyLayer::new())
//!     .service_fn(move |_request| {
//!         counter.fetch_add(1, Ordering::SeqCst);
//!         async {
//!             let mut response = Response::new(Full::<Bytes>::from(r#"{"id":1}"#));
//!             *response.status_mut() = StatusCode::CREATED;
//!             Ok::<_, std::convert::Infallible>(response)
//!         }
//!     });
//!
//! // An authentication layer puts the caller in the request extensions.
//! let request = || {
//!     let mut request = Request::post("/orders")
//!         .header("idempotency-key", "order-7f3a")
//!         .body(Full::<Bytes>::from(r#"{"sku":"A1"}"#))
//!         .unwrap();
//!     request.extensions_mut().insert(Principal::builder("user-42").build());
//!     request
//! };
//!
//! let first = service.clone().oneshot(request()).await.unwrap();
//! assert_eq!(first.status(), StatusCode::CREATED);
//! let retry = service.oneshot(request()).await.unwrap();
//! assert_eq!(retry.status(), StatusCode::CREATED);
//! assert_eq!(retry.headers()["idempotent-replayed"], "true");
//! assert_eq!(runs.load(Ordering::SeqCst), 1);
//! # }
//! ```

mod body;
mod future;
pub(crate) mod key;
mod layer;
#[cfg(feature = "redis")]
mod redis;
mod service;
mod store;

#[cfg(feature = "redis")]
pub use self::redis::RedisStore;
pub use self::{
    body::{RequestBody, ResponseBody},
    future::ResponseFuture,
    layer::{AnonymousScope, BackendFailure, IdempotencyLayer},
    service::Idempotency,
    store::{
        Begin, BoxFuture, Fingerprint, IdempotencyStore, LockToken, MemoryStore, RecordKey,
        StoreError, StoredResponse,
    },
};

#[cfg(test)]
mod tests;
