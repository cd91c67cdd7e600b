//! The negative-test battery (`tower_shield::testing::Battery`) against the quickstart, run as a
//! process and reached over real HTTP, and against deliberately broken services, which it must
//! fail.
#![cfg(all(feature = "full", feature = "testing"))]

mod common;

use std::{convert::Infallible, future::Future, pin::Pin};

use axum::{
    http::{Method, StatusCode},
    routing::{get, post},
    Router,
};
use bytes::Bytes;
use common::Example;
use http::{Request, Response};
use serde_json::json;
use tower::service_fn;
use tower_shield::{
    auth::AuthLayer,
    body::Buffered,
    envelope::ErrorEnvelopeLayer,
    testing::{Battery, KeyKind, Outcome, Report, TestIssuer},
};

const SECRET: &str = "battery-test-secret-of-at-least-32-bytes";
/// The quickstart's per-IP and per-principal quota in these tests: room for the dozen and a
/// half requests of the other checks, and a burst the battery can exhaust quickly.
const PER_MINUTE: u32 = 30;

/// The issuer the quickstart accepts when started with `JWT_SECRET=SECRET`.
fn quickstart_issuer() -> TestIssuer {
    TestIssuer::builder(KeyKind::Hs256)
        .secret(SECRET)
        .issuer("https://auth.quickstart.local")
        .audience("orders-api")
        .build()
}

fn quickstart() -> Example {
    Example::spawn(
        "quickstart",
        &[("JWT_SECRET", SECRET), ("RATE_LIMIT_PER_MINUTE", &PER_MINUTE.to_string())],
    )
}

type HttpFuture = Pin<Box<dyn Future<Output = Result<Response<Buffered>, reqwest::Error>> + Send>>;

/// A tower service that sends each request to `base` over HTTP with reqwest: the battery
/// exercises the real server, sockets and all.
fn over_http(
    base: String,
) -> impl tower::Service<
    Request<Buffered>,
    Response = Response<Buffered>,
    Error = reqwest::Error,
    Future = HttpFuture,
> + Clone {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    service_fn(move |request: Request<Buffered>| -> HttpFuture {
        let (client, base) = (client.clone(), base.clone());
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let url = format!("{base}{}", parts.uri);
            let response = client
                .request(parts.method, url)
                .headers(parts.headers)
                .body(body.bytes())
                .send()
                .await?;
            let mut out = Response::builder().status(response.status());
            *out.headers_mut().unwrap() = response.headers().clone();
            let body = response.bytes().await?;
            Ok(out.body(Buffered::new(body)).unwrap())
        })
    })
}

/// Every check ran (none skipped) and passed.
fn assert_all_ran_and_passed(report: &Report, expected_skips: &[&str]) {
    report.assert_passed();
    let skipped: Vec<&str> =
        report.checks().iter().filter(|c| c.skipped()).map(|c| c.name()).collect();
    assert_eq!(skipped, expected_skips, "{report}");
}

#[tokio::test]
async fn post_orders_passes_the_battery() {
    let app = quickstart();
    let issuer = quickstart_issuer();
    let report = Battery::new(over_http(app.base.clone()))
        .route(Method::POST, "/orders")
        .bearer(&issuer)
        .scope("orders:write")
        .json(json!({"item": "book", "quantity": 2}))
        .max_body(16 * 1024)
        .idempotency_keys()
        .burst(PER_MINUTE)
        .run()
        .await;
    println!("{report}");
    assert_all_ran_and_passed(&report, &[]);
    assert_eq!(report.check("valid_request").unwrap().reason(), "201", "{report}");
    assert_eq!(report.checks().len(), 19, "{report}");
}

/// The battery on a route without a body: every check runs and passes but the four body checks.
async fn bodyless_battery(app: &Example, method: Method, path: &str, scope: &str) -> Report {
    let report = Battery::new(over_http(app.base.clone()))
        .route(method, path)
        .bearer(&quickstart_issuer())
        .scope(scope)
        .burst(PER_MINUTE)
        .run()
        .await;
    assert_all_ran_and_passed(
        &report,
        &["malformed_json", "unknown_field", "wrong_content_type", "oversized_body"],
    );
    report
}

#[tokio::test]
async fn get_orders_passes_the_battery() {
    let app = quickstart();
    let report = bodyless_battery(&app, Method::GET, "/orders", "orders:read").await;
    assert_eq!(report.check("valid_request").unwrap().reason(), "200", "{report}");
}

