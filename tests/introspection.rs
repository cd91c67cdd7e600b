//! `Introspection` against a real RFC 7662 endpoint stand-in on 127.0.0.1.
#![cfg(feature = "introspection")]

mod common;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, UNIX_EPOCH},
};

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Form, Json, Router,
};
use base64::{engine::general_purpose::STANDARD, Engine as _};
use futures_util::future::join_all;
use serde_json::json;
use tower_shield::{
    auth::{AuthRequest, Authenticator, Introspection, IntrospectionBuilder, Verdict},
    clock::{Clock, FakeClock},
    principal::AuthMethod,
    ErrorKind,
};

const CLIENT_ID: &str = "orders api";
const CLIENT_SECRET: &str = "p@ss:w+rd é";

#[derive(Clone)]
enum Mode {
    Normal,
    Status(StatusCode),
    Body(String),
}

struct AuthServer {
    calls: AtomicUsize,
    /// `exp` of active tokens, Unix seconds.
    exp: Mutex<Option<u64>>,
    mode: Mutex<Mode>,
    /// Tokens seen, to check the form encoding round trip.
    seen: Mutex<Vec<String>>,
}

impl AuthServer {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }
}

async fn introspect(
    State(server): State<Arc<AuthServer>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    server.calls.fetch_add(1, Ordering::SeqCst);
    // RFC 6749 2.3.1: client id and secret form-urlencoded, then Basic.
    let expected = format!("Basic {}", STANDARD.encode("orders+api:p%40ss%3Aw%2Brd+%C3%A9"));
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return (StatusCode::UNAUTHORIZED, [("www-authenticate", "Basic")]).into_response();
    }
    if form.get("token_type_hint").map(String::as_str) != Some("access_token") {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let Some(token) = form.get("token") else { return StatusCode::BAD_REQUEST.into_response() };
    server.seen.lock().unwrap().push(token.clone());
    let mode = server.mode.lock().unwrap().clone();
    match mode {
        Mode::Status(status) => status.into_response(),
        Mode::Body(body) => body.into_response(),
        Mode::Normal => match token.strip_prefix("active-") {
            Some(subject) => {
                let mut answer = json!({
                    "active": true,
                    "sub": subject,
                    "scope": "orders:read orders:write",
                    "client_id": "web",
                    "tenant": "acme",
                    "iss": "https://as.example",
                    "aud": "orders",
                    "token_type": "Bearer",
                });
                if let Some(exp) = *server.exp.lock().unwrap() {
                    answer["exp"] = json!(exp);
                }
                Json(answer).into_response()
            }
            None => Json(json!({"active": false})).into_response(),
        },
    }
}

