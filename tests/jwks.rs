//! `RemoteJwks` against a real identity provider stand-in on 127.0.0.1.
#![cfg(feature = "jwks")]

mod common;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{extract::State, http::header, response::IntoResponse, routing::get, Json, Router};
use futures_util::future::join_all;
use http::StatusCode;
use jsonwebtoken::{jwk::Jwk, Algorithm, EncodingKey, Header, Validation};
use serde_json::{json, Value};
use tower_shield::{
    auth::{KeySetConfig, RemoteJwks},
    clock::FakeClock,
    ErrorKind,
};

const P256_A: &[u8] = include_bytes!("fixtures/test-only-ec-p256-a.pem");
const P256_B: &[u8] = include_bytes!("fixtures/test-only-ec-p256-b.pem");
const ED25519: &[u8] = include_bytes!("fixtures/test-only-ed25519.pem");

fn encoding_key(alg: Algorithm, pem: &[u8]) -> EncodingKey {
    // With both crypto backends enabled (`--all-features`) jsonwebtoken cannot pick one.
    #[cfg(all(feature = "jwt-rust-crypto", feature = "jwt-aws-lc-rs"))]
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    match alg {
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem).unwrap(),
        _ => EncodingKey::from_ec_pem(pem).unwrap(),
    }
}

fn jwk(alg: Algorithm, pem: &[u8], kid: &str) -> Value {
    let mut jwk =
        serde_json::to_value(Jwk::from_encoding_key(&encoding_key(alg, pem), alg).unwrap())
            .unwrap();
    jwk["kid"] = json!(kid);
    jwk
}

fn key_a() -> Value {
    jwk(Algorithm::ES256, P256_A, "a")
}

fn key_b() -> Value {
    jwk(Algorithm::ES256, P256_B, "b")
}

fn token(alg: Algorithm, pem: &[u8], kid: &str) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, &json!({"sub": "alice"}), &encoding_key(alg, pem)).unwrap()
}

/// Verifies `token` with the key `jwks` returns for its header.
async fn verify(jwks: &RemoteJwks, token: &str) -> Result<Value, ErrorKind> {
    let header = jsonwebtoken::decode_header(token).unwrap();
    let key = jwks.key(header.kid.as_deref(), header.alg).await.map_err(|e| e.kind())?;
    let mut validation = Validation::new(key.algorithm());
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(token, key.decoding_key(), &validation)
        .map(|data| data.claims)
        .map_err(|_| ErrorKind::InvalidToken)
}

/// What the stand-in identity provider answers at `/jwks`.
#[derive(Clone)]
enum Answer {
    Keys { keys: Vec<Value>, cache_control: Option<&'static str> },
    Status(StatusCode),
    Body(String),
}

struct Idp {
    answer: Mutex<Answer>,
    issuer: Mutex<String>,
    jwks_uri: Mutex<Option<String>>,
    jwks_fetches: AtomicUsize,
    discovery_fetches: AtomicUsize,
}

impl Idp {
    fn new(keys: Vec<Value>) -> Arc<Self> {
        Arc::new(Self {
            answer: Mutex::new(Answer::Keys { keys, cache_control: None }),
            issuer: Mutex::new(String::new()),
            jwks_uri: Mutex::new(None),
            jwks_fetches: AtomicUsize::new(0),
            discovery_fetches: AtomicUsize::new(0),
        })
    }

    fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn keys(&self, keys: Vec<Value>, cache_control: Option<&'static str>) {
        self.answer(Answer::Keys { keys, cache_control });
    }

