use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};
use tower::{service_fn, Layer, ServiceExt};

use super::*;
use crate::{
    error::{Challenge, Detail},
    test_helpers::{to_bytes, to_json},
    Error, ErrorKind,
};

use crate::error::tests::ALL as ALL_KINDS;

/// Expected (status, code, grpc-status) per kind.
fn expected(kind: ErrorKind) -> (u16, &'static str, &'static str) {
    match kind {
        ErrorKind::Unauthenticated => (401, "unauthenticated", "16"),
        ErrorKind::InvalidToken => (401, "invalid_token", "16"),
        ErrorKind::Forbidden => (403, "forbidden", "7"),
        ErrorKind::StepUpRequired => (401, "step_up_required", "16"),
        ErrorKind::RateLimited => (429, "rate_limited", "8"),
        ErrorKind::InvalidRequest => (400, "invalid_request", "3"),
        ErrorKind::PayloadTooLarge => (413, "payload_too_large", "8"),
        ErrorKind::UnsupportedMediaType => (415, "unsupported_media_type", "3"),
        ErrorKind::IdempotencyKeyMissing => (400, "idempotency_key_missing", "3"),
        ErrorKind::IdempotencyKeyInUse => (409, "idempotency_key_in_use", "10"),
        ErrorKind::IdempotencyKeyReused => (422, "idempotency_key_reused", "3"),
        ErrorKind::NotFound => (404, "not_found", "5"),
        ErrorKind::MethodNotAllowed => (405, "method_not_allowed", "12"),
        ErrorKind::ServiceUnavailable => (503, "service_unavailable", "14"),
        ErrorKind::Internal => (500, "internal", "13"),
        ErrorKind::Other => (409, "conflict", "10"),
    }
}

/// The protocol headers a realistic rejection of `kind` carries.
fn rejection(kind: ErrorKind) -> Error {
    let error = match kind {
        ErrorKind::Other => Error::from_status(StatusCode::CONFLICT),
        kind => Error::new(kind),
    }
    .with_reason("secret internal reason kid=abc123");
    match kind {
        ErrorKind::Unauthenticated => error.with_challenge(Challenge::bearer("api")),
        ErrorKind::InvalidToken => {
            error.with_challenge(Challenge::bearer("api").with_error("invalid_token"))
        }
        ErrorKind::Forbidden => error.with_challenge(
            Challenge::bearer("api").with_error("insufficient_scope").with_param("scope", "a:b"),
        ),
        ErrorKind::StepUpRequired => error.with_challenge(
            Challenge::bearer("api")
                .with_error("insufficient_user_authentication")
                .with_param("max_age", "300"),
        ),
        ErrorKind::RateLimited | ErrorKind::IdempotencyKeyInUse | ErrorKind::ServiceUnavailable => {
            error.with_retry_after(Duration::from_millis(2500))
        }
        ErrorKind::InvalidRequest => error.with_detail(Detail::new("/quantity", "maximum")),
        _ => error,
    }
}

async fn reject(
    error: Error,
    request: Request<Full<Bytes>>,
) -> Response<ResponseBody<Full<Bytes>>> {
    let service = ErrorEnvelopeLayer::new().layer(service_fn(move |_req: Request<Full<Bytes>>| {
        let error = error.clone();
        async move { Ok::<_, Infallible>(error.to_response::<Full<Bytes>>()) }
    }));
    service.oneshot(request).await.unwrap()
}

fn request() -> http::request::Builder {
    Request::builder().uri("/orders/7?access_token=abc")
}

