//! End to end: the quickstart example, run as a process, with a real HTTP client.

mod common;

use common::Example;
use reqwest::{header, StatusCode};
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[tokio::test]
async fn health_is_public_and_carries_a_request_id() {
    let app = Example::spawn("quickstart", &[]);
    let response = client().get(app.url("/health")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let id = response.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 36, "a generated UUID: {id}");
}

#[tokio::test]
async fn unknown_route_is_a_404_envelope() {
    let app = Example::spawn("quickstart", &[]);
    let response = client().get(app.url("/does-not-exist")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    let id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"code": "not_found", "message": "Not found", "request_id": id}));
}

#[tokio::test]
async fn wrong_method_is_a_405_envelope() {
    let app = Example::spawn("quickstart", &[]);
    let response = client().delete(app.url("/health")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(response.headers().contains_key(header::ALLOW));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "method_not_allowed");
}

#[tokio::test]
async fn client_request_ids_are_kept_only_when_safe() {
    let app = Example::spawn("quickstart", &[]);
    let client = client();
    let response =
        client.get(app.url("/nope")).header("x-request-id", "trace-42.a_b").send().await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-42.a_b");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["request_id"], "trace-42.a_b");

    for unsafe_id in ["has space", &"x".repeat(65), "<script>", "a;b=c"] {
        let response =
            client.get(app.url("/nope")).header("x-request-id", unsafe_id).send().await.unwrap();
        let echoed = response.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_ne!(echoed, unsafe_id);
        assert_eq!(echoed.len(), 36);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["request_id"], echoed);
    }
}

#[tokio::test]
async fn problem_details_on_request() {
    let app = Example::spawn("quickstart", &[]);
    let response = client()
        .get(app.url("/does-not-exist"))
        .header(header::ACCEPT, "application/problem+json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], 404);
    assert_eq!(body["code"], "not_found");
    assert_eq!(body["instance"], "/does-not-exist");
}