#[tokio::test]
async fn delete_order_requires_orders_admin() {
    let app = quickstart();
    // A token with the write scope only is no admin (checked first: the battery ends rate-limited).
    let writer = quickstart_issuer().token().scope("orders:write").sign();
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .delete(app.url("/orders/1"))
        .bearer_auth(writer)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let report = bodyless_battery(&app, Method::DELETE, "/orders/1", "orders:admin").await;
    // Authorized, and the order does not exist: a 404, not a refusal.
    assert_eq!(report.check("valid_request").unwrap().reason(), "404", "{report}");
}

#[tokio::test]
async fn the_battery_fails_a_route_without_auth() {
    let issuer = TestIssuer::es256();
    // Forgotten: the auth and scope layers. Every credential check must fail.
    let app = Router::new()
        .route("/orders", post(|| async { "created" }))
        .layer(ErrorEnvelopeLayer::new());
    let report = Battery::new(app)
        .route(Method::POST, "/orders")
        .bearer(&issuer)
        .scope("orders:write")
        .run()
        .await;
    assert!(!report.passed(), "{report}");
    let missing = report.check("missing_credential").unwrap();
    assert!(missing.failed(), "{report}");
    assert!(missing.reason().starts_with("expected 401, got 200"), "{report}");
    assert!(report.check("missing_scope").unwrap().failed(), "{report}");
    assert!(report.check("expired_token").unwrap().failed(), "{report}");
    assert!(report.check("alg_none_token").unwrap().failed(), "{report}");
    assert!(report.to_string().contains("FAIL missing_credential: expected 401"), "{report}");
    let panic = std::panic::catch_unwind(|| report.assert_passed()).unwrap_err();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(message.starts_with("security battery failed:\nbattery POST /orders: "), "{message}");
}

#[tokio::test]
async fn the_battery_fails_a_route_that_answers_500_without_the_envelope() {
    let issuer = TestIssuer::ed25519();
    let app = Router::new()
        .route(
            "/orders",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "db down: 10.0.0.7") }),
        )
        .route_layer(AuthLayer::new(issuer.jwt().build().unwrap()));
    let report = Battery::new(app).route(Method::GET, "/orders").bearer(&issuer).run().await;
    assert!(!report.passed(), "{report}");
    let failed = |name: &str| match report.check(name).unwrap().outcome() {
        Outcome::Failed(reason) => reason.clone(),
        other => panic!("{name} did not fail: {other:?}\n{report}"),
    };
    assert!(failed("valid_request").contains("500"), "{report}");
    assert!(failed("no_server_error").starts_with("valid_request: 500"), "{report}");
    // Without the envelope, errors have an empty body and no request id.
    assert!(failed("error_envelope").contains("is not JSON"), "{report}");
    // The token checks themselves pass: the auth layer works.
    assert!(report.check("expired_token").unwrap().passed(), "{report}");
}

#[tokio::test]
async fn the_battery_fails_a_service_that_errors_and_a_missing_rate_limit() {
    let issuer = TestIssuer::rs256();
    let failing = service_fn(|_request: Request<Buffered>| async {
        Err::<Response<Buffered>, _>(std::io::Error::other("connection reset"))
    });
    let report = Battery::new(failing).route(Method::GET, "/").bearer(&issuer).burst(3).run().await;
    assert!(report.check("no_server_error").unwrap().failed(), "{report}");
    assert!(
        report
            .check("missing_credential")
            .unwrap()
            .reason()
            .contains("the service returned an error"),
        "{report}"
    );

    // A healthy route without any limit: only the rate-limit check fails.
    let ok = service_fn(|_request: Request<Buffered>| async {
        Ok::<_, Infallible>(Response::new(Buffered::new(Bytes::from_static(b"ok"))))
    });
    let report = Battery::new(ok).route(Method::GET, "/").burst(3).run().await;
    let failures: Vec<&str> = report.failures().map(|c| c.name()).collect();
    assert_eq!(failures, ["rate_limit"], "{report}");
    assert_eq!(
        report.check("rate_limit").unwrap().reason(),
        "no 429 after 4 valid requests (burst 3, plus the earlier checks)"
    );

    // A skipped check sends nothing and cannot fail.
    let report = Battery::new(ok).route(Method::GET, "/").burst(3).skip("rate_limit").run().await;
    report.assert_passed();
    assert_eq!(report.check("rate_limit").unwrap().reason(), "skipped with Battery::skip");
    assert_eq!(report.check("no_server_error").unwrap().reason(), "1 response, none 5xx");
}
