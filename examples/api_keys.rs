//! Partner API keys with a quota per key, by tier, behind the recommended [`Shield`] stack.
//!
//! ```sh
//! cargo run --example api_keys --features full
//! ```
//!
//! Two partner keys are generated at start and printed once, with curl lines; only their
//! SHA-256 hashes are kept. Each key has the quota of its partner's tier: `partner` 100
//! requests per minute, `free` 5. Keys are sent as `X-API-Key: <key>` or
//! `Authorization: ApiKey <key>`.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `BIND_ADDR` | `127.0.0.1:3001` | where to listen |

use std::{net::SocketAddr, num::NonZeroU32};

use axum::{
    http::{request::Parts, HeaderName, Method},
    routing::get,
    Json, Router,
};
use serde_json::{json, Value};
use tower_shield::{
    auth::{
        api_key::{generate, ApiKeys},
        AuthLayer,
    },
    preset::Shield,
    principal::Principal,
    rate_limit::{ApiKeyId, Limits, Quota, RateLimitLayer},
};

/// The quota of each tier. Built once: `select_limits` hands out clones.
struct Tiers {
    partner: Limits,
    free: Limits,
}

impl Tiers {
    fn new() -> Self {
        let per_minute = |n: u32, name: &str| {
            Limits::new(Quota::per_minute(NonZeroU32::new(n).expect("n > 0")).named(name))
        };
        Self { partner: per_minute(100, "partner"), free: per_minute(5, "free") }
    }

    /// The limits of the tier recorded on the key's principal; unknown tiers get `free`.
    fn select(&self, parts: &Parts) -> Limits {
        let tier = parts.extensions.get::<Principal>().and_then(|p| p.claim_as::<String>("tier"));
        match tier.as_deref() {
            Some("partner") => self.partner.clone(),
            _ => self.free.clone(),
        }
    }
}

async fn reports(caller: Principal) -> Json<Value> {
    let tier = caller.claim_as::<String>("tier").unwrap_or_default();
    Json(json!({ "partner": caller.subject(), "tier": tier, "reports": [] }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_shield=info".into()),
        )
        .init();

    let addr: SocketAddr = std::env::var("BIND_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:3001".into())
        .parse()
        .map_err(|e| format!("BIND_ADDR: {e}"))?;

    // In production the hashes come from your database; the keys were shown to the partner
    // once, when they were created.
    let acme = generate("sk_live")?;
    let initech = generate("sk_live")?;
    let keys = ApiKeys::new("sk_live")?
        .header(HeaderName::from_static("x-api-key"))
        .with_key(acme.id(), acme.hash(), Principal::builder("acme").claim("tier", "partner"))?
        .with_key(
            initech.id(),
            initech.hash(),
            Principal::builder("initech").claim("tier", "free"),
        )?;

    // The recommended outer stack: envelope, per-IP limit, API key check, per-principal limit.
    let shield = Shield::builder()
        .with_auth(AuthLayer::new(keys))
        .add_public(Method::GET, "/health")
        .build()?;

    // The quota of each key's tier, counted per key id (never the key itself).
    let tiers = Tiers::new();
    let per_key = RateLimitLayer::new(ApiKeyId, tiers.partner.clone())
        .select_limits(move |parts| tiers.select(parts));

    let app = Router::new()
        .route("/health", get(|| async { "ok" }).route_layer(shield.public()))
        .route("/v1/reports", get(reports).route_layer(per_key))
        .layer(shield);

    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    println!("partner API keys for this run (shown once; only their hashes are kept):");
    println!("  ACME_KEY={}  (tier partner: 100 requests per minute)", acme.key());
    println!("  INITECH_KEY={}  (tier free: 5 requests per minute)", initech.key());
    println!("  curl -i http://{addr}/v1/reports -H \"x-api-key: $ACME_KEY\"");
    println!("  curl -i http://{addr}/v1/reports -H \"authorization: ApiKey $INITECH_KEY\"");
    println!("listening on {addr}");
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
    Ok(())
}