/// Starts the authorization server; returns it and its introspection endpoint.
async fn serve() -> (Arc<AuthServer>, String) {
    let server = Arc::new(AuthServer {
        calls: AtomicUsize::new(0),
        exp: Mutex::new(None),
        mode: Mutex::new(Mode::Normal),
        seen: Mutex::new(Vec::new()),
    });
    let app = Router::new().route("/introspect", post(introspect)).with_state(Arc::clone(&server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/introspect", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (server, endpoint)
}

fn builder(endpoint: &str, clock: &FakeClock) -> IntrospectionBuilder {
    Introspection::builder(endpoint, CLIENT_ID, CLIENT_SECRET)
        .issuer("https://as.example")
        .audience(["orders"])
        .with_clock(clock.clone())
}

fn unix(clock: &FakeClock) -> u64 {
    clock.now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn active_and_inactive_tokens() {
    let (server, endpoint) = serve().await;
    let clock = FakeClock::new();
    *server.exp.lock().unwrap() = Some(unix(&clock) + 3600);
    let introspection = builder(&endpoint, &clock)
        .issuer("https://as.example")
        .audience(["orders"])
        .build()
        .unwrap();

    let principal = introspection.introspect("active-alice").await.unwrap();
    assert_eq!(principal.subject(), "alice");
    assert_eq!(principal.auth_method(), AuthMethod::Introspection);
    assert_eq!(principal.scopes().collect::<Vec<_>>(), ["orders:read", "orders:write"]);
    assert_eq!(principal.client_id(), Some("web"));
    assert_eq!(principal.tenant(), Some("acme"));
    assert_eq!(principal.claim("token_type"), Some(&json!("Bearer")));
    assert_eq!(principal.claim_as::<u64>("exp"), Some(unix(&clock) + 3600));

    let err = introspection.introspect("revoked-token").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidToken);
    assert_eq!(err.reason(), Some("token inactive"));

    // The token survives the form encoding intact.
    let principal = introspection.introspect("active-a+b/c=&d é").await.unwrap();
    assert_eq!(principal.subject(), "a+b/c=&d é");
    assert_eq!(server.seen.lock().unwrap().last().unwrap(), "active-a+b/c=&d é");

    // Checks on the answer: another audience or issuer is rejected.
    let other = builder(&endpoint, &clock).audience(["billing"]).build().unwrap();
    assert_eq!(
        other.introspect("active-bob").await.unwrap_err().reason(),
        Some("audience mismatch")
    );
    let other = builder(&endpoint, &clock).issuer("https://other.example").build().unwrap();
    assert_eq!(other.introspect("active-bob").await.unwrap_err().reason(), Some("issuer mismatch"));
}

#[tokio::test]
async fn client_authentication_is_checked_by_the_server() {
    let (server, endpoint) = serve().await;
    let clock = FakeClock::new();
    let wrong = Introspection::builder(&endpoint, CLIENT_ID, "wrong secret")
        .issuer("https://as.example")
        .audience(["orders"])
        .with_clock(clock.clone())
        .build()
        .unwrap();
    // The server refuses our client: fail closed, never "inactive".
    let err = wrong.introspect("active-alice").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ServiceUnavailable);
    assert!(err.reason().unwrap().contains("401"), "{err:?}");
    assert_eq!(server.calls(), 1);
    assert_eq!(wrong.cached_entries(), 0);

    let right = builder(&endpoint, &clock).build().unwrap();
    assert!(right.introspect("active-alice").await.is_ok());
}

#[tokio::test]
async fn active_results_are_cached_no_longer_than_exp() {
    let (server, endpoint) = serve().await;
    let clock = FakeClock::new();
    *server.exp.lock().unwrap() = Some(unix(&clock) + 30);
    let introspection = builder(&endpoint, &clock)
        .cache_ttl(Duration::from_secs(300))
        .leeway(Duration::ZERO)
        .build()
        .unwrap();

    assert!(introspection.introspect("active-alice").await.is_ok());
    assert!(introspection.introspect("active-alice").await.is_ok());
    assert_eq!(server.calls(), 1);
    clock.advance(Duration::from_secs(29));
    assert!(introspection.introspect("active-alice").await.is_ok());
    assert_eq!(server.calls(), 1);

    // Past exp the cached answer is not used; the (stale) answer now fails the exp check.
    clock.advance(Duration::from_secs(2));
    let err = introspection.introspect("active-alice").await.unwrap_err();
    assert_eq!(err.reason(), Some("token expired"));
    assert_eq!(server.calls(), 2);
}

#[tokio::test]
async fn active_results_are_cached_no_longer_than_the_ttl() {
    let (server, endpoint) = serve().await;
    let clock = FakeClock::new();
    *server.exp.lock().unwrap() = Some(unix(&clock) + 86_400);
    let introspection =
        builder(&endpoint, &clock).cache_ttl(Duration::from_secs(60)).build().unwrap();

    assert!(introspection.introspect("active-alice").await.is_ok());
    clock.advance(Duration::from_secs(59));
    assert!(introspection.introspect("active-alice").await.is_ok());
    assert_eq!(server.calls(), 1);
    clock.advance(Duration::from_secs(2));
    assert!(introspection.introspect("active-alice").await.is_ok());
    assert_eq!(server.calls(), 2);

    // Without exp in the answer, the TTL alone bounds the entry.
    *server.exp.lock().unwrap() = None;
    assert!(introspection.introspect("active-bob").await.is_ok());
    clock.advance(Duration::from_secs(61));
    assert!(introspection.introspect("active-bob").await.is_ok());
    assert_eq!(server.calls(), 4);
}

/// "Cache for ever" with an answer without `exp` (or a negative TTL as long) must not overflow
/// the cache deadline (a panic, then 503 for that token for good).
#[tokio::test]
async fn unbounded_cache_ttls_do_not_overflow() {
    let (server, endpoint) = serve().await;
    let clock = FakeClock::new();
    let introspection = builder(&endpoint, &clock)
        .cache_ttl(Duration::MAX)
        .negative_ttl(Duration::MAX)
        .build()
        .unwrap();
    assert!(introspection.introspect("active-alice").await.is_ok());
    assert!(introspection.introspect("active-alice").await.is_ok());
    assert!(introspection.introspect("inactive-eve").await.is_err());
    assert!(introspection.introspect("inactive-eve").await.is_err());
    assert_eq!(server.calls(), 2, "both answers cached");
}

#[tokio::test]
async fn concurrent_requests_with_one_token_share_one_call() {
    let (server, endpoint) = serve().await;
    let clock = FakeClock::new();
    let introspection = builder(&endpoint, &clock).build().unwrap();
    let results = join_all((0..50).map(|_| introspection.introspect("active-alice"))).await;
    assert!(results.iter().all(|r| r.as_ref().unwrap().subject() == "alice"));
    assert_eq!(server.calls(), 1);
    let results = join_all((0..50).map(|_| introspection.introspect("revoked"))).await;
    assert!(results.iter().all(Result::is_err));
    assert_eq!(server.calls(), 2);
}

#[tokio::test]
async fn inactive_tokens_are_remembered_briefly() {
    let (server, endpoint) = serve().await;
    let clock = FakeClock::new();
    let introspection = builder(&endpoint, &clock).build().unwrap();

    for _ in 0..3 {
        let err = introspection.introspect("revoked").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidToken);
    }
    assert_eq!(server.calls(), 1);
    clock.advance(Duration::from_secs(9));
    assert!(introspection.introspect("revoked").await.is_err());
    assert_eq!(server.calls(), 1);
    clock.advance(Duration::from_secs(2));
    assert!(introspection.introspect("revoked").await.is_err());
    assert_eq!(server.calls(), 2);
}