    fn fetches(&self) -> usize {
        self.jwks_fetches.load(Ordering::SeqCst)
    }
}

async fn redirect_handler() -> axum::response::Response {
    (StatusCode::FOUND, [(header::LOCATION, "http://keys.example/jwks")]).into_response()
}

async fn jwks_handler(State(idp): State<Arc<Idp>>) -> axum::response::Response {
    idp.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let answer = idp.answer.lock().unwrap().clone();
    match answer {
        Answer::Keys { keys, cache_control } => {
            let mut response = Json(json!({ "keys": keys })).into_response();
            if let Some(cc) = cache_control {
                response.headers_mut().insert(header::CACHE_CONTROL, cc.parse().unwrap());
            }
            response
        }
        Answer::Status(status) => status.into_response(),
        Answer::Body(body) => body.into_response(),
    }
}

async fn discovery_handler(State(idp): State<Arc<Idp>>) -> Json<Value> {
    idp.discovery_fetches.fetch_add(1, Ordering::SeqCst);
    let issuer = idp.issuer.lock().unwrap().clone();
    let jwks_uri = idp.jwks_uri.lock().unwrap().clone().unwrap_or_else(|| format!("{issuer}/jwks"));
    Json(json!({ "issuer": issuer, "jwks_uri": jwks_uri, "response_types_supported": ["code"] }))
}

async fn serve_on(listener: tokio::net::TcpListener, idp: Arc<Idp>) {
    let app = Router::new()
        .route("/jwks", get(jwks_handler))
        .route("/moved", get(redirect_handler))
        .route("/.well-known/openid-configuration", get(discovery_handler))
        .with_state(idp);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
}

/// Starts the identity provider; returns its base URL (`http://127.0.0.1:PORT`).
async fn serve(idp: &Arc<Idp>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    *idp.issuer.lock().unwrap() = base.clone();
    serve_on(listener, Arc::clone(idp)).await;
    base
}

fn remote(base: &str, clock: &FakeClock) -> RemoteJwks {
    RemoteJwks::from_url(&format!("{base}/jwks")).with_clock(clock.clone()).build().unwrap()
}

#[tokio::test]
async fn lazy_start_while_the_identity_provider_is_down() {
    // A port nothing listens on (yet).
    let addr: SocketAddr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let clock = FakeClock::new();
    let jwks = remote(&format!("http://{addr}"), &clock);
    assert!(jwks.keys().is_none(), "building must not fetch");

    let token = token(Algorithm::ES256, P256_A, "a");
    assert_eq!(verify(&jwks, &token).await, Err(ErrorKind::ServiceUnavailable));
    assert!(jwks.cached(Some("a"), Algorithm::ES256).is_none());

    let idp = Idp::new(vec![key_a()]);
    serve_on(tokio::net::TcpListener::bind(addr).await.unwrap(), Arc::clone(&idp)).await;
    // Within the retry interval no new attempt is made.
    assert_eq!(verify(&jwks, &token).await, Err(ErrorKind::ServiceUnavailable));
    assert_eq!(idp.fetches(), 0);

    clock.advance(Duration::from_secs(5));
    assert_eq!(verify(&jwks, &token).await.unwrap()["sub"], "alice");
    assert_eq!(idp.fetches(), 1);
    assert!(jwks.cached(Some("a"), Algorithm::ES256).is_some());
}

#[tokio::test]
async fn concurrent_first_requests_share_one_fetch() {
    let idp = Idp::new(vec![key_a()]);
    let base = serve(&idp).await;
    let jwks = remote(&base, &FakeClock::new());
    let token = token(Algorithm::ES256, P256_A, "a");
    let results = join_all((0..200).map(|_| verify(&jwks, &token))).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(idp.fetches(), 1);
}

#[tokio::test]
async fn rotated_key_is_accepted_on_the_first_request() {
    let idp = Idp::new(vec![key_a()]);
    let base = serve(&idp).await;
    let clock = FakeClock::new();
    let jwks = remote(&base, &clock);
    assert!(verify(&jwks, &token(Algorithm::ES256, P256_A, "a")).await.is_ok());
    assert_eq!(idp.fetches(), 1);

    // The provider rotates to a new key (and an Ed25519 one) some time later.
    idp.keys(vec![key_a(), key_b(), jwk(Algorithm::EdDSA, ED25519, "ed")], None);
    clock.advance(Duration::from_secs(31));
    assert_eq!(verify(&jwks, &token(Algorithm::ES256, P256_B, "b")).await.unwrap()["sub"], "alice");
    assert_eq!(idp.fetches(), 2);
    assert!(verify(&jwks, &token(Algorithm::EdDSA, ED25519, "ed")).await.is_ok());
    assert!(verify(&jwks, &token(Algorithm::ES256, P256_A, "a")).await.is_ok());
    assert_eq!(idp.fetches(), 2);

    // A token naming kid `b` but signed with key `a` is still refused.
    assert_eq!(
        verify(&jwks, &token(Algorithm::ES256, P256_A, "b")).await,
        Err(ErrorKind::InvalidToken)
    );
    // The kid and the algorithm must both match.
    let err = jwks.key(Some("b"), Algorithm::ES384).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidToken);
    assert_eq!(err.reason(), Some("unknown kid"));
}

