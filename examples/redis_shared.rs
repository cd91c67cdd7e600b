//! One API run as several instances behind a load balancer, sharing its rate limits and
//! idempotency records in one Redis: a client gets the same budget and the same retry answers
//! whichever instance it reaches.
//!
//! ```sh
//! export REDIS_URL=redis://127.0.0.1:6379 JWT_SECRET=change-me-to-at-least-32-random-bytes
//! BIND_ADDR=127.0.0.1:3010 INSTANCE=a cargo run --example redis_shared --features full &
//! BIND_ADDR=127.0.0.1:3011 INSTANCE=b cargo run --example redis_shared --features full &
//! ```
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `REDIS_URL` | required | the Redis every instance shares |
//! | `REDIS_PREFIX` | `shared-api:` | prefix of every key (instances with the same prefix share state) |
//! | `REDIS_TIMEOUT_MS` | `50` | the most a rate-limit decision waits for Redis before limiting locally |
//! | `JWT_SECRET` | required | HS256 secret, at least 32 bytes, the same on every instance |
//! | `JWT_ISSUER` / `JWT_AUDIENCE` | `https://auth.shared.local` / `payments-api` | required `iss` and `aud` |
//! | `RATE_LIMIT_PER_MINUTE` | `600` | per client IP before auth, per principal after, across all instances |
//! | `INSTANCE` | `pid-<pid>` | this instance's name, echoed in responses |
//! | `BIND_ADDR` | `127.0.0.1:3002` | where to listen |
//!
//! | route | needs | notes |
//! |---|---|---|
//! | `GET /health` | nothing | `{"status","instance"}` |
//! | `GET /me` | a token | `{"subject","instance"}` |
//! | `POST /payments` | `payments:write` | `{"amount": 1..=100000, "currency": "EUR" \| "USD"}`, `Idempotency-Key` required; 201 `{"id","amount","currency","payer","instance"}` |

use std::{net::SocketAddr, num::NonZeroU32, sync::Arc, time::Duration};

use axum::{extract::State, http::Method, http::StatusCode, routing::get, routing::post, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use tower_shield::{
    auth::{jwt::Jwt, AuthLayer},
    idempotency::{self, IdempotencyLayer},
    preset::Shield,
    principal::Principal,
    rate_limit::{FailurePolicy, Quota, RedisStore},
    scope::Requirement,
    validate::ValidateLayer,
};

/// Everything read from the environment.
struct Settings {
    addr: SocketAddr,
    redis_url: String,
    prefix: String,
    redis_timeout: Duration,
    secret: String,
    issuer: String,
    audience: String,
    per_minute: NonZeroU32,
    instance: String,
}

impl Settings {
    fn from_env() -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let secret = var("JWT_SECRET")
            .ok_or("JWT_SECRET is required: every instance must verify the same tokens")?;
        if secret.len() < 32 {
            return Err("JWT_SECRET must be at least 32 bytes (HS256 needs a 256-bit key)".into());
        }
        let number = |name: &str, default: &str| {
            var(name)
                .unwrap_or_else(|| default.into())
                .parse::<NonZeroU32>()
                .map_err(|_| format!("{name} must be a whole number from 1"))
        };
        Ok(Self {
            addr: var("BIND_ADDR")
                .unwrap_or_else(|| "127.0.0.1:3002".into())
                .parse()
                .map_err(|e| format!("BIND_ADDR: {e}"))?,
            redis_url: var("REDIS_URL")
                .ok_or("REDIS_URL is required (e.g. redis://127.0.0.1:6379)")?,
            prefix: var("REDIS_PREFIX").unwrap_or_else(|| "shared-api:".into()),
            redis_timeout: Duration::from_millis(number("REDIS_TIMEOUT_MS", "50")?.get().into()),
            secret,
            issuer: var("JWT_ISSUER").unwrap_or_else(|| "https://auth.shared.local".into()),
            audience: var("JWT_AUDIENCE").unwrap_or_else(|| "payments-api".into()),
            per_minute: number("RATE_LIMIT_PER_MINUTE", "600")?,
            instance: var("INSTANCE").unwrap_or_else(|| format!("pid-{}", std::process::id())),
        })
    }
}