#[tokio::test]
async fn cache_hits_are_answered_without_a_future() {
    let (server, endpoint) = serve().await;
    let clock = FakeClock::new();
    *server.exp.lock().unwrap() = Some(unix(&clock) + 3600);
    let introspection = builder(&endpoint, &clock).build().unwrap();
    let verdict = |token: &str| {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
        introspection.authenticate(&AuthRequest::from_headers(&headers).unwrap())
    };

    // Unknown tokens need the endpoint: the verdict is a future.
    let Verdict::Pending(first) = verdict("active-alice") else { panic!("not pending") };
    assert_eq!(first.await.unwrap().subject(), "alice");
    let Verdict::Pending(first) = verdict("revoked") else { panic!("not pending") };
    assert_eq!(first.await.unwrap_err().reason(), Some("token inactive"));
    assert_eq!(server.calls(), 2);

    // Cached answers, both ways, are given at once.
    let Verdict::Authenticated(principal) = verdict("active-alice") else { panic!("not cached") };
    assert_eq!(principal.subject(), "alice");
    let Verdict::Rejected(error) = verdict("revoked") else { panic!("not cached") };
    assert_eq!(error.kind(), ErrorKind::InvalidToken);
    assert!(matches!(verdict(&"x".repeat(10_000)), Verdict::Rejected(_)));
    assert_eq!(server.calls(), 2);

    // Once stale, the endpoint is asked again.
    clock.advance(Duration::from_secs(3_601));
    assert!(matches!(verdict("active-alice"), Verdict::Pending(_)));
}