fn assert_protocol_headers(kind: ErrorKind, response: &Response<ResponseBody<Full<Bytes>>>) {
    let headers = response.headers();
    match kind {
        ErrorKind::Unauthenticated => {
            assert_eq!(headers[header::WWW_AUTHENTICATE], r#"Bearer realm="api""#)
        }
        ErrorKind::InvalidToken => assert_eq!(
            headers[header::WWW_AUTHENTICATE],
            r#"Bearer realm="api", error="invalid_token""#
        ),
        ErrorKind::Forbidden => assert_eq!(
            headers[header::WWW_AUTHENTICATE],
            r#"Bearer realm="api", error="insufficient_scope", scope="a:b""#
        ),
        ErrorKind::StepUpRequired => assert_eq!(
            headers[header::WWW_AUTHENTICATE],
            r#"Bearer realm="api", error="insufficient_user_authentication", max_age="300""#
        ),
        ErrorKind::RateLimited | ErrorKind::IdempotencyKeyInUse | ErrorKind::ServiceUnavailable => {
            assert_eq!(headers[header::RETRY_AFTER], "3")
        }
        _ => {
            assert!(!headers.contains_key(header::WWW_AUTHENTICATE), "{kind:?}");
            assert!(!headers.contains_key(header::RETRY_AFTER), "{kind:?}");
        }
    }
}

#[tokio::test]
async fn every_kind_renders_as_json() {
    for kind in ALL_KINDS {
        let (status, code, _) = expected(kind);
        let request = request().header("x-request-id", "rid-1").body(Full::default()).unwrap();
        let response = reject(rejection(kind), request).await;

        assert_eq!(response.status().as_u16(), status, "{kind:?}");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(response.headers()["x-request-id"], "rid-1");
        assert_eq!(response.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_protocol_headers(kind, &response);
        assert_eq!(response.extensions().get::<Error>().unwrap().kind(), kind);

        let body = to_bytes(response.into_body()).await;
        let text = std::str::from_utf8(&body).unwrap();
        assert!(!text.contains("secret internal reason"), "{kind:?}: {text}");
        let message = rejection(kind).message();
        let mut want = json!({"code": code, "message": message, "request_id": "rid-1"});
        if kind == ErrorKind::InvalidRequest {
            want["details"] = json!([{"field": "/quantity", "issue": "maximum"}]);
        }
        assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), want, "{kind:?}");
    }
}

#[tokio::test]
async fn every_kind_renders_as_problem_details() {
    for kind in ALL_KINDS {
        let (status, code, _) = expected(kind);
        let request = request()
            .header("x-request-id", "rid-2")
            .header(header::ACCEPT, "application/problem+json")
            .body(Full::default())
            .unwrap();
        let response = reject(rejection(kind), request).await;

        assert_eq!(response.status().as_u16(), status, "{kind:?}");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
        assert_protocol_headers(kind, &response);
        let body = to_json(response.into_body()).await;
        assert_eq!(body["type"], "about:blank");
        assert_eq!(
            body["title"],
            StatusCode::from_u16(status).unwrap().canonical_reason().unwrap(),
            "{kind:?}"
        );
        assert_eq!(body["status"], status);
        assert_eq!(body["detail"], rejection(kind).message());
        assert_eq!(body["instance"], "/orders/7", "the query is never echoed");
        assert_eq!(body["code"], code);
        assert_eq!(body["request_id"], "rid-2");
        assert!(!body.to_string().contains("secret internal reason"));
    }
}

#[tokio::test]
async fn problem_type_base_names_the_code() {
    let layer = ErrorEnvelopeLayer::new()
        .format(Format::Problem)
        .with_render(DefaultRender::new().problem_type_base("https://api.example.com/errors/"));
    let service = layer.layer(service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Error::new(ErrorKind::RateLimited).to_response::<Full<Bytes>>())
    }));
    let response = service.oneshot(request().body(Full::default()).unwrap()).await.unwrap();
    let body = to_json(response.into_body()).await;
    assert_eq!(body["type"], "https://api.example.com/errors/rate_limited");
    assert_eq!(body["title"], "Too many requests");
    assert!(body.get("detail").is_none());
}

