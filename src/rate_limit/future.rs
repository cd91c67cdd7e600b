use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use http::{request::Parts, HeaderMap, HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::{
    gcra::{Decision, Mode},
    key::RateKey,
    layer::Shared,
    quota::{ceil_secs, Limits},
    store::Store,
};
use crate::{Error, ErrorKind};

pin_project! {
    /// Response future of [`RateLimit`](super::RateLimit).
    pub struct ResponseFuture<S, St, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        St: Store,
    {
        #[pin]
        state: State<S, St, ReqBody, ResBody>,
        cx: Option<Ctx<St>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, St, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        St: Store,
    {
        // Only for a store that must be awaited (Redis): the ready service and the request
        // wait in one box, so the in-process path's future stays small.
        Deciding {
            #[pin]
            decision: St::Future,
            pending: Option<Box<(S, Request<ReqBody>)>>,
        },
        Calling { #[pin] future: S::Future },
        Recording { #[pin] decision: St::Future, response: Option<Response<ResBody>> },
        Rejected { response: Option<Response<ResBody>> },
        Done,
    }
}

pub(crate) struct Ctx<St> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) limits: Limits,
    pub(crate) cost: u32,
    /// Only-failures counting: the store and key to charge when the predicate holds.
    pub(crate) record: Option<(St, RateKey)>,
    pub(crate) decision: Option<Decision>,
}

impl<S, St, ReqBody, ResBody> ResponseFuture<S, St, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    St: Store,
{
    pub(crate) fn deciding(
        decision: St::Future,
        inner: S,
        request: Request<ReqBody>,
        cx: Ctx<St>,
    ) -> Self {
        Self {
            state: State::Deciding { decision, pending: Some(Box::new((inner, request))) },
            cx: Some(cx),
        }
    }

    /// The store decided at once and allowed the request: `future` is the inner service's.
    pub(crate) fn calling(future: S::Future, cx: Ctx<St>) -> Self {
        Self { state: State::Calling { future }, cx: Some(cx) }
    }

    pub(crate) fn passthrough(future: S::Future) -> Self {
        Self { state: State::Calling { future }, cx: None }
    }

    pub(crate) fn rejected(response: Response<ResBody>) -> Self {
        Self { state: State::Rejected { response: Some(response) }, cx: None }
    }
}

impl<S, St, ReqBody, ResBody> Future for ResponseFuture<S, St, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    St: Store,
    ResBody: Default,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Deciding { decision, pending } => {
                    let outcome = ready!(decision.poll(cx));
                    let ctx = this.cx.as_mut().expect("context present while deciding");
                    let (mut inner, request) =
                        *pending.take().expect("request present while deciding");
                    if let Some(response) = settle(outcome, ctx, &request) {
                        this.state.set(State::Done);
                        *this.cx = None;
                        return Poll::Ready(Ok(response));
                    }
                    let future = inner.call(request);
                    this.state.set(State::Calling { future });
                }
                StateProj::Calling { future } => {
                    let mut response = ready!(future.poll(cx))?;
                    let Some(ctx) = this.cx.as_mut() else {
                        this.state.set(State::Done);
                        return Poll::Ready(Ok(response));
                    };
                    let charge = match (&ctx.record, &ctx.shared.count_only) {
                        (Some(_), Some(predicate)) => predicate(response.status()),
                        _ => false,
                    };
                    if charge {
                        let (store, key) = ctx.record.as_ref().expect("checked above");
                        let decision = store.decide(&ctx.limits, key, ctx.cost, Mode::Charge);
                        this.state.set(State::Recording { decision, response: Some(response) });
                        continue;
                    }
                    let ctx = this.cx.take().expect("checked above");
                    if let Some(decision) = &ctx.decision {
                        write_headers(response.headers_mut(), &ctx.shared, &ctx.limits, decision);
                    }
                    this.state.set(State::Done);
                    return Poll::Ready(Ok(response));
                }
                StateProj::Recording { decision, response } => {
                    let outcome = ready!(decision.poll(cx));
                    let mut response = response.take().expect("response present while recording");
                    let ctx = this.cx.take().expect("context present while recording");
                    // A store failure here is logged by the store; the response stands.
                    if let Some(decision) = outcome.ok().or(ctx.decision) {
                        write_headers(response.headers_mut(), &ctx.shared, &ctx.limits, &decision);
                    }
                    this.state.set(State::Done);
                    return Poll::Ready(Ok(response));
                }
                StateProj::Rejected { response } => {
                    let response = response.take().expect("rejection present");
                    this.state.set(State::Done);
                    return Poll::Ready(Ok(response));
                }
                StateProj::Done => panic!("rate_limit::ResponseFuture polled after completion"),
            }
        }
    }
}

impl<S, St, ReqBody, ResBody> std::fmt::Debug for ResponseFuture<S, St, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    St: Store,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// Acts on the store's answer: the response to send instead of calling the inner service (a
/// 429, or the store's error), or `None` with the decision kept for the response headers.
pub(crate) fn settle<St, B, ResBody: Default>(
    outcome: Result<Decision, Error>,
    ctx: &mut Ctx<St>,
    request: &Request<B>,
) -> Option<Response<ResBody>> {
    match outcome {
        Err(error) => {
            let policy = ctx.limits.quotas().first().map_or("", |q| q.name());
            crate::observe::rate_limit(request.extensions(), policy, &ctx.shared.kind, "error");
            Some(error.into_response())
        }
        Ok(decision) if !decision.is_allowed() => {
            Some(reject(&ctx.shared, &ctx.limits, &decision, request))
        }
        Ok(decision) => {
            if let Some(span) = crate::observe::span(request.extensions()) {
                let policy = ctx.limits.quotas()[decision.quota_index()].name();
                span.record("rate_limit.policy", policy);
                span.record("rate_limit.outcome", "allowed");
            }
            ctx.decision = Some(decision);
            None
        }
    }
}

