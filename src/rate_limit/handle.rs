use std::fmt;

use super::{
    admit::ratelimit_value,
    gcra::{Decision, Mode},
    key::RateKey,
    memory::MemoryStore,
    quota::Limits,
    store::Store,
};
use crate::{Error, ErrorKind};

/// A handle on quotas and a store, for handlers that decide themselves.
///
/// A login handler learns the attempted username only after parsing the body, so it cannot be
/// keyed by a layer. It checks before verifying the password and records a failure after:
///
/// ```
/// use std::num::NonZeroU32;
/// use tower_shield::rate_limit::{Quota, RateKey, RateLimiter};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let per_user = RateLimiter::new(Quota::per_minute(NonZeroU32::new(5).unwrap()).named("login"));
/// let user = RateKey::from("alice");
/// for _ in 0..5 {
///     assert!(per_user.check(&user).await.is_ok());
///     per_user.record_failure(&user).await; // wrong password
/// }
/// let error = per_user.check(&user).await.unwrap_err();
/// assert_eq!(error.status(), http::StatusCode::TOO_MANY_REQUESTS);
/// assert!(error.retry_after().is_some());
/// // As a response, it names the quota that refused.
/// let response = error.to_response::<()>();
/// assert_eq!(response.headers()["ratelimit-policy"], r#""login";q=5;w=60"#);
/// assert!(response.headers()["ratelimit"].to_str().unwrap().starts_with(r#""login";r=0;t="#));
/// # }
/// ```
///
/// Clones share the state.
#[derive(Clone)]
pub struct RateLimiter<St = MemoryStore> {
    limits: Limits,
    store: St,
}

impl RateLimiter {
    /// A limiter for `limits` in its own [`MemoryStore`].
    pub fn new(limits: impl Into<Limits>) -> Self {
        Self::from_parts(limits.into(), MemoryStore::new())
    }
}

impl<St> RateLimiter<St> {
    pub(crate) fn from_parts(limits: Limits, store: St) -> Self {
        Self { limits, store }
    }

    /// Uses `store` (a [`MemoryStore`] with a fake clock, a `RedisStore`...).
    pub fn with_store<St2: Store>(self, store: St2) -> RateLimiter<St2> {
        RateLimiter { limits: self.limits, store }
    }

    /// The quotas.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

impl<St: Store> RateLimiter<St> {
    /// Whether one more unit would pass for `key`, without charging it.
    ///
    /// # Errors
    ///
    /// The 429 [`Error`] when it would not, with `Retry-After`, and `RateLimit-Policy` and
    /// `RateLimit` for the quota that refused (listed before those of any limit layer around
    /// the handler); a 503 when the store fails closed. Return it from the handler (with
    /// feature `axum` it is an `IntoResponse`) or turn it into a response with
    /// [`Error::to_response`].
    pub async fn check(&self, key: &RateKey) -> Result<Decision, Error> {
        self.run(key, 1, Mode::Peek).await
    }

    /// Charges one unit to `key` if every quota has room (a normal rate-limited action).
    ///
    /// # Errors
    ///
    /// As [`check`](Self::check).
    pub async fn acquire(&self, key: &RateKey) -> Result<Decision, Error> {
        self.run(key, 1, Mode::Acquire).await
    }

    /// Charges one unit to `key` whatever its state (a failed attempt happened). Returns the
    /// state after the charge; store failures are logged by the store and return `None`.
    pub async fn record_failure(&self, key: &RateKey) -> Option<Decision> {
        self.store.decide(&self.limits, key, 1, Mode::Charge).await.ok()
    }

    async fn run(&self, key: &RateKey, cost: u32, mode: Mode) -> Result<Decision, Error> {
        let decision = self.store.decide(&self.limits, key, cost, mode).await?;
        if decision.is_allowed() {
            return Ok(decision);
        }
        let i = decision.quota_index();
        let policy = self.limits.quotas()[i].name();
        crate::observe::rate_limit(&http::Extensions::new(), policy, "handler", "rejected");
        tracing::info!(
            target: "tower_shield::security",
            event = "rate_limit.rejected",
            policy,
            key_kind = "handler",
            "rate limit exceeded"
        );
        Err(Error::new(ErrorKind::RateLimited)
            .with_reason("rate-limit quota exhausted")
            .with_retry_after(decision.retry_after())
            .with_rate_limit(
                self.limits.inner.policy[i].clone(),
                ratelimit_value(&[(&self.limits, &decision)]),
            ))
    }

    /// The `RateLimit` header value for `decision`, for handlers that want to send it.
    pub fn header_value(&self, decision: &Decision) -> http::HeaderValue {
        ratelimit_value(&[(&self.limits, decision)])
    }
}

impl<St: fmt::Debug> fmt::Debug for RateLimiter<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("limits", &self.limits)
            .field("store", &self.store)
            .finish()
    }
}
