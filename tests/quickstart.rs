//! End to end: the quickstart example, run as a process, with a real HTTP client.
#![cfg(feature = "full")]

mod common;

use common::Example;
use reqwest::{header, StatusCode};
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[tokio::test]
async fn health_is_public_and_carries_a_request_id() {
    let app = Example::spawn("quickstart", &[]);
    let response = client().get(app.url("/health")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let id = response.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 36, "a generated UUID: {id}");
    // Load balancers probe with HEAD, which axum answers with the GET handler.
    let response = client().head(app.url("/health")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn unknown_route_is_a_404_envelope() {
    let app = Example::spawn("quickstart", &[]);
    let response = client().get(app.url("/does-not-exist")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    let id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"code": "not_found", "message": "Not found", "request_id": id}));
}

#[tokio::test]
async fn wrong_method_is_a_405_envelope() {
    let app = Example::spawn("quickstart", &[("JWT_SECRET", SECRET)]);
    let response =
        client().delete(app.url("/health")).bearer_auth(mint("alice", "")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(response.headers().contains_key(header::ALLOW));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "method_not_allowed");
}

#[tokio::test]
async fn client_request_ids_are_kept_only_when_safe() {
    let app = Example::spawn("quickstart", &[]);
    let client = client();
    let response =
        client.get(app.url("/nope")).header("x-request-id", "trace-42.a_b").send().await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-42.a_b");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["request_id"], "trace-42.a_b");

    for unsafe_id in ["has space", &"x".repeat(65), "<script>", "a;b=c"] {
        let response =
            client.get(app.url("/nope")).header("x-request-id", unsafe_id).send().await.unwrap();
        let echoed = response.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_ne!(echoed, unsafe_id);
        assert_eq!(echoed.len(), 36);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["request_id"], echoed);
    }
}

