//! Runs two instances of the built `examples/redis_shared` against the real Redis and shows
//! that they share rate-limit budgets and idempotency records.
//!
//! Build the example first: `cargo build --all-features --examples`. Skips without Redis
//! unless `TOWER_SHIELD_REQUIRE_REDIS=1`.
#![cfg(feature = "full")]

mod common;

use std::{
    net::IpAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use reqwest::{header, Client, Response, StatusCode};
use serde_json::{json, Value};

use self::common::{example_path, redis_url, unique_prefix, Example};

const SECRET: &str = "redis-shared-test-secret-0123456789abcdef";

/// Instances `a` and `b` on one Redis, with keys under `prefix`.
fn spawn_pair(url: &str, prefix: &str, per_minute: &str) -> (Example, Example) {
    let spawn = |instance: &str| {
        Example::spawn(
            "redis_shared",
            &[
                ("REDIS_URL", url),
                ("REDIS_PREFIX", prefix),
                ("JWT_SECRET", SECRET),
                ("RATE_LIMIT_PER_MINUTE", per_minute),
                ("INSTANCE", instance),
                // A loaded test machine must not push a decision to the local fallback.
                ("REDIS_TIMEOUT_MS", "2000"),
            ],
        )
    };
    (spawn("a"), spawn("b"))
}

/// Deletes the test's keys (the idempotency records would otherwise live for a day).
async fn clean_up(url: &str, prefix: &str) {
    let mut conn =
        redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut conn).await.unwrap();
    if !keys.is_empty() {
        redis::cmd("DEL").arg(keys).query_async::<()>(&mut conn).await.unwrap();
    }
}

fn token(sub: &str, scope: &str) -> String {
    tower_shield::auth::jwt::install_crypto_provider();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims = json!({
        "sub": sub, "iss": "https://auth.shared.local", "aud": "payments-api",
        "exp": now + 300, "scope": scope,
    });
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

/// A client whose connections come from `from` (any 127.0.0.0/8 address: another client IP).
fn client_from(from: [u8; 4]) -> Client {
    Client::builder().local_address(IpAddr::from(from)).build().unwrap()
}

/// The `RateLimit` entry of `policy`, e.g. `"per-ip";r=2;t=30`.
fn limit(response: &Response, policy: &str) -> String {
    let values = response.headers().get_all("ratelimit").iter();
    let entries: Vec<String> = values
        .flat_map(|v| v.to_str().unwrap().split(", ").map(str::to_owned).collect::<Vec<_>>())
        .collect();
    let prefix = format!("\"{policy}\";");
    entries.into_iter().find(|e| e.starts_with(&prefix)).unwrap_or_default()
}

async fn assert_limited(response: Response, policy: &str) {
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key(header::RETRY_AFTER));
    let policies = response.headers()["ratelimit-policy"].to_str().unwrap().to_owned();
    assert!(policies.contains(&format!("\"{policy}\";q=4;w=60")), "{policies}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited");
}

#[tokio::test]
async fn rate_limit_budgets_are_shared_by_both_instances() {
    let Some(url) = redis_url() else { return };
    let prefix = unique_prefix("redis-shared-limits");
    let (a, b) = spawn_pair(&url, &prefix, "4");

    // Per client IP: one address alternating between the instances spends one budget of 4.
    let anonymous = client_from([127, 0, 0, 2]);
    for (n, app) in [&a, &b, &a, &b].into_iter().enumerate() {
        let response = anonymous.get(app.url("/health")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let (remaining, entry) = (3 - n, limit(&response, "per-ip"));
        assert!(entry.starts_with(&format!("\"per-ip\";r={remaining};")), "{entry}");
    }
    for app in [&a, &b] {
        assert_limited(anonymous.get(app.url("/health")).send().await.unwrap(), "per-ip").await;
    }

    // Per principal: one caller from two addresses, across both instances, spends one budget
    // of 4, while each address has spent only 2 of its own.
    let alice = token("alice", "");
    let (first, second) = (client_from([127, 0, 0, 3]), client_from([127, 0, 0, 4]));
    for (client, app) in [(&first, &a), (&second, &b), (&first, &b), (&second, &a)] {
        let response = client.get(app.url("/me")).bearer_auth(&alice).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(limit(&response, "per-ip").starts_with("\"per-ip\";r="));
    }
    let response = first.get(b.url("/me")).bearer_auth(&alice).send().await.unwrap();
    assert_limited(response, "per-principal").await;
    // Another caller from the same address still has a budget.
    let response = first.get(a.url("/me")).bearer_auth(token("bob", "")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({ "subject": "bob", "instance": "a" }));

    clean_up(&url, &prefix).await;
}

#[tokio::test]
async fn idempotency_records_are_shared_by_both_instances() {
    let Some(url) = redis_url() else { return };
    let prefix = unique_prefix("redis-shared-idempotency");
    let (a, b) = spawn_pair(&url, &prefix, "600");
    let client = Client::new();
    let alice = token("alice", "payments:write");
    let pay = |app: &Example, token: &str, key: &str, body: Value| {
        client
            .post(app.url("/payments"))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let payment = json!({ "amount": 1250, "currency": "EUR" });

    // The first request runs on instance a.
    let response = pay(&a, &alice, "pay-7f3a", payment.clone()).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(!response.headers().contains_key("idempotent-replayed"));
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["instance"], "a");
    assert_eq!(created["payer"], "alice");

    // The retry lands on instance b: the stored answer, not a second payment.
    let response = pay(&b, &alice, "pay-7f3a", payment.clone()).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["idempotent-replayed"], "true");
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    let replayed: Value = response.json().await.unwrap();
    assert_eq!(replayed, created, "same id, made by instance a");

    // The same key with another body, on b: 422.
    let other = json!({ "amount": 99_999, "currency": "EUR" });
    let response = pay(&b, &alice, "pay-7f3a", other).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "idempotency_key_reused");

    // Keys belong to their caller: bob's "pay-7f3a" is a payment of his own, made on b.
    let bob = token("bob", "payments:write");
    let response = pay(&b, &bob, "pay-7f3a", payment.clone()).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(!response.headers().contains_key("idempotent-replayed"));
    let body: Value = response.json().await.unwrap();
    assert_eq!((&body["payer"], &body["instance"]), (&json!("bob"), &json!("b")));
    assert_ne!(body["id"], created["id"]);

    // A payment without a key is refused.
    let response =
        client.post(a.url("/payments")).bearer_auth(&alice).json(&payment).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "idempotency_key_missing");

    clean_up(&url, &prefix).await;
}

#[test]
fn it_refuses_to_start_without_redis_url_or_secret() {
    for (env, message) in [
        (vec![("JWT_SECRET", SECRET)], "REDIS_URL is required"),
        (vec![("REDIS_URL", "redis://127.0.0.1:6379")], "JWT_SECRET is required"),
        (
            vec![("REDIS_URL", "redis://127.0.0.1:6379"), ("JWT_SECRET", "short")],
            "JWT_SECRET must be at least 32 bytes",
        ),
    ] {
        let output = std::process::Command::new(example_path("redis_shared"))
            .env_remove("REDIS_URL")
            .env_remove("JWT_SECRET")
            .env("BIND_ADDR", "127.0.0.1:0")
            .envs(env)
            .output()
            .expect("run the example");
        assert_eq!(output.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "{stderr}");
    }
}
