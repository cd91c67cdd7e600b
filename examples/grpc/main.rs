//! A gRPC orders service (tonic) behind tower-shield: JWT authentication, a scope per method,
//! rate limits per client IP and per caller, and safe gRPC statuses for every rejection.
//!
//! ```sh
//! cargo run --example grpc --features full
//! ```
//!
//! The protocol is `examples/grpc/orders.proto`; `orders.rs` holds the code tonic-build would
//! generate from it. With no `JWT_SECRET` a secret is generated and a demo token printed.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `BIND_ADDR` | `127.0.0.1:50051` | where to listen |
//! | `JWT_ISSUER` | `https://auth.grpc.local` | required `iss` |
//! | `JWT_AUDIENCE` | `orders-grpc` | required `aud` |
//! | `JWT_SECRET` | generated | HS256 secret, at least 32 bytes |
//! | `RATE_LIMIT_PER_MINUTE` | `600` | per client IP before auth, per principal after |
//!
//! | rejection | gRPC status | `grpc-message` |
//! |---|---|---|
//! | no token, bad token | `UNAUTHENTICATED` | `Authentication required` / `Invalid or expired credentials` |
//! | scope missing, method not mapped | `PERMISSION_DENIED` | `Insufficient permissions` |
//! | a limit exhausted | `RESOURCE_EXHAUSTED` | `Too many requests` |
//! | invalid order | `INVALID_ARGUMENT` | which field, never its value |

mod orders;

use std::{
    net::SocketAddr,
    num::NonZeroU32,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use tonic::{transport::server::TcpIncoming, Request, Response, Status};
use tower_shield::{
    auth::{jwt::Jwt, AuthLayer},
    preset::Shield,
    principal::Principal,
    rate_limit::Quota,
    scope::{MethodRequirements, Requirement, ScopeLayer},
};

use self::orders::{
    CreateOrderRequest, ListOrdersRequest, ListOrdersResponse, Order, OrdersServer,
};

/// Everything read from the environment.
struct Settings {
    addr: SocketAddr,
    issuer: String,
    audience: String,
    secret: Vec<u8>,
    /// Whether the secret was generated (then a demo token is printed).
    generated: bool,
    per_minute: NonZeroU32,
}

impl Settings {
    fn from_env() -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let (secret, generated) = match var("JWT_SECRET") {
            Some(secret) if secret.len() < 32 => {
                return Err(
                    "JWT_SECRET must be at least 32 bytes (HS256 needs a 256-bit key)".into()
                )
            }
            Some(secret) => (secret.into_bytes(), false),
            None => {
                let mut secret = vec![0; 32];
                getrandom::fill(&mut secret).map_err(|e| format!("no random source: {e}"))?;
                (secret, true)
            }
        };
        Ok(Self {
            addr: var("BIND_ADDR")
                .unwrap_or_else(|| "127.0.0.1:50051".into())
                .parse()
                .map_err(|e| format!("BIND_ADDR: {e}"))?,
            issuer: var("JWT_ISSUER").unwrap_or_else(|| "https://auth.grpc.local".into()),
            audience: var("JWT_AUDIENCE").unwrap_or_else(|| "orders-grpc".into()),
            secret,
            generated,
            per_minute: var("RATE_LIMIT_PER_MINUTE")
                .unwrap_or_else(|| "600".into())
                .parse()
                .map_err(|_| "RATE_LIMIT_PER_MINUTE must be a whole number from 1")?,
        })
    }

    /// A 15-minute HS256 token for `subject` with `scope`, as your identity provider issues.
    fn mint(&self, subject: &str, scope: &str) -> Result<String, jsonwebtoken::errors::Error> {
        tower_shield::auth::jwt::install_crypto_provider();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let claims = serde_json::json!({
            "sub": subject, "iss": self.issuer, "aud": self.audience,
            "iat": now, "exp": now + 15 * 60, "scope": scope,
        });
        let key = jsonwebtoken::EncodingKey::from_secret(&self.secret);
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)
    }
}

/// The application: orders in memory, each visible to its owner only.
#[derive(Default)]
struct OrderBook {
    orders: Mutex<Vec<Order>>,
    next_id: AtomicU64,
}

/// The caller the shield authenticated (tonic hands over the HTTP request's extensions).
fn caller<T>(request: &Request<T>) -> Result<String, Status> {
    match request.extensions().get::<Principal>() {
        Some(principal) => Ok(principal.subject().to_owned()),
        // Only possible if the shield was not applied: a wiring mistake, never an open door.
        None => Err(Status::internal("Internal server error")),
    }
}

impl orders::Orders for OrderBook {
    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        let owner = caller(&request)?;
        let orders = self.orders.lock().expect("orders lock");
        let orders = orders.iter().filter(|o| o.owner == owner).cloned().collect();
        Ok(Response::new(ListOrdersResponse { orders }))
    }

    async fn create_order(
        &self,
        request: Request<CreateOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let owner = caller(&request)?;
        let CreateOrderRequest { item, quantity } = request.into_inner();
        // Say which field is wrong, never echo what was sent.
        if item.is_empty() || item.chars().count() > 80 {
            return Err(Status::invalid_argument("item must be 1 to 80 characters"));
        }
        if !(1..=1000).contains(&quantity) {
            return Err(Status::invalid_argument("quantity must be 1 to 1000"));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let order = Order { id, item, quantity, owner };
        self.orders.lock().expect("orders lock").push(order.clone());
        Ok(Response::new(order))
    }
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
        eprintln!("grpc: {message}");
        std::process::exit(2);
    });

    // HS256 tokens; `iss`, `aud` and `exp` are required. Scopes come from `scope` or `scp`.
    let jwt = Jwt::builder()
        .hs256_secret(&settings.secret)
        .issuer(&settings.issuer)
        .audience(&settings.audience)
        .build()?;

    // A scope per method. A method nobody mapped (one added to the service later, or a path
    // that does not exist) is PERMISSION_DENIED, never served by default.
    let scopes = ScopeLayer::per_method(
        MethodRequirements::new()
            .method(orders::LIST_ORDERS, Requirement::scope("orders:read"))?
            .method(orders::CREATE_ORDER, Requirement::scope("orders:write"))?,
    );

    // The recommended stack: gRPC statuses for every rejection, a per-IP limit before any
    // crypto, authentication, a per-caller limit, then the scopes. The peer address comes
    // from tonic's `TcpConnectInfo` (feature `tonic-server`).
    let limit = Quota::per_minute(settings.per_minute);
    let shield = Shield::builder()
        .with_auth(AuthLayer::new(jwt))
        .with_ip_quota(limit.clone().named("per-ip"))
        .with_principal_quota(limit.named("per-principal"))
        .with_scopes(scopes)
        .build()?;

    let listener = tokio::net::TcpListener::bind(settings.addr).await?;
    let addr = listener.local_addr()?;
    if settings.generated {
        let token = settings.mint("demo", "orders:read orders:write")?;
        println!("generated a JWT secret for this run; a demo token (sub=demo, 15 minutes):");
        println!("  TOKEN={token}");
        println!(
            "  grpcurl -plaintext -import-path examples/grpc -proto orders.proto \
             -H \"authorization: Bearer $TOKEN\" -d '{{\"item\":\"book\",\"quantity\":2}}' \
             {addr} orders.v1.Orders/CreateOrder"
        );
    }
    println!("listening on {addr}");

    tonic::transport::Server::builder()
        .layer(shield)
        .add_service(OrdersServer::new(OrderBook::default()))
        .serve_with_incoming(TcpIncoming::from(listener))
        .await?;
    Ok(())
}
