//! AuthLayer end to end: a real axum server on 127.0.0.1:0 behind the envelope, a real client.
#![cfg(all(feature = "auth", feature = "axum"))]

use std::{net::SocketAddr, time::Duration};

use axum::{routing::get, Router};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tower_shield::{
    auth::{
        api_key::{generate, ApiKeys},
        jwt::Jwt,
        AuthLayer, MemoryRevocation, Revocation,
    },
    envelope::ErrorEnvelopeLayer,
    principal::Principal,
};

mod common;

const SECRET: &[u8] = b"an end-to-end test secret, 32+ bytes";
const ISS: &str = "https://issuer.test";
const AUD: &str = "orders-api";

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn token(claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET))
        .unwrap()
}

fn claims(jti: &str) -> Value {
    json!({"iss": ISS, "aud": AUD, "sub": "alice", "iat": now(), "exp": now() + 300, "jti": jti, "scope": "orders:read"})
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn app(auth: AuthLayer) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/orders", get(|p: Principal| async move { p.subject().to_owned() }))
        .route(
            "/feed",
            get(|p: Option<Principal>| async move {
                p.map_or("anonymous".to_owned(), |p| p.subject().to_owned())
            }),
        )
        .layer(auth)
        .layer(ErrorEnvelopeLayer::new())
}

fn jwt(revocation: Option<std::sync::Arc<dyn Revocation>>) -> Jwt {
    let builder = Jwt::builder().hs256_secret(SECRET).issuer(ISS).audience(AUD);
    match revocation {
        Some(r) => builder.with_revocation_arc(r),
        None => builder,
    }
    .build()
    .unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn check(
    response: reqwest::Response,
    status: StatusCode,
    challenge: Option<&str>,
    code: &str,
) {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned()),
        challenge.map(str::to_owned)
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert!(body["request_id"].is_string());
    let text = body.to_string();
    assert!(!text.contains("jwt:") && !text.contains("api_key:"), "no reason leaks: {text}");
}

#[tokio::test]
async fn statuses_challenges_and_envelopes() {
    let key = generate("sk_test").unwrap();
    let api_keys = ApiKeys::new("sk_test")
        .unwrap()
        .header(http::HeaderName::from_static("x-api-key"))
        .with_key(key.id(), key.hash(), Principal::builder("billing"))
        .unwrap();
    let auth =
        AuthLayer::new(jwt(None)).or(api_keys).add_public(http::Method::GET, "/health").unwrap();
    let base = format!("http://{}", serve(app(auth)).await);
    let client = client();
    let url = |path: &str| format!("{base}{path}");

    let ok = client.get(url("/orders")).bearer_auth(token(&claims("a"))).send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.text().await.unwrap(), "alice");

    let missing = client.get(url("/orders")).send().await.unwrap();
    check(missing, StatusCode::UNAUTHORIZED, Some(r#"Bearer realm="api""#), "unauthenticated")
        .await;

    let mut expired = claims("b");
    expired["exp"] = json!(now() - 3600);
    let response = client.get(url("/orders")).bearer_auth(token(&expired)).send().await.unwrap();
    let invalid = r#"Bearer realm="api", error="invalid_token""#;
    check(response, StatusCode::UNAUTHORIZED, Some(invalid), "invalid_token").await;

    let response =
        client.get(url("/orders")).header("authorization", "Bearer a b").send().await.unwrap();
    let bad_request = r#"Bearer realm="api", error="invalid_request""#;
    check(response, StatusCode::BAD_REQUEST, Some(bad_request), "invalid_request").await;

    // API keys from their header and from `Authorization: ApiKey`.
    let response = client.get(url("/orders")).header("x-api-key", key.key()).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "billing");
    let response = client
        .get(url("/orders"))
        .header("authorization", format!("ApiKey {}", key.key()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response =
        client.get(url("/orders")).header("x-api-key", "sk_test_x_y").send().await.unwrap();
    check(response, StatusCode::UNAUTHORIZED, Some(invalid), "invalid_token").await;

    // Public route, and path tricks that must not reach it unauthenticated.
    assert_eq!(client.get(url("/health")).send().await.unwrap().status(), StatusCode::OK);
    for path in ["/healthz", "/health/", "/health/x", "/health/%2e%2e/orders"] {
        let response = client.get(url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
    }

    let post_as = |content_type: &'static str| {
        client.post(url("/orders")).header("content-type", content_type).send()
    };
    // gRPC-Web: the envelope turns the rejection into UNAUTHENTICATED.
    let response = post_as("application/grpc-web+proto").await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["grpc-status"], "16");
    // `application/grpc` over HTTP/1.1 cannot be gRPC: the client gets the HTTP status.
    let response = post_as("application/grpc").await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(!response.headers().contains_key("grpc-status"));
}

#[tokio::test]
async fn optional_mode_over_http() {
    let base = format!("http://{}", serve(app(AuthLayer::new(jwt(None)).optional())).await);
    let client = client();
    let response = client.get(format!("{base}/feed")).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "anonymous");
    let response =
        client.get(format!("{base}/feed")).bearer_auth(token(&claims("c"))).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "alice");
    let response = client.get(format!("{base}/feed")).bearer_auth("x.y.z").send().await.unwrap();
    check(
        response,
        StatusCode::UNAUTHORIZED,
        Some(r#"Bearer realm="api", error="invalid_token""#),
        "invalid_token",
    )
    .await;
}

