use std::{
    fmt,
    num::NonZeroU32,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use http::HeaderValue;

use crate::error::ConfigError;

/// A sustained rate plus a burst, with a name used in the `RateLimit` headers.
///
/// The semantics are governor's ([`governor::Quota`]): one unit is replenished every
/// [`replenish_interval`](Quota::replenish_interval), and at most [`burst`](Quota::burst) units
/// can be spent at once. `Quota::per_minute(nz(600))` allows 600 requests at once, then one
/// every 100 ms. A zero rate or burst cannot be expressed.
///
/// In the headers the quota is advertised as `q=<burst>` units per `w=<seconds to refill the
/// whole burst>` (rounded up).
///
/// ```
/// use std::num::NonZeroU32;
/// use tower_shield::rate_limit::Quota;
///
/// let quota = Quota::per_second(NonZeroU32::new(10).unwrap())
///     .allow_burst(NonZeroU32::new(20).unwrap())
///     .named("api");
/// assert_eq!(quota.name(), "api");
/// assert_eq!(quota.burst().get(), 20);
/// assert_eq!(quota.window().as_secs(), 2);
/// ```
#[derive(Clone)]
pub struct Quota {
    inner: governor::Quota,
    name: Arc<str>,
}

impl Quota {
    /// `n` units per second, with a burst of `n`.
    pub fn per_second(n: NonZeroU32) -> Self {
        Self::from_governor(governor::Quota::per_second(n))
    }

    /// `n` units per minute, with a burst of `n`.
    pub fn per_minute(n: NonZeroU32) -> Self {
        Self::from_governor(governor::Quota::per_minute(n))
    }

    /// `n` units per hour, with a burst of `n`.
    pub fn per_hour(n: NonZeroU32) -> Self {
        Self::from_governor(governor::Quota::per_hour(n))
    }

    /// `burst` units replenished over `period`, e.g. 1000 per day.
    ///
    /// # Errors
    ///
    /// When `period` is zero.
    pub fn new(burst: NonZeroU32, period: Duration) -> Result<Self, ConfigError> {
        governor::Quota::with_period(period / burst.get())
            .map(|q| Self::from_governor(q.allow_burst(burst)))
            .ok_or_else(|| ConfigError::new("a rate-limit quota period must be longer than zero"))
    }

    /// A governor quota, as is.
    pub fn from_governor(quota: governor::Quota) -> Self {
        Self { inner: quota, name: Arc::from("default") }
    }

    /// Sets the burst (the number of units that can be spent at once), keeping the
    /// replenishment interval.
    pub fn allow_burst(mut self, burst: NonZeroU32) -> Self {
        self.inner = self.inner.allow_burst(burst);
        self
    }

    /// Sets the name shown in the `RateLimit` and `RateLimit-Policy` headers and in logs
    /// (default `default`). Characters that cannot appear in a quoted string are dropped.
    pub fn named(mut self, name: impl AsRef<str>) -> Self {
        let clean: String = name
            .as_ref()
            .chars()
            .filter(|c| matches!(c, ' ' | '!' | '#'..='[' | ']'..='~'))
            .take(64)
            .collect();
        self.name = Arc::from(if clean.is_empty() { "default" } else { clean.as_str() });
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The largest number of units that can be spent at once.
    pub fn burst(&self) -> NonZeroU32 {
        self.inner.burst_size()
    }

    /// The time in which one unit is replenished.
    pub fn replenish_interval(&self) -> Duration {
        self.inner.replenish_interval()
    }

    /// The time to replenish the whole burst (the `w` of `RateLimit-Policy`, rounded up to whole
    /// seconds there).
    pub fn window(&self) -> Duration {
        self.inner.burst_size_replenished_in()
    }

    /// The governor quota.
    pub fn as_governor(&self) -> governor::Quota {
        self.inner
    }

    pub(crate) fn t_nanos(&self) -> u64 {
        u64::try_from(self.replenish_interval().as_nanos()).unwrap_or(u64::MAX).max(1)
    }

    pub(crate) fn window_secs(&self) -> u64 {
        ceil_secs(self.window())
    }
}

impl fmt::Debug for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Quota")
            .field("name", &self.name)
            .field("burst", &self.burst())
            .field("replenish_interval", &self.replenish_interval())
            .finish()
    }
}

