use std::{
    collections::HashMap,
    fmt,
    future::Future,
    hash::{BuildHasher, Hasher, RandomState},
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{
    gcra::{summarize, Decision, Mode},
    key::RateKey,
    memory::MemoryStore,
    quota::Limits,
    store::Store,
};
use crate::{
    clock::{Clock, SystemClock},
    error::ConfigError,
    Error, ErrorKind,
};

/// What a [`RedisStore`] does when Redis fails or does not answer in time.
///
/// # Example
///
/// ```
/// use std::{num::NonZeroU32, time::Duration};
/// use tower_shield::rate_limit::{FailurePolicy, Quota, RateLimitLayer, RedisStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // A login limit must hold while Redis is down: fail closed (503) rather than unlimited.
/// // The store connects lazily, on its first decision.
/// let store = RedisStore::new("redis://127.0.0.1:6379", FailurePolicy::FailClosed)
///     .unwrap()
///     .timeout(Duration::from_millis(20));
/// assert_eq!(store.failure_policy(), FailurePolicy::FailClosed);
///
/// let quota = Quota::per_minute(NonZeroU32::new(10).unwrap()).named("login-ip");
/// let layer = RateLimitLayer::per_ip(quota).with_store(store);
/// # let _ = layer;
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Decide with a local in-memory limiter with the same quotas (each instance then
    /// enforces the quotas on its own), and log `backend.fail_open`.
    FailOpen,
    /// Answer 503 `service_unavailable`, and log `backend.failure`.
    FailClosed,
}

/// GCRA state in Redis, shared by every instance that uses the same Redis and prefix.
///
/// * One Lua script (EVALSHA, loaded again on `NOSCRIPT`) checks and charges every quota of a
///   request atomically, on the Redis server's `TIME`: one clock for all instances.
/// * Keys are `<prefix>{<hex of the rate key>}:<quota name>:<interval ns>:<burst>`: the hash
///   tag puts every quota of one key in the same Redis Cluster slot, and a changed quota does
///   not reuse old state. Each key gets a TTL (`PX`) of its remaining debt plus one second.
///   Layers and limiters sharing one store are kept apart by their quota names: give each
///   quota its own name (`per-ip`, `per-principal`, `login-user`...).
/// * Each call has a timeout (default 5 ms); the connection reconnects by itself
///   ([`ConnectionManager`]). On a failure or a timeout the [`FailurePolicy`] applies; the
///   choice is logged at construction.
/// * A local, bounded (10,000 entries) cache remembers rejected keys until their retry time,
///   so a client that is being rejected costs no Redis round trip. It is exact: another
///   instance can only push that time later.
///
/// Create and use it inside a Tokio runtime with the time and I/O drivers enabled (as
/// `#[tokio::main]` does). Clones share the connection.
///
/// ```no_run
/// use std::num::NonZeroU32;
/// use tower_shield::rate_limit::{FailurePolicy, Quota, RateLimitLayer, RedisStore};
///
/// # #[tokio::main] async fn main() -> Result<(), tower_shield::error::ConfigError> {
/// let store = RedisStore::new("redis://127.0.0.1:6379", FailurePolicy::FailOpen)?
///     .prefix("myapp:rl:");
/// let per_ip = Quota::per_minute(NonZeroU32::new(600).unwrap()).named("per-ip");
/// let layer = RateLimitLayer::per_ip(per_ip).with_store(store);
/// # let _ = layer; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
    policy: FailurePolicy,
    fallback: MemoryStore,
    rejected: Mutex<HashMap<u64, Cached>>,
    hasher: RandomState,
    clock: Arc<dyn Clock>,
    last_log: AtomicU64,
}

#[derive(Clone, Copy)]
struct Cached {
    until: u64,
    reset_until: u64,
    quota: usize,
    remaining: u64,
}

const REJECTED_CAPACITY: usize = 10_000;

const SCRIPT: &str = r"
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000000 + tonumber(now_t[2])
local cost = tonumber(ARGV[1])
local mode = ARGV[2]
local n = #KEYS
local out = {}
local state = {}
local allowed = 1
for i = 1, n do
  local t = tonumber(ARGV[1 + 2 * i])
  local burst = tonumber(ARGV[2 + 2 * i])
  local tau = t * (burst - 1)
  local tat = tonumber(redis.call('GET', KEYS[i]) or now) or now
  if tat < now then tat = now end
  local additional = t * (cost - 1)
  local earliest = tat + additional - tau
  local wait, nxt
  if now < earliest then
    wait = earliest - now
    nxt = tat
    allowed = 0
  else
    wait = 0
    nxt = tat + t + additional
  end
  local used = nxt - now
  local left = tau + t - used
  if left < 0 then left = 0 end
  state[i] = { tat, nxt, wait, t, burst }
  out[3 * i - 1] = wait
  out[3 * i] = math.floor(left / t)
  out[3 * i + 1] = used
