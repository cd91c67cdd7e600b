use std::{
    convert::Infallible,
    num::NonZeroUsize,
    panic::AssertUnwindSafe,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::sync::Semaphore;
use tower::{service_fn, Layer, Service, ServiceExt};

use super::*;
use crate::{
    clock::FakeClock,
    principal::{AuthMethod, Principal},
    test_helpers::to_bytes,
    Error, ErrorKind,
};

type Req = Request<RequestBody<Full<Bytes>>>;

fn created(body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::from(body));
    *response.status_mut() = StatusCode::CREATED;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_static("session=abc"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A handler that counts its runs and answers `201 order-<run>`.
fn counting(
    runs: &Arc<AtomicUsize>,
) -> impl Service<Req, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
       + Clone
       + Send
       + 'static {
    let runs = Arc::clone(runs);
    service_fn(move |_: Req| {
        let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
        async move { Ok::<_, Infallible>(created(format!("order-{n}"))) }
    })
}

/// A handler that counts its runs, signals `started`, then waits for a permit of `gate`.
fn gated(
    runs: &Arc<AtomicUsize>,
    started: &Arc<Semaphore>,
    gate: &Arc<Semaphore>,
) -> impl Service<Req, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
       + Clone
       + Send
       + 'static {
    let (runs, started, gate) = (Arc::clone(runs), Arc::clone(started), Arc::clone(gate));
    service_fn(move |_: Req| {
        let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
        let (started, gate) = (Arc::clone(&started), Arc::clone(&gate));
        async move {
            started.add_permits(1);
            gate.acquire().await.expect("gate open").forget();
            Ok::<_, Infallible>(created(format!("order-{n}")))
        }
    })
}

fn post(key: Option<&str>, body: &'static str, subject: &str) -> Request<Full<Bytes>> {
    let mut request = Request::post("/orders");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let mut request = request.body(Full::from(body)).unwrap();
    request.extensions_mut().insert(Principal::builder(subject).build());
    request
}

fn error_of<B>(response: &Response<B>) -> ErrorKind {
    response.extensions().get::<Error>().expect("an Error in the extensions").kind()
}

async fn send<S>(service: &S, request: Request<Full<Bytes>>) -> (StatusCode, Option<String>, Bytes)
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResponseBody<Full<Bytes>>>> + Clone,
    S::Error: std::fmt::Debug,
{
    let response = service.clone().oneshot(request).await.unwrap();
    let replayed =
        response.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap().to_owned());
    (response.status(), replayed, to_bytes(response.into_body()).await)
}

// The suite every store passes; each test takes a fresh layer on its own key space.

async fn suite_replay(layer: IdempotencyLayer) {
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = layer.layer(counting(&runs));
    let first = svc.clone().oneshot(post(Some("k1"), "{}", "alice")).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    assert_eq!(to_bytes(first.into_body()).await, "order-1");

    let retry = svc.clone().oneshot(post(Some("k1"), "{}", "alice")).await.unwrap();
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.headers()[header::CONTENT_TYPE], "text/plain");
    assert!(retry.headers().get(header::SET_COOKIE).is_none(), "not in the replay allowlist");
    assert_eq!(retry.headers()[header::CACHE_CONTROL], "no-store", "caching rules are replayed");
    assert_eq!(to_bytes(retry.into_body()).await, "order-1");
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // The sf-string form names the same key.
    let (status, replayed, body) = send(&svc, post(Some("\"k1\""), "{}", "alice")).await;
    assert_eq!(
        (status, replayed.as_deref(), &body[..]),
        (StatusCode::CREATED, Some("true"), &b"order-1"[..])
    );
    // Another key runs.
    let (_, replayed, body) = send(&svc, post(Some("k2"), "{}", "alice")).await;
    assert_eq!((replayed, &body[..]), (None, &b"order-2"[..]));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

