//! Idempotency with the memory store: a first request (body read, fingerprint, lock, store)
//! and a replay (the handler does not run).

use std::sync::atomic::{AtomicU64, Ordering};

use axum::{body::Body, routing::post, Router};
use criterion::Criterion;
use http::{Request, StatusCode};
use tower::Layer;
use tower_shield::{idempotency::IdempotencyLayer, principal::Principal};

use crate::{run, runtime};

fn request(key: &str) -> Request<Body> {
    let mut request = Request::post("/orders")
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(Body::from(r#"{"sku":"A1","quantity":2}"#))
        .unwrap();
    request.extensions_mut().insert(Principal::builder("user-42").build());
    request
}

pub(crate) fn benches(c: &mut Criterion) {
    let rt = runtime();
    let router = Router::new()
        .route("/orders", post(|| async { (StatusCode::CREATED, "{}") }))
        .with_state(());
    let app = IdempotencyLayer::new().layer(router);
    let mut group = c.benchmark_group("idempotency");
    let n = AtomicU64::new(0);
    group.bench_function("first_request", |b| {
        b.iter(|| {
            let key = format!("key-{}", n.fetch_add(1, Ordering::Relaxed));
            run(&rt, &app, request(&key), StatusCode::CREATED)
        })
    });
    run(&rt, &app, request("replayed"), StatusCode::CREATED);
    group.bench_function("replay", |b| {
        b.iter(|| run(&rt, &app, request("replayed"), StatusCode::CREATED))
    });
    group.bench_function("no_key", |b| {
        b.iter(|| {
            let mut request = request("x");
            request.headers_mut().remove("idempotency-key");
            run(&rt, &app, request, StatusCode::CREATED)
        })
    });
    group.finish();
}
