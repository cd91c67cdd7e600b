//! Authorization: an allowed and a denied check of a route layer, in process.

use axum::{body::Body, routing::get, Router};
use criterion::Criterion;
use http::{Request, StatusCode};
use tower_shield::{
    principal::Principal,
    scope::{Requirement, ScopeLayer},
};

use crate::{run, runtime};

pub(crate) fn benches(c: &mut Criterion) {
    let rt = runtime();
    let requirement =
        Requirement::all(["orders:read", "orders:write"]).or(Requirement::role("admin"));
    let app = Router::new()
        .route("/orders", get(|| async { "[]" }).route_layer(ScopeLayer::new(requirement)))
        .with_state(());
    let allowed = Principal::builder("user-1")
        .scopes(["orders:read", "orders:write", "profile", "email", "openid"])
        .build();
    let denied = Principal::builder("user-2").scopes(["orders:read", "profile"]).build();
    let request = |principal: &Principal| {
        let mut request = Request::get("/orders").body(Body::empty()).unwrap();
        request.extensions_mut().insert(principal.clone());
        request
    };
    let mut group = c.benchmark_group("scope");
    group.bench_function("allowed", |b| {
        b.iter(|| run(&rt, &app, request(&allowed), StatusCode::OK))
    });
    group.bench_function("denied", |b| {
        b.iter(|| run(&rt, &app, request(&denied), StatusCode::FORBIDDEN))
    });
    group.finish();
}