#[tokio::test]
async fn problem_details_on_request() {
    let app = Example::spawn("quickstart", &[]);
    let response = client()
        .get(app.url("/does-not-exist"))
        .header(header::ACCEPT, "application/problem+json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], 404);
    assert_eq!(body["code"], "not_found");
    assert_eq!(body["instance"], "/does-not-exist");
}

const SECRET: &str = "quickstart-test-secret-0123456789abcdef";

/// An HS256 token the quickstart started with `JWT_SECRET=SECRET` accepts.
fn mint(subject: &str, scope: &str) -> String {
    tower_shield::auth::jwt::install_crypto_provider();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = json!({
        "sub": subject, "iss": "https://auth.quickstart.local", "aud": "orders-api",
        "iat": now, "exp": now + 300, "scope": scope,
    });
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

/// The body without its request id, to compare two error answers.
async fn body_without_id(response: reqwest::Response) -> Value {
    let mut body: Value = response.json().await.unwrap();
    body.as_object_mut().unwrap().remove("request_id");
    body
}

#[test]
fn a_short_secret_refuses_to_start() {
    let output = std::process::Command::new(common::example_path("quickstart"))
        .env("JWT_SECRET", "too-short")
        .env("BIND_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("JWT_SECRET must be at least 32 bytes"), "{stderr}");
}

#[tokio::test]
async fn without_secret_a_demo_token_is_printed_and_works() {
    let app = Example::spawn("quickstart", &[]);
    let client = client();
    // The demo lines come before `listening on`; log in instead, which the README shows too.
    let response = client
        .post(app.url("/login"))
        .json(&json!({"username": "demo", "password": "demo-password-change-me"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let login: Value = response.json().await.unwrap();
    assert_eq!(login["token_type"], "Bearer");
    assert_eq!(login["expires_in"], 900);
    let token = login["access_token"].as_str().unwrap();
    let response = client.get(app.url("/orders")).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap(), json!([]));
}

#[tokio::test]
async fn login_failures_look_alike_and_are_limited() {
    let app = Example::spawn("quickstart", &[("DEMO_PASSWORD", "right-password")]);
    let client = client();
    let login = |username: &str, password: &str| {
        client
            .post(app.url("/login"))
            .json(&json!({"username": username, "password": password}))
            .send()
    };
    let unknown_user = login("mallory", "right-password").await.unwrap();
    assert_eq!(unknown_user.status(), StatusCode::UNAUTHORIZED);
    let wrong_password = login("demo", "wrong").await.unwrap();
    assert_eq!(wrong_password.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(wrong_password.headers()[header::WWW_AUTHENTICATE], r#"Bearer realm="api""#);
    assert_eq!(
        unknown_user.headers()[header::WWW_AUTHENTICATE],
        wrong_password.headers()[header::WWW_AUTHENTICATE]
    );
    assert_eq!(body_without_id(unknown_user).await, body_without_id(wrong_password).await);
    let body = login("demo", "wrong").await.unwrap().json::<Value>().await.unwrap();
    assert_eq!(body["code"], "unauthenticated", "no token was sent: {body}");

    // 5 failures per minute per IP: 3 so far, 2 more, then 429 with Retry-After.
    for _ in 0..2 {
        assert_eq!(login("demo", "wrong").await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    let limited = login("demo", "right-password").await.unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().contains_key(header::RETRY_AFTER));
    // The login quota that refused comes first, then the general per-IP one.
    let policy = limited.headers().get_all("ratelimit-policy").iter();
    let policy: Vec<_> = policy.map(|v| v.to_str().unwrap().to_owned()).collect();
    assert_eq!(policy, [r#""login-ip";q=5;w=60"#, r#""per-ip";q=600;w=60"#]);
    let state = limited.headers()["ratelimit"].to_str().unwrap();
    assert!(state.starts_with(r#""login-ip";r=0;t="#), "{state}");
    assert_eq!(limited.json::<Value>().await.unwrap()["code"], "rate_limited");
}

#[tokio::test]
async fn orders_need_a_valid_token_and_the_right_scope() {
    let app = Example::spawn("quickstart", &[("JWT_SECRET", SECRET)]);
    let client = client();

    let response = client.get(app.url("/orders")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()[header::WWW_AUTHENTICATE], r#"Bearer realm="api""#);
    // The server writes the rendered body's length (the envelope leaves it to hyper).
    let length: usize =
        response.headers()[header::CONTENT_LENGTH].to_str().unwrap().parse().unwrap();
    assert_eq!(response.bytes().await.unwrap().len(), length);

    let response = client.get(app.url("/orders")).bearer_auth("not.a.token").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.headers()[header::WWW_AUTHENTICATE],
        r#"Bearer realm="api", error="invalid_token""#
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "invalid_token");

    let reader = mint("alice", "orders:read");
    let response = client
        .post(app.url("/orders"))
        .bearer_auth(&reader)
        .json(&json!({"item": "book", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        response.headers()[header::WWW_AUTHENTICATE],
        r#"Bearer realm="api", error="insufficient_scope", scope="orders:write""#
    );

    let writer = mint("alice", "orders:read orders:write");
    let response = client.delete(app.url("/orders/1")).bearer_auth(&writer).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        response.headers()[header::WWW_AUTHENTICATE],
        r#"Bearer realm="api", error="insufficient_scope", scope="orders:admin""#
    );
    let admin = mint("root", "orders:admin");
    let response = client.delete(app.url("/orders/99")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn creating_orders_validates_and_is_idempotent() {
    let app = Example::spawn("quickstart", &[("JWT_SECRET", SECRET)]);
    let client = client();
    let alice = mint("alice", "orders:read orders:write");
    let post = |body: Value| client.post(app.url("/orders")).bearer_auth(&alice).json(&body);

    let response =
        post(json!({"item": "book", "quantity": 2, "note": "gift"})).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let order: Value = response.json().await.unwrap();
    assert_eq!(order["owner"], "alice");
    assert_eq!((order["item"].as_str(), order["quantity"].as_u64()), (Some("book"), Some(2)));
    // An order sent back as it was answered (`"note": null` when there is none) is accepted.
    let response = post(json!({"item": "pen", "quantity": 1})).send().await.unwrap();
    let order: Value = response.json().await.unwrap();
    assert_eq!(order["note"], Value::Null);
    let echoed = json!({"item": order["item"], "quantity": order["quantity"], "note": null});
    assert_eq!(post(echoed).send().await.unwrap().status(), StatusCode::CREATED);

    // Mass assignment: unknown fields are named, never echoed.
    let response =
        post(json!({"item": "book", "quantity": 1, "owner": "bob", "isAdmin": "MARKER"}))
            .send()
            .await
            .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let text = response.text().await.unwrap();
    assert!(!text.contains("MARKER"), "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    let fields: Vec<&str> =
        body["details"].as_array().unwrap().iter().map(|d| d["field"].as_str().unwrap()).collect();
    assert!(fields.contains(&"/owner") && fields.contains(&"/isAdmin"), "{body}");

    let response = post(json!({"item": "", "quantity": 1001})).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // JSON Schema counts 1.0 as an integer; the DTO does not, and says so in JSON's terms.
    let response = post(json!({"item": "book", "quantity": 1.0})).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["details"],
        json!([{"field": "/quantity", "issue": "type", "message": "expected a non-negative integer"}])
    );

    let big = "x".repeat(17 * 1024);
    let response = post(json!({"item": "book", "quantity": 1, "note": big})).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let response = client
        .post(app.url("/orders"))
        .bearer_auth(&alice)
        .header(header::CONTENT_TYPE, "text/plain")
        .body("item=book")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // Idempotency-Key: a replay, then a different body under the same key.
    let keyed = |body: Value| post(body).header("idempotency-key", "order-7");
    let first = keyed(json!({"item": "pen", "quantity": 3})).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let replay = keyed(json!({"item": "pen", "quantity": 3})).send().await.unwrap();
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.json::<Value>().await.unwrap(), first);
    let reused = keyed(json!({"item": "pen", "quantity": 4})).send().await.unwrap();
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reused.json::<Value>().await.unwrap()["code"], "idempotency_key_reused");
}

/// Orders a book as `token`'s caller; returns the order id.
async fn create_order(client: &reqwest::Client, app: &Example, token: &str) -> u64 {
    let response = client
        .post(app.url("/orders"))
        .bearer_auth(token)
        .json(&json!({"item": "book", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json::<Value>().await.unwrap()["id"].as_u64().unwrap()
}

#[tokio::test]
async fn another_callers_order_is_not_found_like_a_missing_one() {
    let app = Example::spawn("quickstart", &[("JWT_SECRET", SECRET)]);
    let client = client();
    let alice = mint("alice", "orders:read orders:write");
    let bob = mint("bob", "orders:read orders:write");
    let id = create_order(&client, &app, &alice).await;

    let own =
        client.get(app.url(&format!("/orders/{id}"))).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(own.status(), StatusCode::OK);
    let theirs =
        client.get(app.url(&format!("/orders/{id}"))).bearer_auth(&bob).send().await.unwrap();
    let missing = client.get(app.url("/orders/999999")).bearer_auth(&bob).send().await.unwrap();
    assert_eq!((theirs.status(), missing.status()), (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND));
    assert_eq!(body_without_id(theirs).await, body_without_id(missing).await);

    let listed = client.get(app.url("/orders")).bearer_auth(&bob).send().await.unwrap();
    assert_eq!(listed.json::<Value>().await.unwrap(), json!([]));
}

#[tokio::test]
async fn order_ids_have_one_spelling() {
    let app = Example::spawn("quickstart", &[("JWT_SECRET", SECRET)]);
    let client = client();
    let alice = mint("alice", "orders:read orders:write orders:admin");
    let id = create_order(&client, &app, &alice).await;
    let get = |path: String| client.get(app.url(&path)).bearer_auth(&alice).send();
    assert_eq!(get(format!("/orders/{id}")).await.unwrap().status(), StatusCode::OK);

    // Other spellings of the id, and ids we never issue, answer exactly like a missing order.
    let missing = body_without_id(get("/orders/999999".to_owned()).await.unwrap()).await;
    let too_big = "18446744073709551616".to_owned();
    for other in [format!("+{id}"), format!("0{id}"), format!("{id}.0"), "abc".into(), too_big] {
        let response = get(format!("/orders/{other}")).await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{other}");
        assert_eq!(body_without_id(response).await, missing, "{other}");
        let response =
            client.delete(app.url(&format!("/orders/{other}"))).bearer_auth(&alice).send();
        assert_eq!(response.await.unwrap().status(), StatusCode::NOT_FOUND, "{other}");
    }
    assert_eq!(get(format!("/orders/{id}")).await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn requests_are_limited_per_client_ip_with_headers() {
    let app = Example::spawn("quickstart", &[("RATE_LIMIT_PER_MINUTE", "3")]);
    let client = client();
    for remaining in [2, 1, 0] {
        let response = client.get(app.url("/health")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["ratelimit-policy"], r#""per-ip";q=3;w=60"#);
        let header = response.headers()["ratelimit"].to_str().unwrap().to_owned();
        assert!(header.starts_with(&format!(r#""per-ip";r={remaining};t="#)), "{header}");
    }
    let response = client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 =
        response.headers()[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited");
    assert!(body["request_id"].is_string());
}

/// The login limit per IP groups IPv6 clients by /64, as the per-IP limit does: a client that
/// rotates through its prefix (and through usernames) still gets 5 failures a minute.
#[tokio::test]
async fn login_limit_holds_across_an_ipv6_prefix() {
    // The test client connects from 127.0.0.1: trusted as a proxy, so the address it forwards
    // is the client's.
    let app = Example::spawn("quickstart", &[("TRUSTED_PROXIES", "127.0.0.1/32")]);
    let client = client();
    let login = |i: u32| {
        client
            .post(app.url("/login"))
            .header("x-forwarded-for", format!("2001:db8:0:7::{i:x}"))
            .json(&json!({"username": format!("user-{i}"), "password": "wrong"}))
            .send()
    };
    for i in 1..=5 {
        assert_eq!(login(i).await.unwrap().status(), StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let limited = login(6).await.unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let state = limited.headers()["ratelimit"].to_str().unwrap();
    assert!(state.starts_with(r#""login-ip";r=0;t="#), "{state}");
    // Another /64 is another client.
    let other = client
        .post(app.url("/login"))
        .header("x-forwarded-for", "2001:db8:0:8::1")
        .json(&json!({"username": "user-7", "password": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::UNAUTHORIZED);
}
