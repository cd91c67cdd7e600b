use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use futures_util::FutureExt as _;
use http::{header, HeaderName, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use proptest::prelude::*;
use serde::Deserialize;
use serde_json::{json, Value};
use tower::{service_fn, BoxError, Layer, ServiceExt};

use super::*;
use crate::{
    body::Buffered,
    error::Detail,
    test_helpers::{to_bytes, to_json},
    Error,
};

type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

fn full(body: impl Into<Bytes>) -> TestBody {
    Full::new(body.into()).map_err(|e: Infallible| match e {}).boxed_unsync()
}

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

/// The quickstart's POST /orders contract.
fn orders_layer() -> ValidateLayer {
    ValidateLayer::new().max_body_size(16 * 1024).schema(&order_schema()).unwrap()
}

/// Echoes what the inner service saw: the body bytes and whether a `JsonBody` was present.
async fn echo(request: Request<Buffered>) -> Result<Response<Full<Bytes>>, Infallible> {
    let json = request.extensions().get::<JsonBody>().map(|j| j.value().clone());
    let bytes = to_bytes(request.into_body()).await;
    let seen = json!({"json": json, "bytes": String::from_utf8_lossy(&bytes)});
    Ok(Response::new(Full::from(seen.to_string())))
}

fn post(content_type: Option<&str>, body: impl Into<Bytes>) -> Request<TestBody> {
    let mut builder = Request::post("/orders");
    if let Some(ct) = content_type {
        builder = builder.header(header::CONTENT_TYPE, ct);
    }
    builder.body(full(body)).unwrap()
}

fn json_post(body: impl Into<Bytes>) -> Request<TestBody> {
    post(Some("application/json"), body)
}

async fn send(layer: &ValidateLayer, request: Request<TestBody>) -> Response<Full<Bytes>> {
    layer.layer(service_fn(echo)).oneshot(request).await.unwrap()
}

/// The status and the `Error` of a rejection.
async fn rejected(layer: &ValidateLayer, request: Request<TestBody>) -> (StatusCode, Error) {
    let response = send(layer, request).await;
    let error = response.extensions().get::<Error>().cloned().expect("a rejection");
    assert!(to_bytes(response.into_body()).await.is_empty(), "rejections carry no body");
    (error.status(), error)
}

fn issues(error: &Error) -> Vec<(&str, &str)> {
    error.details().iter().map(|d| (d.field(), d.issue())).collect()
}

#[tokio::test]
async fn valid_body_reaches_the_handler_parsed_once() {
    let body = r#"{"item":"book","quantity":2,"note":"gift"}"#;
    let response = send(&orders_layer(), json_post(body)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let seen = to_json(response.into_body()).await;
    assert_eq!(seen["bytes"], body);
    assert_eq!(seen["json"], json!({"item": "book", "quantity": 2, "note": "gift"}));
}

#[tokio::test]
async fn each_schema_rule() {
    let layer = orders_layer();
    let cases = [
        (r#"{"quantity":2}"#, ("/item", "required")),
        (r#"{"item":"","quantity":2}"#, ("/item", "minLength")),
        (&*format!(r#"{{"item":"{}","quantity":2}}"#, "x".repeat(81)), ("/item", "maxLength")),
        (r#"{"item":"book","quantity":0}"#, ("/quantity", "minimum")),
        (r#"{"item":"book","quantity":1001}"#, ("/quantity", "maximum")),
        (r#"{"item":"book","quantity":1.5}"#, ("/quantity", "type")),
        (r#"{"item":"book","quantity":"2"}"#, ("/quantity", "type")),
        (
            &*format!(r#"{{"item":"b","quantity":2,"note":"{}"}}"#, "n".repeat(501)),
            ("/note", "maxLength"),
        ),
        (r#"{"item":"book","quantity":2,"role":"admin"}"#, ("/role", "additionalProperties")),
        (r#"[]"#, ("", "type")),
    ];
    for (body, expected) in cases {
        let (status, error) = rejected(&layer, json_post(body.to_owned())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error.code(), "invalid_request");
        assert!(issues(&error).contains(&expected), "{body}: {:?}", issues(&error));
    }
    // The limits themselves pass.
    let edge =
        format!(r#"{{"item":"{}","quantity":1000,"note":"{}"}}"#, "é".repeat(80), "n".repeat(500));
    assert_eq!(send(&layer, json_post(edge)).await.status(), StatusCode::OK);
    let edge = r#"{"item":"b","quantity":1}"#;
    assert_eq!(send(&layer, json_post(edge)).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn unknown_fields_are_all_reported() {
    let body = r#"{"item":"b","quantity":1,"role":"admin","owner":"mallory","isAdmin":true}"#;
    let (_, error) = rejected(&orders_layer(), json_post(body)).await;
    let mut fields: Vec<&str> = error.details().iter().map(Detail::field).collect();
    fields.sort_unstable();
    assert_eq!(fields, ["/isAdmin", "/owner", "/role"]);
    assert!(error.details().iter().all(|d| d.message() == Some("unknown property")));
}

#[tokio::test]
async fn violations_can_be_422() {
    let layer = orders_layer().violation_status(ViolationStatus::UnprocessableEntity);
    let (status, error) = rejected(&layer, json_post(r#"{"item":"b","quantity":0}"#)).await;
    assert_eq!((status, error.code()), (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable_entity"));
    // Syntax stays 400.
    let (status, _) = rejected(&layer, json_post("{")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn details_are_capped() {
    let layer = ValidateLayer::new()
        .schema(&json!({"type": "array", "items": {"type": "integer"}}))
        .unwrap()
        .max_details(3);
    let body = serde_json::to_vec(&vec!["x"; 1000]).unwrap();
    let (_, error) = rejected(&layer, json_post(body)).await;
    assert_eq!(error.details().len(), 3);
    let (_, error) =
        rejected(&orders_layer(), json_post(serde_json::to_vec(&vec![0; 1]).unwrap())).await;
    assert_eq!(error.details().len(), 1);
}

#[tokio::test]
async fn declared_oversize_is_413_before_reading() {
    let layer = orders_layer();
    let mut request = json_post("{}");
    request.headers_mut().insert(header::CONTENT_LENGTH, (16 * 1024 + 1).into());
    let (status, _) = rejected(&layer, request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Exactly the limit is read (and then judged on its content).
    let body = format!(r#"{{"item":"b","quantity":1,"note":"{}"}}"#, " ".repeat(16 * 1024 - 35));
    assert_eq!(body.len(), 16 * 1024);
    let (status, error) = rejected(&layer, json_post(body)).await;
    assert_eq!((status, error.details()[0].issue()), (StatusCode::BAD_REQUEST, "maxLength"));
    let (status, _) = rejected(&layer, json_post(vec![b' '; 16 * 1024 + 1])).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn chunked_oversize_stops_reading() {
    let polled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&polled);
    // An endless stream without Content-Length or size hint.
    let frames = futures_util::stream::repeat_with(move || {
        counter.fetch_add(1, Ordering::Relaxed);
        Ok::<_, BoxError>(Frame::data(Bytes::from_static(&[b' '; 1024])))
    });
    let request = Request::post("/orders")
        .header(header::CONTENT_TYPE, "application/json")
        .body(StreamBody::new(frames).boxed_unsync())
        .unwrap();
    let (status, _) = rejected(&orders_layer(), request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(polled.load(Ordering::Relaxed), 17, "stops at the first frame past 16 KiB");
}

#[tokio::test]
async fn failing_body_stream_is_400() {
    let frames = futures_util::stream::iter(vec![
        Ok(Frame::data(Bytes::from_static(b"{"))),
        Err::<Frame<Bytes>, BoxError>("connection reset".into()),
    ]);
    let request = Request::post("/orders")
        .header(header::CONTENT_TYPE, "application/json")
        .body(StreamBody::new(frames).boxed_unsync())
        .unwrap();
    let (status, _) = rejected(&orders_layer(), request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn content_types() {
    let layer = orders_layer();
    let body = r#"{"item":"b","quantity":1}"#;
    for ok in [
        "application/json",
        "application/json; charset=utf-8",
        "APPLICATION/JSON;charset=\"UTF-8\"",
    ] {
        assert_eq!(send(&layer, post(Some(ok), body)).await.status(), StatusCode::OK, "{ok}");
    }
    for bad in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/json; charset=iso-8859-1"),
        Some("application/merge-patch+json"),
        Some("application/jsonp"),
    ] {
        let (status, error) = rejected(&layer, post(bad, body)).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{bad:?}");
        assert_eq!(error.code(), "unsupported_media_type");
    }
    let suffix = orders_layer().json_suffix(true);
    let ok = post(Some("application/merge-patch+json"), body);
    assert_eq!(send(&suffix, ok).await.status(), StatusCode::OK);
    let added = orders_layer().add_content_type("application/vnd.orders.v1").unwrap();
    let ok = post(Some("application/vnd.orders.v1; charset=utf-8"), body);
    assert_eq!(send(&added, ok).await.status(), StatusCode::OK);
    assert!(ValidateLayer::new().add_content_type("not a type").is_err());
}

#[tokio::test]
async fn bodiless_requests() {
    let layer = orders_layer();
    let get = || Request::get("/orders").body(full("")).unwrap();
    let response = send(&layer, get()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(to_json(response.into_body()).await["json"], Value::Null);
    for method in [Method::HEAD, Method::DELETE, Method::OPTIONS] {
        let request = Request::builder().method(method).uri("/orders").body(full("")).unwrap();
        assert_eq!(send(&layer, request).await.status(), StatusCode::OK);
    }
    // A POST (or PUT, PATCH) without a body: the JSON is missing.
    for ct in [None, Some("application/json")] {
        let (status, error) = rejected(&layer, post(ct, "")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(issues(&error), [("", "required")]);
    }
    let (status, _) = rejected(&layer, post(Some("text/plain"), "")).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let strict = orders_layer().require_body(true);
    let (status, error) = rejected(&strict, get()).await;
    assert_eq!((status, issues(&error)), (StatusCode::BAD_REQUEST, vec![("", "required")]));
    // A GET that does carry a body is validated like any other.
    let request = Request::get("/orders")
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(r#"{"quantity":1}"#))
        .unwrap();
    assert_eq!(rejected(&layer, request).await.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn json_shape_rules() {
    let layer = orders_layer().max_body_size(4 * 1024 * 1024);
    let bomb = "[".repeat(100_000);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (bomb.into_bytes(), "depth"),
        (format!("{}1{}", "[".repeat(65), "]".repeat(65)).into_bytes(), "depth"),
        (br#"{"item":"b","quantity":1,"quantity":100000}"#.to_vec(), "duplicate_key"),
        (br#"{"item":"b","quantity":1e400}"#.to_vec(), "number_out_of_range"),
        (br#"{"item":"b","quantity":18446744073709551616}"#.to_vec(), "number_out_of_range"),
        (b"{\"item\":\"\xc3\x28\",\"quantity\":1}".to_vec(), "invalid_utf8"),
        (b"{\"item\":\"b\",\"quantity\":1".to_vec(), "syntax"),
        (b"{\"item\":\"b\"}{}".to_vec(), "syntax"),
        (b"\xef\xbb\xbf{}".to_vec(), "syntax"),
    ];
    for (body, issue) in cases {
        let (status, error) = rejected(&layer, json_post(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{issue}");
        assert_eq!(error.details().len(), 1);
        assert_eq!(
            error.details()[0].issue(),
            issue,
            "{:?}",
            String::from_utf8_lossy(&body[..body.len().min(60)])
        );
    }
    let (_, error) = rejected(&layer, json_post("{\n\"item\": tru }")).await;
    assert_eq!(error.details()[0].message(), Some("expected ident at line 2 column 12"));
    // u64::MAX is a valid integer (and then fails the schema's maximum).
    let (_, error) =
        rejected(&layer, json_post(r#"{"item":"b","quantity":18446744073709551615}"#)).await;
    assert_eq!(issues(&error), [("/quantity", "maximum")]);
    assert!(ValidateLayer::new().max_depth(0).is_err());
    assert!(ValidateLayer::new().max_depth(129).is_err());
    let shallow = ValidateLayer::new().max_depth(2).unwrap();
    assert_eq!(send(&shallow, json_post("[[1]]")).await.status(), StatusCode::OK);
    assert_eq!(rejected(&shallow, json_post("[[[1]]]")).await.0, StatusCode::BAD_REQUEST);
}

#[cfg(feature = "envelope")]
#[tokio::test]
async fn no_rejected_value_appears_in_any_response() {
    let app =
        crate::envelope::ErrorEnvelopeLayer::new().layer(orders_layer().layer(service_fn(echo)));
    let m = "SECRET-MARKER";
    let bodies = [
        format!(r#"{{"item":"{m}","quantity":"{m}"}}"#),
        format!(r#"{{"item":"b","quantity":1,"{m}":"{m}"}}"#),
        format!(r#"{{"item":"b","quantity":1,"role":"{m}"}}"#),
        format!(r#"{{"item":"{}","quantity":1}}"#, m.repeat(10)),
        format!(r#"{{"item":"b","quantity":1,"note":"{}"}}"#, m.repeat(60)),
        format!(r#"{{"item":"b","quantity":{m}}}"#),
        format!(r#"{{"item":"b","quantity":1,"note":"{m}","note":"{m}"}}"#),
        format!(r#"{{"item":"{m}\"#),
        format!(r#"{{"{m}":1e999}}"#),
        m.to_owned(),
        format!("[\"{m}\", 1] trailing-{m}"),
    ];
    for body in bodies {
        let response = app.clone().oneshot(json_post(body.clone())).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let text = String::from_utf8(to_bytes(response.into_body()).await.to_vec()).unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["code"], "invalid_request");
        let field_names_allowed = body.contains(&format!(r#""{m}":"#));
        for detail in value["details"].as_array().unwrap() {
            // Only a client-chosen property NAME may come back, in a field, never a value.
            let detail = detail.as_object().unwrap();
            assert!(!detail["issue"].as_str().unwrap().contains(m), "{text}");
            assert!(
                !detail.get("message").is_some_and(|v| v.as_str().unwrap().contains(m)),
                "{text}"
            );
            if !field_names_allowed {
                assert!(!detail["field"].as_str().unwrap().contains(m), "{text}");
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ListQuery {
    page: u32,
    #[serde(default)]
    per_page: Option<u8>,
}

impl Check for ListQuery {
    fn check(&self) -> Result<(), Vec<Detail>> {
        if self.page == 0 {
            return Err(vec![
                Detail::new("query:page", "minimum").with_message("must be at least 1")
            ]);
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[allow(dead_code)]
struct TenantHeaders {
    x_tenant: String,
    #[serde(default)]
    x_priority: Option<u8>,
}

impl Check for TenantHeaders {}

#[tokio::test]
async fn query_and_headers() {
    let layer = ValidateLayer::new().query::<ListQuery>().headers::<TenantHeaders>([
        HeaderName::from_static("x-tenant"),
        HeaderName::from_static("x-priority"),
    ]);
    let get = |uri: &str, tenant: Option<&str>, priority: Option<&str>| {
        let mut builder = Request::get(uri);
        if let Some(t) = tenant {
            builder = builder.header("x-tenant", t);
        }
        if let Some(p) = priority {
            builder = builder.header("x-priority", p);
        }
        builder.body(full("")).unwrap()
    };
    assert_eq!(
        send(&layer, get("/o?page=2&per_page=10", Some("acme"), Some("3"))).await.status(),
        StatusCode::OK
    );
    assert_eq!(send(&layer, get("/o?page=1", Some("acme"), None)).await.status(), StatusCode::OK);
    let cases = [
        (get("/o", Some("acme"), None), ("query:page", "required")),
        (get("/o?page=MARKER", Some("acme"), None), ("query:page", "invalid")),
        (get("/o?page=0", Some("acme"), None), ("query:page", "minimum")),
        (get("/o?page=1&per_page=300", Some("acme"), None), ("query:per_page", "invalid")),
        (get("/o?page=1&admin=1", Some("acme"), None), ("query:admin", "unknown_field")),
        (get("/o?page=1", None, None), ("header:x-tenant", "required")),
        (get("/o?page=1", Some("acme"), Some("MARKER")), ("header:x-priority", "invalid")),
    ];
    for (request, expected) in cases {
        let (status, error) = rejected(&layer, request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(issues(&error), [expected]);
        assert!(!format!("{:?}", error.details()).contains("MARKER"));
    }
}

#[test]
fn rejections_emit_a_security_event_without_values() {
    let ((), events) = crate::test_helpers::capture_events(tracing::Level::INFO, || {
        let body = r#"{"item":"b","quantity":"SECRET-MARKER","role":"SECRET-MARKER"}"#;
        let response = orders_layer()
            .layer(service_fn(echo))
            .oneshot(json_post(body))
            .now_or_never()
            .expect("completes without waiting")
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    });
    let logs = serde_json::to_string(&events).unwrap();
    let event = events.first().expect("one event");
    assert_eq!(event["target"], "tower_shield::security");
    assert_eq!(event["fields"]["event"], "validate.rejected");
    assert_eq!(event["fields"]["route"], "/orders");
    assert_eq!(event["fields"]["rule"], "schema");
    assert_eq!(event["fields"]["details"], 2);
    assert!(!logs.contains("SECRET-MARKER"), "{logs}");
}

fn status_of(body: Vec<u8>, content_type: &str) -> StatusCode {
    let request = post(Some(content_type), body);
    orders_layer()
        .layer(service_fn(echo))
        .oneshot(request)
        .now_or_never()
        .expect("completes without waiting")
        .unwrap()
        .status()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_5xx(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let status = status_of(body, "application/json");
        prop_assert!(status.is_success() || status.is_client_error(), "{status}");
    }

    #[test]
    fn random_json_ish_never_5xx(body in r#"[\[\]{}",:0-9eE.+\-\\ a-z\n]{0,512}"#) {
        let status = status_of(body.into_bytes(), "application/json; charset=utf-8");
        prop_assert!(status.is_success() || status.is_client_error(), "{status}");
    }

    #[test]
    fn random_objects_never_5xx(
        item in ".{0,100}",
        quantity in any::<i64>(),
        extra in proptest::option::of("[a-z~/]{1,10}"),
    ) {
        let mut body = json!({"item": item, "quantity": quantity});
        if let Some(extra) = extra {
            body[extra] = json!(true);
        }
        let status = status_of(serde_json::to_vec(&body).unwrap(), "application/json");
        prop_assert!(status.is_success() || status.is_client_error(), "{status}");
    }
}
