//! Validation: a 1 KiB JSON body against the orders schema, accepted and rejected.

use axum::{body::Body, routing::post, Router};
use criterion::Criterion;
use http::{Request, StatusCode};
use serde_json::json;
use tower_shield::validate::ValidateLayer;

use crate::{run, runtime};

fn schema() -> serde_json::Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["item", "quantity"],
        "properties": {
            "item": {"type": "string", "minLength": 1, "maxLength": 80},
            "quantity": {"type": "integer", "minimum": 1, "maximum": 1000},
            "note": {"type": "string", "maxLength": 1000}
        }
    })
}

/// A body of exactly 1 KiB.
fn body(quantity: u32) -> String {
    let head = format!(r#"{{"item":"book","quantity":{quantity},"note":""#);
    let note = "n".repeat(1024 - head.len() - 2);
    let body = format!(r#"{head}{note}"}}"#);
    assert_eq!(body.len(), 1024);
    body
}

fn request(body: &str) -> Request<Body> {
    Request::post("/orders")
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

pub(crate) fn benches(c: &mut Criterion) {
    let rt = runtime();
    let bare = Router::new().route("/orders", post(|| async { "ok" })).with_state(());
    let app = Router::new()
        .route(
            "/orders",
            post(|| async { "ok" }).route_layer(ValidateLayer::new().schema(&schema()).unwrap()),
        )
        .with_state(());
    let (ok, invalid) = (body(2), body(5000));
    let mut group = c.benchmark_group("validate");
    group.bench_function("bare_post_1k", |b| {
        b.iter(|| run(&rt, &bare, request(&ok), StatusCode::OK))
    });
    group.bench_function("schema_1k_ok", |b| {
        b.iter(|| run(&rt, &app, request(&ok), StatusCode::OK))
    });
    group.bench_function("schema_1k_rejected", |b| {
        b.iter(|| run(&rt, &app, request(&invalid), StatusCode::BAD_REQUEST))
    });
    group.finish();
}