#[tokio::test]
async fn a_flood_of_unknown_kids_costs_one_fetch_per_cooldown() {
    let idp = Idp::new(vec![key_a()]);
    let base = serve(&idp).await;
    let clock = FakeClock::new();
    let jwks = remote(&base, &clock);
    assert!(jwks.key(Some("a"), Algorithm::ES256).await.is_ok());
    assert_eq!(idp.fetches(), 1);

    let flood = |round: usize| {
        let jwks = jwks.clone();
        async move {
            let kids: Vec<String> = (0..300).map(|i| format!("random-{round}-{i}")).collect();
            let results =
                join_all(kids.iter().map(|kid| jwks.key(Some(kid), Algorithm::ES256))).await;
            for result in results {
                let err = result.unwrap_err();
                assert_eq!(err.kind(), ErrorKind::InvalidToken);
                assert_eq!(err.reason(), Some("unknown kid"));
            }
        }
    };

    // Within the cooldown of the first fetch: no fetch at all.
    flood(0).await;
    assert_eq!(idp.fetches(), 1);

    let mut expected = 1;
    for round in 1..=4 {
        clock.advance(Duration::from_secs(30));
        flood(round).await;
        expected += 1;
        assert_eq!(idp.fetches(), expected, "one refetch per cooldown window");
        clock.advance(Duration::from_secs(10));
        flood(round + 100).await;
        assert_eq!(idp.fetches(), expected, "no refetch inside the window");
        clock.advance(Duration::from_secs(19));
        flood(round + 200).await;
        assert_eq!(idp.fetches(), expected, "no refetch inside the window");
        // Known keys keep working without any fetch.
        assert!(jwks.key(Some("a"), Algorithm::ES256).await.is_ok());
        assert_eq!(idp.fetches(), expected);
        clock.advance(Duration::from_secs(1));
    }
}

#[tokio::test]
async fn last_good_keys_are_kept_when_refreshes_fail() {
    let idp = Idp::new(vec![key_a()]);
    let base = serve(&idp).await;
    let clock = FakeClock::new();
    let jwks = remote(&base, &clock);
    let token_a = token(Algorithm::ES256, P256_A, "a");
    assert!(verify(&jwks, &token_a).await.is_ok());

    // Expired (default 5 min) and the provider answers 500: the request waits for the failing
    // refresh, then uses the last good keys.
    idp.answer(Answer::Status(StatusCode::INTERNAL_SERVER_ERROR));
    clock.advance(Duration::from_secs(301));
    assert!(verify(&jwks, &token_a).await.is_ok());
    assert_eq!(idp.fetches(), 2);

    let failures = [
        Answer::Status(StatusCode::NOT_FOUND),
        Answer::Body("<html>maintenance</html>".to_owned()),
        Answer::Body(json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}).to_string()),
        Answer::Body(format!("{{\"keys\": [{}]}}", " ".repeat(300 * 1024))),
    ];
    for (i, failure) in failures.into_iter().enumerate() {
        idp.answer(failure);
        let err = jwks.refresh().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ServiceUnavailable);
        assert_eq!(idp.fetches(), 3 + i);
        assert!(verify(&jwks, &token_a).await.is_ok());
        assert_eq!(jwks.keys().unwrap().len(), 1);
    }

    // The provider recovers with a rotated set.
    idp.keys(vec![key_b()], None);
    jwks.refresh().await.unwrap();
    assert!(verify(&jwks, &token(Algorithm::ES256, P256_B, "b")).await.is_ok());
    assert_eq!(verify(&jwks, &token_a).await, Err(ErrorKind::InvalidToken));
}

