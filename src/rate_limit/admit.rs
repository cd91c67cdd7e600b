//! What a limit does around the inner service, apart from the future that carries it: the key
//! and the store's answer before the call ([`RateLimitLayer::admit`], [`Shared::settle`]), the
//! headers after it. Shared by [`RateLimit`](super::RateLimit) and the preset's guard.

use std::any::Any;

use http::{request::Parts, HeaderMap, HeaderName, HeaderValue, Response};

use super::{
    client_ip::ClientAddr,
    gcra::{Decision, Mode},
    key::{KeyExtractor, RateKey},
    layer::{LimitsSource, MissingKey, Shared},
    memory::MemoryStore,
    quota::{ceil_secs, Limits},
    store::Store,
    RateLimitLayer,
};
use crate::{error::Spent, Error, ErrorKind};

// Constants, not statics: a header map takes a constant name as it is, where a static one
// would be cloned, through its bytes' vtable, for every response.
pub(crate) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// A limit's verdict on a request before the inner service is called.
pub(crate) enum Admission<F> {
    /// No key, and [`MissingKey::Skip`]: not limited, no headers.
    Skip,
    /// Refused before the store was asked (no key: 500; a cost beyond every burst: 429
    /// without `Retry-After`), already logged.
    Refused(Error),
    /// The store's answer for `Check`: given at once (in memory) or to be awaited (Redis).
    Checked(Check, Verdict<F>),
}

/// The store's answer.
pub(crate) enum Verdict<F> {
    Now(Result<Decision, Error>),
    Later(F),
}

/// What a checked request keeps until its response.
pub(crate) struct Check {
    /// The quotas, when chosen per request; `None` for the layer's fixed set.
    pub(crate) limits: Option<Limits>,
    pub(crate) cost: u32,
    /// Only-failures counting: the key to charge when the response is a failure.
    pub(crate) key: Option<RateKey>,
}

impl<K: KeyExtractor, St: Store> RateLimitLayer<K, St> {
    /// Resolves the client IP (kept as a [`ClientAddr`]), extracts the key and asks the store.
    ///
    /// `now` is the time of a [`MemoryStore`] deciding on this request, read once by the first
    /// limit that asks it (see [`MemoryStore::decide_at`]); other stores read their own time.
    pub(crate) fn admit(&self, parts: &mut Parts, now: &mut Option<u64>) -> Admission<St::Future> {
        let shared = &*self.shared;
        if let Some(client_ip) = &shared.client_ip {
            if let Some(ip) = client_ip.resolve(parts) {
                crate::observe::client_ip(&parts.extensions, ip);
                parts.extensions.insert(ClientAddr(ip));
            }
        }
        let key = match self.key.extract(parts) {
            Some(key) => key,
            None => {
                let fallback = match shared.missing {
                    MissingKey::Reject => None,
                    MissingKey::Skip => return Admission::Skip,
                    MissingKey::ClientIp => match parts.extensions.get::<ClientAddr>().copied() {
                        Some(ClientAddr(ip)) => Some(shared.fallback_ip.key_for(ip)),
                        None => shared.fallback_ip.resolve(parts).map(|ip| {
                            crate::observe::client_ip(&parts.extensions, ip);
                            shared.fallback_ip.key_for(ip)
                        }),
                    },
                };
                match fallback {
                    Some(key) => key,
                    None => return Admission::Refused(missing_key(&shared.kind)),
                }
            }
        };
        let dynamic = match &shared.limits {
            LimitsSource::Fixed(_) => None,
            LimitsSource::Dynamic(select) => Some(select(parts)),
        };
        let limits = dynamic.as_ref().unwrap_or_else(|| shared.fixed_limits());
        let cost = shared.cost.as_ref().map_or(1, |cost| cost(parts).get());
        if cost > limits.max_cost() {
            return Admission::Refused(too_costly(shared, limits, parts));
        }
        let mode = if shared.count_only.is_some() { Mode::Peek } else { Mode::Acquire };
        let memory = (&self.store as &dyn Any).downcast_ref::<MemoryStore>();
        let verdict = match memory {
            Some(memory) => Verdict::Now(Ok(memory.decide_at(limits, &key, cost, mode, now))),
            None => match self.store.decide_ready(limits, &key, cost, mode) {
                Some(outcome) => Verdict::Now(outcome),
                None => Verdict::Later(self.store.decide(limits, &key, cost, mode)),
            },
        };
        let key = shared.count_only.is_some().then_some(key);
        Admission::Checked(Check { limits: dynamic, cost, key }, verdict)
    }
}