#[tokio::test]
async fn endpoint_failures_fail_closed_and_are_not_cached() {
    let (server, endpoint) = serve().await;
    let clock = FakeClock::new();
    let introspection = builder(&endpoint, &clock).max_response_size(1024).build().unwrap();

    let failures = [
        Mode::Status(StatusCode::INTERNAL_SERVER_ERROR),
        Mode::Status(StatusCode::SERVICE_UNAVAILABLE),
        Mode::Status(StatusCode::FOUND),
        Mode::Body("<html>oops</html>".to_owned()),
        Mode::Body(json!({"active": "true"}).to_string()),
        Mode::Body(json!({"sub": "alice"}).to_string()),
        Mode::Body(json!([{"active": true}]).to_string()),
        Mode::Body(format!("{{\"active\": false, \"pad\": \"{}\"}}", "x".repeat(2048))),
    ];
    for (i, failure) in failures.into_iter().enumerate() {
        server.mode(failure);
        let err = introspection.introspect("active-alice").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ServiceUnavailable, "failure {i}");
        assert_eq!(server.calls(), i + 1);
        assert_eq!(introspection.cached_entries(), 0);
    }
    server.mode(Mode::Normal);
    assert!(introspection.introspect("active-alice").await.is_ok());

    // Nothing listening at all.
    let closed = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let down = builder(&format!("http://{closed}/introspect"), &clock).build().unwrap();
    let err = down.introspect("active-alice").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ServiceUnavailable);
    assert_eq!(err.status(), http::StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(start_paused = true)]
async fn a_silent_endpoint_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let introspection =
        builder(&format!("http://{addr}/introspect"), &FakeClock::new()).build().unwrap();
    let err = introspection.introspect("active-alice").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ServiceUnavailable);
    assert!(err.reason().unwrap().contains("timed out"), "{err:?}");
}

#[tokio::test]
async fn oversize_tokens_are_rejected_without_a_call() {
    let (server, endpoint) = serve().await;
    let introspection = builder(&endpoint, &FakeClock::new()).max_token_length(64).build().unwrap();
    let err = introspection.introspect(&format!("active-{}", "a".repeat(64))).await.unwrap_err();
    assert_eq!((err.kind(), err.reason()), (ErrorKind::InvalidToken, Some("token too long")));
    assert_eq!(introspection.introspect("").await.unwrap_err().kind(), ErrorKind::InvalidToken);
    assert_eq!(server.calls(), 0);
}

#[tokio::test]
async fn a_flood_of_distinct_tokens_keeps_the_caches_bounded() {
    let (server, endpoint) = serve().await;
    let clock = FakeClock::new();
    let introspection = builder(&endpoint, &clock)
        .cache_capacity(100)
        .negative_capacity(50)
        .max_concurrent(16)
        .build()
        .unwrap();

    for batch in 0..10 {
        let tokens: Vec<String> = (0..100).map(|i| format!("random-{batch}-{i}")).collect();
        let results = join_all(tokens.iter().map(|t| introspection.introspect(t))).await;
        assert!(results.iter().all(|r| r.as_ref().unwrap_err().kind() == ErrorKind::InvalidToken));
        assert!(introspection.cached_entries() <= 50, "{}", introspection.cached_entries());
    }
    assert_eq!(server.calls(), 1000);

    for batch in 0..10 {
        let tokens: Vec<String> = (0..100).map(|i| format!("active-{batch}-{i}")).collect();
        let results = join_all(tokens.iter().map(|t| introspection.introspect(t))).await;
        assert!(results.iter().all(Result::is_ok));
        assert!(introspection.cached_entries() <= 150, "{}", introspection.cached_entries());
    }
    assert!(introspection.cached_entries() > 0);
}

/// Collects formatted tracing output of the current thread (the tests run on a current-thread
/// runtime, so spawned tasks log here too).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || logs.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

