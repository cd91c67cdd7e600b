//! Runs the built `examples/grpc` and calls it with a real tonic client over 127.0.0.1.
//!
//! Build the example first: `cargo build --all-features --examples`.
#![cfg(feature = "full")]

mod common;
#[path = "../examples/grpc/orders.rs"]
mod orders;

use std::{
    net::IpAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use tonic::{transport::Endpoint, Code, Status};

use self::{
    common::{example_path, Example},
    orders::{CreateOrderRequest, ListOrdersRequest, ListOrdersResponse, OrdersClient},
};

const SECRET: &str = "grpc-example-test-secret-0123456789abcdef";
const ISSUER: &str = "https://auth.grpc.local";
const AUDIENCE: &str = "orders-grpc";

fn spawn(per_minute: &str) -> Example {
    Example::spawn("grpc", &[("JWT_SECRET", SECRET), ("RATE_LIMIT_PER_MINUTE", per_minute)])
}

/// An HS256 token for `sub` with `scope`, signed with `secret`.
fn token_signed(secret: &str, sub: &str, scope: &str) -> String {
    tower_shield::auth::jwt::install_crypto_provider();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({
        "sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": now + 300, "scope": scope,
    });
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

fn token(sub: &str, scope: &str) -> String {
    token_signed(SECRET, sub, scope)
}

/// A client of `app` connecting from `from` (any 127.0.0.0/8 address: another client IP).
async fn client_from(app: &Example, from: Option<IpAddr>) -> OrdersClient {
    let channel = Endpoint::from_shared(app.base.clone())
        .unwrap()
        .local_address(from)
        .connect()
        .await
        .unwrap();
    OrdersClient::new(channel)
}

async fn client(app: &Example) -> OrdersClient {
    client_from(app, None).await
}

fn request<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

fn order(item: &str, quantity: u32) -> CreateOrderRequest {
    CreateOrderRequest { item: item.to_owned(), quantity }
}

fn metadata<'a>(status: &'a Status, name: &str) -> Option<&'a str> {
    status.metadata().get(name).map(|v| v.to_str().unwrap())
}

/// Every value of `name`, joined as one list (nested limits each add an entry).
fn all_values(metadata: &tonic::metadata::MetadataMap, name: &str) -> String {
    let values = metadata.get_all(name).iter().map(|v| v.to_str().unwrap().to_owned());
    values.collect::<Vec<_>>().join(", ")
}

/// The code, the stable message, and a request id on every rejection.
#[track_caller]
fn assert_status(status: &Status, code: Code, message: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(status.message(), message, "{status:?}");
    assert!(metadata(status, "x-request-id").is_some_and(|id| !id.is_empty()), "{status:?}");
}