impl Shared {
    /// The fixed set of quotas. Only called when the layer has one (`admit` keeps the quotas
    /// chosen per request in its [`Check`]).
    fn fixed_limits(&self) -> &Limits {
        match &self.limits {
            LimitsSource::Fixed(limits) => limits,
            LimitsSource::Dynamic(_) => unreachable!("quotas chosen per request are in the Check"),
        }
    }

    /// The quotas `check` was decided against.
    pub(crate) fn limits<'a>(&'a self, check: &'a Check) -> &'a Limits {
        check.limits.as_ref().unwrap_or_else(|| self.fixed_limits())
    }

    /// Acts on the store's answer: the decision of an allowed request, kept for its response
    /// headers, or the response to send instead (a 429 with this limit's headers, or the
    /// store's error), made in the request's extensions.
    pub(crate) fn settle<B: Default>(
        &self,
        check: &Check,
        outcome: Result<Decision, Error>,
        parts: &mut Parts,
    ) -> Result<Decision, Response<B>> {
        let limits = self.limits(check);
        match outcome {
            Err(error) => {
                let policy = limits.quotas().first().map_or("", |q| q.name());
                crate::observe::rate_limit(&parts.extensions, policy, &self.kind, "error");
                Err(error.into_response(Spent::parts(parts)))
            }
            Ok(decision) if !decision.is_allowed() => Err(self.reject(limits, &decision, parts)),
            Ok(decision) => {
                if let Some(span) = crate::observe::span(&parts.extensions) {
                    let policy = limits.quotas()[decision.quota_index()].name();
                    span.record("rate_limit.policy", policy);
                    span.record("rate_limit.outcome", "allowed");
                }
                Ok(decision)
            }
        }
    }

    /// The 429 for a rejected decision, with its headers and the security event.
    fn reject<B: Default>(
        &self,
        limits: &Limits,
        decision: &Decision,
        parts: &mut Parts,
    ) -> Response<B> {
        let policy = limits.quotas()[decision.quota_index()].name();
        crate::observe::rate_limit(&parts.extensions, policy, &self.kind, "rejected");
        tracing::info!(
            target: "tower_shield::security",
            event = "rate_limit.rejected",
            policy,
            key_kind = %self.kind,
            route = crate::observe::route(&parts.extensions, &parts.uri),
            retry_after_ms = u64::try_from(decision.retry_after().as_millis()).unwrap_or(u64::MAX),
            "rate limit exceeded"
        );
        let mut response = Error::new(ErrorKind::RateLimited)
            .with_reason("rate-limit quota exhausted")
            .with_retry_after(decision.retry_after())
            .into_response(Spent::parts(parts));
        self.write_headers(response.headers_mut(), limits, decision);
        response
    }

    /// `RateLimit`, `RateLimit-Policy` and the legacy headers for `decision`.
    ///
    /// `RateLimit` and `RateLimit-Policy` are lists (draft-10): stacked layers (per IP outside,
    /// per principal inside) each append their item, so a client rejected by the inner quota
    /// still sees that quota, first. The single-valued legacy `X-RateLimit-*` headers keep the
    /// inner layer's values.
    pub(crate) fn write_headers(
        &self,
        headers: &mut HeaderMap,
        limits: &Limits,
        decision: &Decision,
    ) {
        if self.headers {
            // Appended: when another limit layer (nested inside this one, e.g. a per-route
            // limit under a per-IP one) already wrote its policy, both are listed, the inner
            // one first (both headers are structured-field lists), so a client sees every limit
            // it is under.
            headers.append(RATELIMIT_POLICY, limits.inner.policy[decision.quota_index()].clone());
            headers.append(RATELIMIT, ratelimit_value(&[(limits, decision)]));
        }
        if self.legacy_headers && !headers.contains_key(&X_LIMIT) {
            let i = decision.quota_index();
            headers.insert(X_LIMIT, limits.inner.legacy_limit[i].clone());
            headers.insert(X_REMAINING, HeaderValue::from(decision.remaining()));
            headers.insert(X_RESET, HeaderValue::from(ceil_secs(decision.reset())));
        }
    }
}

/// For the preset's guard, which keeps only the decisions of its two limits (both fixed).
#[cfg(all(feature = "envelope", feature = "auth"))]
impl<K, St> RateLimitLayer<K, St> {
    /// The fixed quotas, when this layer writes only the standard headers (so that its items
    /// can share a line with another limit's); `None` otherwise.
    pub(crate) fn pair_limits(&self) -> Option<&Limits> {
        match &self.shared.limits {
            LimitsSource::Fixed(limits) if self.shared.headers && !self.shared.legacy_headers => {
                Some(limits)
            }
            _ => None,
        }
    }

