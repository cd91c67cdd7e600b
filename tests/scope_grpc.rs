//! Authorization per gRPC method: a real tonic server and client over 127.0.0.1:0.
//!
//! The service under test is `grpc.health.v1.Health` from `tonic-health` (generated code, so no
//! protoc is needed). `Check` needs the scope `health:read`; `Watch` is not mapped and so is
//! denied by default.
#![cfg(all(feature = "scope", feature = "tonic", feature = "envelope"))]

use std::net::SocketAddr;

use tonic::{transport::server::TcpIncoming, Code};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};
use tower::{util::MapRequestLayer, ServiceBuilder};
use tower_shield::{
    envelope::ErrorEnvelopeLayer,
    principal::Principal,
    scope::{MethodRequirements, Requirement, ScopeLayer},
};

/// Stands in for the authenticating layer: metadata `x-test-sub` and `x-test-scopes` become a
/// `Principal`; without `x-test-sub` the call is anonymous.
fn insert_principal(
    mut request: http::Request<tonic::body::Body>,
) -> http::Request<tonic::body::Body> {
    let header =
        |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let principal = header("x-test-sub").map(|subject| {
        Principal::builder(subject)
            .scopes(header("x-test-scopes").unwrap_or_default().split_whitespace())
            .build()
    });
    if let Some(principal) = principal {
        request.extensions_mut().insert(principal);
    }
    request
}

async fn serve() -> SocketAddr {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let scope = ScopeLayer::per_method(
        MethodRequirements::new()
            .method("/grpc.health.v1.Health/Check", Requirement::scope("health:read"))
            .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let layers = ServiceBuilder::new()
        .layer(ErrorEnvelopeLayer::new())
        .layer(MapRequestLayer::new(insert_principal))
        .layer(scope);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(layers)
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    addr
}

fn check(who: Option<(&str, &str)>) -> tonic::Request<HealthCheckRequest> {
    let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
    if let Some((sub, scopes)) = who {
        request.metadata_mut().insert("x-test-sub", sub.parse().unwrap());
        request.metadata_mut().insert("x-test-scopes", scopes.parse().unwrap());
    }
    request
}

#[tokio::test]
async fn grpc_codes_per_method() {
    let addr = serve().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);

    let status = client.check(check(None)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(status.message(), "Authentication required");
    assert_eq!(
        status.metadata().get("www-authenticate").map(|v| v.to_str().unwrap()),
        Some(r#"Bearer realm="api""#)
    );

    let status = client.check(check(Some(("alice", "health:write other")))).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(status.message(), "Insufficient permissions");
    assert_eq!(
        status.metadata().get("www-authenticate").map(|v| v.to_str().unwrap()),
        Some(r#"Bearer realm="api", error="insufficient_scope", scope="health:read""#)
    );

    let response = client.check(check(Some(("alice", "health:read")))).await.unwrap();
    assert_eq!(response.into_inner().status(), ServingStatus::Serving);

    // Watch has no requirement: denied by default, whatever the scopes.
    let mut watch = tonic::Request::new(HealthCheckRequest { service: String::new() });
    watch.metadata_mut().insert("x-test-sub", "alice".parse().unwrap());
    watch.metadata_mut().insert("x-test-scopes", "health:read health:watch".parse().unwrap());
    let status = client.watch(watch).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // The connection survives rejections.
    let response = client.check(check(Some(("bob", "health:read")))).await.unwrap();
    assert_eq!(response.into_inner().status(), ServingStatus::Serving);
}