#[tokio::test]
async fn failures_are_logged_without_the_token_or_the_secret() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let (server, endpoint) = serve().await;
    let clock = FakeClock::new();
    let introspection = builder(&endpoint, &clock).build().unwrap();
    server.mode(Mode::Status(StatusCode::BAD_GATEWAY));
    let token = "active-Zm9vYmFyLXNlY3JldC10b2tlbg";
    assert!(introspection.introspect(token).await.is_err());
    assert!(introspection.introspect("inactive-Zm9vYmFyLXNlY3JldA").await.is_err());
    server.mode(Mode::Normal);
    assert!(introspection.introspect(token).await.is_ok());
    assert!(introspection.introspect("inactive-Zm9vYmFyLXNlY3JldA").await.is_err());

    let text = logs.text();
    assert!(text.contains(r#""event":"backend.failure""#), "{text}");
    assert!(text.contains(r#""target":"tower_shield::security""#), "{text}");
    assert!(text.contains("502"), "{text}");
    for secret in ["Zm9vYmFyLXNlY3JldC10b2tlbg", "Zm9vYmFyLXNlY3JldA", "p@ss", "cEBzcz"] {
        assert!(!text.contains(secret), "{secret} leaked into logs: {text}");
    }
}

/// Opaque tokens reach `Introspection` through `AuthLayer` when it is chained after a `Jwt`
/// that passes non-JWT tokens on; an unreachable endpoint fails closed with 503.
#[tokio::test]
async fn chained_after_jwt_through_the_auth_layer() {
    use tower::ServiceExt;
    use tower_shield::{
        auth::{jwt::Jwt, AuthLayer},
        envelope::ErrorEnvelopeLayer,
        principal::Principal,
    };

    let (server, endpoint) = serve().await;
    let clock = FakeClock::new();
    *server.exp.lock().unwrap() = Some(unix(&clock) + 3600);
    let jwt = Jwt::builder()
        .hs256_secret([7u8; 32])
        .issuer("https://as.example")
        .audience("orders")
        .pass_non_jwt_tokens()
        .with_clock(clock.clone())
        .build()
        .unwrap();
    let introspection = builder(&endpoint, &clock).build().unwrap();
    let app = Router::new()
        .route(
            "/whoami",
            axum::routing::get(|p: Principal| async move {
                format!("{} {}", p.subject(), p.auth_method().as_str())
            }),
        )
        .layer(AuthLayer::new(jwt).or(introspection))
        .layer(ErrorEnvelopeLayer::new());
    let call = |token: &str| {
        let app = app.clone();
        let request = axum::http::Request::get("/whoami")
            .header("authorization", format!("Bearer {token}"))
            .body(axum::body::Body::empty())
            .unwrap();
        async move {
            let response = app.oneshot(request).await.unwrap();
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 4096).await.unwrap();
            (status, String::from_utf8(body.to_vec()).unwrap())
        }
    };

    assert_eq!(call("active-alice").await, (StatusCode::OK, "alice introspection".to_owned()));
    let (status, body) = call("inactive-token").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains(r#""code":"invalid_token""#), "{body}");
    // A malformed JWT stays with the Jwt authenticator: no introspection call for it.
    let calls = server.calls();
    assert_eq!(call("a.b.c").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(server.calls(), calls);

    server.mode(Mode::Status(StatusCode::BAD_GATEWAY));
    let (status, body) = call("active-bob").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains(r#""code":"service_unavailable""#), "{body}");
}

/// A call whose task died (its runtime shut down mid-call; a panic does the same) does not
/// wedge that token: the next request makes a call of its own instead of waiting on the dead
/// one for ever.
#[test]
fn a_call_whose_task_died_is_made_again() {
    // An authorization server that accepts connections and never answers.
    let endpoint = format!("http://{}/introspect", common::silent_server());
    let introspection = Introspection::builder(&endpoint, CLIENT_ID, CLIENT_SECRET)
        .insecure_skip_issuer()
        .insecure_skip_audience()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();

    let first = common::runtime();
    first.block_on(async {
        let waited =
            tokio::time::timeout(Duration::from_millis(50), introspection.introspect("tok")).await;
        assert!(waited.is_err(), "the call is still waiting for an answer");
    });
    drop(first); // the call's task dies with its runtime

    let error = common::runtime().block_on(introspection.introspect("tok")).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ServiceUnavailable);
    let reason = error.reason().unwrap_or_default().to_owned();
    assert!(!reason.contains("ended without a result"), "a new call ran: {reason}");
}
