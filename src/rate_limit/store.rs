use std::{future::Future, sync::Arc};

use super::{
    gcra::{Decision, Mode},
    key::RateKey,
    quota::Limits,
};
use crate::Error;

/// Where quota state lives: [`MemoryStore`](super::MemoryStore) in process (the default) or
/// `RedisStore` (feature `redis`) shared by every instance.
///
/// The future is an associated type so the memory store answers with a ready future and costs
/// no allocation per request.
///
/// # Example
///
/// ```
/// use std::{future::{ready, Ready}, num::NonZeroU32, time::Duration};
/// use http::StatusCode;
/// use tower_shield::rate_limit::{Decision, Limits, Mode, Quota, RateKey, RateLimiter, Store};
/// use tower_shield::Error;
///
/// /// Refuses everything for a minute: for testing how clients handle 429s.
/// struct AlwaysFull;
///
/// impl Store for AlwaysFull {
///     type Future = Ready<Result<Decision, Error>>;
///
///     fn decide(&self, _: &Limits, _: &RateKey, _: u32, _: Mode) -> Self::Future {
///         let minute = Duration::from_secs(60);
///         // Refused by quota 0, no unit left, whole again and retry in a minute.
///         ready(Ok(Decision::new(false, 0, 0, minute, minute)))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let quota = Quota::per_minute(NonZeroU32::new(100).unwrap()).named("api");
/// let limiter = RateLimiter::new(quota).with_store(AlwaysFull);
/// let error = limiter.acquire(&RateKey::from("alice")).await.unwrap_err();
/// assert_eq!(error.status(), StatusCode::TOO_MANY_REQUESTS);
/// assert_eq!(error.retry_after(), Some(Duration::from_secs(60)));
/// # }
/// ```
pub trait Store: Send + Sync + 'static {
    /// The future of [`decide`](Store::decide).
    type Future: Future<Output = Result<Decision, Error>> + Send + 'static;

    /// Checks (and, per `mode`, charges) `cost` units of every quota of `limits` for `key`.
    ///
    /// # Errors
    ///
    /// An [`Error`] of kind [`ServiceUnavailable`](crate::ErrorKind::ServiceUnavailable) when
    /// the backend is down and the store fails closed; the layer answers it as is.
    fn decide(&self, limits: &Limits, key: &RateKey, cost: u32, mode: Mode) -> Self::Future;

    /// The decision at once, when the store has it without waiting; `None` (the default) when
    /// it must be awaited through [`decide`](Store::decide).
    ///
    /// [`MemoryStore`](super::MemoryStore) always answers here. The layer then calls the
    /// inner service from its own `call`: it neither clones the service nor keeps the request
    /// in its future, which keeps the per-request cost of an in-process limit low.
    fn decide_ready(
        &self,
        limits: &Limits,
        key: &RateKey,
        cost: u32,
        mode: Mode,
    ) -> Option<Result<Decision, Error>> {
        let _ = (limits, key, cost, mode);
        None
    }
}

impl<S: Store + ?Sized> Store for Arc<S> {
    type Future = S::Future;

    fn decide(&self, limits: &Limits, key: &RateKey, cost: u32, mode: Mode) -> Self::Future {
        (**self).decide(limits, key, cost, mode)
    }

    fn decide_ready(
        &self,
        limits: &Limits,
        key: &RateKey,
        cost: u32,
        mode: Mode,
    ) -> Option<Result<Decision, Error>> {
        (**self).decide_ready(limits, key, cost, mode)
    }
}