#[tokio::test]
async fn rejections_are_stable_grpc_statuses_and_writes_succeed() {
    let app = spawn("600");
    let mut client = client(&app).await;

    // No token.
    let status = client.list_orders(request(ListOrdersRequest {}, None)).await.unwrap_err();
    assert_status(&status, Code::Unauthenticated, "Authentication required");
    assert_eq!(metadata(&status, "www-authenticate"), Some(r#"Bearer realm="api""#));

    // Not a JWT, and a JWT signed with another key: the same answer, never the reason.
    let forged = token_signed("another-secret-of-at-least-32-bytes!!", "alice", "orders:write");
    for bad in ["not-a-token", forged.as_str()] {
        let status =
            client.list_orders(request(ListOrdersRequest {}, Some(bad))).await.unwrap_err();
        assert_status(&status, Code::Unauthenticated, "Invalid or expired credentials");
        assert_eq!(
            metadata(&status, "www-authenticate"),
            Some(r#"Bearer realm="api", error="invalid_token""#)
        );
    }

    // A valid token without the method's scope.
    let reader = token("alice", "orders:read");
    let status = client.create_order(request(order("book", 2), Some(&reader))).await.unwrap_err();
    assert_status(&status, Code::PermissionDenied, "Insufficient permissions");
    assert_eq!(
        metadata(&status, "www-authenticate"),
        Some(r#"Bearer realm="api", error="insufficient_scope", scope="orders:write""#)
    );

    // A method nobody mapped is denied whatever the scopes, before the service sees it.
    let writer = token("alice", "orders:read orders:write orders:admin");
    let status = client
        .unary::<ListOrdersRequest, ListOrdersResponse>(
            "/orders.v1.Orders/DeleteOrder",
            request(ListOrdersRequest {}, Some(&writer)),
        )
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "Insufficient permissions");

    // An invalid order names the field, never echoes the value.
    let status = client.create_order(request(order("book", 0), Some(&writer))).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(status.message(), "quantity must be 1 to 1000");
    let long = "x".repeat(81);
    let status = client.create_order(request(order(&long, 1), Some(&writer))).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(status.message(), "item must be 1 to 80 characters");
    // A message over 16 KiB is refused by the codec before it is decoded.
    let huge = "x".repeat(20 * 1024);
    let status = client.create_order(request(order(&huge, 1), Some(&writer))).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    // Success: the owner is the token's subject, and orders stay with their owner.
    let created =
        client.create_order(request(order("book", 2), Some(&writer))).await.unwrap().into_inner();
    assert_eq!((created.item.as_str(), created.quantity), ("book", 2));
    assert_eq!(created.owner, "alice");
    let mine = client.list_orders(request(ListOrdersRequest {}, Some(&reader))).await.unwrap();
    // Accepted calls carry the limit's state in the response metadata.
    assert_eq!(
        all_values(mine.metadata(), "ratelimit-policy"),
        r#""per-principal";q=600;w=60, "per-ip";q=600;w=60"#
    );
    assert_eq!(mine.into_inner().orders, vec![created]);
    let bob = token("bob", "orders:read");
    let theirs = client.list_orders(request(ListOrdersRequest {}, Some(&bob))).await.unwrap();
    assert!(theirs.into_inner().orders.is_empty());
}

#[tokio::test]
async fn a_burst_from_one_address_is_resource_exhausted_before_auth() {
    let app = spawn("3");
    let mut client = client(&app).await;
    let writer = token("alice", "orders:write");

    // Every call counts against the client IP, rejected or not.
    client.create_order(request(order("pen", 1), Some(&writer))).await.unwrap();
    for _ in 0..2 {
        let status = client.list_orders(request(ListOrdersRequest {}, None)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }

    // The fourth, valid or not, is shed before its token is even checked.
    for token in [Some(writer.as_str()), None, Some("not-a-token")] {
        let status = client.create_order(request(order("pen", 1), token)).await.unwrap_err();
        assert_status(&status, Code::ResourceExhausted, "Too many requests");
        let retry_after: u64 = metadata(&status, "retry-after").unwrap().parse().unwrap();
        assert!((1..=20).contains(&retry_after), "{retry_after}");
        assert_eq!(metadata(&status, "ratelimit-policy"), Some(r#""per-ip";q=3;w=60"#));
    }
}

#[tokio::test]
async fn the_per_caller_limit_follows_the_token_across_addresses() {
    let app = spawn("3");
    // Two client addresses (Linux routes all of 127.0.0.0/8 to the loopback): the per-IP
    // limit is per connection's peer, read from tonic's `TcpConnectInfo` without the
    // application inserting anything.
    let mut first = client_from(&app, Some(IpAddr::from([127, 0, 0, 1]))).await;
    let mut second = client_from(&app, Some(IpAddr::from([127, 0, 0, 2]))).await;
    let alice = token("alice", "orders:read");

    first.list_orders(request(ListOrdersRequest {}, Some(&alice))).await.unwrap();
    first.list_orders(request(ListOrdersRequest {}, Some(&alice))).await.unwrap();
    let response = second.list_orders(request(ListOrdersRequest {}, Some(&alice))).await.unwrap();
    // 127.0.0.2 has spent one of its three: its per-IP entry says two remain.
    let limits = all_values(response.metadata(), "ratelimit");
    assert!(limits.contains(r#""per-ip";r=2;"#), "{limits}");
    assert!(limits.contains(r#""per-principal";r=0;"#), "{limits}");

    // Alice has spent her three, from wherever: refused after authentication.
    let status = second.list_orders(request(ListOrdersRequest {}, Some(&alice))).await.unwrap_err();
    assert_status(&status, Code::ResourceExhausted, "Too many requests");
    let policy = all_values(status.metadata(), "ratelimit-policy");
    assert!(policy.contains(r#""per-principal";q=3;w=60"#), "{policy}");

    // Another caller from the same address still has a budget.
    let bob = token("bob", "orders:read");
    second.list_orders(request(ListOrdersRequest {}, Some(&bob))).await.unwrap();
}

#[tokio::test]
async fn without_a_secret_it_prints_a_working_demo_token() {
    let app = Example::spawn("grpc", &[]);
    let token = app
        .preamble
        .iter()
        .find_map(|line| line.trim().strip_prefix("TOKEN="))
        .expect("a demo token line")
        .to_owned();
    assert!(app.preamble.iter().any(|line| line.contains("grpcurl")), "{:?}", app.preamble);
    let mut client = client(&app).await;
    let created =
        client.create_order(request(order("demo", 1), Some(&token))).await.unwrap().into_inner();
    assert_eq!(created.owner, "demo");
}

#[test]
fn a_short_secret_is_refused_at_start() {
    let output = std::process::Command::new(example_path("grpc"))
        .env("BIND_ADDR", "127.0.0.1:0")
        .env("JWT_SECRET", "too-short")
        .output()
        .expect("run the example");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("JWT_SECRET must be at least 32 bytes"), "{stderr}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("listening on"));
}
