//! GCRA with governor's semantics, on plain nanosecond timestamps, for several quotas at once.

use std::time::Duration;

use super::quota::Limits;

/// What a store decided for one request.
///
/// # Example
///
/// ```
/// use std::{num::NonZeroU32, time::Duration};
/// use tower_shield::clock::FakeClock;
/// use tower_shield::rate_limit::{MemoryStore, Quota, RateKey, RateLimiter};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = RateLimiter::new(Quota::per_minute(NonZeroU32::new(2).unwrap()).named("export"))
///     .with_store(MemoryStore::new().with_clock(FakeClock::new()));
/// let decision = limiter.acquire(&RateKey::from("tenant-42")).await.unwrap();
/// assert!(decision.is_allowed());
/// assert_eq!(decision.quota_index(), 0); // the only quota, "export"
/// assert_eq!(decision.remaining(), 1);
/// assert_eq!(decision.reset(), Duration::from_secs(30)); // one unit comes back every 30 s
/// assert_eq!(decision.retry_after(), Duration::ZERO);
/// assert_eq!(limiter.header_value(&decision), r#""export";r=1;t=30"#);
/// # }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Decision {
    remaining: u64,
    /// `reset` and `retry_after` in nanoseconds (584 years at most): a decision is kept in a
    /// response future until the response, and a smaller future is cheaper to move.
    reset: u64,
    retry_after: u64,
    quota: u32,
    allowed: bool,
}

impl Decision {
    /// A decision. `quota` is the index (in [`Limits::quotas`]) of the quota that decides the
    /// headers.
    pub fn new(
        allowed: bool,
        quota: usize,
        remaining: u64,
        reset: Duration,
        retry_after: Duration,
    ) -> Self {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Self {
            remaining,
            reset: nanos(reset),
            retry_after: nanos(retry_after),
            quota: u32::try_from(quota).unwrap_or(u32::MAX),
            allowed,
        }
    }

    /// Whether the request fits in every quota.
    pub fn is_allowed(&self) -> bool {
        self.allowed
    }

    /// The index of the most restrictive quota: the one whose wait is longest when rejected,
    /// or the one with the fewest remaining units when accepted.
    pub fn quota_index(&self) -> usize {
        self.quota as usize
    }

    /// Units left in that quota, after this request if it was charged.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Time until that quota is whole again (the `t` of the `RateLimit` header).
    pub fn reset(&self) -> Duration {
        Duration::from_nanos(self.reset)
    }

    /// When rejected: how long until the same request would pass. Zero when allowed.
    pub fn retry_after(&self) -> Duration {
        Duration::from_nanos(self.retry_after)
    }
}

impl std::fmt::Debug for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decision")
            .field("allowed", &self.allowed)
            .field("quota", &self.quota)
            .field("remaining", &self.remaining)
            .field("reset", &self.reset())
            .field("retry_after", &self.retry_after())
            .finish()
    }
}

/// Whether to charge the request or only ask if it would pass.
///
/// # Example
///
/// ```
/// use std::{num::NonZeroU32, time::Duration};
/// use tower_shield::clock::FakeClock;
/// use tower_shield::rate_limit::{Limits, MemoryStore, Mode, Quota, RateKey};
///
/// let clock = FakeClock::new();
/// let store = MemoryStore::new().with_clock(clock.clone());
/// let limits = Limits::new(Quota::per_minute(NonZeroU32::new(2).unwrap()));
/// let key = RateKey::from("alice");
/// let retry_after = || store.decide_now(&limits, &key, 1, Mode::Peek).retry_after();
///
/// // Only-failures counting: peek before each attempt, charge after a failed one.
/// for _ in 0..2 {
///     assert!(store.decide_now(&limits, &key, 1, Mode::Peek).is_allowed());
///     store.decide_now(&limits, &key, 1, Mode::Charge);
/// }
/// assert_eq!(retry_after(), Duration::from_secs(30));
///
/// clock.advance(Duration::from_secs(10));
/// // Acquire refuses without charging; Charge counts a failure even beyond the limit.
/// assert!(!store.decide_now(&limits, &key, 1, Mode::Acquire).is_allowed());
/// assert_eq!(retry_after(), Duration::from_secs(20));
/// store.decide_now(&limits, &key, 1, Mode::Charge);
/// assert_eq!(retry_after(), Duration::from_secs(30));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Check, and charge every quota if all have room (the normal case).
    Acquire,
    /// Check without charging (the first half of only-failures counting).
    Peek,
    /// Charge every quota whatever the outcome (the second half of only-failures counting:
    /// the failure happened, so it counts even beyond the limit).
    Charge,
}

/// One quota's view at `now`, before charging.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QuotaCheck {
    /// The new TAT if charged.
    pub(crate) next: u64,
    /// 0 when the request fits, else the wait.
    pub(crate) wait: u64,
    /// Remaining units and reset if charged (when it fits) or as is (when it does not).
    pub(crate) remaining: u64,
    pub(crate) reset: u64,
}

