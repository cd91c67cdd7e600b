use std::{
    fmt, mem,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tower_service::Service;

use super::{
    client_ip::ClientAddr,
    future::{reject_missing_key, reject_too_costly, settle, Ctx, ResponseFuture},
    gcra::Mode,
    key::KeyExtractor,
    layer::{LimitsSource, MissingKey},
    store::Store,
    RateLimitLayer,
};

/// Applies quotas per key and answers 429 when one is exhausted.
///
/// See the [module docs](crate::rate_limit) for an example.
pub struct RateLimit<S, K, St> {
    inner: S,
    // One reference count per clone (axum clones a layered route on every request), not one
    // per part of the layer.
    layer: Arc<RateLimitLayer<K, St>>,
}

impl<S, K, St> RateLimit<S, K, St> {
    /// Wraps `inner` with the configuration of `layer`.
    pub fn new(inner: S, layer: RateLimitLayer<K, St>) -> Self {
        Self { inner, layer: Arc::new(layer) }
    }

    define_inner_service_accessors!();
}

impl<S: Clone, K, St> Clone for RateLimit<S, K, St> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), layer: Arc::clone(&self.layer) }
    }
}

impl<S: fmt::Debug, K, St: fmt::Debug> fmt::Debug for RateLimit<S, K, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit").field("inner", &self.inner).field("layer", &self.layer).finish()
    }
}

impl<S, K, St, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S, K, St>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    K: KeyExtractor,
    St: Store + Clone,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, St, ReqBody, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let shared = &self.layer.shared;
        let (mut parts, body) = request.into_parts();
        if let Some(client_ip) = &shared.client_ip {
            if let Some(ip) = client_ip.resolve(&parts) {
                crate::observe::client_ip(&parts.extensions, ip);
                parts.extensions.insert(ClientAddr(ip));
            }
        }
        let key = match self.layer.key.extract(&parts) {
            Some(key) => key,
            None => {
                let fallback = match shared.missing {
                    MissingKey::Reject => None,
                    MissingKey::Skip => {
                        let request = Request::from_parts(parts, body);
                        return ResponseFuture::passthrough(self.inner.call(request));
                    }
                    MissingKey::ClientIp => match parts.extensions.get::<ClientAddr>().copied() {
                        Some(ClientAddr(ip)) => Some(shared.fallback_ip.key_for(ip)),
                        None => shared.fallback_ip.resolve(&parts).map(|ip| {
                            crate::observe::client_ip(&parts.extensions, ip);
                            shared.fallback_ip.key_for(ip)
                        }),
                    },
                };
                match fallback {
                    Some(key) => key,
                    None => return ResponseFuture::rejected(reject_missing_key(&shared.kind)),
                }
            }
        };
        let limits = match &shared.limits {
            LimitsSource::Fixed(limits) => limits.clone(),
            LimitsSource::Dynamic(select) => select(&parts),
        };
        let cost = shared.cost.as_ref().map_or(1, |cost| cost(&parts).get());
        if cost > limits.max_cost() {
            return ResponseFuture::rejected(reject_too_costly(shared, &limits, &parts));
        }
        let mode = if shared.count_only.is_some() { Mode::Peek } else { Mode::Acquire };
        let decided = match self.layer.store.decide_ready(&limits, &key, cost, mode) {
            Some(outcome) => Decided::Now(outcome),
            None => Decided::Later(self.layer.store.decide(&limits, &key, cost, mode)),
        };
        let record = shared.count_only.is_some().then(|| (self.layer.store.clone(), key));
        let request = Request::from_parts(parts, body);
        let mut cx = Ctx { shared: Arc::clone(shared), limits, cost, record, decision: None };
        match decided {
            // Decided at once (in memory): the ready inner service is called right here.
            Decided::Now(outcome) => match settle(outcome, &mut cx, &request) {
                Some(response) => ResponseFuture::rejected(response),
                None => ResponseFuture::calling(self.inner.call(request), cx),
            },
            // The ready service goes into the future; a fresh clone stays here.
            Decided::Later(decision) => {
                let clone = self.inner.clone();
                let inner = mem::replace(&mut self.inner, clone);
                ResponseFuture::deciding(decision, inner, request, cx)
            }
        }
    }
}

/// The store's answer: given at once, or to be awaited.
enum Decided<F> {
    Now(Result<super::gcra::Decision, crate::Error>),
    Later(F),
}