#[tokio::test]
async fn every_kind_renders_as_grpc_trailers_only() {
    for kind in ALL_KINDS {
        let (_, _, grpc_status) = expected(kind);
        let request = request()
            .version(http::Version::HTTP_2)
            .header(header::CONTENT_TYPE, "application/grpc+proto")
            .header("x-request-id", "rid-3")
            .body(Full::default())
            .unwrap();
        let response = reject(rejection(kind), request).await;

        assert_eq!(response.status(), StatusCode::OK, "{kind:?}");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/grpc");
        assert_eq!(response.headers()["grpc-status"], grpc_status, "{kind:?}");
        let message = response.headers()["grpc-message"].to_str().unwrap().to_owned();
        assert_eq!(message, rejection(kind).message().replace('%', "%25"));
        assert_eq!(response.headers()["x-request-id"], "rid-3");
        assert_protocol_headers(kind, &response);
        assert!(http_body::Body::is_end_stream(response.body()), "trailers-only: no body");
        assert!(to_bytes(response.into_body()).await.is_empty());
    }
}

#[tokio::test]
async fn grpc_statuses_only_for_grpc_over_http2_grpc_web_and_when_enabled() {
    use http::Version;
    let cases = [
        (Version::HTTP_2, "application/grpc", true),
        (Version::HTTP_2, "application/grpc+json", true),
        (Version::HTTP_11, "application/grpc", false),
        (Version::HTTP_11, "application/grpc+proto", false),
        (Version::HTTP_10, "application/grpc", false),
        (Version::HTTP_11, "application/grpc-web", true),
        (Version::HTTP_11, "application/grpc-web-text+proto", true),
        (Version::HTTP_2, "application/json", false),
        (Version::HTTP_2, "text/grpc", false),
    ];
    for (version, content_type, grpc) in cases {
        for enabled in [true, false] {
            let service = ErrorEnvelopeLayer::new().grpc(enabled).layer(service_fn(
                |_req: Request<Full<Bytes>>| async {
                    Ok::<_, Infallible>(
                        Error::new(ErrorKind::RateLimited).to_response::<Full<Bytes>>(),
                    )
                },
            ));
            let request = request()
                .version(version)
                .header(header::CONTENT_TYPE, content_type)
                .body(Full::default())
                .unwrap();
            let response = service.oneshot(request).await.unwrap();
            let case = format!("{version:?} {content_type} enabled={enabled}");
            if grpc && enabled {
                assert_eq!(response.status(), StatusCode::OK, "{case}");
                assert_eq!(response.headers()["grpc-status"], "8", "{case}");
            } else {
                assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS, "{case}");
                assert!(!response.headers().contains_key("grpc-status"), "{case}");
                assert_eq!(to_json(response.into_body()).await["code"], "rate_limited", "{case}");
            }
        }
    }
}

#[tokio::test]
async fn grpc_success_passes_through() {
    let service = ErrorEnvelopeLayer::new().layer(service_fn(|_req: Request<Full<Bytes>>| async {
        let response = Response::builder()
            .header(header::CONTENT_TYPE, "application/grpc")
            .body(Full::from("frame"))
            .unwrap();
        Ok::<_, Infallible>(response)
    }));
    let request = request()
        .version(http::Version::HTTP_2)
        .header(header::CONTENT_TYPE, "application/grpc")
        .body(Full::default())
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(!response.headers().contains_key("grpc-status"));
    assert_eq!(to_bytes(response.into_body()).await, "frame");
}

async fn echo_request_id(
    request: Request<Full<Bytes>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let from_extension = request.extensions().get::<RequestId>().unwrap().as_str().to_owned();
    let from_header = request.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(from_extension, from_header, "handlers see the id that is answered");
    Ok(Response::new(Full::from(from_extension)))
}

async fn id_for(sent: Option<&[u8]>) -> (String, String) {
    let service = ErrorEnvelopeLayer::new().layer(service_fn(echo_request_id));
    let mut request = Request::new(Full::default());
    if let Some(sent) = sent {
        request.headers_mut().insert("x-request-id", HeaderValue::from_bytes(sent).unwrap());
    }
    let response = service.oneshot(request).await.unwrap();
    let header = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let seen = String::from_utf8(to_bytes(response.into_body()).await.to_vec()).unwrap();
    (header, seen)
}

#[tokio::test]
async fn request_id_is_generated() {
    let (header, seen) = id_for(None).await;
    assert_eq!(header, seen);
    assert_eq!(header.len(), 36, "a UUID: {header}");
    let (other, _) = id_for(None).await;
    assert_ne!(header, other);
}

