use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use tower::{service_fn, Layer, ServiceExt};

use super::{
    jwt::{BoxRefreshFuture, Jwt, JwtBuilder, KeySource},
    AuthLayer, AuthRequest, Authenticator, MemoryRevocation, Revocation, Verdict, VerifyingKey,
};
use crate::{
    clock::{Clock, FakeClock},
    principal::{AuthMethod, Principal},
    Error, ErrorKind,
};

pub(super) const ISS: &str = "https://issuer.example";
pub(super) const AUD: &str = "orders-api";
pub(super) const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!("../../tests/fixtures/test-only-", $name, ".pem"))
    };
}

const RSA_PRIVATE: &[u8] = fixture!("rsa-private");
const RSA_PUBLIC: &[u8] = fixture!("rsa-public");
const RSA2_PRIVATE: &[u8] = fixture!("rsa2-private");
const RSA2_PUBLIC: &[u8] = fixture!("rsa2-public");
const EC256_PRIVATE: &[u8] = fixture!("ec256-private");
const EC256_PUBLIC: &[u8] = fixture!("ec256-public");
const EC384_PRIVATE: &[u8] = fixture!("ec384-private");
const EC384_PUBLIC: &[u8] = fixture!("ec384-public");
const ED_PRIVATE: &[u8] = fixture!("ed25519-private");
const ED_PUBLIC: &[u8] = fixture!("ed25519-public");

fn now() -> u64 {
    super::revocation::unix(FakeClock::new().now())
}

fn claims() -> Value {
    json!({
        "iss": ISS,
        "aud": AUD,
        "sub": "alice",
        "iat": now(),
        "exp": now() + 600,
        "jti": "token-1",
        "scope": "orders:read orders:write",
    })
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

/// A token with any header, claims and signature segment.
fn raw(header: &Value, claims: &Value, signature: &str) -> String {
    format!("{}.{}.{signature}", b64(header), b64(claims))
}

fn mint_with(header: &jsonwebtoken::Header, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(header, claims, key).unwrap()
}

fn mint(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    mint_with(&jsonwebtoken::Header::new(alg), claims, key)
}

fn hs256(claims: &Value) -> String {
    mint(Algorithm::HS256, &EncodingKey::from_secret(SECRET), claims)
}

fn builder(clock: &FakeClock) -> JwtBuilder {
    Jwt::builder().issuer(ISS).audience(AUD).with_clock(clock.clone())
}

fn hs_jwt(clock: &FakeClock) -> Jwt {
    builder(clock).hs256_secret(SECRET).build().unwrap()
}

fn verdict_principal(verdict: Verdict) -> Result<Principal, Error> {
    match verdict {
        Verdict::Authenticated(p) => Ok(p),
        Verdict::Rejected(e) => Err(e),
        other => panic!("unexpected verdict {other:?}"),
    }
}

#[track_caller]
fn assert_rejected(jwt: &Jwt, token: &str, reason: &str) {
    match jwt.verify(token) {
        Verdict::Rejected(e) => {
            assert_eq!(e.kind(), ErrorKind::InvalidToken);
            assert_eq!(e.reason(), Some(reason), "token {token}");
        }
        other => panic!("expected a rejection ({reason}), got {other:?}"),
    }
}

#[track_caller]
fn assert_accepted(jwt: &Jwt, token: &str) -> Principal {
    verdict_principal(jwt.verify(token)).expect("token accepted")
}

// ---------------------------------------------------------------- the layer

type Body = Full<Bytes>;

async fn echo(request: Request<Body>) -> Result<Response<Body>, Infallible> {
    let auth_sensitive =
        request.headers().get(header::AUTHORIZATION).is_none_or(HeaderValue::is_sensitive);
    assert!(auth_sensitive, "Authorization must be marked sensitive");
    let subject = request
        .extensions()
        .get::<Principal>()
        .map_or_else(|| "anonymous".to_owned(), |p| p.subject().to_owned());
    Ok(Response::new(Full::from(subject)))
}

fn get(path: &str, authorization: Option<&str>) -> Request<Body> {
    let mut builder = Request::get(path);
    if let Some(value) = authorization {
        builder = builder.header(header::AUTHORIZATION, value);
    }
    builder.body(Body::default()).unwrap()
}

async fn call(layer: &AuthLayer, request: Request<Body>) -> Response<Body> {
    layer.layer(service_fn(echo)).oneshot(request).await.unwrap()
}

async fn body(response: Response<Body>) -> Bytes {
    crate::test_helpers::to_bytes(response.into_body()).await
}

fn challenge(response: &Response<Body>) -> &str {
    response.headers()[header::WWW_AUTHENTICATE].to_str().unwrap()
}

fn error(response: &Response<Body>) -> &Error {
    response.extensions().get::<Error>().expect("an Error in the extensions")
}

#[tokio::test]
async fn valid_token_puts_the_principal_in_the_request() {
    let clock = FakeClock::new();
    let layer = AuthLayer::new(hs_jwt(&clock));
    let response =
        call(&layer, get("/orders", Some(&format!("Bearer {}", hs256(&claims()))))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body(response).await, "alice");
}

#[tokio::test]
async fn missing_credential_is_401_with_a_bare_challenge() {
    let layer = AuthLayer::new(hs_jwt(&FakeClock::new()));
    let response = call(&layer, get("/orders", None)).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&response), r#"Bearer realm="api""#);
    assert_eq!(error(&response).kind(), ErrorKind::Unauthenticated);
    assert!(body(response).await.is_empty());

    let layer = layer.realm("orders");
    let response = call(&layer, get("/orders", None)).await;
    assert_eq!(challenge(&response), r#"Bearer realm="orders""#);
}

#[tokio::test]
async fn invalid_token_is_401_invalid_token() {
    let layer = AuthLayer::new(hs_jwt(&FakeClock::new()));
    let mut expired = claims();
    expired["exp"] = json!(now() - 3600);
    let response = call(&layer, get("/orders", Some(&format!("Bearer {}", hs256(&expired))))).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&response), r#"Bearer realm="api", error="invalid_token""#);
    let error = error(&response);
    assert_eq!(error.kind(), ErrorKind::InvalidToken);
    assert_eq!(error.reason(), Some("jwt: expired"));
    assert_eq!(error.message(), ErrorKind::InvalidToken.message(), "fixed per kind");
}