end
out[1] = allowed
if (mode == 'a' and allowed == 1) or mode == 'c' then
  for i = 1, n do
    local s = state[i]
    local new = s[2]
    if s[3] > 0 then
      new = math.min(s[1] + s[4] * cost, now + s[4] * s[5])
      if new < s[1] then new = s[1] end
    end
    local ttl = math.ceil((new - now) / 1000) + 1000
    redis.call('SET', KEYS[i], string.format('%.0f', new), 'PX', ttl)
  end
end
return out
";

impl RedisStore {
    /// A store on the Redis at `url` (`redis://host:port/db`), connecting lazily. Keys are
    /// prefixed `tower-shield:rl:`.
    ///
    /// # Errors
    ///
    /// When `url` is not a valid Redis URL.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (the connection manager runs a task); decisions panic in a
    /// runtime without the time driver (the per-call timeout).
    pub fn new(url: &str, policy: FailurePolicy) -> Result<Self, ConfigError> {
        let client = redis::Client::open(url)
            .map_err(|e| ConfigError::new(format!("invalid Redis URL: {e}")))?;
        Self::from_client(client, policy)
    }

    /// A store on `client`, connecting lazily.
    ///
    /// # Errors
    ///
    /// When the connection manager cannot be set up.
    pub fn from_client(client: redis::Client, policy: FailurePolicy) -> Result<Self, ConfigError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| ConfigError::new(format!("cannot set up the Redis connection: {e}")))?;
        match policy {
            FailurePolicy::FailOpen => tracing::info!(
                target: "tower_shield::rate_limit",
                failure_policy = "fail_open",
                "rate limits in Redis; when Redis is unavailable each instance limits locally"
            ),
            FailurePolicy::FailClosed => tracing::info!(
                target: "tower_shield::rate_limit",
                failure_policy = "fail_closed",
                "rate limits in Redis; when Redis is unavailable requests are answered 503"
            ),
        }
        Ok(Self::build(
            conn,
            policy,
            "tower-shield:rl:".to_owned(),
            Duration::from_millis(5),
            Arc::new(SystemClock),
        ))
    }

    fn build(
        conn: ConnectionManager,
        policy: FailurePolicy,
        prefix: String,
        timeout: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                conn,
                script: redis::Script::new(SCRIPT),
                prefix,
                timeout,
                policy,
                fallback: MemoryStore::new(),
                rejected: Mutex::new(HashMap::new()),
                hasher: RandomState::new(),
                clock,
                last_log: AtomicU64::new(0),
            }),
        }
    }

    fn rebuild(self, f: impl FnOnce(&mut String, &mut Duration, &mut Arc<dyn Clock>)) -> Self {
        let inner = &self.inner;
        let (mut prefix, mut timeout, mut clock) =
            (inner.prefix.clone(), inner.timeout, Arc::clone(&inner.clock));
        f(&mut prefix, &mut timeout, &mut clock);
        let mut store = Self::build(inner.conn.clone(), inner.policy, prefix, timeout, clock);
        Arc::get_mut(&mut store.inner).expect("fresh").fallback = inner.fallback.clone();
        store
    }

    /// Prefixes every key with `prefix` (default `tower-shield:rl:`).
    pub fn prefix(self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        self.rebuild(|p, _, _| *p = prefix)
    }

    /// Gives up on Redis after `timeout` per call (default 5 ms) and applies the failure
    /// policy.
    pub fn timeout(self, timeout: Duration) -> Self {
        self.rebuild(|_, t, _| *t = timeout)
    }

    /// Uses `clock` for the local caches' time (tests pass a fake clock). Quotas in Redis run
    /// on the Redis server's clock.
    pub fn with_clock(self, clock: impl Clock + Clone) -> Self {
        let fallback = self.inner.fallback.clone().with_clock(clock.clone());
        let mut store = self.rebuild(|_, _, c| *c = Arc::new(clock));
        Arc::get_mut(&mut store.inner).expect("fresh").fallback = fallback;
        store
    }

    /// Uses `store` as the local limiter when failing open (default: a [`MemoryStore`] with
    /// the default capacity).
    pub fn with_fallback(self, store: MemoryStore) -> Self {
        let mut store_ = self.rebuild(|_, _, _| {});
        Arc::get_mut(&mut store_.inner).expect("fresh").fallback = store;
        store_
    }

    /// The failure policy.
    pub fn failure_policy(&self) -> FailurePolicy {
        self.inner.policy
    }
}

impl Inner {
    fn now(&self) -> u64 {
        u64::try_from(self.clock.monotonic().as_nanos()).unwrap_or(u64::MAX)
    }

