//! axum integration: a real server on 127.0.0.1:0 behind the envelope, with a real client.
#![cfg(feature = "axum")]

use std::net::SocketAddr;

use axum::{http::StatusCode, routing::get, Router};
use serde_json::{json, Value};
use tower_shield::{
    envelope::{ErrorEnvelopeLayer, RequestId},
    error::Detail,
    principal::Principal,
    Error, ErrorKind,
};

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn app() -> Router {
    Router::new()
        .route(
            "/panic",
            get(|| async {
                if true {
                    panic!("secret internal detail");
                }
                "unreachable"
            }),
        )
        .route(
            "/leak",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "secret internal detail") }),
        )
        .route(
            "/invalid",
            get(|| async {
                Err::<(), _>(
                    Error::new(ErrorKind::InvalidRequest)
                        .with_reason("quantity too large: 99999")
                        .with_detail(Detail::new("/quantity", "maximum")),
                )
            }),
        )
        .route("/whoami", get(|principal: Principal| async move { principal.subject().to_owned() }))
        .route(
            "/maybe",
            get(|principal: Option<Principal>| async move {
                principal.map_or("anonymous".to_owned(), |p| p.subject().to_owned())
            }),
        )
        .route("/id", get(|id: RequestId| async move { id.to_string() }))
        .route(
            "/orders/{id}",
            get(|axum::extract::Path(id): axum::extract::Path<u64>| async move { id.to_string() }),
        )
        .layer(ErrorEnvelopeLayer::new())
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[tokio::test]
async fn panicking_handler_is_a_500_envelope_with_request_id() {
    let addr = serve(app()).await;
    let response = client()
        .get(format!("http://{addr}/panic"))
        .header("x-request-id", "panic-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(response.headers()["x-request-id"], "panic-1");
    let text = response.text().await.unwrap();
    assert!(!text.contains("secret internal detail"));
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        body,
        json!({"code": "internal", "message": "Internal server error", "request_id": "panic-1"})
    );
    // The server survived the panic.
    let again = client().get(format!("http://{addr}/id")).send().await.unwrap();
    assert_eq!(again.status(), 200);
}

#[tokio::test]
async fn handler_500_text_never_reaches_the_client() {
    let addr = serve(app()).await;
    let response = client().get(format!("http://{addr}/leak")).send().await.unwrap();
    assert_eq!(response.status(), 500);
    let text = response.text().await.unwrap();
    assert!(!text.contains("secret internal detail"), "{text}");
    assert!(text.contains(r#""code":"internal""#));
}

#[tokio::test]
async fn extractor_rejections_become_envelopes_without_their_text() {
    let addr = serve(app()).await;
    let response = client().get(format!("http://{addr}/orders/not-a-number")).send().await;
    let response = response.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "invalid_request");
    for leak in ["u64", "parse", "not-a-number", "Invalid URL"] {
        assert!(!body.to_string().contains(leak), "{body}");
    }
}

#[tokio::test]
async fn error_into_response_is_rendered_with_the_request_id() {
    let addr = serve(app()).await;
    let response = client()
        .get(format!("http://{addr}/invalid"))
        .header("x-request-id", "v-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let text = response.text().await.unwrap();
    assert!(!text.contains("99999"), "the reason is never rendered: {text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        body,
        json!({
            "code": "invalid_request",
            "message": "The request is invalid",
            "request_id": "v-1",
            "details": [{"field": "/quantity", "issue": "maximum"}],
        })
    );
}

#[tokio::test]
async fn error_into_response_without_envelope_still_has_a_body() {
    use axum::response::IntoResponse;
    let response = Error::new(ErrorKind::RateLimited).into_response();
    assert_eq!(response.status(), 429);
    let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
    assert_eq!(body, r#"{"code":"rate_limited","message":"Too many requests"}"#);
}

#[tokio::test]
async fn principal_extractor_without_auth_layer_is_a_500_not_a_401() {
    let addr = serve(app()).await;
    let response = client().get(format!("http://{addr}/whoami")).send().await.unwrap();
    assert_eq!(response.status(), 500, "a missing layer is a server bug");
    let response = client().get(format!("http://{addr}/maybe")).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "anonymous");
}

#[tokio::test]
async fn principal_extractor_reads_the_extension() {
    let app = app().layer(axum::middleware::from_fn(
        |mut request: axum::extract::Request, next: axum::middleware::Next| async move {
            request.extensions_mut().insert(Principal::builder("user-7").build());
            next.run(request).await
        },
    ));
    let addr = serve(app).await;
    let response = client().get(format!("http://{addr}/whoami")).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "user-7");
}

#[tokio::test]
async fn request_id_extractor() {
    let addr = serve(app()).await;
    let response = client()
        .get(format!("http://{addr}/id"))
        .header("x-request-id", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "abc");
}
