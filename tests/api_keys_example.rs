//! End to end: the api_keys example, run as a process, with a real HTTP client.
#![cfg(feature = "full")]

mod common;

use common::Example;
use reqwest::{header, StatusCode};
use serde_json::Value;

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// The example and the keys it printed: (acme's key, initech's key).
fn start() -> (Example, String, String) {
    let app = Example::spawn("api_keys", &[]);
    let key = |name: &str| {
        let prefix = format!("{name}=");
        app.preamble
            .iter()
            .find_map(|line| line.trim().strip_prefix(&prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {name} line in {:?}", app.preamble))
            .to_owned()
    };
    let (acme, initech) = (key("ACME_KEY"), key("INITECH_KEY"));
    assert!(acme.starts_with("sk_live_") && initech.starts_with("sk_live_"));
    (app, acme, initech)
}

#[tokio::test]
async fn health_is_public() {
    let (app, _, _) = start();
    let response = client().get(app.url("/health")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("ratelimit-policy"));
}

#[tokio::test]
async fn no_key_and_wrong_keys_are_401() {
    let (app, acme, _) = start();
    let client = client();

    let response = client.get(app.url("/v1/reports")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "unauthenticated");

    // The right id with a wrong secret, an unknown id, and garbage.
    let mut tampered = acme.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'a' { 'b' } else { 'a' });
    let unknown_id = format!("sk_live_AAAAAAAAAAAA_{}", &acme[acme.len() - 43..]);
    for wrong in [tampered.as_str(), unknown_id.as_str(), "sk_live_nope", "not-a-key"] {
        let response =
            client.get(app.url("/v1/reports")).header("x-api-key", wrong).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{wrong}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "invalid_token");
        assert!(!body.to_string().contains(wrong), "the key is never echoed");
    }
}

#[tokio::test]
async fn valid_keys_get_their_tier_quota() {
    let (app, acme, initech) = start();
    let client = client();

    let response =
        client.get(app.url("/v1/reports")).header("x-api-key", &acme).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["ratelimit-policy"], r#""partner";q=100;w=60"#);
    let limit = response.headers()["ratelimit"].to_str().unwrap();
    assert!(limit.starts_with(r#""partner";r=99;t="#), "{limit}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["partner"], "acme");
    assert_eq!(body["tier"], "partner");

    // The free tier: 5 per minute, through either header form.
    for remaining in (0..5).rev() {
        let response = client
            .get(app.url("/v1/reports"))
            .header(header::AUTHORIZATION, format!("ApiKey {initech}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["ratelimit-policy"], r#""free";q=5;w=60"#);
        let expected = format!(r#""free";r={remaining};"#);
        let limit = response.headers()["ratelimit"].to_str().unwrap();
        assert!(limit.starts_with(&expected), "{limit}");
    }
    let response =
        client.get(app.url("/v1/reports")).header("x-api-key", &initech).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 =
        response.headers()[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited");

    // Another key's quota is its own.
    let response =
        client.get(app.url("/v1/reports")).header("x-api-key", &acme).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
