use std::{
    collections::HashMap,
    fmt,
    future::{ready, Ready},
    hash::{BuildHasher, Hasher, RandomState},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use super::{
    gcra::{decide, Decision, Mode},
    key::RateKey,
    quota::Limits,
    store::Store,
};
use crate::{
    clock::{Clock, SystemClock},
    error::ConfigError,
    prehashed::PrehashedMap,
    Error,
};

/// Keys tracked by default.
pub const DEFAULT_CAPACITY: usize = 100_000;

const SHARDS: usize = 64;

/// How often each shard drops its idle entries (amortised in `decide`).
const CLEANUP_EVERY: u64 = 1_000_000_000;

/// The in-process store: GCRA (governor's semantics) per key, in a bounded sharded map.
///
/// # Bounded memory
///
/// At most [`capacity`](MemoryStore::with_capacity) keys are tracked (default 100,000). An
/// entry holds only a 64-bit keyed hash of the key and one timestamp per quota.
///
/// * A key whose every quota is whole again (its state equals a fresh key's) is *idle*:
///   dropping it changes nothing. Each shard drops its idle keys about once a second during
///   normal calls (no background task), and at once when it is full.
/// * A key that still carries debt is never evicted, so evicting cannot hand a client a fresh
///   burst.
/// * When the store is full of active keys, a new key is charged to one **overflow bucket**
///   per set of quotas, shared by every untracked key: a flood of distinct keys gets one
///   quota between all of them and cannot push out the state of keys already limited. Clients
///   new during such a flood may be rejected until tracked keys go idle.
///
/// Clones share the state.
///
/// # Example
///
/// ```
/// use std::{convert::Infallible, net::SocketAddr, num::NonZeroU32};
/// use http::{Request, Response};
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_shield::rate_limit::{MemoryStore, PeerAddr, Quota, RateLimitLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = MemoryStore::with_capacity(10_000).unwrap();
/// let quota = Quota::per_minute(NonZeroU32::new(10).unwrap());
/// let service = ServiceBuilder::new()
///     .layer(RateLimitLayer::per_ip(quota).with_store(store.clone()))
///     .service_fn(|_: Request<String>| async {
///         Ok::<_, Infallible>(Response::new(String::new()))
///     });
///
/// for client in [[203, 0, 113, 7], [198, 51, 100, 9], [203, 0, 113, 7]] {
///     let mut request = Request::new(String::new());
///     request.extensions_mut().insert(PeerAddr(SocketAddr::from((client, 4711))));
///     service.clone().oneshot(request).await.unwrap();
/// }
/// // `store` shares its state with the layer's clone: two clients tracked.
/// assert_eq!((store.len(), store.capacity()), (2, 10_000));
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    overflow: Mutex<HashMap<u64, Box<[u64]>>>,
    len: AtomicUsize,
    capacity: usize,
    hasher: RandomState,
    clock: Arc<dyn Clock>,
}

#[derive(Default)]
struct Shard {
    map: PrehashedMap<Box<[u64]>>,
    next_cleanup: u64,
    /// When the shard was last found full of active keys: the earliest time one goes idle.
    next_idle: u64,
}

impl MemoryStore {
    /// A store tracking up to [`DEFAULT_CAPACITY`] keys, on the system clock.
    pub fn new() -> Self {
        Self::build(DEFAULT_CAPACITY, Arc::new(SystemClock))
    }

    /// A store tracking up to `capacity` keys.
    ///
    /// # Errors
    ///
    /// When `capacity` is zero.
    pub fn with_capacity(capacity: usize) -> Result<Self, ConfigError> {
        if capacity == 0 {
            return Err(ConfigError::new("a rate-limit store needs a capacity above zero"));
        }
        Ok(Self::build(capacity, Arc::new(SystemClock)))
    }

    /// Uses `clock` for time (a [`FakeClock`](crate::clock::FakeClock) in tests). Resets the
    /// state.
    pub fn with_clock(self, clock: impl Clock) -> Self {
        Self::build(self.inner.capacity, Arc::new(clock))
    }

    fn build(capacity: usize, clock: Arc<dyn Clock>) -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect();
        Self {
            inner: Arc::new(Inner {
                shards,
                overflow: Mutex::new(HashMap::new()),
                len: AtomicUsize::new(0),
                capacity,
                hasher: RandomState::new(),
                clock,
            }),
        }
    }

    /// The number of keys tracked now (the overflow buckets not included).
    pub fn len(&self) -> usize {
        self.inner.len.load(Ordering::Relaxed)
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The largest number of keys tracked.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// Decides synchronously: what [`Store::decide`] answers, without a future.
    pub fn decide_now(&self, limits: &Limits, key: &RateKey, cost: u32, mode: Mode) -> Decision {
        self.decide_at(limits, key, cost, mode, &mut None)
    }

    /// [`decide_now`](Self::decide_now) at `now` (this store's monotonic time in nanoseconds),
    /// read from the clock if `None` and kept there: several limits deciding on one request
    /// read the clock once.
    pub(crate) fn decide_at(
        &self,
        limits: &Limits,
        key: &RateKey,
        cost: u32,
        mode: Mode,
        now: &mut Option<u64>,
    ) -> Decision {
        let inner = &*self.inner;
        let now = *now.get_or_insert_with(|| nanos(inner.clock.monotonic()));
        let hash = {
            let mut h = inner.hasher.build_hasher();
            h.write_u64(limits.id());
            h.write(key.as_bytes());
            h.finish()
        };
        let mut shard = lock(&inner.shards[(hash as usize) % SHARDS]);
        if now >= shard.next_cleanup {
            shard.next_cleanup = now.saturating_add(CLEANUP_EVERY);
            inner.sweep(&mut shard, now);
        }
        if let Some(tats) = shard.map.get_mut(&hash) {
            return decide(limits, Some(tats), now, cost, mode);
        }
        let mut fresh = vec![0u64; limits.quotas().len()].into_boxed_slice();
        let decision = decide(limits, None, now, cost, mode);
        if mode == Mode::Peek && inner.len.load(Ordering::Acquire) < inner.capacity {
            // Nothing to remember: an unseen key is a full bucket. (When the store is full,
            // an unseen key would be charged to the overflow bucket, so it is peeked there:
            // otherwise a flood of other keys would exempt it from only-failures counting.)
            return decision;
        }
        if !decision.is_allowed() && mode == Mode::Acquire {
            return decision;
        }
        if inner.reserve()
            || (now >= shard.next_idle && inner.sweep(&mut shard, now) > 0 && inner.reserve())
        {
            let decision = decide(limits, Some(&mut fresh), now, cost, mode);
            shard.map.insert(hash, fresh);
            return decision;
        }
        drop(shard);
        let mut overflow = lock(&inner.overflow);
        let tats = overflow
            .entry(limits.id())
            .or_insert_with(|| vec![0u64; limits.quotas().len()].into_boxed_slice());
        decide(limits, Some(tats), now, cost, mode)
    }
}

impl Inner {
    /// Takes one slot of the capacity.
    fn reserve(&self) -> bool {
        self.len
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .is_ok()
    }

    /// Drops the idle keys of one shard; returns how many.
    fn sweep(&self, shard: &mut Shard, now: u64) -> usize {
        let before = shard.map.len();
        let mut next_idle = u64::MAX;
        shard.map.retain(|_, tats| {
            let latest = tats.iter().copied().max().unwrap_or(0);
            if latest <= now {
                false
            } else {
                next_idle = next_idle.min(latest);
                true
            }
        });
        shard.next_idle = next_idle;
        let removed = before - shard.map.len();
        self.len.fetch_sub(removed, Ordering::AcqRel);
        removed
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The critical sections cannot panic midway through an update; a poisoned lock still
    // holds consistent state.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("len", &self.len())
            .field("capacity", &self.inner.capacity)
            .field("clock", &self.inner.clock)
            .finish()
    }
}

impl Store for MemoryStore {
    type Future = Ready<Result<Decision, Error>>;

    fn decide(&self, limits: &Limits, key: &RateKey, cost: u32, mode: Mode) -> Self::Future {
        ready(Ok(self.decide_now(limits, key, cost, mode)))
    }

    fn decide_ready(
        &self,
        limits: &Limits,
        key: &RateKey,
        cost: u32,
        mode: Mode,
    ) -> Option<Result<Decision, Error>> {
        Some(Ok(self.decide_now(limits, key, cost, mode)))
    }
}
