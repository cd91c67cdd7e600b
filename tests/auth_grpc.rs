//! Authentication of gRPC calls: a real tonic server and client over 127.0.0.1:0, the
//! `grpc.health.v1.Health` service from `tonic-health` behind the envelope and `AuthLayer`.
#![cfg(all(feature = "auth", feature = "tonic", feature = "envelope"))]

use std::net::SocketAddr;

use tonic::{transport::server::TcpIncoming, Code};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};
use tower::ServiceBuilder;
use tower_shield::{
    auth::{jwt::Jwt, AuthLayer},
    envelope::ErrorEnvelopeLayer,
};

const SECRET: &[u8] = b"auth-grpc-test-secret-0123456789abcdef";

fn token(audience: &str) -> String {
    tower_shield::auth::jwt::install_crypto_provider();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({
        "sub": "svc-a", "iss": "https://issuer.test", "aud": audience, "exp": now + 300,
    });
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET);
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

async fn serve() -> SocketAddr {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let jwt = Jwt::builder()
        .hs256_secret(SECRET)
        .issuer("https://issuer.test")
        .audience("health-api")
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let layers = ServiceBuilder::new().layer(ErrorEnvelopeLayer::new()).layer(AuthLayer::new(jwt));
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

fn check(bearer: Option<&str>) -> tonic::Request<HealthCheckRequest> {
    let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
    if let Some(token) = bearer {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

#[tokio::test]
async fn grpc_calls_are_authenticated() {
    let addr = serve().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);

    let status = client.check(check(None)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "Authentication required");
    assert_eq!(status.metadata().get("www-authenticate").unwrap(), r#"Bearer realm="api""#);

    let status = client.check(check(Some(&token("another-api")))).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "Invalid or expired credentials", "never says why");

    let response = client.check(check(Some(&token("health-api")))).await.unwrap();
    assert_eq!(response.into_inner().status(), ServingStatus::Serving);
}
