//! Test helpers shared by the unit tests (`src/test_helpers.rs` includes this file) and the
//! integration tests (`tests/common/mod.rs`).

use std::time::Duration;

/// The Redis to test against (`TOWER_SHIELD_REDIS_URL`, default `redis://127.0.0.1:6379`), or
/// `None` when it does not answer, in which case the test returns early with a message. With
/// `TOWER_SHIELD_REQUIRE_REDIS=1` (as in CI) an unreachable Redis fails the test instead.
pub fn redis_url() -> Option<String> {
    let url = std::env::var("TOWER_SHIELD_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let addr = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .and_then(|a| std::net::ToSocketAddrs::to_socket_addrs(a).ok()?.next())
        .expect("TOWER_SHIELD_REDIS_URL must be redis://host:port[/db]");
    match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
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
pub fn unique_prefix(test: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("tstest:{test}:{}:{nanos}:{}:", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Runs `f` with every `tracing` event it emits on this thread captured as JSON, and returns
/// its result with the events at `level` or more severe.
///
/// One global subscriber (installed once, at TRACE) writes into a buffer of the calling thread.
/// Scoped subscribers (`with_default`) in parallel tests race on tracing's global max level and
/// callsite cache and lose events now and then; a single global one does not.
pub fn capture_events<R>(
    level: tracing::Level,
    f: impl FnOnce() -> R,
) -> (R, Vec<serde_json::Value>) {
    use std::{cell::RefCell, sync::Once};

    thread_local! {
        static BUFFER: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
    }
    struct ThreadBuffer;
    impl std::io::Write for ThreadBuffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            BUFFER.with(|b| {
                if let Some(buffer) = b.borrow_mut().as_mut() {
                    buffer.extend_from_slice(bytes);
                }
            });
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(|| ThreadBuffer)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber");
    });

    BUFFER.with(|b| *b.borrow_mut() = Some(Vec::new()));
    let result = f();
    let bytes = BUFFER.with(|b| b.borrow_mut().take()).unwrap_or_default();
    let events = String::from_utf8(bytes)
        .expect("JSON logs are UTF-8")
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("a JSON event"))
        .filter(|event| {
            let event_level: tracing::Level = event["level"]
                .as_str()
                .and_then(|l| l.parse().ok())
                .unwrap_or(tracing::Level::TRACE);
            event_level <= level
        })
        .collect();
    (result, events)
}
