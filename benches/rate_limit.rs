//! Rate limiting: the in-memory decision (accepted and rejected) and the Redis decision.

use std::{net::SocketAddr, num::NonZeroU32};

use axum::body::Body;
use criterion::Criterion;
use http::{Request, StatusCode};
use tower::Layer;
use tower_shield::rate_limit::{PeerAddr, Quota, RateLimitLayer};

use crate::{bare_router, run, runtime};

fn request() -> Request<Body> {
    let mut request = Request::get("/orders").body(Body::empty()).unwrap();
    request.extensions_mut().insert(PeerAddr(SocketAddr::from(([192, 0, 2, 1], 4711))));
    request
}

pub(crate) fn benches(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("rate_limit");

    let generous = Quota::per_second(NonZeroU32::MAX);
    let accept = RateLimitLayer::per_ip(generous.clone()).layer(bare_router());
    group.bench_function("memory_accept", |b| {
        b.iter(|| run(&rt, &accept, request(), StatusCode::OK))
    });

    let reject = RateLimitLayer::per_ip(Quota::per_hour(NonZeroU32::MIN)).layer(bare_router());
    run(&rt, &reject, request(), StatusCode::OK);
    group.bench_function("memory_reject", |b| {
        b.iter(|| run(&rt, &reject, request(), StatusCode::TOO_MANY_REQUESTS))
    });

    #[cfg(feature = "redis")]
    {
        // The Redis store needs Tokio's timer and I/O drivers.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        redis(&rt, &mut group, generous);
    }
    group.finish();
}

#[cfg(feature = "redis")]
fn redis(
    rt: &tokio::runtime::Runtime,
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    generous: Quota,
) {
    use tower_shield::rate_limit::{FailurePolicy, RedisStore};

    let url = std::env::var("TOWER_SHIELD_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    if std::net::TcpStream::connect(url.trim_start_matches("redis://")).is_ok() {
        let _guard = rt.enter();
        let prefix = format!("tsbench:{}:", std::process::id());
        let store = RedisStore::new(&url, FailurePolicy::FailClosed)
            .unwrap()
            .prefix(prefix)
            .timeout(std::time::Duration::from_secs(1));
        let redis = RateLimitLayer::per_ip(generous).with_store(store).layer(bare_router());
        group.bench_function("redis_accept", |b| {
            b.iter(|| run(rt, &redis, request(), StatusCode::OK))
        });
    } else {
        eprintln!("skipping rate_limit/redis_accept: no Redis at {url}");
    }
}
