//! Remote key sources: JWK set lookup and parsing, a cached `RemoteJwks` key, a cached
//! introspection result. The identity provider is a local axum server on 127.0.0.1.

use criterion::Criterion;

#[cfg(all(feature = "jwks", feature = "introspection"))]
pub(crate) fn benches(c: &mut Criterion) {
    use std::hint::black_box;

    use axum::{routing::get, routing::post, Json, Router};
    use jsonwebtoken::{jwk::Jwk, Algorithm, EncodingKey};
    use serde_json::{json, Value};
    use tower_shield::auth::{Introspection, KeySet, RemoteJwks};

    #[cfg(all(feature = "jwt-rust-crypto", feature = "jwt-aws-lc-rs"))]
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();

    let pems: [&[u8]; 3] = [
        include_bytes!("../tests/fixtures/test-only-ec-p256-a.pem"),
        include_bytes!("../tests/fixtures/test-only-ec-p256-b.pem"),
        include_bytes!("../tests/fixtures/test-only-ec-p384.pem"),
    ];
    let algs = [Algorithm::ES256, Algorithm::ES256, Algorithm::ES384];
    let mut keys: Vec<Value> = pems
        .iter()
        .zip(algs)
        .enumerate()
        .map(|(i, (pem, alg))| {
            let key = EncodingKey::from_ec_pem(pem).unwrap();
            let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&key, alg).unwrap()).unwrap();
            jwk["kid"] = json!(format!("key-{i}"));
            jwk
        })
        .collect();
    let ed = EncodingKey::from_ed_pem(include_bytes!("../tests/fixtures/test-only-ed25519.pem"))
        .unwrap();
    let mut jwk =
        serde_json::to_value(Jwk::from_encoding_key(&ed, Algorithm::EdDSA).unwrap()).unwrap();
    jwk["kid"] = json!("key-3");
    keys.push(jwk);
    let document = json!({ "keys": keys }).to_string();
    let set = KeySet::from_json(&document).unwrap();

    // IO is needed for the local identity provider.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let base = rt.block_on(async {
        let jwks = Json(serde_json::from_str::<Value>(&document).unwrap());
        let app = Router::new().route("/jwks", get(move || async move { jwks })).route(
            "/introspect",
            post(|| async { Json(json!({"active": true, "sub": "alice", "scope": "a b"})) }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        base
    });
    let remote = RemoteJwks::from_url(&format!("{base}/jwks")).build().unwrap();
    rt.block_on(remote.refresh()).unwrap();
    let introspection = Introspection::builder(&format!("{base}/introspect"), "api", "secret")
        .insecure_skip_issuer()
        .insecure_skip_audience()
        .build()
        .unwrap();
    let token = "opaque-token-0123456789abcdefghijklmnopqrstuvwxyz";
    rt.block_on(introspection.introspect(token)).unwrap();

    let mut group = c.benchmark_group("jwks");
    group.bench_function("key_set_find_hit", |b| {
        b.iter(|| black_box(set.find(Some(black_box("key-3")), Algorithm::EdDSA)).is_some())
    });
    group.bench_function("key_set_find_unknown_kid", |b| {
        b.iter(|| black_box(set.find(Some(black_box("key-unknown")), Algorithm::ES256)).is_none())
    });
    group.bench_function("key_set_parse_4_keys", |b| {
        b.iter(|| KeySet::from_json(black_box(&document)).unwrap())
    });
    group.bench_function("remote_cached", |b| {
        b.iter(|| remote.cached(Some(black_box("key-1")), Algorithm::ES256).unwrap())
    });
    group.bench_function("remote_key_hit", |b| {
        b.iter(|| rt.block_on(remote.key(Some(black_box("key-1")), Algorithm::ES256)).unwrap())
    });
    group.bench_function("introspection_cached", |b| {
        b.iter(|| rt.block_on(introspection.introspect(black_box(token))).unwrap())
    });
    group.finish();
}

#[cfg(not(all(feature = "jwks", feature = "introspection")))]
pub(crate) fn benches(_: &mut Criterion) {}
