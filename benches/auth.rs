//! Authentication: a JWT per algorithm verified from scratch (cache off) and from the
//! verified-token cache, and a 401 rejection.

use axum::body::Body;
use criterion::Criterion;
use http::{header, Request, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::json;
use tower::Layer;
use tower_shield::auth::{jwt::Jwt, AuthLayer, VerifyingKey};

use crate::{
    bare_router, run, runtime,
    summary::{median, time_batch},
};

pub(crate) const SECRET: &[u8] = b"a benchmark secret of at least 32 bytes";
const RSA_PRIVATE: &[u8] = include_bytes!("../tests/fixtures/test-only-rsa-private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("../tests/fixtures/test-only-rsa-public.pem");
const EC_PRIVATE: &[u8] = include_bytes!("../tests/fixtures/test-only-ec256-private.pem");
const EC_PUBLIC: &[u8] = include_bytes!("../tests/fixtures/test-only-ec256-public.pem");
const ED_PRIVATE: &[u8] = include_bytes!("../tests/fixtures/test-only-ed25519-private.pem");
const ED_PUBLIC: &[u8] = include_bytes!("../tests/fixtures/test-only-ed25519-public.pem");

/// The key jsonwebtoken itself decodes with, for the raw baseline.
fn raw_key(alg: Algorithm) -> DecodingKey {
    match alg {
        Algorithm::HS256 => DecodingKey::from_secret(SECRET),
        Algorithm::RS256 => DecodingKey::from_rsa_pem(RSA_PUBLIC).unwrap(),
        Algorithm::ES256 => DecodingKey::from_ec_pem(EC_PUBLIC).unwrap(),
        _ => DecodingKey::from_ed_pem(ED_PUBLIC).unwrap(),
    }
}

pub(crate) fn keys(alg: Algorithm) -> (EncodingKey, VerifyingKey) {
    match alg {
        Algorithm::HS256 => {
            (EncodingKey::from_secret(SECRET), VerifyingKey::from_secret(alg, SECRET).unwrap())
        }
        Algorithm::RS256 => (
            EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
            VerifyingKey::from_pem(alg, RSA_PUBLIC).unwrap(),
        ),
        Algorithm::ES256 => (
            EncodingKey::from_ec_pem(EC_PRIVATE).unwrap(),
            VerifyingKey::from_pem(alg, EC_PUBLIC).unwrap(),
        ),
        _ => (
            EncodingKey::from_ed_pem(ED_PRIVATE).unwrap(),
            VerifyingKey::from_pem(alg, ED_PUBLIC).unwrap(),
        ),
    }
}

/// The algorithms benchmarked, with their bench names.
pub(crate) const ALGORITHMS: [(&str, Algorithm); 4] = [
    ("hs256", Algorithm::HS256),
    ("rs256", Algorithm::RS256),
    ("es256", Algorithm::ES256),
    ("eddsa", Algorithm::EdDSA),
];

/// A token for `alg` with the claims every bench uses (valid for an hour, scope `orders:read`).
pub(crate) fn token(alg: Algorithm) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let claims = json!({
        "iss": "https://issuer.bench", "aud": "bench", "sub": "alice",
        "iat": now.as_secs(), "exp": now.as_secs() + 3600, "scope": "orders:read",
    });
    jsonwebtoken::encode(&Header::new(alg), &claims, &keys(alg).0).unwrap()
}

pub(crate) fn jwt(key: VerifyingKey, cache: bool) -> Jwt {
    let builder = Jwt::builder().key(key).issuer("https://issuer.bench").audience("bench");
    if cache { builder } else { builder.no_cache() }.build().unwrap()
}

pub(crate) fn bearer(token: &str) -> Request<Body> {
    Request::get("/orders")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap()
}

pub(crate) fn benches(c: &mut Criterion) {
    let rt = runtime();
    tower_shield::auth::jwt::install_crypto_provider();
    let mut group = c.benchmark_group("auth");
    let hs256 = token(Algorithm::HS256);
    let bare = bare_router();
    group.bench_function("bare_bearer", |b| {
        b.iter(|| run(&rt, &bare, bearer(&hs256), StatusCode::OK))
    });
    for (name, alg) in ALGORITHMS {
        let (_, verifying) = keys(alg);
        let token = token(alg);
        // The cold-verification baseline: jsonwebtoken alone, same token, same checks (signature,
        // exp, iss, aud), claims decoded into a JSON map as the layer does.
        let decoding = raw_key(alg);
        let mut validation = Validation::new(alg);
        validation.set_issuer(&["https://issuer.bench"]);
        validation.set_audience(&["bench"]);
        group.bench_function(format!("raw_jsonwebtoken_{name}"), |b| {
            b.iter(|| {
                jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                    std::hint::black_box(&token),
                    &decoding,
                    &validation,
                )
                .unwrap()
            })
        });
        for (mode, cache) in [("cold", false), ("warm", true)] {
            let app = AuthLayer::new(jwt(verifying.clone(), cache)).layer(bare_router());
            group.bench_function(format!("{name}_{mode}"), |b| {
                b.iter(|| run(&rt, &app, bearer(&token), StatusCode::OK))
            });
        }
    }
    let (_, verifying) = keys(Algorithm::HS256);
    let app = AuthLayer::new(jwt(verifying, true)).layer(bare_router());
    group.bench_function("rejected_401", |b| {
        b.iter(|| run(&rt, &app, bearer("eyJhbGciOiJIUzI1NiJ9.e30.c2ln"), StatusCode::UNAUTHORIZED))
    });
    group.bench_function("missing_401", |b| {
        b.iter(|| {
            run(
                &rt,
                &app,
                Request::get("/orders").body(Body::empty()).unwrap(),
                StatusCode::UNAUTHORIZED,
            )
        })
    });
    group.finish();
}

/// The cold-verification target measured in turns (rounds of `BATCH` requests each of bare
/// axum, the layer with its cache off, and jsonwebtoken's own `decode`): per algorithm, the
/// median per-round `(layer cold - bare) - raw decode`, in µs (limit 1).
pub(crate) fn cold_interleaved() -> Vec<(String, f64, f64)> {
    const ROUNDS: usize = 50;
    const BATCH: u32 = 200;
    let rt = runtime();
    let bare = bare_router();
    let mut rows = Vec::new();
    for (name, alg) in ALGORITHMS {
        let token = token(alg);
        let app = AuthLayer::new(jwt(keys(alg).1, false)).layer(bare_router());
        let decoding = raw_key(alg);
        let mut validation = Validation::new(alg);
        validation.set_issuer(&["https://issuer.bench"]);
        validation.set_audience(&["bench"]);
        let extra = (0..ROUNDS)
            .map(|_| {
                let b = time_batch(BATCH, || run(&rt, &bare, bearer(&token), StatusCode::OK));
                let c = time_batch(BATCH, || run(&rt, &app, bearer(&token), StatusCode::OK));
                let r = time_batch(BATCH, || {
                    jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                        std::hint::black_box(&token),
                        &decoding,
                        &validation,
                    )
                    .unwrap();
                });
                ((c - b) - r) / 1000.0
            })
            .collect();
        rows.push((format!("auth {name} cold - bare - raw decode, µs"), median(extra), 1.0));
    }
    rows
}
