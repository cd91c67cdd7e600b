use std::time::Duration;

use http::{HeaderMap, HeaderValue};

use super::*;
use crate::{
    auth::{jwt::Jwt, AuthRequest, Authenticator, Verdict},
    principal::Principal,
};

/// The principal, or the rejection's internal reason.
async fn outcome(jwt: &Jwt, token: &str) -> Result<Principal, String> {
    let verdict = jwt.verify(token);
    let result = match verdict {
        Verdict::Authenticated(principal) => Ok(principal),
        Verdict::Rejected(error) => Err(error),
        Verdict::Pending(future) => future.await,
        Verdict::NotMine => panic!("a Jwt judges every bearer token"),
    };
    result.map_err(|e| {
        assert_eq!(e.code(), "invalid_token", "{e:?}");
        e.reason().unwrap_or_default().to_owned()
    })
}

fn expected_reason(defect: BadToken) -> &'static str {
    match defect {
        BadToken::Expired => "jwt: expired",
        BadToken::NotYetValid => "jwt: not yet valid (nbf)",
        BadToken::WrongAudience => "jwt: audience not accepted",
        BadToken::WrongIssuer => "jwt: issuer not accepted",
        BadToken::BadSignature | BadToken::WrongKey => "jwt: bad signature",
        BadToken::AlgNone => "jwt: empty segment",
        BadToken::UnknownKid => "jwt: unknown kid",
        BadToken::Malformed => "jwt: header is not valid JSON",
    }
}

#[tokio::test]
async fn every_key_kind_mints_tokens_that_verify_and_every_defect_is_rejected() {
    for kind in KeyKind::ALL {
        let issuer = TestIssuer::new(kind);
        let jwt = issuer.jwt().no_cache().build().unwrap();
        let token = issuer
            .token()
            .subject("alice")
            .scopes(["orders:read", "orders:write"])
            .claim("tenant", "acme")
            .sign();
        let principal = outcome(&jwt, &token).await.unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        assert_eq!(principal.subject(), "alice");
        assert!(principal.has_scope("orders:write"), "{kind:?}");
        assert_eq!(principal.claim("tenant").unwrap(), "acme");
        assert_eq!(principal.claim("iss").unwrap(), issuer.issuer());

        for defect in BadToken::ALL {
            let bad = issuer.token().subject("alice").defect(defect).sign();
            assert_eq!(
                outcome(&jwt, &bad).await.unwrap_err(),
                expected_reason(defect),
                "{kind:?} {defect:?}"
            );
        }
    }
}

#[tokio::test]
async fn hs256_from_a_secret_matches_a_verifier_configured_with_that_secret() {
    let secret = "a shared secret of at least thirty-two bytes";
    let issuer = TestIssuer::builder(KeyKind::Hs256)
        .secret(secret)
        .issuer("https://auth.example")
        .audience("orders-api")
        .build();
    assert_eq!(issuer.kid(), None);
    let jwt = Jwt::builder()
        .hs256_secret(secret)
        .issuer("https://auth.example")
        .audience("orders-api")
        .build()
        .unwrap();
    assert_eq!(outcome(&jwt, &issuer.token().sign()).await.unwrap().subject(), "test-user");
    // Nothing secret is published or printed.
    assert_eq!(issuer.jwks_json(), r#"{"keys":[]}"#);
    assert!(!format!("{issuer:?}").contains("thirty-two"));
    let builder = TestIssuer::builder(KeyKind::Hs256).secret(secret);
    assert!(!format!("{builder:?}").contains("thirty-two"));
}

#[test]
#[should_panic(expected = "at least 32 bytes")]
fn a_short_hmac_secret_is_refused() {
    let _ = TestIssuer::hs256("short");
}

#[test]
fn the_jwk_set_holds_public_keys_only() {
    for kind in [KeyKind::Rs256, KeyKind::Ps256, KeyKind::Es256, KeyKind::Es384, KeyKind::EdDsa] {
        let issuer = TestIssuer::new(kind);
        let jwks: serde_json::Value = serde_json::from_str(&issuer.jwks_json()).unwrap();
        let key = &jwks["keys"][0];
        assert_eq!(key["kid"], "test-key-1", "{kind:?}");
        assert_eq!(key["use"], "sig");
        for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
            assert!(key.get(private).is_none(), "{kind:?} publishes {private}");
        }
        assert_eq!(issuer.key_set().len(), 1);
    }
}

#[tokio::test]
async fn the_issuer_clock_and_the_verifier_clock_agree() {
    let clock = FakeClock::new();
    let issuer = TestIssuer::builder(KeyKind::EdDsa).with_clock(clock.clone()).build();
    let jwt = issuer.jwt().no_cache().leeway(Duration::ZERO).build().unwrap();
    let token = issuer.token().expires_in(Duration::from_secs(60)).sign();
    assert!(outcome(&jwt, &token).await.is_ok());
    clock.advance(Duration::from_secs(61));
    assert_eq!(outcome(&jwt, &token).await.unwrap_err(), "jwt: expired");
}

#[tokio::test]
async fn rotation_with_overlap_keeps_old_tokens_until_the_previous_key_is_retired() {
    let issuer = TestIssuer::builder(KeyKind::Es256).kid("k").build();
    let jwt = issuer.jwt().no_cache().build().unwrap();
    let old = issuer.token().sign();

    assert_eq!(issuer.rotate(Rotation::KeepPrevious).as_deref(), Some("k-2"));
    let new = issuer.token().sign();
    assert!(outcome(&jwt, &old).await.is_ok());
    assert!(outcome(&jwt, &new).await.is_ok());
    assert_eq!(issuer.jwk_set().keys.len(), 2);

    issuer.retire_previous();
    assert_eq!(outcome(&jwt, &old).await.unwrap_err(), "jwt: unknown kid");
    assert!(outcome(&jwt, &new).await.is_ok());
    assert_eq!(issuer.jwk_set().keys.len(), 1);
}