/// Governor's GCRA for one quota: `t` the replenish interval, `tau = t * (burst - 1)`, `n` the
/// cost. `tat` is `None` for a key never seen (equivalent to a full bucket).
pub(crate) fn check(tat: Option<u64>, now: u64, t: u64, burst: u32, n: u32) -> QuotaCheck {
    let tau = t.saturating_mul(u64::from(burst.saturating_sub(1)));
    let tat = tat.unwrap_or(now).max(now);
    let additional = t.saturating_mul(u64::from(n.saturating_sub(1)));
    let earliest = tat.saturating_add(additional).saturating_sub(tau);
    let capacity = tau.saturating_add(t);
    if now < earliest {
        let used = tat - now;
        QuotaCheck {
            next: tat,
            wait: earliest - now,
            remaining: capacity.saturating_sub(used) / t,
            reset: used,
        }
    } else {
        let next = tat.saturating_add(t).saturating_add(additional);
        let used = next - now;
        QuotaCheck { next, wait: 0, remaining: capacity.saturating_sub(used) / t, reset: used }
    }
}

/// Checks every quota of `limits` against `tats` (the stored TATs, `None` for a new key) and
/// updates `tats` when the mode says so. Returns the decision.
pub(crate) fn decide(
    limits: &Limits,
    tats: Option<&mut [u64]>,
    now: u64,
    cost: u32,
    mode: Mode,
) -> Decision {
    let quotas = limits.quotas();
    let mut checks = [QuotaCheck { next: 0, wait: 0, remaining: 0, reset: 0 }; 8];
    let mut heap = Vec::new();
    let checks: &mut [QuotaCheck] = if quotas.len() <= checks.len() {
        &mut checks[..quotas.len()]
    } else {
        heap.resize(quotas.len(), checks[0]);
        &mut heap
    };
    let stored = tats.as_deref();
    for (i, quota) in quotas.iter().enumerate() {
        let tat = stored.map(|tats| tats[i]);
        checks[i] = check(tat, now, quota.t_nanos(), quota.burst().get(), cost);
    }
    let allowed = checks.iter().all(|c| c.wait == 0);
    let charge = match mode {
        Mode::Acquire => allowed,
        Mode::Peek => false,
        Mode::Charge => true,
    };
    if charge {
        if let Some(tats) = tats {
            for (i, quota) in quotas.iter().enumerate() {
                let start = tats[i].max(now);
                let t = quota.t_nanos();
                tats[i] = if checks[i].wait == 0 {
                    checks[i].next
                } else {
                    // Charged beyond the limit: the debt is kept, capped at one burst ahead
                    // so a flood of failures cannot lock a key out for ever.
                    let cap = now.saturating_add(t.saturating_mul(u64::from(quota.burst().get())));
                    start.saturating_add(t.saturating_mul(u64::from(cost))).min(cap.max(start))
                };
            }
        }
    }
    let peek = mode == Mode::Peek;
    summarize(
        checks.iter().zip(quotas).map(|(c, quota)| {
            if peek && c.wait == 0 {
                // As before the (uncharged) request.
                let charge = quota.t_nanos().saturating_mul(u64::from(cost));
                (0, c.remaining + u64::from(cost), c.reset.saturating_sub(charge))
            } else {
                (c.wait, c.remaining, c.reset)
            }
        }),
        allowed,
    )
}

/// Picks the quota that decides the headers, from `(wait, remaining, reset)` per quota.
pub(crate) fn summarize(
    per_quota: impl Iterator<Item = (u64, u64, u64)>,
    allowed: bool,
) -> Decision {
    let mut best: Option<(usize, (u64, u64, u64))> = None;
    for (i, q) in per_quota.enumerate() {
        let better = match best {
            None => true,
            Some((_, b)) => {
                if allowed {
                    q.1 < b.1 || (q.1 == b.1 && q.2 > b.2)
                } else {
                    q.0 > b.0
                }
            }
        };
        if better {
            best = Some((i, q));
        }
    }
    let (index, (wait, remaining, reset)) = best.unwrap_or((0, (0, 0, 0)));
    Decision::new(
        allowed,
        index,
        remaining,
        Duration::from_nanos(reset),
        Duration::from_nanos(wait),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Decision;

    #[test]
    fn a_decision_keeps_its_durations_to_the_nanosecond() {
        let decision = Decision::new(false, 2, 7, Duration::new(3, 5), Duration::from_nanos(1));
        assert_eq!(decision.reset(), Duration::new(3, 5));
        assert_eq!(decision.retry_after(), Duration::from_nanos(1));
        assert_eq!((decision.quota_index(), decision.remaining()), (2, 7));
        assert!(!decision.is_allowed());
        // Beyond 584 years a wait saturates; no decision of a quota comes near.
        let far = Decision::new(false, 0, 0, Duration::MAX, Duration::MAX);
        assert_eq!(far.retry_after(), Duration::from_nanos(u64::MAX));
        assert_eq!(
            format!("{decision:?}"),
            "Decision { allowed: false, quota: 2, remaining: 7, reset: 3.000000005s, \
             retry_after: 1ns }"
        );
    }
}
