//! The quickstart: an orders API behind tower-shield's full stack.
//!
//! ```sh
//! cargo run --example quickstart --features full
//! ```
//!
//! With no `JWT_SECRET` and no `JWKS_URL` it generates a secret and prints a demo token and
//! curl lines. Environment:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `BIND_ADDR` | `127.0.0.1:3000` | where to listen |
//! | `JWT_ISSUER` | `https://auth.quickstart.local` | required `iss` |
//! | `JWT_AUDIENCE` | `orders-api` | required `aud` |
//! | `JWT_SECRET` | generated | HS256 secret, at least 32 bytes |
//! | `JWKS_URL` | none | RS256/ES256/EdDSA keys, fetched lazily, refetched on an unknown `kid` |
//! | `REDIS_URL` | none | rate limits and idempotency records in Redis |
//! | `TRUSTED_PROXIES` | none | comma-separated CIDRs whose `X-Forwarded-For` is believed |
//! | `DEMO_PASSWORD` | `demo-password-change-me` | password of the `demo` account |
//! | `RATE_LIMIT_PER_MINUTE` | `600` | per client IP before auth, per principal after |
//! | `LOG_FORMAT` | text | `json` for one JSON object per log line (`RUST_LOG` filters) |

use std::{
    collections::HashMap,
    net::SocketAddr,
    num::NonZeroU32,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::{Path, State},
    http::{request::Parts, Method, StatusCode},
    routing::{get, post},
    Extension, Json, Router,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tower_shield::{
    auth::{jwt::Jwt, AuthLayer, RemoteJwks},
    envelope::ErrorEnvelopeLayer,
    error::{Challenge, ConfigError},
    idempotency::{self, IdempotencyLayer},
    principal::Principal,
    rate_limit::{
        ClientAddr, ClientIp, FailurePolicy, MemoryStore, MissingKey, PrincipalKey, Quota, RateKey,
        RateLimitLayer, RateLimiter, RedisStore, Store,
    },
    scope::{authorize, Decision, Requirement, ScopeLayer},
    validate::{Check, ValidateLayer, Validated},
    Error, ErrorKind,
};

/// Everything read from the environment.
struct Settings {
    issuer: String,
    audience: String,
    /// The HS256 secret: given, or generated when no JWKS is configured either.
    secret: Option<Vec<u8>>,
    jwks_url: Option<String>,
    redis_url: Option<String>,
    trusted_proxies: String,
    demo_password: String,
    per_minute: NonZeroU32,
}

impl Settings {
    fn from_env() -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let jwks_url = var("JWKS_URL");
        let secret = match var("JWT_SECRET") {
            Some(secret) if secret.len() < 32 => {
                return Err(
                    "JWT_SECRET must be at least 32 bytes (HS256 needs a 256-bit key)".into()
                )
            }
            Some(secret) => Some(secret.into_bytes()),
            None if jwks_url.is_none() => {
                let mut secret = vec![0; 32];
                getrandom::fill(&mut secret).map_err(|e| format!("no random source: {e}"))?;
                Some(secret)
            }
            None => None,
        };
        let per_minute = var("RATE_LIMIT_PER_MINUTE").unwrap_or_else(|| "600".into());
        Ok(Self {
            issuer: var("JWT_ISSUER").unwrap_or_else(|| "https://auth.quickstart.local".into()),
            audience: var("JWT_AUDIENCE").unwrap_or_else(|| "orders-api".into()),
            secret,
            jwks_url,
            redis_url: var("REDIS_URL"),
            trusted_proxies: var("TRUSTED_PROXIES").unwrap_or_default(),
            demo_password: var("DEMO_PASSWORD").unwrap_or_else(|| "demo-password-change-me".into()),
            per_minute: per_minute
                .parse()
                .map_err(|_| "RATE_LIMIT_PER_MINUTE must be a whole number from 1")?,
        })
    }

    /// An HS256 access token for `subject`, as `POST /login` issues.
    fn mint(&self, subject: &str) -> Option<String> {
        let secret = self.secret.as_ref()?;
        tower_shield::auth::jwt::install_crypto_provider();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
        let claims = json!({
            "sub": subject,
            "iss": self.issuer,
            "aud": self.audience,
            "iat": now,
            "exp": now + TOKEN_LIFETIME_SECS,
            "scope": "orders:read orders:write",
        });
        let key = jsonwebtoken::EncodingKey::from_secret(secret);
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).ok()
    }
}

const TOKEN_LIFETIME_SECS: u64 = 15 * 60;

#[derive(Clone, Serialize)]
struct Order {
    id: u64,
    item: String,
    quantity: u32,
    note: Option<String>,
    owner: String,
}

/// The body of `POST /orders`. The schema below already refused anything else; the DTO says
/// the same in types (`deny_unknown_fields`: no `owner`, `role` or `isAdmin` slips through).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrder {
    item: String,
    quantity: u32,
    note: Option<String>,
}

impl Check for NewOrder {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    username: String,
    password: String,
}

impl Check for Login {}

