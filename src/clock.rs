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