#[tokio::test]
async fn max_age_is_honoured_within_bounds() {
    let idp = Idp::new(vec![key_a()]);
    idp.keys(vec![key_a()], Some("public, max-age=120"));
    let base = serve(&idp).await;
    let clock = FakeClock::new();
    let jwks = RemoteJwks::from_url(&format!("{base}/jwks"))
        .with_clock(clock.clone())
        .max_ttl(Duration::from_secs(3600))
        .build()
        .unwrap();
    let key =
        |jwks: RemoteJwks| async move { jwks.key(Some("a"), Algorithm::ES256).await.unwrap() };

    key(jwks.clone()).await;
    assert_eq!(idp.fetches(), 1);
    clock.advance(Duration::from_secs(100));
    key(jwks.clone()).await;
    assert_eq!(idp.fetches(), 1, "cached for max-age");

    // max-age=5 is raised to the 60 s minimum.
    idp.keys(vec![key_a()], Some("max-age=5"));
    clock.advance(Duration::from_secs(21));
    key(jwks.clone()).await;
    assert_eq!(idp.fetches(), 2, "refetched once max-age passed");
    clock.advance(Duration::from_secs(50));
    key(jwks.clone()).await;
    assert_eq!(idp.fetches(), 2, "min_ttl applies");

    // No Cache-Control: the 5 min default.
    idp.keys(vec![key_a()], None);
    clock.advance(Duration::from_secs(11));
    key(jwks.clone()).await;
    assert_eq!(idp.fetches(), 3);
    clock.advance(Duration::from_secs(250));
    key(jwks.clone()).await;
    assert_eq!(idp.fetches(), 3, "default ttl");

    // A year is capped at max_ttl (1 h here).
    idp.keys(vec![key_a()], Some("max-age=31536000"));
    clock.advance(Duration::from_secs(51));
    key(jwks.clone()).await;
    assert_eq!(idp.fetches(), 4);
    clock.advance(Duration::from_secs(3000));
    key(jwks.clone()).await;
    assert_eq!(idp.fetches(), 4);
    clock.advance(Duration::from_secs(601));
    key(jwks.clone()).await;
    assert_eq!(idp.fetches(), 5, "max_ttl applies");
}

#[tokio::test]
async fn discovery_finds_the_jwks_uri() {
    let idp = Idp::new(vec![key_a()]);
    let base = serve(&idp).await;
    let jwks = RemoteJwks::discover(&base).with_clock(FakeClock::new()).build().unwrap();
    assert!(verify(&jwks, &token(Algorithm::ES256, P256_A, "a")).await.is_ok());
    assert_eq!(idp.discovery_fetches.load(Ordering::SeqCst), 1);
    assert_eq!(idp.fetches(), 1);
    // The discovered URI is reused.
    jwks.refresh().await.unwrap();
    assert_eq!(idp.discovery_fetches.load(Ordering::SeqCst), 1);
    assert_eq!(idp.fetches(), 2);
}

#[tokio::test]
async fn discovery_with_another_issuer_is_rejected() {
    let idp = Idp::new(vec![key_a()]);
    let base = serve(&idp).await;
    *idp.issuer.lock().unwrap() = "https://evil.example".to_owned();
    *idp.jwks_uri.lock().unwrap() = Some(format!("{base}/jwks"));
    let jwks = RemoteJwks::discover(&base).with_clock(FakeClock::new()).build().unwrap();
    let err = jwks.key(Some("a"), Algorithm::ES256).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ServiceUnavailable);
    assert!(err.reason().unwrap().contains("issuer"), "{err:?}");
    assert_eq!(idp.discovery_fetches.load(Ordering::SeqCst), 1);
    assert_eq!(idp.fetches(), 0, "the JWKS of a mismatched issuer is never fetched");

    // A trailing slash is a different issuer too.
    *idp.issuer.lock().unwrap() = format!("{base}/");
    let jwks = RemoteJwks::discover(&base).with_clock(FakeClock::new()).build().unwrap();
    assert_eq!(jwks.refresh().await.unwrap_err().kind(), ErrorKind::ServiceUnavailable);
    assert_eq!(idp.fetches(), 0);
}

#[tokio::test]
async fn discovered_jwks_uri_must_be_https() {
    let idp = Idp::new(vec![key_a()]);
    let base = serve(&idp).await;
    *idp.jwks_uri.lock().unwrap() = Some("http://keys.example/jwks".to_owned());
    let jwks = RemoteJwks::discover(&base).with_clock(FakeClock::new()).build().unwrap();
    let err = jwks.refresh().await.unwrap_err();
    assert!(err.reason().unwrap().contains("https"), "{err:?}");
}