#[derive(Deserialize)]
struct NewPayment {
    amount: u32,
    currency: String,
}

async fn create_payment(
    State(instance): State<Arc<str>>,
    payer: Principal,
    Json(payment): Json<NewPayment>,
) -> Result<(StatusCode, Json<Value>), StatusCode> {
    // The side effect that must not happen twice; a retry on any instance replays this answer.
    let mut id = [0u8; 8];
    getrandom::fill(&mut id).map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let body = json!({
        "id": id,
        "amount": payment.amount,
        "currency": payment.currency,
        "payer": payer.subject(),
        "instance": &*instance,
    });
    Ok((StatusCode::CREATED, Json(body)))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_shield=info".into()),
        )
        .init();
    let settings = Settings::from_env().unwrap_or_else(|message| {
        eprintln!("redis_shared: {message}");
        std::process::exit(2);
    });

    // Refuse to start against a Redis that does not answer, rather than find out per request.
    let mut conn = redis::Client::open(settings.redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("cannot reach Redis at REDIS_URL: {e}"))?;
    redis::cmd("PING").query_async::<String>(&mut conn).await?;

    // Rate limits: one GCRA state per key in Redis, on the Redis server's clock, so every
    // instance spends the same budget. If Redis is slow or down, each instance limits alone
    // (fail open) rather than take the API down.
    let limits = RedisStore::new(&settings.redis_url, FailurePolicy::FailOpen)?
        .prefix(format!("{}rl:", settings.prefix))
        .timeout(settings.redis_timeout);
    // Idempotency records: a payment retried on another instance is replayed, never run twice.
    // If Redis is down, writes with a key are refused with 503 (fail closed, the default).
    let records = idempotency::RedisStore::new(&settings.redis_url)?
        .prefix(format!("{}idem:", settings.prefix));

    let jwt = Jwt::builder()
        .hs256_secret(settings.secret.as_bytes())
        .issuer(&settings.issuer)
        .audience(&settings.audience)
        .build()?;
    let limit = Quota::per_minute(settings.per_minute);
    let shield = Shield::builder()
        .with_auth(AuthLayer::new(jwt))
        .add_public(Method::GET, "/health")
        .with_ip_quota(limit.clone().named("per-ip"))
        .with_principal_quota(limit.named("per-principal"))
        .with_store(limits)
        .build()?;

    let new_payment = ValidateLayer::new().max_body_size(4 * 1024).schema(&json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["amount", "currency"],
        "properties": {
            "amount": {"type": "integer", "minimum": 1, "maximum": 100_000},
            "currency": {"enum": ["EUR", "USD"]}
        }
    }))?;
    let idempotent = IdempotencyLayer::new().with_store(records).required(true);

    let instance: Arc<str> = Arc::from(settings.instance.as_str());
    let app = axum::Router::new()
        .route(
            "/health",
            get(|State(instance): State<Arc<str>>| async move {
                Json(json!({ "status": "ok", "instance": &*instance }))
            })
            .route_layer(shield.public()),
        )
        .route(
            "/me",
            get(|State(instance): State<Arc<str>>, caller: Principal| async move {
                Json(json!({ "subject": caller.subject(), "instance": &*instance }))
            })
            .route_layer(shield.standard(Requirement::authenticated())),
        )
        .route(
            "/payments",
            post(create_payment)
                .route_layer(idempotent)
                .route_layer(new_payment)
                .route_layer(shield.standard(Requirement::scope("payments:write"))),
        )
        .with_state(instance)
        .layer(shield);

    let listener = tokio::net::TcpListener::bind(settings.addr).await?;
    println!("instance {} sharing {} in Redis", settings.instance, settings.prefix);
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
    Ok(())
}
