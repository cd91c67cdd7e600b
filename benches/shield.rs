//! Per-request overhead of tower-shield's layers, in process through `tower::ServiceExt`.
//!
//! `cargo bench --all-features --bench shield`. Each layer's benches are a module here; every
//! group measures against the same bare handler.

use std::convert::Infallible;

use axum::{body::Body, routing::get, Router};
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, StatusCode};
use tower::{Service, ServiceExt};

mod auth;
mod envelope;
mod idempotency;
mod jwks;
mod preset;
mod rate_limit;
mod scope;
mod summary;
mod validate;

/// A bare axum router with one route: the baseline every layer is compared with.
///
/// Every bench router is finished with `with_state(())`, as `axum::serve` does: otherwise axum
/// turns each handler (and its route layers) into a route again on every request.
pub(crate) fn bare_router() -> Router {
    Router::new().route("/orders", get(|| async { "[]" })).with_state(())
}

/// Sends one request through `service` and checks the status, on a current-thread runtime.
pub(crate) fn run<S>(
    rt: &tokio::runtime::Runtime,
    service: &S,
    request: Request<Body>,
    want: StatusCode,
) where
    S: Service<Request<Body>, Error = Infallible> + Clone,
    S::Response: IntoStatus,
{
    let status = rt.block_on(service.clone().oneshot(request)).unwrap().status();
    debug_assert_eq!(status, want);
}

/// The status of a response, whatever its body type.
pub(crate) trait IntoStatus {
    fn status(&self) -> StatusCode;
}

impl<B> IntoStatus for http::Response<B> {
    fn status(&self) -> StatusCode {
        http::Response::status(self)
    }
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().build().unwrap()
}

fn baseline(c: &mut Criterion) {
    let rt = runtime();
    let app = bare_router();
    c.bench_function("bare_axum", |b| {
        b.iter(|| {
            run(&rt, &app, Request::get("/orders").body(Body::empty()).unwrap(), StatusCode::OK)
        })
    });
}

criterion_group!(
    benches,
    summary::start,
    baseline,
    envelope::benches,
    auth::benches,
    scope::benches,
    validate::benches,
    rate_limit::benches,
    idempotency::benches,
    jwks::benches,
    preset::benches,
    summary::targets
);
criterion_main!(benches);