#[tokio::test]
async fn malformed_authorization_is_400_invalid_request() {
    let layer = AuthLayer::new(hs_jwt(&FakeClock::new()));
    let token = hs256(&claims());
    let mut two = get("/orders", Some(&format!("Bearer {token}")));
    two.headers_mut().append(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
    let mut non_ascii = get("/orders", None);
    non_ascii
        .headers_mut()
        .insert(header::AUTHORIZATION, HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap());
    for request in
        [two, non_ascii, get("/orders", Some("Bearer")), get("/orders", Some("Bearer a b"))]
    {
        let response = call(&layer, request).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(challenge(&response), r#"Bearer realm="api", error="invalid_request""#);
        assert_eq!(error(&response).kind(), ErrorKind::InvalidRequest);
    }
}

#[tokio::test]
async fn unknown_scheme_and_query_tokens_are_unauthenticated() {
    let layer = AuthLayer::new(hs_jwt(&FakeClock::new()));
    let token = hs256(&claims());
    let response = call(&layer, get("/orders", Some("Basic YWxpY2U6cGFzcw=="))).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error(&response).kind(), ErrorKind::Unauthenticated);
    // Never from the query string.
    let response = call(&layer, get(&format!("/orders?access_token={token}"), None)).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // The scheme is case-insensitive.
    let response = call(&layer, get("/orders", Some(&format!("bEARER {token}")))).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn public_routes_match_exactly() {
    let layer =
        AuthLayer::new(hs_jwt(&FakeClock::new())).add_public(Method::GET, "/health").unwrap();
    let response = call(&layer, get("/health", None)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body(response).await, "anonymous");
    for path in [
        "/health/../orders",
        "/health/./x",
        "/healthz",
        "/health/",
        "/health/x",
        "//health",
        "/health%2F..%2Forders",
        "/%2e/health",
        "/health?x=1/../../orders",
    ] {
        let response = call(&layer, get(path, None)).await;
        let public = path == "/health?x=1/../../orders";
        let expected = if public { StatusCode::OK } else { StatusCode::UNAUTHORIZED };
        assert_eq!(response.status(), expected, "{path}");
    }
    let post = Request::post("/health").body(Body::default()).unwrap();
    assert_eq!(call(&layer, post).await.status(), StatusCode::UNAUTHORIZED);
    assert!(AuthLayer::new(hs_jwt(&FakeClock::new())).add_public(Method::GET, "/a/../b").is_err());
}

#[tokio::test]
async fn optional_mode() {
    let layer = AuthLayer::new(hs_jwt(&FakeClock::new())).optional();
    let response = call(&layer, get("/orders", None)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body(response).await, "anonymous");
    let token = hs256(&claims());
    let response = call(&layer, get("/orders", Some(&format!("Bearer {token}")))).await;
    assert_eq!(body(response).await, "alice");
    let response = call(&layer, get("/orders", Some("Bearer not.a.token"))).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error(&response).kind(), ErrorKind::InvalidToken);
    let response = call(&layer, get("/orders", Some("Basic YWxpY2U6cGFzcw=="))).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

/// Recognises `Authorization: Test <subject>`; `Test bad` is rejected; `Test slow` answers
/// through a future.
#[derive(Debug)]
struct TestAuth {
    called: Arc<AtomicBool>,
}

impl Authenticator for TestAuth {
    fn authenticate(&self, request: &AuthRequest<'_>) -> Verdict {
        self.called.store(true, Ordering::SeqCst);
        match request.authorization() {
            Some(a) if a.is_scheme("Test") => match a.credentials() {
                "bad" => Verdict::Rejected(Error::new(ErrorKind::InvalidToken).with_reason("test")),
                "slow" => Verdict::Pending(Box::pin(async {
                    tokio::task::yield_now().await;
                    Ok(Principal::builder("slow").build())
                })),
                "slow-bad" => Verdict::Pending(Box::pin(async {
                    tokio::task::yield_now().await;
                    Err(Error::new(ErrorKind::ServiceUnavailable).with_reason("backend down"))
                })),
                subject => Verdict::Authenticated(Principal::builder(subject).build()),
            },
            _ => Verdict::NotMine,
        }
    }

    fn method(&self) -> AuthMethod {
        AuthMethod::Custom("test")
    }
}

#[tokio::test]
async fn chained_authenticators_first_that_recognises_decides() {
    let called = Arc::new(AtomicBool::new(false));
    let layer =
        AuthLayer::new(hs_jwt(&FakeClock::new())).or(TestAuth { called: Arc::clone(&called) });
    let token = hs256(&claims());
    let response = call(&layer, get("/orders", Some(&format!("Bearer {token}")))).await;
    assert_eq!(body(response).await, "alice");
    assert!(!called.load(Ordering::SeqCst), "the JWT decided; the second was not asked");

    let response = call(&layer, get("/orders", Some("Test bob"))).await;
    assert_eq!(body(response).await, "bob");
    assert!(called.load(Ordering::SeqCst));

    let response = call(&layer, get("/orders", Some("Test bad"))).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&response), r#"Bearer realm="api", error="invalid_token""#);

    // A bad bearer token is decided by the JWT authenticator: no fall-through.
    let response = call(&layer, get("/orders", Some("Bearer a.b.c"))).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn opaque_tokens_can_be_left_to_the_next_authenticator() {
    let jwt =
        builder(&FakeClock::new()).hs256_secret(SECRET).pass_non_jwt_tokens().build().unwrap();
    // Alone: an opaque bearer token nobody recognises is still a 401 invalid_token.
    let layer = AuthLayer::new(jwt.clone());
    let response = call(&layer, get("/orders", Some("Bearer opaque-token"))).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&response), r#"Bearer realm="api", error="invalid_token""#);
    // JWT-shaped tokens are still judged by the JWT authenticator.
    let response = call(&layer, get("/orders", Some("Bearer a.b.c"))).await;
    assert_eq!(error(&response).reason(), Some("jwt: header is not base64url"));

    /// Accepts the opaque bearer token `opaque-token`.
    #[derive(Debug)]
    struct Opaque;
    impl Authenticator for Opaque {
        fn authenticate(&self, request: &AuthRequest<'_>) -> Verdict {
            match request.bearer() {
                Some("opaque-token") => {
                    Verdict::Authenticated(Principal::builder("opaque").build())
                }
                _ => Verdict::NotMine,
            }
        }
        fn method(&self) -> AuthMethod {
            AuthMethod::Introspection
        }
    }
    let layer = AuthLayer::new(jwt).or(Opaque);
    let response = call(&layer, get("/orders", Some("Bearer opaque-token"))).await;
    assert_eq!(body(response).await, "opaque");
}

#[tokio::test]
async fn pending_verdicts() {
    let layer = AuthLayer::new(TestAuth { called: Arc::default() });
    let response = call(&layer, get("/orders", Some("Test slow"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body(response).await, "slow");
    let response = call(&layer, get("/orders", Some("Test slow-bad"))).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().get(header::WWW_AUTHENTICATE).is_none());
}

#[tokio::test]
async fn failures_are_logged_without_the_token() {
    use std::io::Write;

    #[derive(Clone, Default)]
    struct Buffer(Arc<std::sync::Mutex<Vec<u8>>>);
    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let layer = AuthLayer::new(hs_jwt(&FakeClock::new()));
    let mut expired = claims();
    expired["exp"] = json!(now() - 3600);
    let token = hs256(&expired);
    call(&layer, get("/orders", Some(&format!("Bearer {token}")))).await;
    let good = hs256(&claims());
    call(&layer, get("/orders", Some(&format!("Bearer {good}")))).await;

    let logs = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("auth.failure"), "{logs}");
    assert!(logs.contains("jwt: expired"), "{logs}");
    assert!(logs.contains("auth.success"), "{logs}");
    assert!(!logs.contains(&token) && !logs.contains(&good), "a token was logged: {logs}");
}

// ---------------------------------------------------------------- JWT rules

#[test]
fn every_supported_algorithm_verifies() {
    let clock = FakeClock::new();
    let cases: [(Algorithm, EncodingKey, VerifyingKey); 11] = [
        (
            Algorithm::HS256,
            EncodingKey::from_secret(SECRET),
            VerifyingKey::from_secret(Algorithm::HS256, SECRET).unwrap(),
        ),
        (
            Algorithm::HS384,
            EncodingKey::from_secret(&[1; 48]),
            VerifyingKey::from_secret(Algorithm::HS384, &[1; 48]).unwrap(),
        ),
        (
            Algorithm::HS512,
            EncodingKey::from_secret(&[2; 64]),
            VerifyingKey::from_secret(Algorithm::HS512, &[2; 64]).unwrap(),
        ),
        (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
            VerifyingKey::from_pem(Algorithm::RS256, RSA_PUBLIC).unwrap(),
        ),
        (
            Algorithm::RS384,
            EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
            VerifyingKey::from_pem(Algorithm::RS384, RSA_PUBLIC).unwrap(),
        ),
        (
            Algorithm::RS512,
            EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
            VerifyingKey::from_pem(Algorithm::RS512, RSA_PUBLIC).unwrap(),
        ),
        (
            Algorithm::PS256,
            EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
            VerifyingKey::from_pem(Algorithm::PS256, RSA_PUBLIC).unwrap(),
        ),
        (
            Algorithm::PS512,
            EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
            VerifyingKey::from_pem(Algorithm::PS512, RSA_PUBLIC).unwrap(),
        ),
        (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(EC256_PRIVATE).unwrap(),
            VerifyingKey::from_pem(Algorithm::ES256, EC256_PUBLIC).unwrap(),
        ),
        (
            Algorithm::ES384,
            EncodingKey::from_ec_pem(EC384_PRIVATE).unwrap(),
            VerifyingKey::from_pem(Algorithm::ES384, EC384_PUBLIC).unwrap(),
        ),
        (
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(ED_PRIVATE).unwrap(),
            VerifyingKey::from_pem(Algorithm::EdDSA, ED_PUBLIC).unwrap(),
        ),
    ];
    for (alg, encoding, verifying) in cases {
        let jwt = builder(&clock).key(verifying).no_cache().build().unwrap();
        let token = mint(alg, &encoding, &claims());
        assert_eq!(assert_accepted(&jwt, &token).subject(), "alice", "{alg:?}");
        // Flip one signature character: rejected.
        let mut bad = token.into_bytes();
        let last = bad.len() - 3;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).unwrap();
        assert_rejected(&jwt, &bad, "jwt: bad signature");
    }
}