#[tokio::test]
async fn oversize_jwks_is_rejected() {
    let idp = Idp::new(vec![]);
    idp.answer(Answer::Body(format!("{{\"keys\": [{}]}}", " ".repeat(300 * 1024))));
    let base = serve(&idp).await;
    let jwks = remote(&base, &FakeClock::new());
    let err = jwks.key(Some("a"), Algorithm::ES256).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ServiceUnavailable);
    assert!(err.reason().unwrap().contains("larger"), "{err:?}");
    assert!(jwks.keys().is_none());

    // Too many keys is refused as a whole, within a size that passes.
    let keys: Vec<Value> = (0..5)
        .map(|i| {
            let mut k = key_a();
            k["kid"] = json!(i.to_string());
            k
        })
        .collect();
    idp.keys(keys, None);
    let jwks = RemoteJwks::from_url(&format!("{base}/jwks"))
        .with_clock(FakeClock::new())
        .key_set_config(KeySetConfig::new().max_keys(4.try_into().unwrap()))
        .build()
        .unwrap();
    assert_eq!(jwks.refresh().await.unwrap_err().kind(), ErrorKind::ServiceUnavailable);
    assert!(jwks.keys().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_slow_provider_times_out() {
    // Accepts connections but never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&held);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            keep.lock().unwrap().push(socket);
        }
    });
    let jwks = RemoteJwks::from_url(&format!("http://{addr}/jwks"))
        .with_clock(FakeClock::new())
        .build()
        .unwrap();
    let err = jwks.key(Some("a"), Algorithm::ES256).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ServiceUnavailable);
    assert!(err.reason().unwrap().contains("timed out"), "{err:?}");
}

#[tokio::test]
async fn a_redirect_to_plain_http_is_refused() {
    let idp = Idp::new(vec![key_a()]);
    let base = serve(&idp).await;
    let jwks = RemoteJwks::from_url(&format!("{base}/moved"))
        .with_clock(FakeClock::new())
        .build()
        .unwrap();
    let err = jwks.refresh().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ServiceUnavailable);
    assert!(err.reason().unwrap().contains("redirect"), "{err:?}");
}

/// Collects formatted tracing output of the current thread.
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

#[tokio::test]
async fn failed_refreshes_are_logged_as_backend_failures() {
    let logs = Logs::default();
    let writer = logs.clone();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt().json().with_writer(move || writer.clone()).finish(),
    );
    let idp = Idp::new(vec![key_a()]);
    let base = serve(&idp).await;
    let jwks = remote(&base, &FakeClock::new());
    jwks.refresh().await.unwrap();
    idp.answer(Answer::Status(StatusCode::BAD_GATEWAY));
    assert!(jwks.refresh().await.is_err());

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let line = text.lines().find(|l| l.contains("backend.failure")).expect(&text);
    let event: Value = serde_json::from_str(line).unwrap();
    assert_eq!(event["target"], "tower_shield::security");
    assert_eq!(event["fields"]["backend"], "jwks");
    assert_eq!(event["fields"]["kept_keys"], true);
    assert!(event["fields"]["reason"].as_str().unwrap().contains("502"), "{line}");
}

