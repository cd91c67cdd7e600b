//! Authorization under axum: a real server on 127.0.0.1:0 behind the envelope, a real client.
#![cfg(all(feature = "scope", feature = "axum", feature = "envelope"))]

mod common;

use std::net::SocketAddr;

use axum::{
    extract::{Path, Request},
    http::{request::Parts, StatusCode},
    middleware::Next,
    routing::{delete, get, post},
    Router,
};
use serde_json::{json, Value};
use tower::ServiceExt;
use tower_shield::{
    envelope::ErrorEnvelopeLayer,
    principal::Principal,
    scope::{authorize, Decision, Requirement, ScopeLayer, Tenant},
    Error, ErrorKind,
};

/// Stands in for the authenticating layer: `x-test-sub`, `x-test-scopes` (space-separated) and
/// `x-test-tenant` become a `Principal`; without `x-test-sub` the request is anonymous.
async fn test_auth(mut request: Request, next: Next) -> axum::response::Response {
    let principal = {
        let header = |name: &str| {
            request.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
        };
        header("x-test-sub").map(|subject| {
            let mut builder = Principal::builder(subject)
                .scopes(header("x-test-scopes").unwrap_or_default().split_whitespace());
            if let Some(tenant) = header("x-test-tenant") {
                builder = builder.tenant(tenant);
            }
            builder.build()
        })
    };
    if let Some(principal) = principal {
        request.extensions_mut().insert(principal);
    }
    next.run(request).await
}

struct Order {
    id: u64,
    owner: &'static str,
}

const ORDERS: [Order; 2] = [Order { id: 1, owner: "alice" }, Order { id: 2, owner: "bob" }];

fn owner_only(principal: &Principal, _: &Parts, order: &Order) -> Decision {
    if order.owner == principal.subject() {
        Decision::Allow
    } else {
        Decision::NotFound
    }
}

async fn get_order(
    principal: Principal,
    parts: Parts,
    Path(id): Path<u64>,
) -> Result<String, Error> {
    let order = ORDERS.iter().find(|o| o.id == id).ok_or(Error::new(ErrorKind::NotFound))?;
    authorize(&owner_only, &principal, &parts, order).await?;
    Ok(format!("order {}", order.id))
}

fn app() -> Router {
    let scope = |s: &str| ScopeLayer::new(Requirement::scope(s));
    Router::new()
        .route(
            "/orders",
            get(|| async { "[]" })
                .route_layer(scope("orders:read"))
                .merge(post(|| async { "created" }).route_layer(scope("orders:write"))),
        )
        .route(
            "/orders/{id}",
            get(get_order)
                .route_layer(scope("orders:read"))
                .merge(delete(|| async { "deleted" }).route_layer(scope("orders:admin"))),
        )
        .route(
            "/tenants/{tenant}/orders",
            get(|| async { "tenant orders" }).route_layer(ScopeLayer::new(
                Requirement::scope("orders:read").and(Requirement::tenant(Tenant::path_segment(1))),
            )),
        )
        .layer(axum::middleware::from_fn(test_auth))
        .layer(ErrorEnvelopeLayer::new())
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

struct Client {
    addr: SocketAddr,
    http: reqwest::Client,
}

impl Client {
    async fn new() -> Self {
        Self {
            addr: serve(app()).await,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        who: Option<(&str, &str)>,
    ) -> reqwest::Response {
        let mut request = self.http.request(method, format!("http://{}{path}", self.addr));
        if let Some((sub, scopes)) = who {
            request = request.header("x-test-sub", sub).header("x-test-scopes", scopes);
        }
        request.send().await.unwrap()
    }
}

fn www(response: &reqwest::Response) -> Option<&str> {
    response.headers().get("www-authenticate").map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn orders_api_answers_401_403_and_200_exactly() {
    use reqwest::Method;
    let client = Client::new().await;
    let reader = Some(("alice", "orders:read"));
    let writer = Some(("alice", "orders:read orders:write"));

    let response = client.send(Method::GET, "/orders", None).await;
    assert_eq!(response.status(), 401);
    assert_eq!(www(&response), Some(r#"Bearer realm="api""#));
    assert!(response.headers().contains_key("x-request-id"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "unauthenticated");

    assert_eq!(client.send(Method::GET, "/orders", reader).await.status(), 200);

    let response = client.send(Method::POST, "/orders", reader).await;
    assert_eq!(response.status(), 403);
    assert_eq!(
        www(&response),
        Some(r#"Bearer realm="api", error="insufficient_scope", scope="orders:write""#)
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "forbidden");
    assert_eq!(body["message"], "Insufficient permissions");
    assert_eq!(client.send(Method::POST, "/orders", writer).await.text().await.unwrap(), "created");

    let response = client.send(Method::DELETE, "/orders/1", writer).await;
    assert_eq!(response.status(), 403);
    assert_eq!(
        www(&response),
        Some(r#"Bearer realm="api", error="insufficient_scope", scope="orders:admin""#)
    );
    let admin = Some(("root", "orders:admin"));
    assert_eq!(client.send(Method::DELETE, "/orders/1", admin).await.status(), 200);

    // The router's own answers are untouched by the route layers.
    assert_eq!(client.send(Method::PUT, "/orders", None).await.status(), 405);
    assert_eq!(client.send(Method::GET, "/nope", None).await.status(), 404);
}

#[tokio::test]
async fn another_users_order_is_the_same_404_as_a_missing_one() {
    use reqwest::Method;
    let client = Client::new().await;
    let alice = Some(("alice", "orders:read"));
    let own = client.send(Method::GET, "/orders/1", alice).await;
    assert_eq!((own.status().as_u16(), own.text().await.unwrap()), (200, "order 1".to_owned()));

    let theirs = client.send(Method::GET, "/orders/2", alice).await;
    let missing = client.send(Method::GET, "/orders/999", alice).await;
    assert_eq!(theirs.status(), 404);
    assert_eq!(missing.status(), 404);
    assert_eq!(www(&theirs), None);
    let strip = |mut v: Value| {
        v.as_object_mut().unwrap().remove("request_id");
        v
    };
    let theirs = strip(theirs.json().await.unwrap());
    let missing = strip(missing.json().await.unwrap());
    assert_eq!(theirs, missing);
    assert_eq!(theirs, json!({"code": "not_found", "message": "Not found"}));
}

#[tokio::test]
async fn tenant_path_mismatch_is_a_404_envelope() {
    let client = Client::new().await;
    let request = |tenant_path: &str| {
        client
            .http
            .get(format!("http://{}/tenants/{tenant_path}/orders", client.addr))
            .header("x-test-sub", "alice")
            .header("x-test-scopes", "orders:read")
            .header("x-test-tenant", "acme")
            .send()
    };
    assert_eq!(request("acme").await.unwrap().status(), 200);
    let response = request("globex").await.unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "not_found");
}

#[test]
fn denials_log_the_matched_route_template() {
    let ((), events) = common::capture_events(tracing::Level::INFO, || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let request = axum::http::Request::delete("/orders/42")
            .header("x-test-sub", "alice")
            .header("x-test-scopes", "orders:read")
            .body(axum::body::Body::empty())
            .unwrap();
        let response = rt.block_on(app().oneshot(request)).unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    });
    let event = events
        .iter()
        .find(|e| e["fields"]["event"] == "scope.denied")
        .unwrap_or_else(|| panic!("no scope.denied event in {events:?}"));
    assert_eq!(event["fields"]["route"], "/orders/{id}");
    assert_eq!(event["fields"]["requirement"], "all(orders:admin)");
    assert_eq!(event["fields"]["subject"], "alice");
}
