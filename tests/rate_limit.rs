//! Rate limiting in a real axum server on 127.0.0.1:0, behind the envelope, with reqwest.
#![cfg(all(feature = "rate-limit", feature = "axum", feature = "envelope"))]

use std::{net::SocketAddr, num::NonZeroU32};

use axum::{extract::Extension, http::StatusCode, routing::get, routing::post, Json, Router};
use serde_json::{json, Value};
use tower_shield::{
    envelope::ErrorEnvelopeLayer,
    rate_limit::{ClientAddr, ClientIp, Quota, RateKey, RateLimitLayer, RateLimiter, RouteKey},
    Error, ErrorKind,
};

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

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

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[tokio::test]
async fn per_ip_limit_answers_the_429_envelope_with_headers() {
    let app = Router::new()
        .route(
            "/orders",
            get(|Extension(ClientAddr(ip)): Extension<ClientAddr>| async move { ip.to_string() }),
        )
        .layer(RateLimitLayer::per_ip(Quota::per_minute(nz(2)).named("per-ip")))
        .layer(ErrorEnvelopeLayer::new());
    let addr = serve(app).await;
    let client = client();
    let url = format!("http://{addr}/orders");

    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["ratelimit-policy"], r#""per-ip";q=2;w=60"#);
    assert_eq!(response.headers()["ratelimit"], r#""per-ip";r=1;t=30"#);
    assert_eq!(response.text().await.unwrap(), "127.0.0.1");

    // A spoofed X-Forwarded-For from an untrusted peer changes nothing.
    let response = client.get(&url).header("x-forwarded-for", "198.51.100.1").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "127.0.0.1");

    let response = client.get(&url).header("x-forwarded-for", "198.51.100.2").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((29..=30).contains(&retry), "{retry}");
    assert!(response.headers()["ratelimit"].to_str().unwrap().starts_with(r#""per-ip";r=0;t="#));
    assert!(response.headers().contains_key("x-request-id"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited");
    assert_eq!(body["message"], "Too many requests");
    assert!(body["request_id"].is_string());
}

#[tokio::test]
async fn trusted_proxies_and_route_keys() {
    let per_route = RateLimitLayer::new(
        (ClientIp::new().trusted_proxies_from_str("127.0.0.1/32").unwrap(), RouteKey),
        Quota::per_minute(nz(1)).named("per-route"),
    );
    let app = Router::new()
        .route("/orders/{id}", get(|| async { "order" }))
        .route("/health", get(|| async { "ok" }))
        .route_layer(per_route)
        .layer(ErrorEnvelopeLayer::new());
    let addr = serve(app).await;
    let client = client();
    let get = |path: &str, xff: &str| {
        client.get(format!("http://{addr}{path}")).header("x-forwarded-for", xff).send()
    };
    assert_eq!(get("/orders/1", "198.51.100.1").await.unwrap().status(), StatusCode::OK);
    // Same route template, same forwarded client: limited, whatever the id.
    assert_eq!(
        get("/orders/2", "198.51.100.1").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another route or another forwarded client: its own bucket.
    assert_eq!(get("/health", "198.51.100.1").await.unwrap().status(), StatusCode::OK);
    assert_eq!(get("/orders/3", "198.51.100.2").await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn a_login_handler_locks_usernames_with_the_handle() {
    let per_ip = RateLimiter::new(Quota::per_minute(nz(5)).named("login-ip"));
    let per_user = RateLimiter::new(Quota::per_minute(nz(3)).named("login-user"));
    let login = move |Extension(ClientAddr(ip)): Extension<ClientAddr>, Json(body): Json<Value>| {
        let (per_ip, per_user) = (per_ip.clone(), per_user.clone());
        async move {
            let user = RateKey::from(body["username"].as_str().unwrap_or_default());
            let ip = RateKey::from_ip(ip);
            per_ip.check(&ip).await?;
            per_user.check(&user).await?;
            if body["password"] == "right" {
                return Ok::<_, Error>("token");
            }
            per_ip.record_failure(&ip).await;
            per_user.record_failure(&user).await;
            Err(Error::new(ErrorKind::InvalidToken))
        }
    };
    let app = Router::new()
        .route("/login", post(login))
        // Resolves the client address for the handler (and sheds floods before it).
        .layer(RateLimitLayer::per_ip(Quota::per_minute(nz(100))))
        .layer(ErrorEnvelopeLayer::new());
    let addr = serve(app).await;
    let client = client();
    let attempt = |user: &str, password: &str| {
        client
            .post(format!("http://{addr}/login"))
            .json(&json!({"username": user, "password": password}))
            .send()
    };
    for _ in 0..3 {
        assert_eq!(attempt("alice", "wrong").await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    // Locked: even the right password is refused, with Retry-After.
    let response = attempt("alice", "right").await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    // The quota that refused is listed first, then the per-IP layer's (4 requests so far).
    let list = |name: &str| {
        let values = response.headers().get_all(name).iter();
        values.map(|v| v.to_str().unwrap().to_owned()).collect::<Vec<_>>().join(", ")
    };
    assert_eq!(list("ratelimit-policy"), r#""login-user";q=3;w=60, "default";q=100;w=60"#);
    let state = list("ratelimit");
    assert!(state.starts_with(r#""login-user";r=0;t="#), "{state}");
    assert!(state.contains(r#", "default";r=96;t="#), "{state}");
    assert_eq!(response.json::<Value>().await.unwrap()["code"], "rate_limited");
    // Another user from the same IP still gets in (2 of 5 IP attempts left).
    assert_eq!(attempt("bob", "right").await.unwrap().status(), StatusCode::OK);
    assert_eq!(attempt("bob", "wrong").await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(attempt("carol", "wrong").await.unwrap().status(), StatusCode::UNAUTHORIZED);
    // The IP is now locked for every username.
    assert_eq!(attempt("dave", "right").await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn grpc_requests_get_resource_exhausted() {
    use tower::{Service, ServiceBuilder, ServiceExt};
    use tower_shield::{rate_limit::PeerAddr, ServiceBuilderExt};

    let mut service = ServiceBuilder::new()
        .error_envelope()
        .rate_limited(RateLimitLayer::per_ip(Quota::per_minute(nz(1))))
        .service_fn(|_: http::Request<axum::body::Body>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(axum::body::Body::empty()))
        });
    let request = || {
        let mut request = http::Request::post("/greeter.Greeter/SayHello")
            .version(http::Version::HTTP_2)
            .header("content-type", "application/grpc")
            .body(axum::body::Body::empty())
            .unwrap();
        request.extensions_mut().insert(PeerAddr(SocketAddr::from(([192, 0, 2, 1], 5000))));
        request
    };
    service.ready().await.unwrap().call(request()).await.unwrap();
    let response = service.ready().await.unwrap().call(request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK); // trailers-only
    assert_eq!(response.headers()["grpc-status"], "8"); // RESOURCE_EXHAUSTED, never UNAVAILABLE
    assert_eq!(response.headers()["retry-after"], "60");
}