/// A `Jwt` verifying with a `RemoteJwks`, through `AuthLayer` and the envelope: 503 while
/// the identity provider is down, 200 once keys arrive, and a rotated key accepted at once.
#[tokio::test]
async fn jwt_with_remote_keys_through_the_auth_layer() {
    use tower::ServiceExt;
    use tower_shield::{
        auth::{jwt::Jwt, AuthLayer},
        envelope::ErrorEnvelopeLayer,
        principal::Principal,
    };

    let addr: SocketAddr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let clock = FakeClock::new();
    let jwt = Jwt::builder()
        .with_key_source(remote(&format!("http://{addr}"), &clock))
        .issuer("https://idp.test")
        .audience("orders-api")
        .with_clock(clock.clone())
        .build()
        .unwrap();
    let app = Router::new()
        .route("/whoami", get(|p: Principal| async move { p.subject().to_owned() }))
        .layer(AuthLayer::new(jwt))
        .layer(ErrorEnvelopeLayer::new());
    let mint = |pem: &[u8], kid: &str| {
        let now = tower_shield::clock::Clock::now(&clock)
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        let claims = json!({
            "sub": "alice", "iss": "https://idp.test", "aud": "orders-api",
            "iat": now, "exp": now + 600,
        });
        jsonwebtoken::encode(&header, &claims, &encoding_key(Algorithm::ES256, pem)).unwrap()
    };
    let call = |token: String| {
        let app = app.clone();
        async move {
            let request = axum::http::Request::get("/whoami")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(axum::body::Body::empty())
                .unwrap();
            let response = app.oneshot(request).await.unwrap();
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 4096).await.unwrap();
            (status, String::from_utf8(body.to_vec()).unwrap())
        }
    };

    // The identity provider is down: fail closed with 503, in the envelope.
    let (status, body) = call(mint(P256_A, "a")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains(r#""code":"service_unavailable""#), "{body}");

    let idp = Idp::new(vec![key_a()]);
    serve_on(tokio::net::TcpListener::bind(addr).await.unwrap(), Arc::clone(&idp)).await;
    clock.advance(Duration::from_secs(5));
    assert_eq!(call(mint(P256_A, "a")).await, (StatusCode::OK, "alice".to_owned()));

    // Rotation: the new kid is fetched on the first request that names it.
    clock.advance(Duration::from_secs(31));
    idp.keys(vec![key_a(), key_b()], None);
    assert_eq!(call(mint(P256_B, "b")).await, (StatusCode::OK, "alice".to_owned()));
    assert_eq!(idp.fetches(), 2);

    // A token signed by a key the provider never published is a 401.
    let (status, _) = call(mint(P256_B, "unknown")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// A JWK set given inline: its keys verify tokens through `AuthLayer`, others do not.
#[tokio::test]
async fn inline_jwk_set_verifies_tokens() {
    use tower::ServiceExt;
    use tower_shield::{
        auth::{jwt::Jwt, AuthLayer, KeySet},
        principal::Principal,
    };

    let keys = KeySet::from_json(json!({ "keys": [key_a()] }).to_string()).unwrap();
    let clock = FakeClock::new();
    let jwt = Jwt::builder()
        .jwk_set(&keys)
        .issuer("https://idp.test")
        .audience("orders-api")
        .with_clock(clock.clone())
        .build()
        .unwrap();
    let app = Router::new()
        .route("/whoami", get(|p: Principal| async move { p.subject().to_owned() }))
        .layer(AuthLayer::new(jwt));
    let now = tower_shield::clock::Clock::now(&clock)
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let status_for = |pem: &'static [u8]| {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("a".to_owned());
        let claims = json!({
            "sub": "alice", "iss": "https://idp.test", "aud": "orders-api", "exp": now + 60,
        });
        let token =
            jsonwebtoken::encode(&header, &claims, &encoding_key(Algorithm::ES256, pem)).unwrap();
        let request = axum::http::Request::get("/whoami")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(axum::body::Body::empty())
            .unwrap();
        let app = app.clone();
        async move { app.oneshot(request).await.unwrap().status() }
    };
    assert_eq!(status_for(P256_A).await, StatusCode::OK);
    // Same kid, another key: the signature does not verify.
    assert_eq!(status_for(P256_B).await, StatusCode::UNAUTHORIZED);
}

/// A fetch whose task died (here its runtime shut down mid-fetch; a panic does the same) does
/// not wedge the source: the next refresh starts a fetch of its own instead of waiting on the
/// dead one for ever.
#[test]
fn a_fetch_whose_task_died_is_started_again() {
    // An identity provider that accepts connections and never answers.
    let url = format!("http://{}/jwks", common::silent_server());
    let jwks = RemoteJwks::from_url(&url).timeout(Duration::from_millis(300)).build().unwrap();

    let first = common::runtime();
    first.block_on(async {
        let waited = tokio::time::timeout(Duration::from_millis(50), jwks.refresh()).await;
        assert!(waited.is_err(), "the fetch is still waiting for an answer");
    });
    drop(first); // the fetch task dies with its runtime

    let error = common::runtime().block_on(jwks.refresh()).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ServiceUnavailable);
    let reason = error.reason().unwrap_or_default().to_owned();
    assert!(reason.contains("timed out"), "a new fetch ran (and timed out): {reason}");
}