#[test]
fn keys_from_der() {
    let der = include_bytes!("../../tests/fixtures/test-only-rsa-public-pkcs1.der");
    let jwt = builder(&FakeClock::new())
        .key(VerifyingKey::from_der(Algorithm::RS256, der).unwrap())
        .build()
        .unwrap();
    let token = mint(Algorithm::RS256, &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(), &claims());
    assert_accepted(&jwt, &token);
    let other =
        mint(Algorithm::RS256, &EncodingKey::from_rsa_pem(RSA2_PRIVATE).unwrap(), &claims());
    assert_rejected(&jwt, &other, "jwt: bad signature");
    assert!(VerifyingKey::from_der(Algorithm::HS256, der).is_err());
}

#[test]
fn alg_none_in_any_case_is_rejected() {
    let jwt = hs_jwt(&FakeClock::new());
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({"alg": alg, "typ": "JWT"});
        // With an empty signature segment and with a non-empty one.
        assert_rejected(&jwt, &raw(&header, &claims(), ""), "jwt: empty segment");
        assert_rejected(&jwt, &raw(&header, &claims(), "AAAA"), "jwt: no key for the token's alg");
        // Even when it names the key.
        let header = json!({"alg": alg, "kid": "k1"});
        let keyed = builder(&FakeClock::new())
            .key(VerifyingKey::from_secret(Algorithm::HS256, SECRET).unwrap().with_kid("k1"))
            .build()
            .unwrap();
        assert_rejected(
            &keyed,
            &raw(&header, &claims(), "AAAA"),
            "jwt: alg does not match the key's algorithm",
        );
    }
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_rejected() {
    let jwt = builder(&FakeClock::new())
        .key(VerifyingKey::from_pem(Algorithm::RS256, RSA_PUBLIC).unwrap())
        .build()
        .unwrap();
    let token = mint(Algorithm::HS256, &EncodingKey::from_secret(RSA_PUBLIC), &claims());
    assert_rejected(&jwt, &token, "jwt: no key for the token's alg");
    // Naming an RS256 key id does not help either.
    let jwt = builder(&FakeClock::new())
        .key(VerifyingKey::from_pem(Algorithm::RS256, RSA_PUBLIC).unwrap().with_kid("rsa"))
        .build()
        .unwrap();
    let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
    header.kid = Some("rsa".into());
    let token = mint_with(&header, &claims(), &EncodingKey::from_secret(RSA_PUBLIC));
    assert_rejected(&jwt, &token, "jwt: alg does not match the key's algorithm");
}

