//! The envelope: a passing request (request id generated and echoed) and a rendered 404.

use axum::body::Body;
use criterion::Criterion;
use http::{Request, StatusCode};
use tower::Layer;
use tower_shield::envelope::ErrorEnvelopeLayer;

use crate::{bare_router, run, runtime};

pub(crate) fn benches(c: &mut Criterion) {
    let rt = runtime();
    let app = ErrorEnvelopeLayer::new().layer(bare_router());
    let mut group = c.benchmark_group("envelope");
    group.bench_function("ok", |b| {
        b.iter(|| {
            run(&rt, &app, Request::get("/orders").body(Body::empty()).unwrap(), StatusCode::OK)
        })
    });
    group.bench_function("ok_client_request_id", |b| {
        b.iter(|| {
            let request = Request::get("/orders")
                .header("x-request-id", "req-1234")
                .body(Body::empty())
                .unwrap();
            run(&rt, &app, request, StatusCode::OK)
        })
    });
    group.bench_function("not_found_rendered", |b| {
        b.iter(|| {
            run(
                &rt,
                &app,
                Request::get("/nope").body(Body::empty()).unwrap(),
                StatusCode::NOT_FOUND,
            )
        })
    });
    group.finish();
}
