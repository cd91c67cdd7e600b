//! Validation end to end: a real axum server on 127.0.0.1:0 behind the envelope, a real client.
#![cfg(all(feature = "validate", feature = "axum", feature = "envelope"))]

use std::net::SocketAddr;

use axum::{
    http::StatusCode,
    routing::{get, post},
    Json, Router,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tower::ServiceBuilder;
use tower_shield::{
    envelope::ErrorEnvelopeLayer,
    error::Detail,
    validate::{Check, JsonBody, ValidateLayer, Validated},
    ServiceBuilderExt,
};

/// The quickstart's POST /orders contract, as a schema.
fn order_schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["item", "quantity"],
        "properties": {
            "item": {"type": "string", "minLength": 1, "maxLength": 80},
            "quantity": {"type": "integer", "minimum": 1, "maximum": 1000},
            "note": {"type": "string", "maxLength": 500}
        }
    })
}

/// The same contract as a DTO.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrder {
    item: String,
    quantity: u32,
    note: Option<String>,
}

impl Check for NewOrder {
    fn check(&self) -> Result<(), Vec<Detail>> {
        let mut details = Vec::new();
        if !(1..=80).contains(&self.item.chars().count()) {
            details.push(Detail::new("/item", "length").with_message("must be 1 to 80 characters"));
        }
        if !(1..=1000).contains(&self.quantity) {
            details.push(Detail::new("/quantity", "range").with_message("must be 1 to 1000"));
        }
        if self.note.as_ref().is_some_and(|n| n.chars().count() > 500) {
            details.push(
                Detail::new("/note", "length").with_message("must be at most 500 characters"),
            );
        }
        if details.is_empty() {
            Ok(())
        } else {
            Err(details)
        }
    }
}

