//! The recommended stack ([`Shield`]): envelope, per-IP limit, auth, per-principal limit and a
//! scope check, around the bare handler. Accepted requests per algorithm (warm and cold token
//! cache) and every rejection path (401 bad and missing token, 403, 429), all with the request
//! the `bare` bench sends to the bare router, so that differences are the stack's cost alone.

use std::{net::SocketAddr, num::NonZeroU32};

use axum::{body::Body, routing::get, Router};
use criterion::Criterion;
use http::{header, Method, Request, StatusCode};
use jsonwebtoken::Algorithm;
use tower_shield::{
    auth::AuthLayer,
    preset::Shield,
    rate_limit::{PeerAddr, Quota},
    scope::{Requirement, RouteRequirements, ScopeLayer},
};

use crate::{
    auth::{jwt, keys, token, ALGORITHMS},
    run, runtime,
    summary::{median, time_batch},
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

/// `token` with the signature of another secret: as long as a real one, so that the
/// verifier computes the whole HMAC before it compares, as it does for an attacker's token.
fn forge(token: &str) -> String {
    let (message, _) = token.rsplit_once('.').unwrap();
    let other = jsonwebtoken::EncodingKey::from_secret(b"another secret, also of 32 bytes");
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &other, Algorithm::HS256);
    format!("{message}.{}", signature.unwrap())
}

/// The bare route behind the preset: `GET /orders` needing scope `scope`, in the shield's
/// route table, the shield in one `Router::layer` (as the preset's docs show).
fn app(auth: AuthLayer, quota: Quota, scope: &str) -> Router {
    let routes =
        RouteRequirements::new().route(Method::GET, "/orders", Requirement::scope(scope)).unwrap();
    let shield = Shield::builder()
        .with_auth(auth)
        .with_ip_quota(quota.clone())
        .with_principal_quota(quota)
        .with_scopes(ScopeLayer::per_route(routes))
        .build()
        .unwrap();
    Router::new().route("/orders", get(|| async { "[]" })).layer(shield).with_state(())
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
    let forged = forge(&hs256);
    // As in a running server, the service has seen a valid token before the forged ones.
    run(&rt, &accepted, request(Some(&hs256)), StatusCode::OK);
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

/// The preset's targets measured in turns, so that a slow spell of a shared machine weighs on
/// every path alike: `ROUNDS` rounds, each timing `BATCH` requests of every path back to back.
/// Returns `(name, median per-round ratio, limit)` rows: the accepted path's overhead over
/// bare axum (in µs, limit 2), the asymmetric algorithms against HS256 (limit 1.3) and each
/// rejection against the accepted request (limit 1); and bare axum's median time per request
/// (µs), which tells a slow spell of the machine from a slow stack.
pub(crate) fn interleaved() -> (Vec<(String, f64, f64)>, f64) {
    const ROUNDS: usize = 40;
    const BATCH: u32 = 1_000;
    let rt = runtime();
    let generous = Quota::per_second(NonZeroU32::MAX);
    let hs256 = token(Algorithm::HS256);
    let warm = |alg| app(AuthLayer::new(jwt(keys(alg).1, true)), generous.clone(), "orders:read");
    let forged = forge(&hs256);
    let exhausted = app(
        AuthLayer::new(jwt(keys(Algorithm::HS256).1, true)),
        Quota::per_hour(NonZeroU32::MIN),
        "orders:read",
    );
    run(&rt, &exhausted, request(Some(&hs256)), StatusCode::OK);
    let admin_only =
        app(AuthLayer::new(jwt(keys(Algorithm::HS256).1, true)), generous.clone(), "orders:admin");
    let accepted = warm(Algorithm::HS256);
    let bare = crate::bare_router();

    // (name, service, token, expected status)
    let mut paths: Vec<(String, Router, Option<String>, StatusCode)> = vec![
        ("bare".into(), bare, Some(hs256.clone()), StatusCode::OK),
        ("hs256".into(), accepted.clone(), Some(hs256.clone()), StatusCode::OK),
    ];
    for (name, alg) in ALGORITHMS.into_iter().filter(|(_, alg)| *alg != Algorithm::HS256) {
        paths.push((name.to_owned(), warm(alg), Some(token(alg)), StatusCode::OK));
    }
    paths.push((
        "401_bad_signature".into(),
        accepted.clone(),
        Some(forged),
        StatusCode::UNAUTHORIZED,
    ));
    paths.push(("401_missing".into(), accepted, None, StatusCode::UNAUTHORIZED));
    paths.push(("403_scope".into(), admin_only, Some(hs256.clone()), StatusCode::FORBIDDEN));
    paths.push(("429".into(), exhausted, Some(hs256.clone()), StatusCode::TOO_MANY_REQUESTS));
    // Last: a first-time valid token (no cache), the accepted request that does the forged
    // token's work (one signature check). Not part of the loop of rows below.
    let cold = app(AuthLayer::new(jwt(keys(Algorithm::HS256).1, false)), generous, "orders:read");
    paths.push(("hs256_cold".into(), cold, Some(hs256), StatusCode::OK));

    let mut times = vec![Vec::with_capacity(ROUNDS); paths.len()];
    for _ in 0..ROUNDS {
        for (i, (_, service, token, status)) in paths.iter().enumerate() {
            times[i]
                .push(time_batch(BATCH, || run(&rt, service, request(token.as_deref()), *status)));
        }
    }
    let per_round = |a: usize, f: &dyn Fn(f64, f64) -> f64, b: usize| {
        median((0..ROUNDS).map(|r| f(times[a][r], times[b][r])).collect())
    };
    let (bare, hs) = (0, 1);
    let bare_us = median(times[bare].clone()) / 1000.0;
    let mut rows = vec![(
        "preset hs256 warm - bare, µs".to_owned(),
        per_round(hs, &|h, b| (h - b) / 1000.0, bare),
        2.0,
    )];
    let cold = paths.len() - 1;
    for (i, (name, ..)) in paths.iter().enumerate().take(cold).skip(2) {
        let limit = if paths[i].3 == StatusCode::OK { 1.3 } else { 1.0 };
        let what = if limit > 1.0 { "warm / hs256 warm" } else { "/ hs256 warm accepted" };
        rows.push((format!("preset {name} {what}"), per_round(i, &|x, h| x / h, hs), limit));
    }
    // What a flood of forged tokens costs against a first-time valid one: both check one
    // signature; only the valid token is then cached.
    let forged = paths
        .iter()
        .position(|(name, ..)| name == "401_bad_signature")
        .expect("the forged-token path is measured");
    rows.push((
        "preset 401_bad_signature / hs256 cold accepted".to_owned(),
        per_round(forged, &|x, c| x / c, cold),
        1.0,
    ));
    (rows, bare_us)
}