#[tokio::test]
async fn rotation_without_overlap_fails_old_tokens_at_once() {
    for kind in [KeyKind::Hs256, KeyKind::Rs256] {
        let issuer = TestIssuer::new(kind);
        let jwt = issuer.jwt().no_cache().build().unwrap();
        let old = issuer.token().sign();
        issuer.rotate(Rotation::DropPrevious);
        let expected = if kind.is_symmetric() { "jwt: bad signature" } else { "jwt: unknown kid" };
        assert_eq!(outcome(&jwt, &old).await.unwrap_err(), expected, "{kind:?}");
        assert!(outcome(&jwt, &issuer.token().sign()).await.is_ok(), "{kind:?}");
    }
}

#[cfg(feature = "jwks")]
#[tokio::test]
async fn remote_jwks_verifies_every_asymmetric_kind_against_the_served_port() {
    use crate::auth::RemoteJwks;

    for kind in [KeyKind::Rs256, KeyKind::Ps256, KeyKind::Es256, KeyKind::Es384, KeyKind::EdDsa] {
        let issuer = TestIssuer::new(kind);
        let server = issuer.serve().await.unwrap();
        assert!(server.url().starts_with("http://127.0.0.1:"));
        let remote = RemoteJwks::from_url(&server.url()).build().unwrap();
        let jwt = Jwt::builder()
            .with_key_source(remote)
            .issuer(issuer.issuer())
            .audience(issuer.audience())
            .no_cache()
            .build()
            .unwrap();
        let principal = outcome(&jwt, &issuer.token().subject("bob").sign()).await;
        assert_eq!(principal.unwrap().subject(), "bob", "{kind:?}");
        for defect in BadToken::ALL {
            let bad = issuer.token().defect(defect).sign();
            assert_eq!(
                outcome(&jwt, &bad).await.unwrap_err(),
                expected_reason(defect),
                "{kind:?} {defect:?}"
            );
        }
    }
}

#[cfg(feature = "jwks")]
#[tokio::test]
async fn remote_jwks_follows_a_rotation_on_the_served_port_and_discovery_works() {
    use crate::auth::RemoteJwks;

    let clock = FakeClock::new();
    let issuer = TestIssuer::builder(KeyKind::Es256).with_clock(clock.clone()).build();
    let server = issuer.serve().await.unwrap();
    let remote = RemoteJwks::discover_at(&server.discovery_url(), issuer.issuer())
        .with_clock(clock.clone())
        .build()
        .unwrap();
    let jwt = Jwt::builder()
        .with_key_source(remote)
        .issuer(issuer.issuer())
        .audience(issuer.audience())
        .with_clock(clock.clone())
        .no_cache()
        .build()
        .unwrap();
    let old = issuer.token().sign();
    assert!(outcome(&jwt, &old).await.is_ok());

    issuer.rotate(Rotation::DropPrevious);
    let new = issuer.token().sign();
    // Within the refetch cooldown the new kid is unknown; after it, one refetch finds it.
    assert_eq!(outcome(&jwt, &new).await.unwrap_err(), "jwt: unknown kid");
    clock.advance(Duration::from_secs(31));
    assert!(outcome(&jwt, &new).await.is_ok());
    // The fetched set no longer has the old key.
    assert_eq!(outcome(&jwt, &old).await.unwrap_err(), "jwt: unknown kid");

    // The server stops with its handle.
    let url = server.url();
    drop(server);
    let stopped = reqwest::Client::new().get(&url).send().await;
    assert!(stopped.is_err(), "{stopped:?}");
}

#[tokio::test]
async fn the_jwks_service_answers_in_process() {
    use tower::ServiceExt;

    let issuer = TestIssuer::ed25519();
    let get = |path: &str| http::Request::get(path).body(()).unwrap();
    let response = issuer.jwks_service().oneshot(get(JWKS_PATH)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let served = crate::auth::KeySet::from_json(response.into_body().bytes()).unwrap();
    assert!(served.contains_kid("test-key-1"));

    issuer.rotate(Rotation::DropPrevious);
    let response = issuer.jwks_service().oneshot(get(JWKS_PATH)).await.unwrap();
    let served = crate::auth::KeySet::from_json(response.into_body().bytes()).unwrap();
    assert!(served.contains_kid("test-key-2") && !served.contains_kid("test-key-1"));

    let response = issuer.jwks_service().oneshot(get("/other")).await.unwrap();
    assert_eq!(response.status(), 404);
    let post = http::Request::post(JWKS_PATH).body(()).unwrap();
    assert_eq!(issuer.jwks_service().oneshot(post).await.unwrap().status(), 405);
}

#[test]
fn api_keys_authenticate_their_principal() {
    let (keys, key) = api_key("test", Principal::builder("ci-bot").scopes(["orders:read"]));
    let mut headers = HeaderMap::new();
    let value = HeaderValue::try_from(format!("ApiKey {key}")).unwrap();
    headers.insert(http::header::AUTHORIZATION, value);
    let Verdict::Authenticated(principal) =
        keys.authenticate(&AuthRequest::from_headers(&headers).unwrap())
    else {
        panic!("the generated key authenticates")
    };
    assert_eq!(principal.subject(), "ci-bot");
    assert!(principal.has_scope("orders:read"));

    let other = add_api_key(&keys, "test", Principal::builder("second"));
    assert_ne!(other, key);
    assert_eq!(keys.len(), 2);
}