#[tokio::test]
async fn safe_request_id_is_propagated() {
    for safe in ["abc", "A-Z_a.z-0.9", &"x".repeat(64)] {
        let (header, seen) = id_for(Some(safe.as_bytes())).await;
        assert_eq!((header.as_str(), seen.as_str()), (safe, safe));
    }
}

#[tokio::test]
async fn unsafe_request_id_is_replaced() {
    let long = "x".repeat(65);
    let unsafe_ids: [&[u8]; 7] = [
        b"",
        b"has space",
        long.as_bytes(),
        "caf\u{e9}".as_bytes(),
        b"a\tb",
        b"<script>alert(1)</script>",
        b"a\"b",
    ];
    for sent in unsafe_ids {
        let (header, seen) = id_for(Some(sent)).await;
        assert_eq!(header, seen);
        assert_eq!(header.len(), 36, "{sent:?} replaced by a UUID");
    }
}

#[test]
fn crlf_cannot_even_be_a_header_value() {
    // CRLF injection is stopped by `http` before it reaches us; the check above covers the rest.
    assert!(HeaderValue::from_bytes(b"a\r\nSet-Cookie: x=y").is_err());
    assert!(RequestId::parse("a\r\nb").is_none());
}

#[tokio::test]
async fn untrusted_request_ids_are_always_replaced() {
    let service =
        ErrorEnvelopeLayer::new().trust_request_id(false).layer(service_fn(echo_request_id));
    let request = Request::builder().header("x-request-id", "mine").body(Full::default()).unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_ne!(response.headers()["x-request-id"], "mine");
}

#[tokio::test]
async fn custom_header_name() {
    let service = ErrorEnvelopeLayer::new()
        .header_name(http::HeaderName::from_static("x-correlation-id"))
        .layer(service_fn(|req: Request<Full<Bytes>>| async move {
            let id = req.extensions().get::<RequestId>().unwrap().clone();
            Ok::<_, Infallible>(Response::new(Full::from(id.as_str().to_owned())))
        }));
    let request =
        Request::builder().header("x-correlation-id", "corr-9").body(Full::default()).unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.headers()["x-correlation-id"], "corr-9");
    assert!(!response.headers().contains_key("x-request-id"));
}

#[tokio::test]
async fn panic_in_handler_future_is_a_500_envelope() {
    let service = ErrorEnvelopeLayer::new().layer(service_fn(|_req: Request<Full<Bytes>>| async {
        if true {
            panic!("secret internal detail");
        }
        Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
    }));
    let request =
        Request::builder().header("x-request-id", "boom-1").body(Full::default()).unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(response.headers()["x-request-id"], "boom-1");
    let body = to_json(response.into_body()).await;
    assert_eq!(
        body,
        json!({"code": "internal", "message": "Internal server error", "request_id": "boom-1"})
    );
}

#[tokio::test]
async fn panic_in_call_is_a_500_envelope() {
    #[derive(Clone)]
    struct PanicsInCall;
    impl tower_service::Service<Request<Full<Bytes>>> for PanicsInCall {
        type Response = Response<Full<Bytes>>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Infallible>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
            panic!("secret internal detail")
        }
    }
    let response = ErrorEnvelopeLayer::new()
        .layer(PanicsInCall)
        .oneshot(Request::new(Full::default()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let text = String::from_utf8(to_bytes(response.into_body()).await.to_vec()).unwrap();
    assert!(text.contains("\"code\":\"internal\""));
    assert!(!text.contains("secret"));
}

fn bare(
    status: StatusCode,
    body: &'static str,
) -> impl Fn(Request<Full<Bytes>>) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>> + Clone
{
    move |_req| {
        let mut response = Response::new(Full::from(body));
        *response.status_mut() = status;
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET"));
        std::future::ready(Ok(response))
    }
}

#[tokio::test]
async fn handler_500_body_never_reaches_the_client() {
    let service = ErrorEnvelopeLayer::new()
        .keep_client_error_bodies(true)
        .layer(service_fn(bare(StatusCode::INTERNAL_SERVER_ERROR, "secret internal detail")));
    let response = service.oneshot(Request::new(Full::default())).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    let text = String::from_utf8(to_bytes(response.into_body()).await.to_vec()).unwrap();
    assert!(!text.contains("secret internal detail"), "{text}");
    assert!(text.contains("\"code\":\"internal\""));
}

#[tokio::test]
async fn bare_client_errors_are_normalised_and_keep_protocol_headers() {
    let service =
        ErrorEnvelopeLayer::new().layer(service_fn(bare(StatusCode::METHOD_NOT_ALLOWED, "nope")));
    let response = service.oneshot(Request::new(Full::default())).await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()[header::ALLOW], "GET");
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    let body = to_json(response.into_body()).await;
    assert_eq!(body["code"], "method_not_allowed");

    let service = ErrorEnvelopeLayer::new().layer(service_fn(bare(StatusCode::CONFLICT, "dup")));
    let response = service.oneshot(Request::new(Full::default())).await.unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(to_json(response.into_body()).await["code"], "conflict");
}

