//! Idempotency under axum: a real server on 127.0.0.1:0 behind the envelope, with reqwest.
#![cfg(all(feature = "idempotency", feature = "envelope", feature = "axum"))]

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::post,
    Json, Router,
};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tower_shield::{
    envelope::ErrorEnvelopeLayer, idempotency::IdempotencyLayer, principal::Principal,
};

#[derive(Clone)]
struct App {
    runs: Arc<AtomicUsize>,
    started: Arc<Semaphore>,
    gate: Arc<Semaphore>,
}

impl App {
    fn new() -> Self {
        Self {
            runs: Arc::new(AtomicUsize::new(0)),
            started: Arc::new(Semaphore::new(0)),
            gate: Arc::new(Semaphore::new(0)),
        }
    }
}

async fn create_order(State(app): State<App>, Json(order): Json<Value>) -> impl IntoResponse {
    let id = app.runs.fetch_add(1, Ordering::SeqCst) + 1;
    (StatusCode::CREATED, Json(json!({"id": id, "sku": order["sku"]})))
}

async fn slow_order(State(app): State<App>) -> impl IntoResponse {
    let id = app.runs.fetch_add(1, Ordering::SeqCst) + 1;
    app.started.add_permits(1);
    app.gate.acquire().await.unwrap().forget();
    (StatusCode::CREATED, Json(json!({"id": id})))
}

async fn flaky_order(State(app): State<App>) -> impl IntoResponse {
    let id = app.runs.fetch_add(1, Ordering::SeqCst) + 1;
    assert!(id != 1, "the first run panics");
    (StatusCode::CREATED, Json(json!({"id": id})))
}

/// Stands in for the auth layer: the caller named in `x-test-user` becomes the principal.
async fn fake_auth(mut request: Request, next: Next) -> Response {
    if let Some(user) = request.headers().get("x-test-user").and_then(|v| v.to_str().ok()) {
        let principal = Principal::builder(user).build();
        request.extensions_mut().insert(principal);
    }
    next.run(request).await
}

fn app(state: App) -> Router {
    let required = Router::new()
        .route("/payments", post(create_order))
        .layer(IdempotencyLayer::new().required(true));
    Router::new()
        .route("/orders", post(create_order))
        .route("/slow", post(slow_order))
        .route("/flaky", post(flaky_order))
        .layer(IdempotencyLayer::new())
        .merge(required)
        .layer(middleware::from_fn(fake_auth))
        .layer(ErrorEnvelopeLayer::new())
        .with_state(state)
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, service).await.unwrap() });
    addr
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn order(
    addr: SocketAddr,
    path: &str,
    key: &str,
    user: &str,
    body: &Value,
) -> reqwest::RequestBuilder {
    client()
        .post(format!("http://{addr}{path}"))
        .header("idempotency-key", key)
        .header("x-test-user", user)
        .json(body)
}

#[tokio::test]
async fn a_retry_replays_the_stored_response() {
    let state = App::new();
    let addr = serve(app(state.clone())).await;
    let first = order(addr, "/orders", "k1", "alice", &json!({"sku": "A1"})).send().await.unwrap();
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    assert_eq!(first.json::<Value>().await.unwrap(), json!({"id": 1, "sku": "A1"}));

    let retry =
        order(addr, "/orders", "\"k1\"", "alice", &json!({"sku": "A1"})).send().await.unwrap();
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.headers()["content-type"], "application/json");
    assert_eq!(retry.json::<Value>().await.unwrap(), json!({"id": 1, "sku": "A1"}));

    // Another caller with the same key gets its own record.
    let bob = order(addr, "/orders", "k1", "bob", &json!({"sku": "A1"})).send().await.unwrap();
    assert_eq!(bob.json::<Value>().await.unwrap(), json!({"id": 2, "sku": "A1"}));
    assert_eq!(state.runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn rejections_are_rendered_by_the_envelope() {
    let state = App::new();
    let addr = serve(app(state.clone())).await;
    order(addr, "/orders", "k", "alice", &json!({"sku": "A1"})).send().await.unwrap();

    let reused = order(addr, "/orders", "k", "alice", &json!({"sku": "B2"})).send().await.unwrap();
    assert_eq!(reused.status(), 422);
    assert_eq!(reused.json::<Value>().await.unwrap()["code"], "idempotency_key_reused");

    let secret = format!("secret-{}", "x".repeat(250));
    let invalid = order(addr, "/orders", &secret, "alice", &json!({})).send().await.unwrap();
    assert_eq!(invalid.status(), 400);
    let body = invalid.text().await.unwrap();
    assert!(!body.contains("secret-"), "the key is never echoed: {body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], "invalid_request");
    assert_eq!(
        body["details"],
        json!([{
            "field": "header:idempotency-key",
            "issue": "too_long",
            "message": "must be at most 255 characters"
        }])
    );

    let missing = client()
        .post(format!("http://{addr}/payments"))
        .header("x-test-user", "alice")
        .json(&json!({"sku": "A1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);
    assert_eq!(missing.json::<Value>().await.unwrap()["code"], "idempotency_key_missing");

    let anonymous = client()
        .post(format!("http://{addr}/orders"))
        .header("idempotency-key", "k")
        .json(&json!({"sku": "A1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.headers()["www-authenticate"], r#"Bearer realm="api""#);
    assert_eq!(state.runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_request_in_flight_gets_409_with_retry_after() {
    let state = App::new();
    let addr = serve(app(state.clone())).await;
    let first = tokio::spawn(order(addr, "/slow", "k", "alice", &json!({})).send());
    state.started.acquire().await.unwrap().forget();

    let conflict = order(addr, "/slow", "k", "alice", &json!({})).send().await.unwrap();
    assert_eq!(conflict.status(), 409);
    assert_eq!(conflict.headers()["retry-after"], "1");
    assert_eq!(conflict.json::<Value>().await.unwrap()["code"], "idempotency_key_in_use");

    state.gate.add_permits(1);
    assert_eq!(first.await.unwrap().unwrap().status(), 201);
    let replay = order(addr, "/slow", "k", "alice", &json!({})).send().await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(state.runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_panicking_handler_releases_the_key() {
    let state = App::new();
    let addr = serve(app(state.clone())).await;
    let panicked = order(addr, "/flaky", "k", "alice", &json!({})).send().await.unwrap();
    assert_eq!(panicked.status(), 500);
    assert_eq!(panicked.json::<Value>().await.unwrap()["code"], "internal");
    let retry = order(addr, "/flaky", "k", "alice", &json!({})).send().await.unwrap();
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.json::<Value>().await.unwrap(), json!({"id": 2}));
}

#[tokio::test]
async fn anonymous_callers_scoped_by_the_tcp_peer() {
    let state = App::new();
    let layer = IdempotencyLayer::new().anonymous_scope(|request: &http::request::Parts| {
        let ConnectInfo(peer) = request.extensions.get::<ConnectInfo<SocketAddr>>()?;
        Some(peer.ip().to_string())
    });
    let app = Router::new()
        .route("/orders", post(create_order))
        .layer(layer)
        .layer(ErrorEnvelopeLayer::new())
        .with_state(state.clone());
    let addr = serve(app).await;
    let anonymous = || {
        client()
            .post(format!("http://{addr}/orders"))
            .header("idempotency-key", "k")
            .json(&json!({"sku": "A1"}))
    };
    assert_eq!(anonymous().send().await.unwrap().status(), 201);
    let retry = anonymous().send().await.unwrap();
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(state.runs.load(Ordering::SeqCst), 1);
}