    fn cache_key(&self, limits: &Limits, key: &RateKey, cost: u32) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write_u64(limits.id());
        h.write_u32(cost);
        h.write(key.as_bytes());
        h.finish()
    }

    fn cached(&self, hash: u64, now: u64) -> Option<Decision> {
        let cache = self.rejected.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let c = cache.get(&hash)?;
        (now < c.until).then(|| {
            Decision::new(
                false,
                c.quota,
                c.remaining,
                Duration::from_nanos(c.reset_until.saturating_sub(now)),
                Duration::from_nanos(c.until - now),
            )
        })
    }

    fn remember(&self, hash: u64, now: u64, decision: &Decision) {
        let mut cache = self.rejected.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= REJECTED_CAPACITY {
            cache.retain(|_, c| c.until > now);
            if cache.len() >= REJECTED_CAPACITY {
                return;
            }
        }
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        cache.insert(
            hash,
            Cached {
                until: now.saturating_add(nanos(decision.retry_after())),
                reset_until: now.saturating_add(nanos(decision.reset())),
                quota: decision.quota_index(),
                remaining: decision.remaining(),
            },
        );
    }

    /// Logs a backend failure at most once per second.
    fn log_failure(&self, error: &dyn fmt::Display) {
        // Counted every time; logged at most once per second.
        crate::observe::backend_failure("redis");
        if self.policy == FailurePolicy::FailOpen {
            crate::observe::fail_open("redis");
        }
        let now = self.now();
        let last = self.last_log.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < 1_000_000_000 {
            return;
        }
        self.last_log.store(now.max(1), Ordering::Relaxed);
        match self.policy {
            FailurePolicy::FailOpen => tracing::warn!(
                target: "tower_shield::security",
                event = "backend.fail_open",
                backend = "redis",
                reason = %error,
                "rate-limit store unavailable; limiting locally"
            ),
            FailurePolicy::FailClosed => tracing::error!(
                target: "tower_shield::security",
                event = "backend.failure",
                backend = "redis",
                reason = %error,
                "rate-limit store unavailable; answering 503"
            ),
        }
    }

    async fn call(
        &self,
        limits: &Limits,
        key: &RateKey,
        cost: u32,
        mode: Mode,
    ) -> Result<Decision, String> {
        let mut tag = String::with_capacity(self.prefix.len() + key.as_bytes().len() * 2 + 2);
        tag.push_str(&self.prefix);
        tag.push('{');
        for b in key.as_bytes() {
            use std::fmt::Write;
            let _ = write!(tag, "{b:02x}");
        }
        tag.push_str("}:");
        let mut invocation = self.script.prepare_invoke();
        for suffix in limits.inner.redis_suffix.iter() {
            invocation.key(format!("{tag}{suffix}"));
        }
        invocation.arg(cost).arg(match mode {
            Mode::Acquire => "a",
            Mode::Peek => "p",
            Mode::Charge => "c",
        });
        for quota in limits.quotas() {
            let t_us = (quota.t_nanos() / 1000).max(1);
            invocation.arg(t_us).arg(quota.burst().get());
        }
        let mut conn = self.conn.clone();
        let out: Vec<i64> = tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn))
            .await
            .map_err(|_| format!("timed out after {:?}", self.timeout))?
            .map_err(|e| e.to_string())?;
        if out.len() != 1 + 3 * limits.quotas().len() {
            return Err("unexpected script reply".to_owned());
        }
        let allowed = out[0] == 1;
        let peek = mode == Mode::Peek;
        let us = |v: i64| u64::try_from(v).unwrap_or(0).saturating_mul(1000);
        Ok(summarize(
            out[1..].chunks_exact(3).zip(limits.quotas()).map(|(c, quota)| {
                let (wait, remaining, reset) =
                    (us(c[0]), u64::try_from(c[1]).unwrap_or(0), us(c[2]));
                if peek && wait == 0 {
                    // As before the (uncharged) request.
                    let charge = quota.t_nanos().saturating_mul(u64::from(cost));
                    (0, remaining + u64::from(cost), reset.saturating_sub(charge))
                } else {
                    (wait, remaining, reset)
                }
            }),
            allowed,
        ))
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Decision, Error>> + Send>>;

impl Store for RedisStore {
    type Future = BoxFuture;

    fn decide(&self, limits: &Limits, key: &RateKey, cost: u32, mode: Mode) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        let hash = inner.cache_key(limits, key, cost);
        if mode != Mode::Charge {
            if let Some(decision) = inner.cached(hash, inner.now()) {
                return Box::pin(std::future::ready(Ok(decision)));
            }
        }
        let limits = limits.clone();
        let key = key.clone();
        Box::pin(async move {
            match inner.call(&limits, &key, cost, mode).await {
                Ok(decision) => {
                    if !decision.is_allowed() && mode != Mode::Charge {
                        inner.remember(hash, inner.now(), &decision);
                    }
                    Ok(decision)
                }
                Err(error) => {
                    inner.log_failure(&error);
                    match inner.policy {
                        FailurePolicy::FailOpen => {
                            Ok(inner.fallback.decide_now(&limits, &key, cost, mode))
                        }
                        FailurePolicy::FailClosed => Err(Error::new(ErrorKind::ServiceUnavailable)
                            .with_reason("rate-limit store unavailable")),
                    }
                }
            }
        })
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .field("failure_policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}