/// Shared by the handlers.
struct AppState<St> {
    settings: Settings,
    orders: Mutex<HashMap<u64, Order>>,
    next_id: AtomicU64,
    /// 5 failed logins per minute per client (an IPv4 address, an IPv6 /64: `client_ip`
    /// groups them as the per-IP limit does), and per attempted username whatever the IP.
    login_per_ip: RateLimiter<St>,
    login_per_user: RateLimiter<St>,
    client_ip: ClientIp,
}

/// The application, with rate-limit state in `new_store()` (memory or Redis).
fn app<St: Store + Clone>(
    settings: Settings,
    new_store: impl Fn() -> St,
    idempotency: IdempotencyLayer,
) -> Result<Router, ConfigError> {
    // Tokens: HS256 with the secret, and/or keys from a JWKS URL. `iss`, `aud` and `exp` are
    // required; `alg: none`, keys from token headers and tokens over 8 KiB never pass.
    let mut jwt = Jwt::builder().issuer(&settings.issuer).audience(&settings.audience);
    if let Some(secret) = &settings.secret {
        jwt = jwt.hs256_secret(secret);
    }
    if let Some(url) = &settings.jwks_url {
        jwt = jwt.with_key_source(RemoteJwks::from_url(url).build()?);
    }
    let auth = AuthLayer::new(jwt.build()?)
        .add_public(Method::GET, "/health")?
        .add_public(Method::POST, "/login")?;

    let per_minute = |name: &'static str| Quota::per_minute(settings.per_minute).named(name);
    let five_per_minute =
        |name: &'static str| Quota::per_minute(NonZeroU32::MIN.saturating_add(4)).named(name);
    // Before any crypto: shed load per client IP (proxy-aware only for TRUSTED_PROXIES).
    let client_ip = ClientIp::new().trusted_proxies_from_str(&settings.trusted_proxies)?;
    let per_ip =
        RateLimitLayer::new(client_ip.clone(), per_minute("per-ip")).with_store(new_store());
    // After auth: a quota per caller, wherever they connect from.
    let per_principal = RateLimitLayer::new(PrincipalKey, per_minute("per-principal"))
        .on_missing_key(MissingKey::Skip)
        .with_store(new_store());

    let new_order = ValidateLayer::new().max_body_size(16 * 1024).schema(&json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["item", "quantity"],
        "properties": {
            "item": {"type": "string", "minLength": 1, "maxLength": 80},
            "quantity": {"type": "integer", "minimum": 1, "maximum": 1000},
            "note": {"type": ["string", "null"], "maxLength": 500}
        }
    }))?;
    let login_body = ValidateLayer::new().max_body_size(4 * 1024).schema(&json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["username", "password"],
        "properties": {
            "username": {"type": "string", "minLength": 1, "maxLength": 64},
            "password": {"type": "string", "minLength": 1, "maxLength": 256}
        }
    }))?;
    let scope = |scope: &str| ScopeLayer::new(Requirement::all([scope]));

    let state = Arc::new(AppState {
        login_per_ip: RateLimiter::new(five_per_minute("login-ip")).with_store(new_store()),
        login_per_user: RateLimiter::new(five_per_minute("login-user")).with_store(new_store()),
        client_ip,
        settings,
        orders: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
    });

    Ok(Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/login", post(login::<St>).route_layer(login_body))
        .route("/orders", get(list_orders::<St>).route_layer(scope("orders:read")))
        .route(
            "/orders",
            post(create_order::<St>)
                .route_layer(idempotency)
                .route_layer(new_order)
                .route_layer(scope("orders:write")),
        )
        .route("/orders/{id}", get(show_order::<St>).route_layer(scope("orders:read")))
        .route(
            "/orders/{id}",
            axum::routing::delete(delete_order::<St>).route_layer(scope("orders:admin")),
        )
        .with_state(state)
        // Matched routes only: an unknown path is a plain 404 for everyone.
        .route_layer(per_principal)
        .route_layer(auth)
        // Every request, routed or not.
        .layer(per_ip)
        // Outermost: request ids and one error body for every failure. This API serves no
        // gRPC, so no client gets its errors as gRPC statuses (HTTP 200).
        .layer(ErrorEnvelopeLayer::new().grpc(false)))
}

type AppStateRef<St> = State<Arc<AppState<St>>>;

async fn login<St: Store + Clone>(
    State(state): AppStateRef<St>,
    Extension(ClientAddr(ip)): Extension<ClientAddr>,
    Validated(login): Validated<Login>,
) -> Result<Json<Value>, Error> {
    // The client's address grouped as the per-IP limit groups it: one key for a whole IPv6
    // /64, so that a client cannot rotate through its prefix to get more attempts.
    let (by_ip, by_user) = (state.client_ip.key_for(ip), RateKey::from(login.username.as_str()));
    state.login_per_ip.check(&by_ip).await?;
    state.login_per_user.check(&by_user).await?;

    let password_ok =
        constant_time_eq(login.password.as_bytes(), state.settings.demo_password.as_bytes());
    if login.username != "demo" || !password_ok {
        // Only failures count, so a correct login is never slowed down. Unknown user and wrong
        // password get the same answer.
        state.login_per_ip.record_failure(&by_ip).await;
        state.login_per_user.record_failure(&by_user).await;
        // `unauthenticated`, not `invalid_token`: no token was sent (RFC 6750).
        return Err(Error::new(ErrorKind::Unauthenticated)
            .with_challenge(Challenge::bearer("api"))
            .with_reason("login: bad username or password"));
    }
    let token = state
        .settings
        .mint(&login.username)
        .ok_or_else(|| Error::internal("login: no signing key"))?;
    Ok(Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": TOKEN_LIFETIME_SECS,
    })))
}