#[test]
fn embedded_jwk_header_is_ignored() {
    let jwt = builder(&FakeClock::new())
        .key(VerifyingKey::from_pem(Algorithm::RS256, RSA_PUBLIC).unwrap())
        .build()
        .unwrap();
    // The attacker signs with their own key and embeds its public half.
    let attacker = EncodingKey::from_rsa_pem(RSA2_PRIVATE).unwrap();
    let attacker_public = jsonwebtoken::DecodingKey::from_rsa_pem(RSA2_PUBLIC).unwrap();
    let _ = attacker_public;
    let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
    header.jwk = Some(
        serde_json::from_value(json!({
            "kty": "RSA", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1Wl", "e": "AQAB"
        }))
        .unwrap(),
    );
    let token = mint_with(&header, &claims(), &attacker);
    assert_rejected(&jwt, &token, "jwt: bad signature");
}

#[test]
fn jku_and_x5u_headers_are_never_fetched() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let jwt = builder(&FakeClock::new())
        .key(VerifyingKey::from_pem(Algorithm::RS256, RSA_PUBLIC).unwrap())
        .build()
        .unwrap();
    let attacker = EncodingKey::from_rsa_pem(RSA2_PRIVATE).unwrap();
    let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
    header.jku = Some(url.clone());
    header.x5u = Some(url);
    header.kid = None;
    let token = mint_with(&header, &claims(), &attacker);
    assert_rejected(&jwt, &token, "jwt: bad signature");
    let err = listener.accept().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock, "nothing connected");
}

#[test]
fn es256_all_zero_signature_is_rejected() {
    let jwt = builder(&FakeClock::new())
        .key(VerifyingKey::from_pem(Algorithm::ES256, EC256_PUBLIC).unwrap())
        .build()
        .unwrap();
    let zero = URL_SAFE_NO_PAD.encode([0u8; 64]);
    let token = raw(&json!({"alg": "ES256", "typ": "JWT"}), &claims(), &zero);
    assert_rejected(&jwt, &token, "jwt: bad signature");
}

#[test]
fn time_claims() {
    let clock = FakeClock::new();
    let jwt = builder(&clock).hs256_secret(SECRET).no_cache().build().unwrap();
    let with = |name: &str, value: Value| {
        let mut c = claims();
        c[name] = value;
        hs256(&c)
    };
    // exp: in the past beyond the leeway, within it, missing, not a number.
    assert_rejected(&jwt, &with("exp", json!(now() - 61)), "jwt: expired");
    assert_accepted(&jwt, &with("exp", json!(now() - 59)));
    let mut no_exp = claims();
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_rejected(&jwt, &hs256(&no_exp), "jwt: no exp");
    assert_rejected(&jwt, &with("exp", json!("tomorrow")), "jwt: exp is not a NumericDate");
    // nbf and iat in the future.
    assert_rejected(&jwt, &with("nbf", json!(now() + 120)), "jwt: not yet valid (nbf)");
    assert_accepted(&jwt, &with("nbf", json!(now() + 30)));
    assert_rejected(&jwt, &with("iat", json!(now() + 120)), "jwt: issued in the future (iat)");
    // The clock decides: a valid token expires as the clock moves.
    let token = hs256(&claims());
    assert_accepted(&jwt, &token);
    clock.advance(Duration::from_secs(600 + 60));
    assert_rejected(&jwt, &token, "jwt: expired");
}

#[test]
fn issuer_audience_and_subject() {
    let jwt =
        builder(&FakeClock::new()).audience("other-api").hs256_secret(SECRET).build().unwrap();
    let with = |name: &str, value: Value| {
        let mut c = claims();
        c[name] = value;
        hs256(&c)
    };
    assert_rejected(&jwt, &with("iss", json!("https://evil.example")), "jwt: issuer not accepted");
    assert_rejected(&jwt, &with("iss", json!(null)), "jwt: no iss");
    assert_rejected(&jwt, &with("aud", json!("billing-api")), "jwt: audience not accepted");
    assert_rejected(&jwt, &with("aud", json!(["billing-api"])), "jwt: audience not accepted");
    assert_rejected(&jwt, &with("aud", json!(null)), "jwt: no aud");
    assert_accepted(&jwt, &with("aud", json!(["billing-api", "other-api"])));
    assert_accepted(&jwt, &with("aud", json!("other-api")));
    assert_rejected(&jwt, &with("sub", json!("")), "jwt: no sub");
    assert_rejected(&jwt, &with("sub", json!(42)), "jwt: no sub");

    let lax = Jwt::builder()
        .hs256_secret(SECRET)
        .insecure_skip_issuer()
        .insecure_skip_audience()
        .with_clock(FakeClock::new())
        .build()
        .unwrap();
    assert_accepted(&lax, &with("iss", json!("https://evil.example")));
    assert_accepted(&lax, &with("aud", json!(null)));
}

