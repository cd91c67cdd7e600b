//! Time, made replaceable for tests.
//!
//! Every time-dependent decision (token expiry, quotas, idempotency TTLs, caches) reads a
//! [`Clock`]. Production code uses [`SystemClock`]; tests pass a [`FakeClock`] and advance it,
//! so no test sleeps.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_shield::clock::{Clock, FakeClock};
//!
//! let clock = FakeClock::new();
//! let start = clock.monotonic();
//! clock.advance(Duration::from_secs(90));
//! assert_eq!(clock.monotonic() - start, Duration::from_secs(90));
//! ```

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// A source of time.
///
/// Implement it to take time from somewhere else, and pass it to a layer's `with_clock`.
/// `Arc<C>` (`Arc<dyn Clock>` too) is a clock as well.
///
/// # Example
///
/// ```
/// use std::{sync::Arc, time::{Duration, SystemTime, UNIX_EPOCH}};
/// use tower_shield::clock::Clock;
///
/// /// A clock stopped at one instant, e.g. to replay a recorded request.
/// #[derive(Debug)]
/// struct Stopped(SystemTime);
///
/// impl Clock for Stopped {
///     fn now(&self) -> SystemTime {
///         self.0
///     }
///
///     fn monotonic(&self) -> Duration {
///         Duration::ZERO
///     }
/// }
///
/// fn expired(clock: &impl Clock, exp: SystemTime) -> bool {
///     clock.now() >= exp
/// }
///
/// let clock: Arc<dyn Clock> = Arc::new(Stopped(UNIX_EPOCH + Duration::from_secs(1_000)));
/// assert!(expired(&clock, UNIX_EPOCH + Duration::from_secs(1_000)));
/// assert!(!expired(&clock, UNIX_EPOCH + Duration::from_secs(1_001)));
/// ```
pub trait Clock: fmt::Debug + Send + Sync + 'static {
    /// Wall-clock time, for comparing against timestamps in credentials (`exp`, `nbf`,
    /// `auth_time`).
    fn now(&self) -> SystemTime;

    /// Monotonic time since a fixed, arbitrary origin, for measuring intervals (quotas, TTLs).
    /// Never goes backwards.
    fn monotonic(&self) -> Duration;
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> SystemTime {
        (**self).now()
    }

    fn monotonic(&self) -> Duration {
        (**self).monotonic()
    }
}

/// The real clock: [`SystemTime::now`] and [`Instant::now`].
///
/// Layers use it unless given another clock.
///
/// # Example
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use tower_shield::clock::{Clock, SystemClock};
///
/// let clock = SystemClock;
/// assert!(clock.now() > UNIX_EPOCH);
///
/// // Intervals are measured on the monotonic clock, which never goes backwards.
/// let start = clock.monotonic();
/// std::thread::sleep(Duration::from_millis(10));
/// assert!(clock.monotonic() - start >= Duration::from_millis(10));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn monotonic(&self) -> Duration {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        ORIGIN.get_or_init(Instant::now).elapsed()
    }
}

/// A clock that only moves when told to. Clones share the same time.
///
/// It starts at a fixed wall-clock time (2025-01-01T00:00:00Z) and monotonic time zero, so
/// tests are reproducible.
///
/// # Example
///
/// A rate limit tested without sleeping: the layer and the test share one clock.
///
/// ```
/// use std::{convert::Infallible, net::SocketAddr, num::NonZeroU32, time::Duration};
/// use http::{Request, Response, StatusCode};
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_shield::{clock::FakeClock, rate_limit::{PeerAddr, Quota, RateLimitLayer}};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let clock = FakeClock::new();
/// let quota = Quota::per_minute(NonZeroU32::new(1).unwrap());
/// let mut service = ServiceBuilder::new()
///     .layer(RateLimitLayer::per_ip(quota).with_clock(clock.clone()))
///     .service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(String::new())) });
/// let request = || {
///     let mut request = Request::new(());
///     request.extensions_mut().insert(PeerAddr(SocketAddr::from(([203, 0, 113, 7], 4711))));
///     request
/// };
///
/// let mut call = async || service.ready().await.unwrap().call(request()).await.unwrap();
/// assert_eq!(call().await.status(), StatusCode::OK);
/// assert_eq!(call().await.status(), StatusCode::TOO_MANY_REQUESTS);
/// clock.advance(Duration::from_secs(60)); // the quota refills at once
/// assert_eq!(call().await.status(), StatusCode::OK);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct FakeClock {
    nanos: Arc<AtomicU64>,
    wall_origin: SystemTime,
}

impl FakeClock {
    /// 2025-01-01T00:00:00Z as Unix seconds.
    const DEFAULT_UNIX: u64 = 1_735_689_600;

    /// A fake clock at 2025-01-01T00:00:00Z.
    pub fn new() -> Self {
        Self::at(UNIX_EPOCH + Duration::from_secs(Self::DEFAULT_UNIX))
    }

    /// A fake clock whose wall-clock time starts at `now`.
    pub fn at(now: SystemTime) -> Self {
        Self { nanos: Arc::new(AtomicU64::new(0)), wall_origin: now }
    }

    /// Moves time forward by `by`, for this clock and all its clones.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(by, Ordering::SeqCst);
    }
}

impl Default for FakeClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for FakeClock {
    fn now(&self) -> SystemTime {
        self.wall_origin + self.monotonic()
    }

    fn monotonic(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_clock_clones_share_time() {
        let clock = FakeClock::new();
        let other = clock.clone();
        clock.advance(Duration::from_secs(5));
        assert_eq!(other.monotonic(), Duration::from_secs(5));
        assert_eq!(
            other.now().duration_since(UNIX_EPOCH).unwrap().as_secs(),
            FakeClock::DEFAULT_UNIX + 5
        );
    }

    #[test]
    fn system_clock_is_monotonic() {
        let a = SystemClock.monotonic();
        let b = SystemClock.monotonic();
        assert!(b >= a);
    }
}