async fn create(Validated(order): Validated<NewOrder>) -> (StatusCode, Json<Value>) {
    let body = json!({"item": order.item, "quantity": order.quantity, "note": order.note});
    (StatusCode::CREATED, Json(body))
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn app() -> Router {
    let orders = ValidateLayer::new().max_body_size(16 * 1024).schema(&order_schema()).unwrap();
    Router::new()
        // Schema and DTO together: the layer parses and checks once, the extractor
        // deserializes the parsed document.
        .route("/orders", post(create).route_layer(ServiceBuilder::new().validate(orders)))
        // The extractor alone, with the layer's defaults.
        .route("/typed", post(create))
        // The parsed document, for handlers that want the JSON itself.
        .route(
            "/raw",
            post(|body: JsonBody| async move { Json(body.value().clone()) })
                .route_layer(ValidateLayer::new()),
        )
        .route("/health", get(|| async { "ok" }))
        .layer(ErrorEnvelopeLayer::new())
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn send(
    addr: SocketAddr,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, String) {
    let mut request = client().post(format!("http://{addr}{path}")).body(body);
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// POSTs `body` to /orders with `Transfer-Encoding: chunked` (no Content-Length), in 1 KiB
/// chunks, over a raw connection; returns the status.
async fn send_chunked(addr: SocketAddr, body: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = "POST /orders HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
                transfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(1024) {
        // The server may answer 413 and close before the whole body is sent.
        if stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await.is_err()
            || stream.write_all(chunk).await.is_err()
            || stream.write_all(b"\r\n").await.is_err()
        {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

fn details(text: &str) -> Vec<(String, String)> {
    let body: Value = serde_json::from_str(text).unwrap();
    body["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|d| {
                    (
                        d["field"].as_str().unwrap().to_owned(),
                        d["issue"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn orders_contract_end_to_end() {
    let addr = serve(app()).await;
    let json = Some("application/json");

    let (status, text) = send(addr, "/orders", json, r#"{"item":"book","quantity":2}"#).await;
    assert_eq!(status, 201, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"item":"book","quantity":2,"note":null})
    );

    // Unknown fields: 400 with one detail each, in the envelope.
    let (status, text) = send(
        addr,
        "/orders",
        json,
        r#"{"item":"b","quantity":1,"role":"admin","owner":"x","isAdmin":true}"#,
    )
    .await;
    assert_eq!(status, 400);
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["code"], "invalid_request");
    assert!(body["request_id"].is_string());
    let mut found = details(&text);
    found.sort();
    assert_eq!(
        found,
        [
            ("/isAdmin", "additionalProperties"),
            ("/owner", "additionalProperties"),
            ("/role", "additionalProperties")
        ]
        .map(|(f, i)| (f.to_owned(), i.to_owned()))
    );

    let (status, text) = send(addr, "/orders", json, r#"{"item":"b","quantity":1001}"#).await;
    assert_eq!((status, details(&text)), (400, vec![("/quantity".into(), "maximum".into())]));

    // Over 16 KiB: 413, whether declared or streamed (chunked, no Content-Length).
    let big = format!(r#"{{"item":"b","quantity":1,"note":"{}"}}"#, "x".repeat(17 * 1024));
    let (status, text) = send(addr, "/orders", json, big.clone()).await;
    assert_eq!(status, 413, "{text}");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["code"], "payload_too_large");
    assert_eq!(send_chunked(addr, big.as_bytes()).await, 413);
    assert_eq!(send_chunked(addr, br#"{"item":"b","quantity":1}"#).await, 201);

    // Not JSON: 415.
    for ct in [Some("text/plain"), Some("application/x-www-form-urlencoded"), None] {
        let (status, text) = send(addr, "/orders", ct, "item=book&quantity=2").await;
        assert_eq!(status, 415, "{ct:?}");
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["code"], "unsupported_media_type");
    }

    // Shape: depth bomb, duplicate keys, huge numbers.
    let (status, text) = send(addr, "/orders", json, "[".repeat(10_000)).await;
    assert_eq!((status, details(&text)), (400, vec![("".into(), "depth".into())]));
    let (status, text) =
        send(addr, "/orders", json, r#"{"item":"b","quantity":1,"quantity":100000}"#).await;
    assert_eq!((status, details(&text)), (400, vec![("/quantity".into(), "duplicate_key".into())]));
    let (status, text) =
        send(addr, "/orders", json, r#"{"item":"b","quantity":18446744073709551616}"#).await;
    assert_eq!(
        (status, details(&text)),
        (400, vec![("/quantity".into(), "number_out_of_range".into())])
    );
}

#[tokio::test]
async fn typed_path_without_the_layer() {
    let addr = serve(app()).await;
    let json = Some("application/json");
    let (status, _) = send(addr, "/typed", json, r#"{"item":"book","quantity":2}"#).await;
    assert_eq!(status, 201);
    let (status, text) =
        send(addr, "/typed", json, r#"{"item":"b","quantity":1,"role":"SECRET-MARKER"}"#).await;
    assert_eq!((status, details(&text)), (400, vec![("/role".into(), "unknown_field".into())]));
    assert!(!text.contains("SECRET-MARKER"));
    let (status, text) =
        send(addr, "/typed", json, r#"{"item":"b","quantity":"SECRET-MARKER"}"#).await;
    assert_eq!((status, details(&text)), (400, vec![("/quantity".into(), "type".into())]));
    assert!(!text.contains("SECRET-MARKER"), "{text}");
    let (status, text) = send(addr, "/typed", json, r#"{"item":"","quantity":5000}"#).await;
    assert_eq!(status, 400);
    assert_eq!(
        details(&text),
        [("/item".into(), "length".into()), ("/quantity".into(), "range".into())]
    );
    let (status, _) = send(addr, "/typed", Some("text/plain"), "{}").await;
    assert_eq!(status, 415);
    let (status, text) = send(addr, "/typed", json, r#"{"a":1,"a":2}"#).await;
    assert_eq!((status, details(&text)), (400, vec![("/a".into(), "duplicate_key".into())]));
    let (status, _) = send(addr, "/typed", json, vec![b' '; 2 * 1024 * 1024]).await;
    assert_eq!(status, 413);
}

#[tokio::test]
async fn parsed_document_reaches_the_handler() {
    let addr = serve(app()).await;
    let (status, text) =
        send(addr, "/raw", Some("application/json; charset=utf-8"), r#"{"a":[1,2]}"#).await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), json!({"a": [1, 2]}));
    let (status, text) =
        send(addr, "/raw", Some("application/json"), b"{\"a\":\"\xff\"}".to_vec()).await;
    assert_eq!((status, details(&text)), (400, vec![("".into(), "invalid_utf8".into())]));
    let (status, text) = send(addr, "/raw", Some("application/json"), "").await;
    assert_eq!((status, details(&text)), (400, vec![("".into(), "required".into())]));
    let response = client().get(format!("http://{addr}/health")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}