/// The header is decoded on the stack up to 256 bytes and on the heap beyond; its strings
/// borrow from it unless they hold escapes. Every size and spelling reads the same.
#[test]
fn headers_of_any_size_and_spelling_are_read() {
    let jwt = hs_jwt(&FakeClock::new());
    let sign = |header: &str| {
        let message = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), b64(&claims()));
        let key = EncodingKey::from_secret(SECRET);
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
        format!("{message}.{sig}")
    };
    let fixed = r#"{"alg":"HS256","typ":"JWT","x":""}"#.len();
    for len in [0, 1, 200, 256 - fixed - 1, 256 - fixed, 256 - fixed + 1, 300, 4000] {
        let header = format!(r#"{{"alg":"HS256","typ":"JWT","x":"{}"}}"#, "a".repeat(len));
        assert_accepted(&jwt, &sign(&header));
        let wrong_alg = header.replace("HS256", "HS384");
        assert_rejected(&jwt, &sign(&wrong_alg), "jwt: no key for the token's alg");
    }
    // Escaped names and values are read unescaped, on either side of the stack's size.
    for pad in [0, 300] {
        let header = format!(r#"{{"\u0061lg":"HS\u0032\u00356","x":"{}"}}"#, "a".repeat(pad));
        assert_accepted(&jwt, &sign(&header));
    }
    let typed = Jwt::builder()
        .issuer(ISS)
        .audience(AUD)
        .hs256_secret(SECRET)
        .require_typ("at+jwt")
        .with_clock(FakeClock::new())
        .build()
        .unwrap();
    assert_accepted(&typed, &sign(r#"{"alg":"HS256","typ":"at\u002bjwt"}"#));
    assert_rejected(
        &typed,
        &sign(r#"{"alg":"HS256","typ":"JWT"}"#),
        "jwt: header typ is not the required one",
    );
}

/// A key remembers the header of the first token whose signature and claims passed; a later
/// token with the same header segment skips reading it, and is judged exactly as before.
#[test]
fn a_key_remembers_only_a_header_that_passed() {
    let clock = FakeClock::new();
    let a = VerifyingKey::from_secret(Algorithm::HS256, SECRET).unwrap();
    let other_secret = [9u8; 32];
    let b = VerifyingKey::from_secret(Algorithm::HS256, &other_secret).unwrap();
    // Clones share the memo, so the test sees what the verifier's copies remember.
    let jwt = builder(&clock).key(a.clone()).key(b.clone()).no_cache().build().unwrap();
    let good = hs256(&claims());
    let segment = good.split('.').next().unwrap();

    // A correctly signed token that fails a claim check is not remembered.
    let mut expired = claims();
    expired["exp"] = json!(now() - 3600);
    assert_rejected(&jwt, &hs256(&expired), "jwt: expired");
    // Nor is a token with a bad signature.
    let (message, _) = good.rsplit_once('.').unwrap();
    let forged = format!("{message}.{}", URL_SAFE_NO_PAD.encode([7u8; 32]));
    assert_rejected(&jwt, &forged, "jwt: bad signature");
    assert!(a.header_memo(segment).is_none() && b.header_memo(segment).is_none());

    assert_accepted(&jwt, &good);
    let memo = a.header_memo(segment).expect("remembered by the key that verified");
    assert_eq!(
        (&*memo.alg, memo.kid.as_deref(), memo.typ.as_deref()),
        ("HS256", None, Some("JWT"))
    );
    assert!(b.header_memo(segment).is_none());

    // The same header segment, now read from the memo: a forged signature still fails, a
    // token signed by the other key (no kid, same header) is still found, and claims are
    // still checked.
    assert_rejected(&jwt, &forged, "jwt: bad signature");
    let by_b = mint(Algorithm::HS256, &EncodingKey::from_secret(&other_secret), &claims());
    assert_eq!(by_b.split('.').next(), Some(segment));
    assert_accepted(&jwt, &by_b);
    assert_rejected(&jwt, &hs256(&expired), "jwt: expired");
    // Another spelling of the same header is read, not matched.
    let spaced = {
        let header = r#"{ "alg": "HS256", "typ": "JWT" }"#;
        let message = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), b64(&claims()));
        let key = EncodingKey::from_secret(SECRET);
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
        format!("{message}.{sig}")
    };
    assert_accepted(&jwt, &spaced);
    assert_eq!(a.header_memo(segment).map(|m| &*m.segment), Some(segment), "the first stays");

    // A required `typ` is checked on a remembered header too.
    let typed = builder(&clock).key(a.clone()).require_typ("at+jwt").build().unwrap();
    assert_rejected(&typed, &good, "jwt: header typ is not the required one");
}

#[test]
fn malformed_tokens() {
    let jwt = hs_jwt(&FakeClock::new());
    let good = hs256(&claims());
    let (head, rest) = good.split_once('.').unwrap();
    let (payload, signature) = rest.split_once('.').unwrap();
    assert_rejected(&jwt, &format!("{head}.{payload}"), "jwt: not three segments");
    assert_rejected(&jwt, &format!("{good}.{signature}"), "jwt: not three segments");
    assert_rejected(&jwt, "!!!.@@@.###", "jwt: header is not base64url");
    assert_rejected(
        &jwt,
        &format!("{head}=.{payload}.{signature}"),
        "jwt: header is not base64url",
    );
    assert_rejected(
        &jwt,
        &format!("{}.{payload}.{signature}", URL_SAFE_NO_PAD.encode("not json")),
        "jwt: header is not valid JSON",
    );
    assert_rejected(&jwt, &format!("{head}..{signature}"), "jwt: empty segment");
    // A payload that is not JSON, correctly signed.
    let header = json!({"alg": "HS256"});
    let message = format!("{}.{}", b64(&header), URL_SAFE_NO_PAD.encode("[1,2]"));
    let sig = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET),
        Algorithm::HS256,
    )
    .unwrap();
    assert_rejected(&jwt, &format!("{message}.{sig}"), "jwt: payload is not a JSON object");
    // Duplicated claim names, correctly signed: a parser keeping the first and one keeping the
    // last would disagree on the subject or the expiry.
    let sign_payload = |payload: &str| {
        let message = format!("{}.{}", b64(&header), URL_SAFE_NO_PAD.encode(payload));
        let sig = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(SECRET),
            Algorithm::HS256,
        )
        .unwrap();
        format!("{message}.{sig}")
    };
    let body = format!(r#""iss":"{ISS}","aud":"{AUD}","exp":{}"#, now() + 600);
    let duplicated = [
        format!(r#"{{{body},"sub":"alice","sub":"bob"}}"#),
        format!(r#"{{"exp":{},{body},"sub":"alice"}}"#, now() - 3600),
        format!(r#"{{{body},"sub":"alice","scope":"a","scope":"orders:admin"}}"#),
    ];
    for payload in &duplicated {
        assert_rejected(&jwt, &sign_payload(payload), "jwt: duplicate claim name");
    }
    // The same claims once each are accepted, and a name repeated inside a nested object is
    // that object's business.
    assert_accepted(&jwt, &sign_payload(&format!(r#"{{{body},"sub":"alice"}}"#)));
    assert_accepted(
        &jwt,
        &sign_payload(&format!(r#"{{{body},"sub":"alice","ext":{{"a":1,"b":{{"a":2}}}}}}"#)),
    );
    // Regression (found writing the `jwt` fuzz target): a header that is a JSON array, correctly
    // signed, was read as `{"alg": "HS256"}`.
    for header in ["[\"HS256\"]", " [\"HS256\", null, null, null]"] {
        let message = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), b64(&claims()));
        let sig = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(SECRET),
            Algorithm::HS256,
        )
        .unwrap();
        assert_rejected(&jwt, &format!("{message}.{sig}"), "jwt: header is not a JSON object");
    }
    // Regression (found by the `jwt` fuzz target): invalid UTF-8 in a header member the
    // verifier ignores, correctly signed, was accepted.
    let header = b"{\"alg\":\"HS256\",\"x\":\"\xff\xfe\"}";
    let message = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), b64(&claims()));
    let sig = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET),
        Algorithm::HS256,
    )
    .unwrap();
    assert_rejected(&jwt, &format!("{message}.{sig}"), "jwt: header is not valid JSON");
    // crit.
    let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
    header.extras.insert("crit", json!(["exp"]));
    let token = mint_with(&header, &claims(), &EncodingKey::from_secret(SECRET));
    assert_rejected(&jwt, &token, "jwt: header has crit");
}

#[test]
fn oversize_tokens_are_rejected_before_parsing() {
    let jwt = hs_jwt(&FakeClock::new());
    let mut big = claims();
    big["padding"] = json!("x".repeat(9000));
    assert_rejected(&jwt, &hs256(&big), "jwt: token longer than max_token_len");
    assert_rejected(&jwt, &"a".repeat(8 * 1024 + 1), "jwt: token longer than max_token_len");
    let roomy =
        builder(&FakeClock::new()).hs256_secret(SECRET).max_token_len(64 * 1024).build().unwrap();
    assert_accepted(&roomy, &hs256(&big));
}

#[test]
fn typ_and_max_lifetime() {
    let jwt = builder(&FakeClock::new())
        .hs256_secret(SECRET)
        .require_typ("at+jwt")
        .max_lifetime(Duration::from_secs(3600))
        .build()
        .unwrap();
    let key = EncodingKey::from_secret(SECRET);
    let typed = |typ: Option<&str>, claims: &Value| {
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.typ = typ.map(Into::into);
        mint_with(&header, claims, &key)
    };
    assert_accepted(&jwt, &typed(Some("at+jwt"), &claims()));
    assert_accepted(&jwt, &typed(Some("application/AT+JWT"), &claims()));
    assert_rejected(
        &jwt,
        &typed(Some("JWT"), &claims()),
        "jwt: header typ is not the required one",
    );
    assert_rejected(&jwt, &typed(None, &claims()), "jwt: header typ is not the required one");
    let mut long = claims();
    long["exp"] = json!(now() + 7200);
    assert_rejected(&jwt, &typed(Some("at+jwt"), &long), "jwt: lifetime exceeds max_lifetime");
    let mut no_iat = claims();
    no_iat.as_object_mut().unwrap().remove("iat");
    assert_rejected(
        &jwt,
        &typed(Some("at+jwt"), &no_iat),
        "jwt: no iat, but a max lifetime is configured",
    );
}

/// A verifier of exactly these keys.
fn with_keys(keys: [VerifyingKey; 2]) -> Jwt {
    let [a, b] = keys;
    builder(&FakeClock::new()).key(a).key(b).build().unwrap()
}

/// A token whose header names `alg` and `kid`, signed with `key`.
fn signed(alg: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = kid.map(Into::into);
    mint_with(&header, &claims(), key)
}

#[test]
fn kid_selects_the_key() {
    let jwt = with_keys([
        VerifyingKey::from_pem(Algorithm::RS256, RSA_PUBLIC).unwrap().with_kid("one"),
        VerifyingKey::from_pem(Algorithm::RS256, RSA2_PUBLIC).unwrap().with_kid("two"),
    ]);
    let sign = |kid: Option<&str>, private: &[u8]| {
        signed(Algorithm::RS256, kid, &EncodingKey::from_rsa_pem(private).unwrap())
    };
    assert_accepted(&jwt, &sign(Some("one"), RSA_PRIVATE));
    assert_accepted(&jwt, &sign(Some("two"), RSA2_PRIVATE));
    assert_rejected(&jwt, &sign(Some("two"), RSA_PRIVATE), "jwt: bad signature");
    assert_rejected(&jwt, &sign(Some("three"), RSA_PRIVATE), "jwt: unknown kid");
    // Without a kid, every key of the algorithm is tried.
    assert_accepted(&jwt, &sign(None, RSA2_PRIVATE));
}

/// One `kid` under two algorithms (a JWK set may publish that): the key is the one with both
/// the token's `kid` and its `alg`, and a third algorithm matches neither.
#[test]
fn a_kid_under_two_algorithms_selects_by_both() {
    let jwt = with_keys([
        VerifyingKey::from_pem(Algorithm::ES256, EC256_PUBLIC).unwrap().with_kid("k"),
        VerifyingKey::from_pem(Algorithm::EdDSA, ED_PUBLIC).unwrap().with_kid("k"),
    ]);
    let es256 = EncodingKey::from_ec_pem(EC256_PRIVATE).unwrap();
    assert_accepted(&jwt, &signed(Algorithm::ES256, Some("k"), &es256));
    let eddsa = EncodingKey::from_ed_pem(ED_PRIVATE).unwrap();
    assert_accepted(&jwt, &signed(Algorithm::EdDSA, Some("k"), &eddsa));
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap();
    let token = signed(Algorithm::RS256, Some("k"), &rsa);
    assert_rejected(&jwt, &token, "jwt: alg does not match the key's algorithm");
}

#[test]
fn config_errors() {
    let short = Jwt::builder().issuer(ISS).audience(AUD).hs256_secret([1; 31]).build();
    assert!(short.unwrap_err().message().contains("at least 32 bytes"));
    assert!(VerifyingKey::from_secret(Algorithm::HS512, &[1; 32]).is_err());
    assert!(VerifyingKey::from_secret(Algorithm::RS256, &[1; 64]).is_err());
    assert!(VerifyingKey::from_pem(Algorithm::HS256, RSA_PUBLIC).is_err());
    assert!(VerifyingKey::from_pem(Algorithm::RS256, b"not a pem").is_err());
    // A short secret smuggled in through VerifyingKey::new is caught at build time.
    let smuggled =
        VerifyingKey::new(Algorithm::HS256, jsonwebtoken::DecodingKey::from_secret(b"short"));
    assert!(Jwt::builder().issuer(ISS).audience(AUD).key(smuggled).build().is_err());
    // A key whose material is of another family.
    let mixed =
        VerifyingKey::new(Algorithm::RS256, jsonwebtoken::DecodingKey::from_secret(&[1; 32]));
    assert!(Jwt::builder().issuer(ISS).audience(AUD).key(mixed).build().is_err());
    assert!(Jwt::builder().issuer(ISS).audience(AUD).build().is_err(), "no keys");
    assert!(Jwt::builder().audience(AUD).hs256_secret(SECRET).build().is_err(), "no issuer");
    assert!(Jwt::builder().issuer(ISS).hs256_secret(SECRET).build().is_err(), "no audience");
    assert!(Jwt::builder()
        .issuer(ISS)
        .audience(AUD)
        .hs256_secret(SECRET)
        .max_token_len(0)
        .build()
        .is_err());
    // Debug never shows key material.
    let jwt = hs_jwt(&FakeClock::new());
    let debug = format!("{jwt:?}");
    assert!(!debug.contains("0123456789abcdef"), "{debug}");
}

/// NumericDates past year 9999 are not dates: an `exp` there is refused, an `auth_time` there
/// ignored (no step-up then), and neither may overflow into a panic (a 500).
#[test]
fn numeric_dates_past_year_9999_are_not_dates() {
    let jwt = builder(&FakeClock::new()).hs256_secret(SECRET).build().unwrap();
    for huge in [json!(u64::MAX), json!(253_402_300_800u64), json!(9.9e14)] {
        let mut c = claims();
        c["exp"] = huge.clone();
        assert_rejected(&jwt, &hs256(&c), "jwt: exp is not a NumericDate");
        let mut c = claims();
        c["auth_time"] = huge;
        assert_eq!(assert_accepted(&jwt, &hs256(&c)).auth_time(), None);
    }
    let mut c = claims();
    c["exp"] = json!(253_402_300_799u64); // 9999-12-31T23:59:59Z, the last date
    assert_accepted(&jwt, &hs256(&c));
}

#[test]
fn claims_map_into_the_principal() {
    let jwt = builder(&FakeClock::new())
        .hs256_secret(SECRET)
        .roles_claim("groups")
        .tenant_claim("org")
        .build()
        .unwrap();
    let mut c = claims();
    c["groups"] = json!(["admin", "ops"]);
    c["org"] = json!("acme");
    c["azp"] = json!("web-app");
    c["auth_time"] = json!(now() - 30);
    c["acr"] = json!("urn:mace:incommon:iap:silver");
    c["amr"] = json!(["pwd", "otp"]);
    let p = assert_accepted(&jwt, &hs256(&c));
    assert_eq!(p.scopes().collect::<Vec<_>>(), ["orders:read", "orders:write"]);
    assert_eq!(p.roles().collect::<Vec<_>>(), ["admin", "ops"]);
    assert_eq!(p.tenant(), Some("acme"));
    assert_eq!(p.client_id(), Some("web-app"));
    assert_eq!(p.auth_method(), AuthMethod::Jwt);
    assert_eq!(super::revocation::unix(p.auth_time().unwrap()), now() - 30);
    assert_eq!(p.acr(), Some("urn:mace:incommon:iap:silver"));
    assert_eq!(p.amr().collect::<Vec<_>>(), ["pwd", "otp"]);
    assert_eq!(p.claim("org"), Some(&json!("acme")));

    let mut scp = claims();
    scp.as_object_mut().unwrap().remove("scope");
    scp["scp"] = json!(["a", "b"]);
    scp["client_id"] = json!("cli");
    let p = assert_accepted(&jwt, &hs256(&scp));
    assert_eq!(p.scopes().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(p.client_id(), Some("cli"));

    // Only a space separates scope tokens (RFC 6749, section 3.3); doubled spaces are lenient.
    for (scope, want) in [
        ("orders:read  orders:write ", &["orders:read", "orders:write"][..]),
        ("orders:read\torders:write", &["orders:read\torders:write"][..]),
        ("orders:read\norders:admin", &["orders:read\norders:admin"][..]),
        ("orders:read\u{a0}orders:admin", &["orders:read\u{a0}orders:admin"][..]),
    ] {
        let mut c = claims();
        c["scope"] = json!(scope);
        let p = assert_accepted(&jwt, &hs256(&c));
        assert_eq!(p.scopes().collect::<Vec<_>>(), want, "{scope:?}");
    }
}

// ---------------------------------------------------------------- cache

#[test]
fn cache_hits_and_expiry_follow_the_clock() {
    let clock = FakeClock::new();
    let jwt =
        builder(&clock).hs256_secret(SECRET).cache(100, Duration::from_secs(60)).build().unwrap();
    let token = hs256(&claims());
    assert_accepted(&jwt, &token);
    assert_eq!(jwt.cached_tokens(), 1);
    assert_accepted(&jwt, &token);
    assert_eq!(jwt.cached_tokens(), 1);
    // Invalid tokens are never cached.
    let mut expired = claims();
    expired["exp"] = json!(now() - 3600);
    assert_rejected(&jwt, &hs256(&expired), "jwt: expired");
    assert_eq!(jwt.cached_tokens(), 1);
    // Past the TTL the entry goes; the token is verified again (still valid).
    clock.advance(Duration::from_secs(61));
    assert_accepted(&jwt, &token);
    // Past the token's exp (+ leeway) a cached token is rejected.
    clock.advance(Duration::from_secs(600));
    assert_rejected(&jwt, &token, "jwt: expired");
    assert_eq!(jwt.cached_tokens(), 0);
}

#[test]
fn only_the_exact_cached_token_hits_the_cache() {
    let clock = FakeClock::new();
    let jwt = builder(&clock).hs256_secret(SECRET).build().unwrap();
    let token = hs256(&claims());
    assert_accepted(&jwt, &token);
    assert_eq!(jwt.cached_tokens(), 1);
    let (message, signature) = token.rsplit_once('.').unwrap();
    let mut other = claims();
    other["sub"] = json!("mallory");
    let (other_message, _) =
        hs256(&other).rsplit_once('.').map(|(m, s)| (m.to_owned(), s.to_owned())).unwrap();
    let flipped = {
        let mut bytes = signature.as_bytes().to_vec();
        bytes[3] = if bytes[3] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bytes).unwrap()
    };
    // Near misses of a cached token are verified from scratch, never served from the cache.
    for near in [
        format!("{message}.{flipped}"),
        format!("{other_message}.{signature}"),
        format!("{token}A"),
        token[..token.len() - 1].to_owned(),
        format!("{message}.{signature}.{signature}"),
    ] {
        assert!(matches!(jwt.verify(&near), Verdict::Rejected(_)), "{near}");
    }
    assert_eq!(jwt.cached_tokens(), 1);
    assert_eq!(assert_accepted(&jwt, &token).subject(), "alice");
}

#[test]
fn cache_is_bounded_under_a_flood() {
    let clock = FakeClock::new();
    let jwt =
        builder(&clock).hs256_secret(SECRET).cache(64, Duration::from_secs(300)).build().unwrap();
    for i in 0..2_000 {
        let mut c = claims();
        c["jti"] = json!(format!("flood-{i}"));
        assert_accepted(&jwt, &hs256(&c));
        assert_rejected(&jwt, &format!("!garbage{i}.x.y"), "jwt: header is not base64url");
    }
    assert!(jwt.cached_tokens() <= 64, "{} entries", jwt.cached_tokens());
}

// ---------------------------------------------------------------- revocation

#[tokio::test]
async fn revoked_tokens_are_rejected_even_when_cached() {
    let clock = FakeClock::new();
    let store = MemoryRevocation::new().with_clock(clock.clone());
    let jwt = builder(&clock).hs256_secret(SECRET).with_revocation(store.clone()).build().unwrap();
    let token = hs256(&claims());
    assert_accepted(&jwt, &token);
    assert_eq!(jwt.cached_tokens(), 1);
    jwt.revoke(&token).await.unwrap();
    assert_eq!(jwt.cached_tokens(), 0, "revoking evicts the cache entry");
    assert_rejected(&jwt, &token, "jwt: token revoked");

    // Revoked straight in the store: the cached entry is rejected and evicted on its next hit.
    let mut other = claims();
    other["jti"] = json!("token-2");
    let other = hs256(&other);
    assert_accepted(&jwt, &other);
    store.revoke_jti("token-2", clock.now() + Duration::from_secs(600)).await.unwrap();
    assert_rejected(&jwt, &other, "jwt: token revoked");
    assert_eq!(jwt.cached_tokens(), 0);

    // Log out everywhere: older tokens of the subject go, newer ones stay valid.
    let mut c = claims();
    c["jti"] = json!("token-3");
    let older = hs256(&c);
    assert_accepted(&jwt, &older);
    clock.advance(Duration::from_secs(5));
    store.revoke_subject("alice", clock.now(), Duration::from_secs(3600)).await.unwrap();
    assert_rejected(&jwt, &older, "jwt: token revoked");
    let mut c = claims();
    c["jti"] = json!("token-4");
    c["iat"] = json!(now() + 5);
    assert_accepted(&jwt, &hs256(&c));

    // Revoke needs a valid token with a jti.
    let mut c = claims();
    c.as_object_mut().unwrap().remove("jti");
    c["iat"] = json!(now() + 5);
    assert_eq!(jwt.revoke(&hs256(&c)).await.unwrap_err().reason(), Some("jwt: token has no jti"));
    assert!(jwt.revoke("a.b.c").await.is_err());
}

// ---------------------------------------------------------------- key sources

/// A key source that learns key `k2` on its first refresh.
#[derive(Debug)]
struct Rotating {
    keys: std::sync::Mutex<Arc<[VerifyingKey]>>,
    refreshes: std::sync::atomic::AtomicUsize,
}

impl KeySource for Arc<Rotating> {
    fn keys(&self) -> Arc<[VerifyingKey]> {
        Arc::clone(&self.keys.lock().unwrap())
    }

    fn refresh(&self, _kid: &str) -> Option<BoxRefreshFuture> {
        if self.refreshes.fetch_add(1, Ordering::SeqCst) > 0 {
            return None;
        }
        let this = Arc::clone(self);
        Some(Box::pin(async move {
            let k2 = VerifyingKey::from_pem(Algorithm::RS256, RSA2_PUBLIC).unwrap().with_kid("k2");
            *this.keys.lock().unwrap() = Arc::from(vec![k2]);
            Ok(())
        }))
    }
}

#[tokio::test]
async fn unknown_kid_refreshes_the_key_source_once() {
    let source = Arc::new(Rotating {
        keys: std::sync::Mutex::new(Arc::from(vec![VerifyingKey::from_pem(
            Algorithm::RS256,
            RSA_PUBLIC,
        )
        .unwrap()
        .with_kid("k1")])),
        refreshes: Default::default(),
    });
    let jwt = builder(&FakeClock::new()).with_key_source(Arc::clone(&source)).build().unwrap();
    let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
    header.kid = Some("k2".into());
    let token = mint_with(&header, &claims(), &EncodingKey::from_rsa_pem(RSA2_PRIVATE).unwrap());
    let Verdict::Pending(future) = jwt.verify(&token) else { panic!("expected a refresh") };
    assert_eq!(future.await.unwrap().subject(), "alice");
    // Now known (and cached): synchronous.
    assert_accepted(&jwt, &token);
    // Another unknown kid: the source refuses a second refetch.
    header.kid = Some("k3".into());
    let token = mint_with(&header, &claims(), &EncodingKey::from_rsa_pem(RSA2_PRIVATE).unwrap());
    assert_rejected(&jwt, &token, "jwt: unknown kid");
    assert_eq!(source.refreshes.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn builder_method_on_service_builder() {
    use crate::ServiceBuilderExt;
    let service = tower::ServiceBuilder::new()
        .authenticate(AuthLayer::new(hs_jwt(&FakeClock::new())))
        .service_fn(echo);
    let response = service.oneshot(get("/orders", None)).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[allow(dead_code)]
fn revocation_is_object_safe(_: &dyn Revocation) {}
