//! The penalty box in a real axum server on 127.0.0.1:0, behind the envelope, with reqwest.
#![cfg(all(feature = "telemetry", feature = "rate-limit", feature = "axum", feature = "envelope"))]

use std::{net::SocketAddr, num::NonZeroU32, time::Duration};

use axum::{http::StatusCode, routing::get, Router};
use serde_json::Value;
use tower::ServiceBuilder;
use tower_shield::{
    clock::FakeClock, envelope::ErrorEnvelopeLayer, telemetry::PenaltyBoxLayer, ServiceBuilderExt,
};

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .await
            .unwrap()
    });
    addr
}

#[tokio::test]
async fn probing_a_server_gets_the_client_ip_blocked_then_released() {
    let clock = FakeClock::new();
    let penalty = PenaltyBoxLayer::per_ip()
        .threshold(NonZeroU32::new(3).unwrap(), Duration::from_secs(60))
        .unwrap()
        .with_clock(clock.clone());
    let app = Router::new()
        .route("/orders", get(|| async { "orders" }))
        .route("/admin", get(|| async { StatusCode::FORBIDDEN }))
        .layer(
            ServiceBuilder::new().layer(ErrorEnvelopeLayer::new()).penalize_abuse(penalty.clone()),
        );
    let addr = serve(app).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let get = |path: &str| client.get(format!("http://{addr}{path}")).send();

    // Successes do not count; a router 404 and handler 403s do.
    for _ in 0..5 {
        assert_eq!(get("/orders").await.unwrap().status(), 200);
    }
    assert_eq!(get("/.env").await.unwrap().status(), 404);
    assert_eq!(get("/admin").await.unwrap().status(), 403);
    assert_eq!(penalty.len(), 1);
    assert_eq!(get("/admin").await.unwrap().status(), 403);

    let response = get("/orders").await.unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "60");
    assert!(response.headers().contains_key("x-request-id"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited");

    clock.advance(Duration::from_secs(60));
    assert_eq!(get("/orders").await.unwrap().status(), 200);
}
