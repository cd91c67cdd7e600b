//! The recommended stack ([`Shield`]): envelope, per-IP limit, auth, per-principal limit and a
//! scope check, around the bare handler. Accepted requests per algorithm (warm and cold token
//! cache) and every rejection path (401 bad and missing token, 403, 429), all with the request
//! the `bare` bench sends to the bare router, so that differences are the stack's cost alone.

use std::{net::SocketAddr, num::NonZeroU32};

use axum::{body::Body, routing::get, Router};
use criterion::Criterion;
use http::{header, Request, StatusCode};
use jsonwebtoken::Algorithm;
use tower_shield::{
    auth::AuthLayer,
    preset::Shield,
    rate_limit::{PeerAddr, Quota},
    scope::Requirement,
};

use crate::{
    auth::{jwt, keys, token, ALGORITHMS},
    run, runtime,
};

/// The request of every preset bench: a bearer token and the peer address.
pub(crate) fn request(token: Option<&str>) -> Request<Body> {
    let mut builder = Request::get("/orders");
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let mut request = builder.body(Body::empty()).unwrap();
    request.extensions_mut().insert(PeerAddr(SocketAddr::from(([192, 0, 2, 1], 4711))));
    request
}

/// The bare route behind the preset: `GET /orders` needing scope `orders:read`.
fn app(auth: AuthLayer, quota: Quota, scope: &str) -> Router {
    let shield = Shield::builder()
        .with_auth(auth)
        .with_ip_quota(quota.clone())
        .with_principal_quota(quota)
        .build()
        .unwrap();
    Router::new()
        .route(
            "/orders",
            get(|| async { "[]" }).route_layer(shield.standard(Requirement::scope(scope))),
        )
        .layer(shield)
        .with_state(())
}

pub(crate) fn benches(c: &mut Criterion) {
    let rt = runtime();
    tower_shield::auth::jwt::install_crypto_provider();
    // Limits that never trigger: the accepted path still makes both decisions.
    let generous = Quota::per_second(NonZeroU32::MAX);
    let mut group = c.benchmark_group("preset");

    let hs256 = token(Algorithm::HS256);
    let bare = crate::bare_router();
    group.bench_function("bare", |b| {
        b.iter(|| run(&rt, &bare, request(Some(&hs256)), StatusCode::OK))
    });

    for (name, alg) in ALGORITHMS {
        let token = token(alg);
        for (mode, cache) in [("warm", true), ("cold", false)] {
            let auth = AuthLayer::new(jwt(keys(alg).1, cache));
            let app = app(auth, generous.clone(), "orders:read");
            group.bench_function(format!("{name}_{mode}"), |b| {
                b.iter(|| run(&rt, &app, request(Some(&token)), StatusCode::OK))
            });
        }
    }

    // Rejections, next to `hs256_warm`.
    let accepted =
        app(AuthLayer::new(jwt(keys(Algorithm::HS256).1, true)), generous.clone(), "orders:read");
    // A well-formed token signed with another secret: the signature check runs and fails.
    let forged = {
        let mut parts: Vec<&str> = hs256.split('.').collect();
        parts[2] = "c2lnbmF0dXJlLW9mLXRoZS13cm9uZy1rZXktMDEyMzQ1Njc4OQ";
        parts.join(".")
    };
    group.bench_function("rejected_401_bad_signature", |b| {
        b.iter(|| run(&rt, &accepted, request(Some(&forged)), StatusCode::UNAUTHORIZED))
    });
    group.bench_function("rejected_401_missing", |b| {
        b.iter(|| run(&rt, &accepted, request(None), StatusCode::UNAUTHORIZED))
    });
    let admin_only =
        app(AuthLayer::new(jwt(keys(Algorithm::HS256).1, true)), generous, "orders:admin");
    group.bench_function("rejected_403_scope", |b| {
        b.iter(|| run(&rt, &admin_only, request(Some(&hs256)), StatusCode::FORBIDDEN))
    });
    let exhausted = app(
        AuthLayer::new(jwt(keys(Algorithm::HS256).1, true)),
        Quota::per_hour(NonZeroU32::MIN),
        "orders:read",
    );
    run(&rt, &exhausted, request(Some(&hs256)), StatusCode::OK);
    group.bench_function("rejected_429", |b| {
        b.iter(|| run(&rt, &exhausted, request(Some(&hs256)), StatusCode::TOO_MANY_REQUESTS))
    });
    group.finish();
}