async fn list_orders<St>(State(state): AppStateRef<St>, caller: Principal) -> Json<Vec<Order>> {
    let orders = state.orders.lock().unwrap();
    let mut mine: Vec<Order> =
        orders.values().filter(|o| o.owner == caller.subject()).cloned().collect();
    mine.sort_by_key(|o| o.id);
    Json(mine)
}

async fn create_order<St>(
    State(state): AppStateRef<St>,
    caller: Principal,
    Validated(new): Validated<NewOrder>,
) -> (StatusCode, Json<Order>) {
    let order = Order {
        id: state.next_id.fetch_add(1, Ordering::Relaxed),
        item: new.item,
        quantity: new.quantity,
        note: new.note,
        // Always the caller: the body cannot name an owner.
        owner: caller.subject().to_owned(),
    };
    state.orders.lock().unwrap().insert(order.id, order.clone());
    (StatusCode::CREATED, Json(order))
}

async fn show_order<St>(
    State(state): AppStateRef<St>,
    caller: Principal,
    parts: Parts,
    Path(id): Path<String>,
) -> Result<Json<Order>, Error> {
    let order = state.orders.lock().unwrap().get(&order_id(&id)?).cloned();
    let order = order.ok_or_else(|| Error::new(ErrorKind::NotFound))?;
    // Object-level authorization: another caller's order answers exactly like a missing one.
    let owner_only = |p: &Principal, _: &Parts, o: &Order| {
        if o.owner == p.subject() {
            Decision::Allow
        } else {
            Decision::NotFound
        }
    };
    authorize(&owner_only, &caller, &parts, &order).await?;
    Ok(Json(order))
}

async fn delete_order<St>(
    State(state): AppStateRef<St>,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    match state.orders.lock().unwrap().remove(&order_id(&id)?) {
        Some(_) => Ok(StatusCode::NO_CONTENT),
        None => Err(Error::new(ErrorKind::NotFound)),
    }
}

/// An order id as we issue them: digits without a sign or leading zeros, so `/orders/+1` and
/// `/orders/01` are not other names of order 1. Anything else is the same 404 as a missing order.
fn order_id(id: &str) -> Result<u64, Error> {
    let canonical = !id.starts_with('0') && id.bytes().all(|b| b.is_ascii_digit());
    id.parse().ok().filter(|_| canonical).ok_or_else(|| Error::new(ErrorKind::NotFound))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    // Compare digests, so neither the length nor the first differing byte shows in the timing.
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,tower_shield=info".into());
    // `LOG_FORMAT=json`: one JSON object per line, with the request span's fields.
    if std::env::var("LOG_FORMAT").is_ok_and(|format| format == "json") {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }

    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("quickstart: {message}");
            std::process::exit(2);
        }
    };
    let addr: SocketAddr = std::env::var("BIND_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:3000".into())
        .parse()
        .map_err(|e| format!("BIND_ADDR: {e}"))?;
    let demo = (std::env::var_os("JWT_SECRET").is_none() && settings.jwks_url.is_none())
        .then(|| settings.mint("demo"))
        .flatten();

    let app = match settings.redis_url.clone() {
        Some(url) => {
            // Limits shared by every instance; if Redis fails, each instance limits alone.
            let store = RedisStore::new(&url, FailurePolicy::FailOpen)?;
            let records = IdempotencyLayer::new().with_store(idempotency::RedisStore::new(&url)?);
            app(settings, move || store.clone(), records)?
        }
        None => app(settings, MemoryStore::new, IdempotencyLayer::new())?,
    };

    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    if let Some(token) = demo {
        println!("generated a JWT secret for this run; a demo token (sub=demo, 15 minutes):");
        println!("  TOKEN={token}");
        println!("  curl -s http://{addr}/orders -H \"authorization: Bearer $TOKEN\"");
        println!(
            "  curl -s http://{addr}/orders -H \"authorization: Bearer $TOKEN\" \
             -H 'content-type: application/json' -H 'idempotency-key: order-1' \
             -d '{{\"item\":\"book\",\"quantity\":2}}'"
        );
        println!(
            "  curl -s http://{addr}/login -H 'content-type: application/json' \
             -d '{{\"username\":\"demo\",\"password\":\"demo-password-change-me\"}}'"
        );
    }
    println!("listening on {addr}");
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
    Ok(())
}