async fn suite_mismatch(layer: IdempotencyLayer) {
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = layer.layer(counting(&runs));
    assert_eq!(send(&svc, post(Some("k"), r#"{"n":1}"#, "alice")).await.0, StatusCode::CREATED);
    let response = svc.clone().oneshot(post(Some("k"), r#"{"n":2}"#, "alice")).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_of(&response), ErrorKind::IdempotencyKeyReused);
    // A different query string is a different request too.
    let mut request = post(Some("k"), r#"{"n":1}"#, "alice");
    *request.uri_mut() = "/orders?dry_run=1".parse().unwrap();
    assert_eq!(send(&svc, request).await.0, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

async fn suite_in_flight(layer: IdempotencyLayer) {
    let runs = Arc::new(AtomicUsize::new(0));
    let (started, gate) = (Arc::new(Semaphore::new(0)), Arc::new(Semaphore::new(0)));
    let svc = layer.layer(gated(&runs, &started, &gate));
    let first = tokio::spawn(svc.clone().oneshot(post(Some("k"), "{}", "alice")));
    started.acquire().await.unwrap().forget();

    let response = svc.clone().oneshot(post(Some("k"), "{}", "alice")).await.unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(error_of(&response), ErrorKind::IdempotencyKeyInUse);
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    // Another payload with the key in flight is a reuse, not a conflict.
    let response = svc.clone().oneshot(post(Some("k"), "{\"x\":1}", "alice")).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);

    gate.add_permits(1);
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let (status, replayed, body) = send(&svc, post(Some("k"), "{}", "alice")).await;
    assert_eq!(
        (status, replayed.as_deref(), &body[..]),
        (StatusCode::CREATED, Some("true"), &b"order-1"[..])
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

async fn suite_concurrent(layer: IdempotencyLayer) {
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = layer.layer(counting(&runs));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { send(&svc, post(Some("same"), "{}", "alice")).await })
        })
        .collect::<Vec<_>>();
    let mut created = 0;
    for task in tasks {
        let (status, replayed, body) = task.await.unwrap();
        match status {
            StatusCode::CREATED => {
                assert_eq!(body, "order-1");
                if replayed.is_none() {
                    created += 1;
                }
            }
            StatusCode::CONFLICT => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

async fn suite_scoping(layer: IdempotencyLayer) {
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = layer.layer(counting(&runs));
    let (_, _, alice) = send(&svc, post(Some("k"), "{}", "alice")).await;
    let (_, replayed, bob) = send(&svc, post(Some("k"), "{}", "bob")).await;
    assert_eq!((&alice[..], &bob[..], replayed), (&b"order-1"[..], &b"order-2"[..], None));
    assert_eq!(send(&svc, post(Some("k"), "{}", "bob")).await.2, "order-2");
    assert_eq!(send(&svc, post(Some("k"), "{}", "alice")).await.2, "order-1");

    // An API key is scoped by its key id, not by the subject it acts for.
    let api_key = |key_id: &str| {
        let mut request = post(Some("k"), "{}", "alice");
        request.extensions_mut().insert(
            Principal::builder("alice").key_id(key_id).auth_method(AuthMethod::ApiKey).build(),
        );
        request
    };
    assert_eq!(send(&svc, api_key("key-1")).await.2, "order-3");
    assert_eq!(send(&svc, api_key("key-2")).await.2, "order-4");
    assert_eq!(send(&svc, api_key("key-1")).await.2, "order-3");

    // Same subject in two tenants: two callers.
    let tenant = |tenant: &str| {
        let mut request = post(Some("k"), "{}", "alice");
        request.extensions_mut().insert(Principal::builder("alice").tenant(tenant).build());
        request
    };
    assert_eq!(send(&svc, tenant("acme")).await.2, "order-5");
    assert_eq!(send(&svc, tenant("globex")).await.2, "order-6");

    // The same key on another path is another record.
    let mut request = post(Some("k"), "{}", "alice");
    *request.uri_mut() = "/orders/2/pay".parse().unwrap();
    assert_eq!(send(&svc, request).await.2, "order-7");

    // A subject is only unique within its issuer, method and client: the same `sub` from
    // another issuer, another auth method or another client is another caller.
    let vouched = |principal: Principal| {
        let mut request = post(Some("k"), "{}", "alice");
        request.extensions_mut().insert(principal);
        request
    };
    let jwt = |issuer: &str| {
        Principal::builder("alice").auth_method(AuthMethod::Jwt).claim("iss", issuer).build()
    };
    assert_eq!(send(&svc, vouched(jwt("https://idp-a.test"))).await.2, "order-8");
    assert_eq!(send(&svc, vouched(jwt("https://idp-b.test"))).await.2, "order-9");
    assert_eq!(send(&svc, vouched(jwt("https://idp-a.test"))).await.2, "order-8");
    let introspected = Principal::builder("alice").auth_method(AuthMethod::Introspection);
    assert_eq!(send(&svc, vouched(introspected.build())).await.2, "order-10");
    let client = |id: &str| {
        Principal::builder("alice").auth_method(AuthMethod::Introspection).client_id(id).build()
    };
    assert_eq!(send(&svc, vouched(client("alice"))).await.2, "order-11");
    assert_eq!(send(&svc, vouched(client("web-app"))).await.2, "order-12");
    assert_eq!(runs.load(Ordering::SeqCst), 12);
}

async fn suite_server_error_releases(layer: IdempotencyLayer) {
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    let svc = layer.layer(service_fn(move |_: Req| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let mut response = created(format!("order-{n}"));
            if n == 1 {
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            Ok::<_, Infallible>(response)
        }
    }));
    assert_eq!(send(&svc, post(Some("k"), "{}", "alice")).await.0, StatusCode::SERVICE_UNAVAILABLE);
    let (status, replayed, body) = send(&svc, post(Some("k"), "{}", "alice")).await;
    assert_eq!((status, replayed, &body[..]), (StatusCode::CREATED, None, &b"order-2"[..]));
    assert_eq!(send(&svc, post(Some("k"), "{}", "alice")).await.1.as_deref(), Some("true"));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

async fn suite_client_error_stored(layer: IdempotencyLayer) {
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    let svc = layer.layer(service_fn(move |request: Req| {
        counter.fetch_add(1, Ordering::SeqCst);
        let status = match request.uri().path() {
            "/orders" => StatusCode::CONFLICT,
            _ => StatusCode::TOO_MANY_REQUESTS,
        };
        async move {
            let mut response = Response::new(Full::from("no"));
            *response.status_mut() = status;
            Ok::<_, Infallible>(response)
        }
    }));
    // A 4xx is an answer: replayed.
    assert_eq!(send(&svc, post(Some("k"), "{}", "alice")).await.0, StatusCode::CONFLICT);
    let (status, replayed, _) = send(&svc, post(Some("k"), "{}", "alice")).await;
    assert_eq!((status, replayed.as_deref()), (StatusCode::CONFLICT, Some("true")));
    // A 429 invites a retry: not stored.
    let limited = || {
        let mut request = post(Some("k"), "{}", "alice");
        *request.uri_mut() = "/limited".parse().unwrap();
        request
    };
    assert_eq!(send(&svc, limited()).await.1, None);
    assert_eq!(send(&svc, limited()).await.1, None);
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

async fn suite_panic_releases(layer: IdempotencyLayer) {
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    let svc = layer.layer(service_fn(move |_: Req| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            assert!(n != 1, "handler panics on its first run");
            Ok::<_, Infallible>(created(format!("order-{n}")))
        }
    }));
    let panicked =
        AssertUnwindSafe(svc.clone().oneshot(post(Some("k"), "{}", "alice"))).catch_unwind().await;
    assert!(panicked.is_err());
    let (status, body) = retry_until_not_conflict(&svc, || post(Some("k"), "{}", "alice")).await;
    assert_eq!((status, &body[..]), (StatusCode::CREATED, &b"order-2"[..]));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

async fn suite_dropped_future_releases(layer: IdempotencyLayer) {
    let runs = Arc::new(AtomicUsize::new(0));
    let (started, gate) = (Arc::new(Semaphore::new(0)), Arc::new(Semaphore::new(0)));
    let svc = layer.layer(gated(&runs, &started, &gate));
    let first = tokio::spawn(svc.clone().oneshot(post(Some("k"), "{}", "alice")));
    started.acquire().await.unwrap().forget();
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());

    gate.add_permits(1);
    let (status, body) = retry_until_not_conflict(&svc, || post(Some("k"), "{}", "alice")).await;
    assert_eq!((status, &body[..]), (StatusCode::CREATED, &b"order-2"[..]));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// Retries while the key is in use: a store may release a dropped request's lock from a
/// spawned task. Bounded; no sleeping.
async fn retry_until_not_conflict<S>(
    svc: &S,
    request: impl Fn() -> Request<Full<Bytes>>,
) -> (StatusCode, Bytes)
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResponseBody<Full<Bytes>>>> + Clone,
    S::Error: std::fmt::Debug,
{
    for _ in 0..10_000 {
        let (status, _, body) = send(svc, request()).await;
        if status != StatusCode::CONFLICT {
            return (status, body);
        }
        tokio::task::yield_now().await;
    }
    panic!("the lock was never released");
}

async fn suite_response_cap(layer: IdempotencyLayer) {
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    let svc = layer.max_response_body(16).layer(service_fn(move |request: Req| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let len = if request.uri().path() == "/big" { 17 } else { 16 };
        async move { Ok::<_, Infallible>(created(format!("{n}").repeat(len))) }
    }));
    let big = || {
        let mut request = post(Some("k"), "{}", "alice");
        *request.uri_mut() = "/big".parse().unwrap();
        request
    };
    // Over the cap: served in full, not stored, so a retry runs again.
    assert_eq!(send(&svc, big()).await.2, "1".repeat(17));
    let (_, replayed, body) = send(&svc, big()).await;
    assert_eq!((replayed, &body[..]), (None, "2".repeat(17).as_bytes()));
    // At the cap: stored.
    assert_eq!(send(&svc, post(Some("k"), "{}", "alice")).await.2, "3".repeat(16));
    let (_, replayed, body) = send(&svc, post(Some("k"), "{}", "alice")).await;
    assert_eq!((replayed.as_deref(), &body[..]), (Some("true"), "3".repeat(16).as_bytes()));
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

/// Runs the whole suite on layers made by `layer` (each call must give a fresh key space).
async fn suite(layer: impl Fn() -> IdempotencyLayer) {
    suite_replay(layer()).await;
    suite_mismatch(layer()).await;
    suite_in_flight(layer()).await;
    suite_concurrent(layer()).await;
    suite_scoping(layer()).await;
    suite_server_error_releases(layer()).await;
    suite_client_error_stored(layer()).await;
    suite_panic_releases(layer()).await;
    suite_dropped_future_releases(layer()).await;
    suite_response_cap(layer()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_suite() {
    suite(IdempotencyLayer::new).await;
}

// Memory-only: time, bounds, and the layer's own rules.

#[tokio::test]
async fn records_expire_after_the_ttl() {
    let clock = FakeClock::new();
    let store = MemoryStore::new().with_clock(clock.clone());
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = IdempotencyLayer::new()
        .with_store(store.clone())
        .ttl(Duration::from_secs(10))
        .layer(counting(&runs));
    assert_eq!(send(&svc, post(Some("k"), "{}", "alice")).await.2, "order-1");
    clock.advance(Duration::from_secs(9));
    assert_eq!(send(&svc, post(Some("k"), "{}", "alice")).await.1.as_deref(), Some("true"));
    clock.advance(Duration::from_secs(1));
    let (_, replayed, body) = send(&svc, post(Some("k"), "{}", "alice")).await;
    assert_eq!((replayed, &body[..]), (None, &b"order-2"[..]));
    assert_eq!(store.len(), 1);
}

#[tokio::test]
async fn a_lock_expires_after_the_lock_ttl() {
    let clock = FakeClock::new();
    let store = MemoryStore::new().with_clock(clock.clone());
    let runs = Arc::new(AtomicUsize::new(0));
    let (started, gate) = (Arc::new(Semaphore::new(0)), Arc::new(Semaphore::new(0)));
    let svc = IdempotencyLayer::new()
        .with_store(store)
        .lock_ttl(Duration::from_secs(30))
        .layer(gated(&runs, &started, &gate));
    // A request that hangs, as on an instance that crashed.
    let hung = tokio::spawn(svc.clone().oneshot(post(Some("k"), "{}", "alice")));
    started.acquire().await.unwrap().forget();
    clock.advance(Duration::from_secs(29));
    assert_eq!(send(&svc, post(Some("k"), "{}", "alice")).await.0, StatusCode::CONFLICT);
    clock.advance(Duration::from_secs(1));
    let retry = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, post(Some("k"), "{}", "alice")).await }
    });
    started.acquire().await.unwrap().forget();
    gate.add_permits(2);
    assert_eq!(retry.await.unwrap().2, "order-2");
    // The hung request finishes late: served, but it cannot overwrite the retry's record.
    let hung = hung.await.unwrap().unwrap();
    assert_eq!(to_bytes(hung.into_body()).await, "order-1");
    assert_eq!(send(&svc, post(Some("k"), "{}", "alice")).await.2, "order-2");
}

#[tokio::test]
async fn memory_stays_bounded_under_a_flood_of_keys() {
    let store = MemoryStore::new().capacity(NonZeroUsize::new(100).unwrap());
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = IdempotencyLayer::new().with_store(store.clone()).layer(counting(&runs));
    for i in 0..1_000 {
        let key = format!("flood-{i}");
        assert_eq!(send(&svc, post(Some(&key), "{}", "mallory")).await.0, StatusCode::CREATED);
        assert!(store.len() <= 100);
    }
    assert_eq!(store.len(), 100);
    // The newest records survive, the oldest were evicted.
    assert_eq!(
        send(&svc, post(Some("flood-999"), "{}", "mallory")).await.1.as_deref(),
        Some("true")
    );
    assert_eq!(send(&svc, post(Some("flood-0"), "{}", "mallory")).await.1, None);
    assert_eq!(runs.load(Ordering::SeqCst), 1_001);
}

#[tokio::test]
async fn memory_byte_budget_evicts_oldest_responses() {
    let store = MemoryStore::new().max_bytes(1_000);
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = IdempotencyLayer::new().with_store(store.clone()).layer(counting(&runs));
    for i in 0..100 {
        send(&svc, post(Some(&format!("k{i}")), "{}", "alice")).await;
        assert!(store.bytes() <= 1_000);
    }
    assert!(store.len() < 100);
    assert_eq!(send(&svc, post(Some("k99"), "{}", "alice")).await.1.as_deref(), Some("true"));
}

#[tokio::test]
async fn locks_in_flight_are_never_evicted() {
    let store = MemoryStore::new().capacity(NonZeroUsize::new(4).unwrap());
    let runs = Arc::new(AtomicUsize::new(0));
    let (started, gate) = (Arc::new(Semaphore::new(0)), Arc::new(Semaphore::new(0)));
    let layer = IdempotencyLayer::new().with_store(store.clone());
    let svc = layer.clone().layer(gated(&runs, &started, &gate));
    let in_flight: Vec<_> = (0..4)
        .map(|i| tokio::spawn(svc.clone().oneshot(post(Some(&format!("k{i}")), "{}", "alice"))))
        .collect();
    started.acquire_many(4).await.unwrap().forget();
    assert_eq!(store.len(), 4);

    // Full of live locks: a new key is refused (fail closed)...
    let response = svc.clone().oneshot(post(Some("new"), "{}", "alice")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_of(&response), ErrorKind::ServiceUnavailable);
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    // ...or runs without idempotency (fail open).
    let open_runs = Arc::new(AtomicUsize::new(0));
    let open = layer.on_backend_failure(BackendFailure::FailOpen).layer(counting(&open_runs));
    for _ in 0..2 {
        assert_eq!(send(&open, post(Some("new"), "{}", "alice")).await.0, StatusCode::CREATED);
    }
    assert_eq!(open_runs.load(Ordering::SeqCst), 2);
    // The locks are intact.
    assert_eq!(send(&svc, post(Some("k0"), "{}", "alice")).await.0, StatusCode::CONFLICT);

    gate.add_permits(5);
    for task in in_flight {
        assert_eq!(task.await.unwrap().unwrap().status(), StatusCode::CREATED);
    }
    // Completed records are evictable: a new key now gets in.
    assert_eq!(send(&svc, post(Some("new"), "{}", "alice")).await.0, StatusCode::CREATED);
    assert_eq!(store.len(), 4);
}

#[tokio::test]
async fn key_syntax_limits() {
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = IdempotencyLayer::new().layer(counting(&runs));
    let bad = |key: Vec<u8>| {
        let mut request = post(None, "{}", "alice");
        request.headers_mut().insert("idempotency-key", HeaderValue::from_bytes(&key).unwrap());
        request
    };
    for (key, issue) in [
        (b"".to_vec(), "empty"),
        ("k".repeat(256).into_bytes(), "too_long"),
        ("clé".as_bytes().to_vec(), "invalid_character"),
        (b"\"open".to_vec(), "malformed"),
        (b"\"a\\tb\"".to_vec(), "malformed"),
    ] {
        let response = svc.clone().oneshot(bad(key)).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let error = response.extensions().get::<Error>().unwrap();
        assert_eq!(error.kind(), ErrorKind::InvalidRequest);
        assert_eq!(error.details()[0].field(), "header:idempotency-key");
        assert_eq!(error.details()[0].issue(), issue);
    }
    let mut twice = post(Some("a"), "{}", "alice");
    twice.headers_mut().append("idempotency-key", HeaderValue::from_static("b"));
    assert_eq!(send(&svc, twice).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(runs.load(Ordering::SeqCst), 0);

    let max = "k".repeat(255);
    assert_eq!(send(&svc, bad(max.clone().into_bytes())).await.0, StatusCode::CREATED);
    let quoted = format!("\"{max}\"").into_bytes();
    assert_eq!(send(&svc, bad(quoted)).await.1.as_deref(), Some("true"));
    let escaped = bad(br#""a\"b""#.to_vec());
    assert_eq!(send(&svc, escaped).await.1, None);
    assert_eq!(send(&svc, bad(br#"a"b"#.to_vec())).await.1.as_deref(), Some("true"));
}

#[tokio::test]
async fn missing_key_and_other_methods() {
    let runs = Arc::new(AtomicUsize::new(0));
    let optional = IdempotencyLayer::new().layer(counting(&runs));
    for _ in 0..2 {
        assert_eq!(send(&optional, post(None, "{}", "alice")).await.1, None);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);

    let required = IdempotencyLayer::new().required(true).layer(counting(&runs));
    let response = required.clone().oneshot(post(None, "{}", "alice")).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&response), ErrorKind::IdempotencyKeyMissing);
    assert_eq!(runs.load(Ordering::SeqCst), 2);

    // PUT is not covered by default: the key is ignored, even when required.
    for _ in 0..2 {
        let mut request = post(Some("k"), "{}", "alice");
        *request.method_mut() = Method::PUT;
        assert_eq!(send(&required, request).await.1, None);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 4);

    let put = IdempotencyLayer::new().methods([Method::PUT]).layer(counting(&runs));
    for _ in 0..2 {
        let mut request = post(Some("k"), "{}", "alice");
        *request.method_mut() = Method::PUT;
        send(&put, request).await;
    }
    assert_eq!(runs.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn anonymous_callers() {
    let runs = Arc::new(AtomicUsize::new(0));
    let anonymous = |key: &str, ip: &'static str| {
        Request::post("/orders")
            .header("idempotency-key", key)
            .header("x-test-client", ip)
            .body(Full::from("{}"))
            .unwrap()
    };
    let refused = IdempotencyLayer::new().layer(counting(&runs));
    let response = refused.clone().oneshot(anonymous("k", "1.1.1.1")).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_of(&response), ErrorKind::Unauthenticated);
    assert_eq!(response.headers()[header::WWW_AUTHENTICATE], r#"Bearer realm="api""#);
    // Without a key there is nothing to scope: the request runs.
    let no_key = Request::post("/orders").body(Full::from("{}")).unwrap();
    assert_eq!(send(&refused, no_key).await.0, StatusCode::CREATED);
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    let scoped = IdempotencyLayer::new()
        .anonymous_scope(|request: &http::request::Parts| {
            Some(request.headers.get("x-test-client")?.to_str().ok()?.to_owned())
        })
        .layer(counting(&runs));
    assert_eq!(send(&scoped, anonymous("k", "1.1.1.1")).await.2, "order-2");
    assert_eq!(send(&scoped, anonymous("k", "2.2.2.2")).await.2, "order-3");
    assert_eq!(send(&scoped, anonymous("k", "1.1.1.1")).await.2, "order-2");
    // An anonymous scope never collides with a principal's.
    assert_eq!(send(&scoped, post(Some("k"), "{}", "1.1.1.1")).await.2, "order-4");
    // The hook refuses: 401.
    let unscoped = Request::post("/orders").header("idempotency-key", "k").body(Full::from("{}"));
    assert_eq!(send(&scoped, unscoped.unwrap()).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn request_body_is_capped_and_handed_on() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorder = Arc::clone(&seen);
    let svc = IdempotencyLayer::new().max_request_body(8).layer(service_fn(move |request: Req| {
        recorder.lock().unwrap().push(request.body().buffered_bytes());
        async { Ok::<_, Infallible>(created("ok".into())) }
    }));
    assert_eq!(send(&svc, post(Some("k"), "12345678", "alice")).await.0, StatusCode::CREATED);
    let response = svc.clone().oneshot(post(Some("k2"), "123456789", "alice")).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_of(&response), ErrorKind::PayloadTooLarge);
    assert_eq!(send(&svc, post(None, "123456789", "alice")).await.0, StatusCode::CREATED);
    assert_eq!(*seen.lock().unwrap(), [Some(Bytes::from("12345678")), None]);
}

#[tokio::test]
async fn fingerprint_headers() {
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = IdempotencyLayer::new().add_fingerprint_header(header::ACCEPT).layer(counting(&runs));
    let with_accept = |accept: &'static str| {
        let mut request = post(Some("k"), "{}", "alice");
        request.headers_mut().insert(header::ACCEPT, HeaderValue::from_static(accept));
        request
    };
    assert_eq!(send(&svc, with_accept("application/json")).await.0, StatusCode::CREATED);
    assert_eq!(send(&svc, with_accept("application/json")).await.1.as_deref(), Some("true"));
    assert_eq!(send(&svc, with_accept("text/csv")).await.0, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        send(&svc, post(Some("k"), "{}", "alice")).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
}

#[tokio::test]
async fn store_when_is_configurable() {
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = IdempotencyLayer::new().store_when(|_| false).layer(counting(&runs));
    for _ in 0..3 {
        assert_eq!(send(&svc, post(Some("k"), "{}", "alice")).await.1, None);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn rejections_from_inner_layers_are_not_stored() {
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    let svc = IdempotencyLayer::new().layer(service_fn(move |_: Req| {
        counter.fetch_add(1, Ordering::SeqCst);
        let error = Error::new(ErrorKind::InvalidRequest)
            .with_detail(crate::error::Detail::new("/quantity", "maximum"));
        async move { Ok::<_, Infallible>(error.to_response::<Full<Bytes>>()) }
    }));
    for _ in 0..2 {
        let response = svc.clone().oneshot(post(Some("k"), "{}", "alice")).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        // The Error (and its details) reaches the envelope every time: never a stripped replay.
        assert_eq!(response.extensions().get::<Error>().unwrap().details().len(), 1);
        assert!(response.headers().get("idempotent-replayed").is_none());
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn layers_sharing_a_memory_store_share_records() {
    let store = MemoryStore::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let a = IdempotencyLayer::new().with_store(store.clone()).layer(counting(&runs));
    let b = IdempotencyLayer::new().with_store(store).layer(counting(&runs));
    send(&a, post(Some("k"), "{}", "alice")).await;
    assert_eq!(send(&b, post(Some("k"), "{}", "alice")).await.1.as_deref(), Some("true"));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[test]
fn stored_responses_round_trip_and_corruption_is_an_error() {
    let mut headers = http::HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.append(header::ETAG, HeaderValue::from_static("\"v1\""));
    let stored = StoredResponse::new(
        Fingerprint::from_bytes([7; 32]),
        StatusCode::CREATED,
        headers,
        Bytes::from_static(b"{\"id\":1}"),
    );
    let encoded = stored.encode();
    assert_eq!(StoredResponse::decode(encoded.clone()).unwrap(), stored);
    for len in 0..encoded.len() - 8 {
        assert!(StoredResponse::decode(encoded.slice(..len)).is_err(), "truncated at {len}");
    }
    let mut other_version = encoded.to_vec();
    other_version[0] = 9;
    assert!(StoredResponse::decode(other_version.into()).is_err());
}

#[test]
fn debug_output_hides_keys_and_bodies() {
    let layer = IdempotencyLayer::new().anonymous_scope(|_: &http::request::Parts| None);
    let debug = format!("{layer:?}");
    assert!(debug.contains("<fn>") && debug.contains("MemoryStore"));
    let stored = StoredResponse::new(
        Fingerprint::from_bytes([0; 32]),
        StatusCode::OK,
        http::HeaderMap::new(),
        Bytes::from_static(b"card=4242424242424242"),
    );
    assert!(!format!("{stored:?}").contains("4242"));
    assert_eq!(format!("{:?}", LockToken::new()), "LockToken(..)");
}

/// Compile-time: the layer composes with `ServiceBuilder` and its futures are `Send`.
#[tokio::test]
async fn composes_with_service_builder() {
    use crate::ServiceBuilderExt;
    let runs = Arc::new(AtomicUsize::new(0));
    let svc =
        tower::ServiceBuilder::new().idempotent(IdempotencyLayer::new()).service(counting(&runs));
    fn assert_send<T: Send>(_: &T) {}
    let future = svc.clone().oneshot(post(Some("k"), "{}", "alice"));
    assert_send(&future);
    assert_eq!(future.await.unwrap().status(), StatusCode::CREATED);
}

#[cfg(feature = "redis")]
mod redis {
    use ::redis::AsyncCommands;

    use super::*;
    use crate::test_helpers::{redis_url, unique_prefix};

    fn store(url: &str, prefix: &str) -> RedisStore {
        RedisStore::new(url).unwrap().prefix(prefix)
    }

    /// The PTTL (ms) of every key under `prefix`, found with SCAN (never KEYS).
    async fn ttls(url: &str, prefix: &str) -> Vec<i64> {
        let client = ::redis::Client::open(url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut keys: Vec<String> = Vec::new();
        {
            let mut iter: ::redis::AsyncIter<'_, String> =
                conn.scan_match(format!("{prefix}*")).await.unwrap();
            while let Some(key) = iter.next_item().await {
                keys.push(key.unwrap());
            }
        }
        let mut ttls = Vec::new();
        for key in keys {
            assert!(key.starts_with(prefix) && key.ends_with('}'), "hash-tagged key {key}");
            assert!(!key.contains("secret-key"), "the client's key is never stored in clear");
            ttls.push(conn.pttl(&key).await.unwrap());
        }
        ttls
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn redis_store_suite() {
        let Some(url) = redis_url() else { return };
        suite(|| IdempotencyLayer::new().with_store(store(&url, &unique_prefix("idem-suite"))))
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_layers_share_one_redis() {
        let Some(url) = redis_url() else { return };
        let prefix = unique_prefix("idem-shared");
        let runs = Arc::new(AtomicUsize::new(0));
        let (started, gate) = (Arc::new(Semaphore::new(0)), Arc::new(Semaphore::new(0)));
        // Two instances of a service, each with its own connection.
        let a = IdempotencyLayer::new()
            .with_store(store(&url, &prefix))
            .layer(gated(&runs, &started, &gate));
        let b = IdempotencyLayer::new()
            .with_store(store(&url, &prefix))
            .layer(gated(&runs, &started, &gate));
        let first = tokio::spawn(a.clone().oneshot(post(Some("k"), "{}", "alice")));
        started.acquire().await.unwrap().forget();
        assert_eq!(send(&b, post(Some("k"), "{}", "alice")).await.0, StatusCode::CONFLICT);
        gate.add_permits(1);
        assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::CREATED);
        let (status, replayed, body) = send(&b, post(Some("k"), "{}", "alice")).await;
        assert_eq!(
            (status, replayed.as_deref(), &body[..]),
            (StatusCode::CREATED, Some("true"), &b"order-1"[..])
        );
        assert_eq!(
            send(&b, post(Some("k"), "{\"x\":2}", "alice")).await.0,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Another prefix is another key space.
        let c = IdempotencyLayer::new()
            .with_store(store(&url, &unique_prefix("idem-other")))
            .layer(counting(&runs));
        assert_eq!(send(&c, post(Some("k"), "{}", "alice")).await.1, None);
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_key_has_a_ttl() {
        let Some(url) = redis_url() else { return };
        let prefix = unique_prefix("idem-ttl");
        let runs = Arc::new(AtomicUsize::new(0));
        let (started, gate) = (Arc::new(Semaphore::new(0)), Arc::new(Semaphore::new(0)));
        let svc = IdempotencyLayer::new()
            .with_store(store(&url, &prefix))
            .lock_ttl(Duration::from_secs(30))
            .ttl(Duration::from_secs(3600))
            .layer(gated(&runs, &started, &gate));
        let first = tokio::spawn(svc.clone().oneshot(post(Some("secret-key"), "{}", "alice")));
        started.acquire().await.unwrap().forget();
        let lock = ttls(&url, &prefix).await;
        assert_eq!(lock.len(), 1);
        assert!(lock[0] > 0 && lock[0] <= 30_000, "lock PTTL {}", lock[0]);
        gate.add_permits(1);
        first.await.unwrap().unwrap();
        let record = ttls(&url, &prefix).await;
        assert_eq!(record.len(), 1);
        assert!(record[0] > 30_000 && record[0] <= 3_600_000, "record PTTL {}", record[0]);
    }

    /// "Keep for ever" (`Duration::MAX`) is clamped to what Redis accepts, instead of making
    /// every lock or completion fail (which would run every retry again).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn huge_ttls_still_store_and_replay() {
        let Some(url) = redis_url() else { return };
        let prefix = unique_prefix("idem-huge-ttl");
        let runs = Arc::new(AtomicUsize::new(0));
        let svc = IdempotencyLayer::new()
            .with_store(store(&url, &prefix))
            .ttl(Duration::MAX)
            .lock_ttl(Duration::MAX)
            .layer(counting(&runs));
        assert_eq!(send(&svc, post(Some("k"), "{}", "alice")).await.0, StatusCode::CREATED);
        let (status, replayed, body) = send(&svc, post(Some("k"), "{}", "alice")).await;
        assert_eq!(
            (status, replayed.as_deref(), &body[..]),
            (StatusCode::CREATED, Some("true"), &b"order-1"[..])
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let ttls = ttls(&url, &prefix).await;
        assert!(ttls.len() == 1 && ttls[0] > 0, "one record, with a TTL: {ttls:?}");
        // This record would outlive the test by centuries: delete it.
        let client = ::redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = conn.keys(format!("{prefix}*")).await.unwrap();
        let _: () = conn.del(keys).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lock_that_expired_cannot_be_completed_or_released_by_its_old_owner() {
        let Some(url) = redis_url() else { return };
        let redis = store(&url, &unique_prefix("idem-owner"));
        let key = RecordKey::from_bytes([1; 32]);
        let (fp, ttl) = (Fingerprint::from_bytes([2; 32]), Duration::from_secs(60));
        let Begin::Acquired(old) = redis.begin(key, fp, Duration::from_millis(1)).await.unwrap()
        else {
            panic!("the first begin takes the lock")
        };
        // Wait for Redis to expire the 1 ms lock: poll, bounded.
        let new = 'taken: {
            for _ in 0..10_000 {
                if let Begin::Acquired(token) = redis.begin(key, fp, ttl).await.unwrap() {
                    break 'taken token;
                }
                tokio::task::yield_now().await;
            }
            panic!("the 1 ms lock never expired");
        };
        let response =
            StoredResponse::new(fp, StatusCode::CREATED, http::HeaderMap::new(), "old".into());
        assert!(!redis.complete(key, old, response, ttl).await.unwrap());
        redis.release(key, old).await.unwrap();
        assert!(matches!(redis.begin(key, fp, ttl).await.unwrap(), Begin::InFlight { .. }));
        let response =
            StoredResponse::new(fp, StatusCode::CREATED, http::HeaderMap::new(), "new".into());
        assert!(redis.complete(key, new, response, ttl).await.unwrap());
        match redis.begin(key, fp, ttl).await.unwrap() {
            Begin::Completed(stored) => assert_eq!(stored.body(), "new"),
            other => panic!("expected the stored response, got {other:?}"),
        }
    }

    /// A port nothing listens on.
    fn closed_port_url() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        format!("redis://127.0.0.1:{port}")
    }

    #[tokio::test]
    async fn redis_down_fails_closed_by_default() {
        let runs = Arc::new(AtomicUsize::new(0));
        let svc = IdempotencyLayer::new()
            .with_store(store(&closed_port_url(), "idem-down:"))
            .layer(counting(&runs));
        let response = svc.clone().oneshot(post(Some("k"), "{}", "alice")).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error_of(&response), ErrorKind::ServiceUnavailable);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        // Requests the layer does not apply to are unaffected.
        assert_eq!(send(&svc, post(None, "{}", "alice")).await.0, StatusCode::CREATED);
    }

    #[tokio::test]
    async fn redis_down_fails_open_when_configured() {
        let runs = Arc::new(AtomicUsize::new(0));
        let svc = IdempotencyLayer::new()
            .with_store(store(&closed_port_url(), "idem-down:"))
            .on_backend_failure(BackendFailure::FailOpen)
            .layer(counting(&runs));
        for n in 1..=2 {
            let (status, replayed, body) = send(&svc, post(Some("k"), "{}", "alice")).await;
            assert_eq!(
                (status, replayed, body),
                (StatusCode::CREATED, None, Bytes::from(format!("order-{n}")))
            );
        }
    }

    #[test]
    fn invalid_urls_are_config_errors() {
        assert!(RedisStore::new("not a url").is_err());
    }
}

/// Under `Router::nest`, the inner routes see the path without the nest's prefix; the records
/// of two nested resources must not meet (axum's `OriginalUri` has the whole path).
#[cfg(feature = "axum")]
#[tokio::test]
async fn nested_routes_keep_their_resources_apart() {
    use axum::{extract::Path, routing::post, Router};

    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    let transfers = Router::new()
        .route(
            "/transfers",
            post(move |Path(account): Path<String>| {
                counter.fetch_add(1, Ordering::SeqCst);
                async move { (StatusCode::CREATED, format!("transfer from {account}")) }
            }),
        )
        .layer(IdempotencyLayer::new());
    let app = Router::new().nest("/accounts/{account}", transfers);
    let transfer = |account: &str| {
        let mut request = Request::post(format!("/accounts/{account}/transfers"))
            .header("idempotency-key", "k")
            .body(axum::body::Body::from(r#"{"amount":100}"#))
            .unwrap();
        request.extensions_mut().insert(Principal::builder("alice").build());
        request
    };
    for (account, expected) in [("1", "transfer from 1"), ("2", "transfer from 2")] {
        let response = app.clone().oneshot(transfer(account)).await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        assert!(response.headers().get("idempotent-replayed").is_none(), "{account}");
        assert_eq!(to_bytes(response.into_body()).await, expected);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    // A retry on account 1 is still a replay.
    let retry = app.oneshot(transfer("1")).await.unwrap();
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
}
