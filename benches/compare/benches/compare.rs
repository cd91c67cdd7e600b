//! tower-shield's preset against a comparable stack of peers, over the same axum handler and
//! the same request, in process through `tower::ServiceExt::oneshot`:
//!
//! - **ours**: `Shield` (envelope, per-IP limit, HS256 JWT auth with its verified-token cache,
//!   per-principal limit, and the scope `orders:read` in its route table, `with_scopes`),
//!   inside the router as the preset's docs show (`Router::layer`: axum boxes and clones the
//!   layered route per request);
//! - **ours, outside the router**: the same shield around the router, as theirs is;
//! - **ours with a route layer**: the scope as `route_layer(shield.standard(..))` instead of
//!   the route table (a second layered route per request);
//! - **theirs**: tower_governor (per-IP limit) → jwt-authorizer (HS256, `iss`/`aud`/`exp`
//!   checked) with a claims check for the scope: the stack the issue's 2.5x target is set
//!   against;
//! - **theirs doing our work**: the same, plus what ours also does on every accepted request
//!   (a generated, echoed request id with tower-http, rate-limit headers, and a second
//!   tower_governor keyed by the verified `sub`).
//!
//! Each run ends with our overhead and theirs over bare axum, the ratios, and the cost of a 429
//! against the accepted request of both stacks. `cd benches/compare && cargo bench`.

use std::{
    convert::Infallible,
    net::SocketAddr,
    num::NonZeroU32,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use axum::{body::Body, extract::ConnectInfo, routing::get, Router};
use criterion::Criterion;
use http::{header, Method, Request, Response, StatusCode};
use jsonwebtoken::{EncodingKey, Header};
use jwt_authorizer::IntoLayer;
use serde::Deserialize;
use tower::{Layer, Service, ServiceExt};
use tower_governor::{governor::GovernorConfigBuilder, GovernorLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_shield::{
    auth::{jwt::Jwt, AuthLayer},
    preset::Shield,
    rate_limit::Quota,
    scope::{Requirement, RouteRequirements, ScopeLayer},
};

const SECRET: &str = "a benchmark secret of at least 32 bytes";
const ISSUER: &str = "https://issuer.bench";
const AUDIENCE: &str = "bench";

/// The handler both stacks wrap. `with_state(())` as `axum::serve` does, so that axum does not
/// turn the handler into a route again on every request.
fn bare_router() -> Router {
    Router::new().route("/orders", get(|| async { "[]" })).with_state(())
}

fn token() -> String {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "alice",
        "iat": now, "exp": now + 3600, "scope": "orders:read",
    });
    jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes()))
        .unwrap()
}

/// The request every bench sends: a bearer token and axum's peer address, which both stacks'
/// per-IP limits read.
fn request(token: &str) -> Request<Body> {
    let mut request = Request::get("/orders")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    request.extensions_mut().insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 1], 4711))));
    request
}

/// The shield with the scope check in its route table (`with_scopes`), as its docs show.
fn shield(quota: Quota) -> Shield {
    let jwt =
        Jwt::builder().hs256_secret(SECRET).issuer(ISSUER).audience(AUDIENCE).build().unwrap();
    let routes = RouteRequirements::new()
        .route(Method::GET, "/orders", Requirement::scope("orders:read"))
        .unwrap();
    Shield::builder()
        .with_auth(AuthLayer::new(jwt))
        .with_ip_quota(quota.clone())
        .with_principal_quota(quota)
        .with_scopes(ScopeLayer::per_route(routes))
        .build()
        .unwrap()
}

/// Ours as the preset's docs show it: the shield, with its route table of scopes, in one
/// `Router::layer` (axum boxes and clones the layered route on every request).
fn ours(quota: Quota) -> Router {
    Router::new().route("/orders", get(|| async { "[]" })).layer(shield(quota)).with_state(())
}

