//! Helpers for the crate's own unit tests.

use bytes::Bytes;
use http_body::Body;
use http_body_util::BodyExt;

/// Collects a body.
pub(crate) async fn to_bytes<B>(body: B) -> Bytes
where
    B: Body,
    B::Error: std::fmt::Debug,
{
    body.collect().await.expect("body").to_bytes()
}

/// Collects a body and parses it as JSON.
pub(crate) async fn to_json<B>(body: B) -> serde_json::Value
where
    B: Body,
    B::Error: std::fmt::Debug,
{
    serde_json::from_slice(&to_bytes(body).await).expect("a JSON body")
}

/// The Redis to test against (`TOWER_SHIELD_REDIS_URL`, default `redis://127.0.0.1:6379`), or
/// `None` when it does not answer, in which case the test returns early with a message. With
/// `TOWER_SHIELD_REQUIRE_REDIS=1` (as in CI) an unreachable Redis fails the test instead.
#[cfg(feature = "redis")]
#[allow(dead_code)] // used by the Redis-backed stores' tests
pub(crate) fn redis_url() -> Option<String> {
    let url = std::env::var("TOWER_SHIELD_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let addr = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .and_then(|a| std::net::ToSocketAddrs::to_socket_addrs(a).ok()?.next())
        .expect("TOWER_SHIELD_REDIS_URL must be redis://host:port[/db]");
    match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1)) {
        Ok(_) => Some(url),
        Err(e) if std::env::var_os("TOWER_SHIELD_REQUIRE_REDIS").is_some_and(|v| v == "1") => {
            panic!("Redis at {url} is required (TOWER_SHIELD_REQUIRE_REDIS=1) but unreachable: {e}")
        }
        Err(e) => {
            eprintln!(
                "skipping: Redis at {url} is unreachable ({e}); \
                 set TOWER_SHIELD_REQUIRE_REDIS=1 to fail instead"
            );
            None
        }
    }
}

/// A key prefix no other test (or test run) uses, so tests can share one Redis.
#[cfg(feature = "redis")]
#[allow(dead_code)] // used by the Redis-backed stores' tests
pub(crate) fn unique_prefix(test: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("tstest:{test}:{}:{nanos}:{}:", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}