/// An error put in a response's extensions by hand gets its protocol headers from the envelope;
/// those already on the response (a rejection's, written when it became one) are kept.
#[tokio::test]
async fn protocol_headers_are_written_where_missing() {
    for kind in ALL_KINDS {
        let error = rejection(kind);
        let service =
            ErrorEnvelopeLayer::new().layer(service_fn(move |_: Request<Full<Bytes>>| {
                let mut response = Response::new(Full::default());
                *response.status_mut() = StatusCode::BAD_GATEWAY;
                response.extensions_mut().insert(error.clone());
                std::future::ready(Ok::<_, Infallible>(response))
            }));
        let response = service.oneshot(Request::new(Full::default())).await.unwrap();
        assert_eq!(response.status().as_u16(), expected(kind).0, "{kind:?}");
        assert_protocol_headers(kind, &response);
    }

    let service = ErrorEnvelopeLayer::new().layer(service_fn(|_: Request<Full<Bytes>>| {
        let error = Error::new(ErrorKind::RateLimited).with_retry_after(Duration::from_secs(9));
        let mut response = error.to_response::<Full<Bytes>>();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        std::future::ready(Ok::<_, Infallible>(response))
    }));
    let response = service.oneshot(Request::new(Full::default())).await.unwrap();
    assert_eq!(response.headers().get_all(header::RETRY_AFTER).iter().count(), 1);
    assert_eq!(response.headers()[header::RETRY_AFTER], "60");
}

#[tokio::test]
async fn own_client_error_bodies_can_be_kept() {
    let service = ErrorEnvelopeLayer::new()
        .keep_client_error_bodies(true)
        .layer(service_fn(bare(StatusCode::CONFLICT, "order already shipped")));
    let response = service.oneshot(Request::new(Full::default())).await.unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(response.headers()[header::CONTENT_TYPE], "text/plain");
    assert_eq!(to_bytes(response.into_body()).await, "order already shipped");

    // An empty 4xx is still rendered.
    let service = ErrorEnvelopeLayer::new()
        .keep_client_error_bodies(true)
        .layer(service_fn(bare(StatusCode::NOT_FOUND, "")));
    let response = service.oneshot(Request::new(Full::default())).await.unwrap();
    assert_eq!(to_json(response.into_body()).await["code"], "not_found");
}

#[tokio::test]
async fn success_passes_through_with_request_id() {
    let service = ErrorEnvelopeLayer::new().layer(service_fn(bare(StatusCode::CREATED, "made")));
    let response = service.oneshot(Request::new(Full::default())).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(response.headers()[header::CONTENT_TYPE], "text/plain");
    assert_eq!(to_bytes(response.into_body()).await, "made");
}