/// Ours with the scope as a per-route layer instead (`route_layer(shield.standard(..))`): a
/// second layered route, boxed and cloned on every request too.
fn ours_route_layer(quota: Quota) -> Router {
    let jwt =
        Jwt::builder().hs256_secret(SECRET).issuer(ISSUER).audience(AUDIENCE).build().unwrap();
    let shield = Shield::builder()
        .with_auth(AuthLayer::new(jwt))
        .with_ip_quota(quota.clone())
        .with_principal_quota(quota)
        .build()
        .unwrap();
    Router::new()
        .route(
            "/orders",
            get(|| async { "[]" }).route_layer(shield.standard(Requirement::scope("orders:read"))),
        )
        .layer(shield)
        .with_state(())
}

#[derive(Clone, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    scope: String,
}

/// [`ours`] wrapped around the router, as [`theirs`] is (the route table matches the path
/// exactly there).
fn ours_outside(
    quota: Quota,
) -> impl Service<Request<Body>, Response = Response<impl Sized>, Error = Infallible> + Clone {
    shield(quota).layer(bare_router())
}

/// tower_governor per IP, then jwt-authorizer HS256 with the scope as a claims check.
fn theirs(
    rt: &tokio::runtime::Runtime,
    per: Duration,
    burst: u32,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send> + Clone
{
    let governor = GovernorConfigBuilder::default().period(per).burst_size(burst).finish().unwrap();
    GovernorLayer::new(governor).layer(authorized(rt, bare_router()))
}

/// The peers doing the work ours does on an accepted request: a request id generated and
/// echoed (tower-http), tower_governor per IP with its headers, jwt-authorizer with the scope
/// check, and tower_governor per subject (the verified `sub`) with its headers.
fn theirs_same_work(
    rt: &tokio::runtime::Runtime,
    per: Duration,
    burst: u32,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send> + Clone
{
    let per_ip = GovernorConfigBuilder::default()
        .period(per)
        .burst_size(burst)
        .use_headers()
        .finish()
        .unwrap();
    let per_subject = GovernorConfigBuilder::default()
        .key_extractor(Subject)
        .period(per)
        .burst_size(burst)
        .use_headers()
        .finish()
        .unwrap();
    let limited = GovernorLayer::new(per_subject).layer(bare_router());
    tower::ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(GovernorLayer::new(per_ip))
        .service(authorized(rt, limited))
}

/// tower_governor's key for a per-principal limit: the `sub` of the claims jwt-authorizer put
/// in the request.
#[derive(Clone)]
struct Subject;

impl tower_governor::key_extractor::KeyExtractor for Subject {
    type Key = String;

    fn extract<T>(&self, request: &Request<T>) -> Result<String, tower_governor::GovernorError> {
        request
            .extensions()
            .get::<jsonwebtoken9::TokenData<Claims>>()
            .map(|data| data.claims.sub.clone())
            .ok_or(tower_governor::GovernorError::UnableToExtractKey)
    }
}

/// jwt-authorizer (HS256, `iss`/`aud`/`exp` checked, the scope as a claims check) around
/// `inner`.
fn authorized<S>(
    rt: &tokio::runtime::Runtime,
    inner: S,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send> + Clone
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let validation = jwt_authorizer::Validation::new().iss(&[ISSUER]).aud(&[AUDIENCE]);
    let jwt = rt
        .block_on(
            jwt_authorizer::JwtAuthorizer::<Claims>::from_secret(SECRET)
                .validation(validation)
                .check(|claims: &Claims| claims.scope.split(' ').any(|s| s == "orders:read"))
                .build(),
        )
        .unwrap();
    let jwt = vec![jwt].into_layer();
    // jwt-authorizer 0.15 (the latest) is built on axum 0.7: its responses are axum 0.7 ones.
    // The bodies are converted on both sides of it (`Body::new`, one small allocation each).
    let handler = ServiceExt::<Request<Body>>::map_response(inner, |r: Response<Body>| {
        r.map(axum07::body::Body::new)
    });
    ServiceExt::<Request<Body>>::map_response(
        jwt.layer(handler),
        |r: Response<axum07::body::Body>| r.map(Body::new),
    )
}

fn run<S, B>(rt: &tokio::runtime::Runtime, service: &S, request: Request<Body>, want: StatusCode)
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone,
{
    let status = rt.block_on(service.clone().oneshot(request)).unwrap().status();
    debug_assert_eq!(status, want);
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let token = token();
    let mut group = c.benchmark_group("compare");

    let bare = bare_router();
    group.bench_function("bare", |b| b.iter(|| run(&rt, &bare, request(&token), StatusCode::OK)));

    let generous = Quota::per_second(NonZeroU32::MAX);
    let shield = ours(generous.clone());
    let peers = theirs(&rt, Duration::from_nanos(1), u32::MAX);
    for _ in 0..2 {
        // Sanity, in every build profile: both stacks accept the request.
        run(&rt, &shield, request(&token), StatusCode::OK);
        let status = rt.block_on(peers.clone().oneshot(request(&token))).unwrap().status();
        assert_eq!(status, StatusCode::OK, "the peer stack must accept the bench request");
    }
    group.bench_function("ours_accepted", |b| {
        b.iter(|| run(&rt, &shield, request(&token), StatusCode::OK))
    });
    group.bench_function("theirs_accepted", |b| {
        b.iter(|| run(&rt, &peers, request(&token), StatusCode::OK))
    });
    let outside = ours_outside(generous);
    run(&rt, &outside, request(&token), StatusCode::OK);
    group.bench_function("ours_outside_accepted", |b| {
        b.iter(|| run(&rt, &outside, request(&token), StatusCode::OK))
    });
    let same_work = theirs_same_work(&rt, Duration::from_nanos(1), u32::MAX);
    // Sanity: the peers' response carries what ours does (a request id, limit headers).
    let response = rt.block_on(same_work.clone().oneshot(request(&token))).unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("x-request-id"));
    assert!(response.headers().contains_key("x-ratelimit-remaining"));
    group.bench_function("theirs_same_work_accepted", |b| {
        b.iter(|| run(&rt, &same_work, request(&token), StatusCode::OK))
    });

    // Exhausted per-IP limits: one request per hour, already spent.
    let shield = ours(Quota::per_hour(NonZeroU32::MIN));
    let peers = theirs(&rt, Duration::from_secs(3600), 1);
    run(&rt, &shield, request(&token), StatusCode::OK);
    run(&rt, &peers, request(&token), StatusCode::OK);
    let status = rt.block_on(peers.clone().oneshot(request(&token))).unwrap().status();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    group.bench_function("ours_429", |b| {
        b.iter(|| run(&rt, &shield, request(&token), StatusCode::TOO_MANY_REQUESTS))
    });
    group.bench_function("theirs_429", |b| {
        b.iter(|| run(&rt, &peers, request(&token), StatusCode::TOO_MANY_REQUESTS))
    });

    // The per-IP limits alone over the bare handler: the 429 path against the accepted one.
    let ip_only =
        |quota: Quota| tower_shield::rate_limit::RateLimitLayer::per_ip(quota).layer(bare_router());
    let governor_only = |per: Duration, burst: u32| {
        let config =
            GovernorConfigBuilder::default().period(per).burst_size(burst).finish().unwrap();
        GovernorLayer::new(config).layer(bare_router())
    };
    let shield = ip_only(Quota::per_second(NonZeroU32::MAX));
    let peers = governor_only(Duration::from_nanos(1), u32::MAX);
    group.bench_function("ours_ip_limit_accepted", |b| {
        b.iter(|| run(&rt, &shield, request(&token), StatusCode::OK))
    });
    group.bench_function("governor_accepted", |b| {
        b.iter(|| run(&rt, &peers, request(&token), StatusCode::OK))
    });
    let shield = ip_only(Quota::per_hour(NonZeroU32::MIN));
    let peers = governor_only(Duration::from_secs(3600), 1);
    run(&rt, &shield, request(&token), StatusCode::OK);
    run(&rt, &peers, request(&token), StatusCode::OK);
    group.bench_function("ours_ip_limit_429", |b| {
        b.iter(|| run(&rt, &shield, request(&token), StatusCode::TOO_MANY_REQUESTS))
    });
    group.bench_function("governor_429", |b| {
        b.iter(|| run(&rt, &peers, request(&token), StatusCode::TOO_MANY_REQUESTS))
    });
    group.finish();
}

/// Where criterion writes its estimates: `CRITERION_HOME`, else `<target>/criterion`.
fn criterion_home() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return Some(home.into());
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(PathBuf::from(target).join("criterion"));
    }
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.parent()?.join("criterion"))
}

