//! The quickstart: an axum API behind tower-shield.
//!
//! ```sh
//! cargo run --example quickstart --features full
//! curl -i http://127.0.0.1:3000/health
//! curl -i http://127.0.0.1:3000/does-not-exist   # a 404 envelope with X-Request-Id
//! ```
//!
//! Environment: `BIND_ADDR` (default `127.0.0.1:3000`).

use std::net::SocketAddr;

use axum::{routing::get, Router};
use tower_shield::envelope::ErrorEnvelopeLayer;

/// The application. Tests build the same router.
fn app() -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        // Outermost: request ids, one error body for every failure (the router's 404 and
        // 405 included), panics turned into 500s.
        .layer(ErrorEnvelopeLayer::new())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_shield=debug".into()),
        )
        .init();

    let addr: SocketAddr = std::env::var("BIND_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:3000".into())
        .parse()
        .map_err(|e| format!("BIND_ADDR: {e}"))?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app().into_make_service_with_connect_info::<SocketAddr>()).await?;
    Ok(())
}