#[tokio::test]
async fn custom_renderer_replaces_the_body() {
    let service = ErrorEnvelopeLayer::new()
        .with_render(|error: &Error, cx: &RenderContext<'_>| Rendered {
            content_type: HeaderValue::from_static("text/plain"),
            body: format!("{}|{}|{:?}|{}", error.code(), cx.request_id(), cx.format(), cx.path())
                .into(),
        })
        .layer(service_fn(bare(StatusCode::NOT_FOUND, "")));
    let request = Request::builder()
        .uri("/orders/7?q=secret")
        .header("x-request-id", "r")
        .body(Full::default())
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.headers()[header::CONTENT_TYPE], "text/plain");
    // A renderer that does not say otherwise is given the path, never the query.
    assert_eq!(to_bytes(response.into_body()).await, "not_found|r|Json|/orders/7");
}

#[test]
fn the_default_renderer_needs_the_path_only_for_problem_details() {
    assert!(DefaultRender::new().needs_path(Format::Problem));
    assert!(!DefaultRender::new().needs_path(Format::Json));
}

#[tokio::test]
async fn error_stays_in_extensions_for_outer_layers() {
    let response = reject(Error::new(ErrorKind::Forbidden), Request::new(Full::default())).await;
    assert_eq!(response.extensions().get::<Error>().unwrap().kind(), ErrorKind::Forbidden);
}

/// Whether the handler found a [`RequestSpan`], and the events logged, for one request.
fn span_handle_seen(subscribed: bool) -> (bool, Vec<Value>) {
    use futures_util::FutureExt;
    let call = || {
        let service =
            ErrorEnvelopeLayer::new().layer(service_fn(|request: Request<Full<Bytes>>| {
                let seen = request.extensions().get::<RequestSpan>().is_some();
                async move {
                    let mut response = Response::new(Full::<Bytes>::default());
                    *response.status_mut() =
                        if seen { StatusCode::OK } else { StatusCode::NO_CONTENT };
                    Ok::<_, Infallible>(response)
                }
            }));
        let response = service.oneshot(request().body(Full::default()).unwrap());
        response.now_or_never().expect("ready").unwrap().status() == StatusCode::OK
    };
    if subscribed {
        crate::test_helpers::capture_events(tracing::Level::DEBUG, call)
    } else {
        // No subscriber records anything on this thread, whatever the global one is.
        (
            tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), call),
            vec![],
        )
    }
}

#[test]
fn without_a_subscriber_no_span_handle_is_added() {
    assert!(!span_handle_seen(false).0);
}

#[test]
fn with_a_subscriber_the_span_is_handed_down_and_completed() {
    let (seen, events) = span_handle_seen(true);
    assert!(seen);
    let completed = events
        .iter()
        .find(|e| e["fields"]["message"] == "request completed")
        .expect("a request completed event");
    assert_eq!(completed["span"]["name"], "request");
    assert_eq!(completed["span"]["status"], 200);
    assert!(completed["span"]["latency_ms"].is_number());
    assert!(completed["span"].get("route").is_none(), "no router, no template: {completed}");
}

#[cfg(feature = "metrics")]
#[test]
fn grpc_paths_are_route_labels_only_once_a_service_answered() {
    use futures_util::FutureExt;
    use metrics_util::debugging::DebuggingRecorder;

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        for (path, rejected) in [("/pkg.Orders/Get", false), ("/probe.Random/x1", true)] {
            let service = ErrorEnvelopeLayer::new().layer(service_fn(
                move |_: Request<Full<Bytes>>| async move {
                    Ok::<_, Infallible>(match rejected {
                        true => Error::new(ErrorKind::Unauthenticated).to_response(),
                        false => Response::new(Full::<Bytes>::default()),
                    })
                },
            ));
            let request = request()
                .uri(path)
                .version(http::Version::HTTP_2)
                .header(header::CONTENT_TYPE, "application/grpc")
                .body(Full::default())
                .unwrap();
            service.oneshot(request).now_or_never().expect("ready").unwrap();
        }
    });
    let mut routes: Vec<String> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "tower_shield_request_duration_seconds")
        .flat_map(|(key, ..)| {
            key.key()
                .labels()
                .filter(|l| l.key() == "route")
                .map(|l| l.value().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    routes.sort();
    // The rejected call's client-chosen path never becomes a label.
    assert_eq!(routes, ["/pkg.Orders/Get", "unmatched"]);
}
