//! Helpers for the crate's own unit tests.

use bytes::Bytes;
use http_body::Body;
use http_body_util::BodyExt;

/// Collects a body.
pub(crate) async fn to_bytes<B>(body: B) -> Bytes
where
    B: Body,
    B::Error: std::fmt::Debug,
{
    body.collect().await.expect("body").to_bytes()
}

/// Collects a body and parses it as JSON.
pub(crate) async fn to_json<B>(body: B) -> serde_json::Value
where
    B: Body,
    B::Error: std::fmt::Debug,
{
    serde_json::from_slice(&to_bytes(body).await).expect("a JSON body")
}

#[path = "../tests/common/shared.rs"]
#[allow(dead_code, unreachable_pub)] // the Redis helpers are used only with feature `redis`
mod shared;

pub(crate) use self::shared::capture_events;
#[cfg(feature = "redis")]
pub(crate) use self::shared::{redis_url, unique_prefix};