#[tokio::test]
async fn revocation_evicts_cached_tokens() {
    let store = MemoryRevocation::new();
    let jwt = jwt(Some(std::sync::Arc::new(store)));
    let base = format!("http://{}", serve(app(AuthLayer::new(jwt.clone()))).await);
    let client = client();
    let t = token(&claims("revoke-me"));
    let get = || client.get(format!("{base}/orders")).bearer_auth(&t).send();
    assert_eq!(get().await.unwrap().status(), StatusCode::OK);
    assert_eq!(jwt.cached_tokens(), 1);
    jwt.revoke(&t).await.unwrap();
    assert_eq!(jwt.cached_tokens(), 0);
    assert_eq!(get().await.unwrap().status(), StatusCode::UNAUTHORIZED);
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_revocation_through_the_layer() {
    use tower_shield::auth::RedisRevocation;

    let Some(url) = common::redis_url() else { return };
    let client = redis::Client::open(url.as_str()).unwrap();
    let connection = redis::aio::ConnectionManager::new(client).await.unwrap();
    let store = RedisRevocation::new(connection).prefix(common::unique_prefix("auth-e2e"));
    let store: std::sync::Arc<dyn Revocation> = std::sync::Arc::new(store);
    let jwt = jwt(Some(store.clone()));
    let base = format!("http://{}", serve(app(AuthLayer::new(jwt.clone()))).await);
    let http = self::client();
    let t = token(&claims("redis-revoke"));
    let get = || http.get(format!("{base}/orders")).bearer_auth(&t).send();
    assert_eq!(get().await.unwrap().status(), StatusCode::OK);
    assert_eq!(get().await.unwrap().status(), StatusCode::OK, "cached, still checked");
    jwt.revoke(&t).await.unwrap();
    assert_eq!(get().await.unwrap().status(), StatusCode::UNAUTHORIZED);

    // Log out everywhere for alice; another subject is unaffected.
    let older = token(&claims("redis-older"));
    let response = http.get(format!("{base}/orders")).bearer_auth(&older).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let later = std::time::SystemTime::now() + Duration::from_secs(2);
    store.revoke_subject("alice", later, Duration::from_secs(600)).await.unwrap();
    let response = http.get(format!("{base}/orders")).bearer_auth(&older).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let mut bob = claims("redis-bob");
    bob["sub"] = json!("bob");
    let response =
        http.get(format!("{base}/orders")).bearer_auth(token(&bob)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