pub(crate) static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub(crate) static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// `RateLimit`, `RateLimit-Policy` and the legacy headers for `decision`.
///
/// `RateLimit` and `RateLimit-Policy` are lists (draft-10): stacked layers (per IP outside,
/// per principal inside) each append their item, so a client rejected by the inner quota still
/// sees that quota, first. The single-valued legacy `X-RateLimit-*` headers keep the inner
/// layer's values.
pub(crate) fn write_headers(
    headers: &mut HeaderMap,
    shared: &Shared,
    limits: &Limits,
    decision: &Decision,
) {
    let i = decision.quota_index();
    let reset = ceil_secs(decision.reset());
    if shared.headers {
        // Appended: when another limit layer (nested inside this one, e.g. a per-route limit
        // under a per-IP one) already wrote its policy, both are listed, the inner one first
        // (both headers are structured-field lists), so a client sees every limit it is under.
        headers.append(RATELIMIT_POLICY.clone(), limits.inner.policy[i].clone());
        headers.append(RATELIMIT.clone(), ratelimit_value(limits, decision));
    }
    if shared.legacy_headers && !headers.contains_key(&X_LIMIT) {
        headers.insert(X_LIMIT.clone(), limits.inner.legacy_limit[i].clone());
        headers.insert(X_REMAINING.clone(), HeaderValue::from(decision.remaining()));
        headers.insert(X_RESET.clone(), HeaderValue::from(reset));
    }
}

/// `"name";r=<remaining>;t=<seconds>`.
pub(crate) fn ratelimit_value(limits: &Limits, decision: &Decision) -> HeaderValue {
    let prefix = limits.inner.prefix[decision.quota_index()].as_bytes();
    let (mut remaining, mut reset) = (itoa::Buffer::new(), itoa::Buffer::new());
    let remaining = remaining.format(decision.remaining()).as_bytes();
    let reset = reset.format(ceil_secs(decision.reset())).as_bytes();
    // Exactly sized: a full `Vec` becomes `Bytes` without a second allocation.
    let mut value = Vec::with_capacity(prefix.len() + remaining.len() + 3 + reset.len());
    value.extend_from_slice(prefix);
    value.extend_from_slice(remaining);
    value.extend_from_slice(b";t=");
    value.extend_from_slice(reset);
    HeaderValue::from_maybe_shared(bytes::Bytes::from(value))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The 429 for a rejected decision, with its headers and the security event.
fn reject<B, ResBody: Default>(
    shared: &Shared,
    limits: &Limits,
    decision: &Decision,
    request: &Request<B>,
) -> Response<ResBody> {
    let policy = limits.quotas()[decision.quota_index()].name();
    crate::observe::rate_limit(request.extensions(), policy, &shared.kind, "rejected");
    tracing::info!(
        target: "tower_shield::security",
        event = "rate_limit.rejected",
        policy,
        key_kind = %shared.kind,
        route = route(request.extensions(), request.uri()),
        retry_after_ms = u64::try_from(decision.retry_after().as_millis()).unwrap_or(u64::MAX),
        "rate limit exceeded"
    );
    let mut response = Error::new(ErrorKind::RateLimited)
        .with_reason("rate-limit quota exhausted")
        .with_retry_after(decision.retry_after())
        .into_response();
    write_headers(response.headers_mut(), shared, limits, decision);
    response
}

fn route<'a>(extensions: &'a http::Extensions, uri: &'a http::Uri) -> &'a str {
    #[cfg(feature = "axum")]
    if let Some(path) = extensions.get::<axum::extract::MatchedPath>() {
        return path.as_str();
    }
    let _ = extensions;
    uri.path()
}

/// 429 without `Retry-After`: the request costs more than a quota's burst and can never pass.
pub(crate) fn reject_too_costly<ResBody: Default>(
    shared: &Shared,
    limits: &Limits,
    parts: &Parts,
) -> Response<ResBody> {
    let policy = limits.quotas().first().map_or("", |q| q.name());
    crate::observe::rate_limit(&parts.extensions, policy, &shared.kind, "rejected");
    tracing::info!(
        target: "tower_shield::security",
        event = "rate_limit.rejected",
        policy,
        key_kind = %shared.kind,
        route = route(&parts.extensions, &parts.uri),
        reason = "cost exceeds burst",
        "rate limit exceeded"
    );
    Error::new(ErrorKind::RateLimited)
        .with_reason("request cost exceeds the quota burst")
        .into_response()
}

/// 500 for a request without a key under [`MissingKey::Reject`](super::MissingKey::Reject).
pub(crate) fn reject_missing_key<ResBody: Default>(kind: &str) -> Response<ResBody> {
    tracing::warn!(
        target: "tower_shield::rate_limit",
        key_kind = kind,
        "no rate-limit key in the request (is the layer in the right place?); answered 500"
    );
    Error::internal("rate-limit key missing").into_response()
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
            let value = ratelimit_value(&limits, &decision);
            assert_eq!(value.to_str().unwrap(), format!("\"api\";r={n};t=2"));
        }
    }
}