    /// [`Shared::write_headers`] for a decision on the fixed quotas.
    pub(crate) fn write_fixed_headers(&self, headers: &mut HeaderMap, decision: &Decision) {
        self.shared.write_headers(headers, self.shared.fixed_limits(), decision);
    }

    /// Whether the quotas are fixed (not chosen per request).
    pub(crate) fn has_fixed_limits(&self) -> bool {
        matches!(self.shared.limits, LimitsSource::Fixed(_))
    }
}

/// The `RateLimit` items of `decisions`, in order, as one list:
/// `"name";r=<remaining>;t=<seconds>, ...`.
pub(crate) fn ratelimit_value(decisions: &[(&Limits, &Decision)]) -> HeaderValue {
    fn item<'a>((limits, decision): &(&'a Limits, &Decision)) -> (&'a [u8], u64, u64) {
        let prefix = limits.inner.prefix[decision.quota_index()].as_bytes();
        (prefix, decision.remaining(), ceil_secs(decision.reset()))
    }
    let len = decisions.iter().map(item).fold(0, |len, (prefix, remaining, reset)| {
        len + prefix.len() + decimal_len(remaining) + ";t=".len() + decimal_len(reset)
    }) + ", ".len() * decisions.len().saturating_sub(1);
    // Exactly sized: a full `Vec` becomes `Bytes` without a second allocation.
    let mut value = Vec::with_capacity(len);
    let mut digits = itoa::Buffer::new();
    for (i, (prefix, remaining, reset)) in decisions.iter().map(item).enumerate() {
        if i > 0 {
            value.extend_from_slice(b", ");
        }
        value.extend_from_slice(prefix);
        value.extend_from_slice(digits.format(remaining).as_bytes());
        value.extend_from_slice(b";t=");
        value.extend_from_slice(digits.format(reset).as_bytes());
    }
    debug_assert_eq!(value.len(), len);
    HeaderValue::from_maybe_shared(bytes::Bytes::from(value))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// How many decimal digits `n` has.
fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

/// 429 without `Retry-After`: the request costs more than a quota's burst and can never pass.
fn too_costly(shared: &Shared, limits: &Limits, parts: &Parts) -> Error {
    let policy = limits.quotas().first().map_or("", |q| q.name());
    crate::observe::rate_limit(&parts.extensions, policy, &shared.kind, "rejected");
    tracing::info!(
        target: "tower_shield::security",
        event = "rate_limit.rejected",
        policy,
        key_kind = %shared.kind,
        route = crate::observe::route(&parts.extensions, &parts.uri),
        reason = "cost exceeds burst",
        "rate limit exceeded"
    );
    Error::new(ErrorKind::RateLimited).with_reason("request cost exceeds the quota burst")
}

/// 500 for a request without a key under [`MissingKey::Reject`].
fn missing_key(kind: &str) -> Error {
    tracing::warn!(
        target: "tower_shield::rate_limit",
        key_kind = kind,
        "no rate-limit key in the request (is the layer in the right place?); answered 500"
    );
    Error::internal("rate-limit key missing")
}

#[cfg(test)]
mod tests {
    use std::{num::NonZeroU32, time::Duration};

    use super::{ratelimit_value, Decision, Limits};
    use crate::rate_limit::Quota;

    #[test]
    fn ratelimit_value_writes_every_digit() {
        let limits = Limits::from(Quota::per_minute(NonZeroU32::MIN).named("api"));
        for n in [0, 1, 9, 10, 99, 100, 999_999, 1_000_000, u64::MAX - 1, u64::MAX] {
            let decision = Decision::new(true, 0, n, Duration::from_millis(1_500), Duration::ZERO);
            let value = ratelimit_value(&[(&limits, &decision)]);
            assert_eq!(value.to_str().unwrap(), format!("\"api\";r={n};t=2"));
        }
    }

    #[test]
    fn ratelimit_value_lists_several_limits_in_order() {
        let inner = Limits::from(Quota::per_minute(NonZeroU32::MIN).named("per-principal"));
        let outer = Limits::from(Quota::per_minute(NonZeroU32::MIN).named("per-ip"));
        let a = Decision::new(true, 0, 7, Duration::from_secs(3), Duration::ZERO);
        let b = Decision::new(true, 0, 12_345, Duration::from_millis(1), Duration::ZERO);
        let value = ratelimit_value(&[(&inner, &a), (&outer, &b)]);
        assert_eq!(value, r#""per-principal";r=7;t=3, "per-ip";r=12345;t=1"#);
        assert_eq!(value.len(), value.to_str().unwrap().len());
    }
}