impl PartialEq for Quota {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner && self.name == other.name
    }
}

impl Eq for Quota {}

pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// One or more [`Quota`]s applied together: a request passes only if every quota has room,
/// and is then charged against all of them.
///
/// A set is built once (its header values are precomputed) and is cheap to clone. Use it for
/// per-request quota selection with
/// [`RateLimitLayer::select_limits`](super::RateLimitLayer::select_limits).
///
/// ```
/// use std::num::NonZeroU32;
/// use tower_shield::rate_limit::{Limits, Quota};
///
/// let nz = |n| NonZeroU32::new(n).unwrap();
/// let limits = Limits::new(Quota::per_second(nz(10)).named("burst"))
///     .add_quota(Quota::per_hour(nz(1000)).named("hourly"));
/// assert_eq!(limits.quotas().len(), 2);
/// ```
#[derive(Clone)]
pub struct Limits {
    pub(crate) inner: Arc<LimitsInner>,
}

pub(crate) struct LimitsInner {
    /// Unique per set within this process: separates the memory store's states of two sets.
    pub(crate) id: u64,
    pub(crate) quotas: Box<[Quota]>,
    /// Per quota: `"name";q=..;w=..`.
    pub(crate) policy: Box<[HeaderValue]>,
    /// Per quota: `"name";r=` (the prefix of the `RateLimit` value).
    pub(crate) prefix: Box<[Box<str>]>,
    /// Per quota: the burst, for `X-RateLimit-Limit`.
    pub(crate) legacy_limit: Box<[HeaderValue]>,
    /// Per quota, for Redis keys: `name:t_nanos:burst`.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) redis_suffix: Box<[Box<str>]>,
}

impl Limits {
    /// A set with one quota.
    pub fn new(quota: Quota) -> Self {
        Self::from_quotas(vec![quota])
    }

    /// Adds a quota: requests must then also fit in it.
    pub fn add_quota(self, quota: Quota) -> Self {
        let mut quotas = self.inner.quotas.to_vec();
        quotas.push(quota);
        Self::from_quotas(quotas)
    }

    fn from_quotas(quotas: Vec<Quota>) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let policy = quotas
            .iter()
            .map(|q| {
                let value = format!("\"{}\";q={};w={}", q.name(), q.burst(), q.window_secs());
                HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
            })
            .collect();
        let prefix = quotas.iter().map(|q| format!("\"{}\";r=", q.name()).into()).collect();
        let legacy_limit = quotas.iter().map(|q| HeaderValue::from(q.burst().get())).collect();
        let redis_suffix = quotas
            .iter()
            .map(|q| format!("{}:{}:{}", q.name(), q.t_nanos(), q.burst()).into())
            .collect();
        Self {
            inner: Arc::new(LimitsInner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                quotas: quotas.into_boxed_slice(),
                policy,
                prefix,
                legacy_limit,
                redis_suffix,
            }),
        }
    }

    /// The `RateLimit-Policy` item of each quota.
    #[cfg(all(feature = "envelope", feature = "auth"))]
    pub(crate) fn policies(&self) -> &[http::HeaderValue] {
        &self.inner.policy
    }

    /// The quotas, in the order they were added.
    pub fn quotas(&self) -> &[Quota] {
        &self.inner.quotas
    }

    pub(crate) fn id(&self) -> u64 {
        self.inner.id
    }

    /// The largest burst any single request may cost (the smallest burst of the set).
    pub(crate) fn max_cost(&self) -> u32 {
        self.inner.quotas.iter().map(|q| q.burst().get()).min().unwrap_or(0)
    }
}

impl From<Quota> for Limits {
    fn from(quota: Quota) -> Self {
        Self::new(quota)
    }
}

impl fmt::Debug for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.inner.quotas.iter()).finish()
    }
}
