//! Metrics (feature `metrics`): counters and a latency histogram through the [`metrics`]
//! facade.
//!
//! The layers record into whatever recorder the application installs (e.g.
//! `metrics-exporter-prometheus`); without one, the calls are no-ops. Without the feature, the
//! calls are not compiled at all.
//!
//! Cost: with the feature on, every request is timed and its histogram sample built (a few
//! small allocations for the labels), installed recorder or not; each decision above is one
//! counter call. Without the feature, none of it exists. Enable it where metrics are exported.
//!
//! Every label value comes from a bounded set (configuration, fixed outcome names, matched
//! route templates), never from what a client sends, so a client cannot grow the number of
//! series.
//!
//! | metric | type | labels | counts |
//! |---|---|---|---|
//! | `tower_shield_auth_total` | counter | `method` (`jwt`, `api_key`, `introspection`, a custom name, `none`), `outcome` (`success`, `failure`, `error`, `anonymous`) | authentication decisions |
//! | `tower_shield_scope_denied_total` | counter | `outcome` (`forbidden`, `step_up`, `tenant_forbidden`, `not_found`, `unauthenticated`, `unmapped`) | authorization denials, step-up challenges included |
//! | `tower_shield_rate_limit_rejected_total` | counter | `policy` (the quota name), `key_kind` (`ip`, `principal`..., `handler` for [`RateLimiter`](crate::rate_limit::RateLimiter)) | 429s from quotas |
//! | `tower_shield_validation_rejected_total` | counter | `rule` (`body_size`, `content_type`, `schema`, `depth`, `query`...) | validation rejections |
//! | `tower_shield_idempotency_total` | counter | `outcome` (`stored`, `replayed`, `conflict`, `mismatch`, `missing`, `invalid`, `anonymous`, `not_stored`, `fail_open`, `error`) | requests carrying an `Idempotency-Key` (or missing a required one) |
//! | `tower_shield_backend_errors_total` | counter | `backend` (as in the `backend.failure` event) | backend failures, each one (the logs are rate-limited) |
//! | `tower_shield_fail_open_total` | counter | `backend` (`redis`, `idempotency`) | requests that went on without a failed backend |
//! | `tower_shield_abuse_blocks_total` | counter | `key_kind` | clients put in the penalty box |
//! | `tower_shield_abuse_rejected_total` | counter | `key_kind` | requests refused while their client is blocked |
//! | `tower_shield_request_duration_seconds` | histogram | `route`, `method`, `status` | seconds from the request to its response head, recorded by the envelope |
//!
//! The histogram's labels:
//!
//! - `route`: axum's matched route template (`/orders/{id}`) when the envelope runs inside the
//!   router (`Router::layer`); a gRPC method path (`/package.Service/Method`) once a service
//!   answered it; otherwise `unmatched` (an unknown path, a gRPC call rejected before routing
//!   or answered `UNIMPLEMENTED`, an envelope outside the router).
//! - `method`: the standard HTTP methods by name, `other` for the rest.
//! - `status`: the class, `1xx` to `5xx` (gRPC answers are HTTP 200: `2xx`).
//!
//! # Example
//!
//! ```
//! use http::{Request, Response, StatusCode};
//! use metrics_util::debugging::{DebugValue, DebuggingRecorder};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_shield::envelope::ErrorEnvelopeLayer;
//!
//! let recorder = DebuggingRecorder::new();
//! let snapshotter = recorder.snapshotter();
//! let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! // A recorder for this thread only; an application installs a global one instead
//! // (e.g. `metrics_exporter_prometheus::PrometheusBuilder::new().install()`).
//! metrics::with_local_recorder(&recorder, || {
//!     runtime.block_on(async {
//!         let service = ServiceBuilder::new().layer(ErrorEnvelopeLayer::new()).service(
//!             service_fn(|_: Request<String>| async {
//!                 Ok::<_, std::convert::Infallible>(Response::new(String::new()))
//!             }),
//!         );
//!         let response = service.oneshot(Request::new(String::new())).await.unwrap();
//!         assert_eq!(response.status(), StatusCode::OK);
//!     })
//! });
//!
//! let snapshot = snapshotter.snapshot().into_vec();
//! let (key, _, _, value) = &snapshot[0];
//! assert_eq!(key.key().name(), "tower_shield_request_duration_seconds");
//! let labels: Vec<_> = key.key().labels().map(|l| (l.key(), l.value())).collect();
//! // No router here, so no route template: a fixed label, never the raw path.
//! assert_eq!(labels, [("route", "unmatched"), ("method", "GET"), ("status", "2xx")]);
//! assert!(matches!(value, DebugValue::Histogram(values) if values.len() == 1));
//! ```