/// The median of `compare/<id>` in nanoseconds, if this process measured it.
fn median(home: &std::path::Path, started: SystemTime, id: &str) -> Option<f64> {
    let path = home.join("compare").join(id).join("new").join("estimates.json");
    if std::fs::metadata(&path).ok()?.modified().ok()? < started {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64()
}

fn summary(started: SystemTime) {
    let Some(home) = criterion_home() else { return };
    let get = |id| median(&home, started, id);
    let us = |ns: f64| format!("{:.2} µs", ns / 1000.0);
    println!("\nComparison (medians of this run):");
    if let (Some(bare), Some(ours), Some(theirs)) =
        (get("bare"), get("ours_accepted"), get("theirs_accepted"))
    {
        let (o, t) = (ours - bare, theirs - bare);
        println!("  bare axum                        {}", us(bare));
        println!("  overhead over bare: ours {} , theirs {}", us(o), us(t));
        println!(
            "  ours is {:.2}x cheaper than tower_governor + jwt-authorizer (target >= 2.5x: {})",
            t / o,
            if t >= 2.5 * o { "met" } else { "NOT MET" }
        );
        println!("  ours overhead <= 2 µs: {}", if o <= 2000.0 { "met" } else { "NOT MET" });
        let outside = get("ours_outside_accepted").map(|x| x - bare);
        if let Some(x) = outside {
            println!(
                "  ours outside the router, as theirs: overhead {}, {:.2}x cheaper than theirs",
                us(x),
                t / x
            );
        }
        if let Some(w) = get("theirs_same_work_accepted").map(|w| w - bare) {
            println!(
                "  theirs doing our work (request id, per-subject limit, limit headers): \
                 overhead {}; ours {:.2}x cheaper inside the router, {} outside",
                us(w),
                w / o,
                outside.map_or("-".into(), |x| format!("{:.2}x", w / x))
            );
        }
        if let (Some(o429), Some(t429)) = (get("ours_429"), get("theirs_429")) {
            println!(
                "  429 / accepted, whole request: ours {} / {} = {:.2}x, theirs {} / {} = {:.2}x",
                us(o429),
                us(ours),
                o429 / ours,
                us(t429),
                us(theirs),
                t429 / theirs
            );
            println!(
                "  429 / accepted, overhead over bare: ours {:.2}x, theirs {:.2}x",
                (o429 - bare) / o,
                (t429 - bare) / t
            );
        }
    } else {
        println!("  (run all of `compare` to get the ratios)");
    }
    if let (Some(bare), Some(oa), Some(or), Some(ga), Some(gr)) = (
        get("bare"),
        get("ours_ip_limit_accepted"),
        get("ours_ip_limit_429"),
        get("governor_accepted"),
        get("governor_429"),
    ) {
        println!(
            "  per-IP limit alone, whole request (bare {}): ours accepted {} 429 {} ({:.2}x), \
             tower_governor accepted {} 429 {} ({:.2}x)",
            us(bare),
            us(oa),
            us(or),
            or / oa,
            us(ga),
            us(gr),
            gr / ga
        );
    }
}

/// The accepted paths measured in turns: `ROUNDS` rounds, each timing `BATCH` requests of bare
/// axum, ours (inside and outside the router) and theirs back to back, so that a slow spell of
/// a shared machine weighs on all of them alike. Prints the medians of the per-round overheads
/// and ratios.
fn interleaved(rt: &tokio::runtime::Runtime) {
    const ROUNDS: usize = 60;
    const BATCH: u32 = 2_000;
    let token = token();
    let bare = bare_router();
    let shield = ours(Quota::per_second(NonZeroU32::MAX));
    let outside = ours_outside(Quota::per_second(NonZeroU32::MAX));
    let route_layer = ours_route_layer(Quota::per_second(NonZeroU32::MAX));
    let peers = theirs(rt, Duration::from_nanos(1), u32::MAX);
    let same_work = theirs_same_work(rt, Duration::from_nanos(1), u32::MAX);
    let time = |f: &dyn Fn()| {
        let start = std::time::Instant::now();
        for _ in 0..BATCH {
            f();
        }
        start.elapsed().as_nanos() as f64 / f64::from(BATCH)
    };
    let (mut bares, mut ours_oh, mut theirs_oh, mut ratios) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut outside_oh, mut outside_ratios) = (Vec::new(), Vec::new());
    let (mut same_oh, mut same_ratios, mut same_outside_ratios) =
        (Vec::new(), Vec::new(), Vec::new());
    let (mut layered_oh, mut layered_ratios) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let b = time(&|| run(rt, &bare, request(&token), StatusCode::OK));
        let o = time(&|| run(rt, &shield, request(&token), StatusCode::OK));
        let x = time(&|| run(rt, &outside, request(&token), StatusCode::OK));
        let t = time(&|| run(rt, &peers, request(&token), StatusCode::OK));
        let w = time(&|| run(rt, &same_work, request(&token), StatusCode::OK));
        let l = time(&|| run(rt, &route_layer, request(&token), StatusCode::OK));
        layered_oh.push(l - b);
        layered_ratios.push((t - b) / (l - b));
        bares.push(b);
        same_oh.push(w - b);
        same_ratios.push((w - b) / (o - b));
        same_outside_ratios.push((w - b) / (x - b));
        ours_oh.push(o - b);
        theirs_oh.push(t - b);
        ratios.push((t - b) / (o - b));
        outside_oh.push(x - b);
        outside_ratios.push((t - b) / (x - b));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (o, t, r) = (median(&mut ours_oh), median(&mut theirs_oh), median(&mut ratios));
    println!("\nInterleaved ({ROUNDS} rounds of {BATCH} requests each, medians per round):");
    println!("  bare axum {:.2} µs per request", median(&mut bares) / 1000.0);
    println!(
        "  overhead over bare: ours {:.2} µs, theirs {:.2} µs; ours is {r:.2}x cheaper \
         (target >= 2.5x: {}); ours <= 2 µs: {}",
        o / 1000.0,
        t / 1000.0,
        if r >= 2.5 { "met" } else { "NOT MET" },
        if o <= 2000.0 { "met" } else { "NOT MET" },
    );
    let (x, xr) = (median(&mut outside_oh), median(&mut outside_ratios));
    println!(
        "  ours outside the router, as theirs: overhead {:.2} µs; {xr:.2}x cheaper \
         (target >= 2.5x: {}); <= 2 µs: {}",
        x / 1000.0,
        if xr >= 2.5 { "met" } else { "NOT MET" },
        if x <= 2000.0 { "met" } else { "NOT MET" },
    );
    let (l, lr) = (median(&mut layered_oh), median(&mut layered_ratios));
    println!(
        "  ours with the scope as a route layer instead of the route table: overhead {:.2} µs; \
         {lr:.2}x cheaper",
        l / 1000.0,
    );
    let (w, wr, wx) =
        (median(&mut same_oh), median(&mut same_ratios), median(&mut same_outside_ratios));
    println!(
        "  theirs doing our work (request id, per-subject limit, limit headers): overhead \
         {:.2} µs; ours {wr:.2}x cheaper inside the router, {wx:.2}x outside",
        w / 1000.0,
    );
}

fn main() {
    let started = SystemTime::now();
    let mut criterion = Criterion::default().configure_from_args();
    benches(&mut criterion);
    criterion.final_summary();
    summary(started);
    // Not under `--profile-time` (a profiler's run of one bench), nor `cargo test`.
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--profile-time") {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        interleaved(&rt);
    }
}
