use std::{
    fmt, mem,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tower_service::Service;

use super::{
    admit::{Admission, Verdict},
    future::{Ctx, ResponseFuture},
    key::KeyExtractor,
    store::Store,
    RateLimitLayer,
};
use crate::error::Spent;

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
        let layer = &*self.layer;
        let (mut parts, body) = request.into_parts();
        match layer.admit(&mut parts, &mut None) {
            Admission::Skip => {
                ResponseFuture::passthrough(self.inner.call(Request::from_parts(parts, body)))
            }
            Admission::Refused(error) => {
                ResponseFuture::rejected(error.into_response(Spent::parts(&mut parts)))
            }
            // Decided at once (in memory): the ready inner service is called right here.
            Admission::Checked(check, Verdict::Now(outcome)) => {
                match layer.shared.settle(&check, outcome, &mut parts) {
                    Err(response) => ResponseFuture::rejected(response),
                    Ok(decision) => {
                        let cx = Ctx::new(layer, check, Some(decision));
                        let future = self.inner.call(Request::from_parts(parts, body));
                        ResponseFuture::calling(future, cx)
                    }
                }
            }
            // The ready service goes into the future; a fresh clone stays here.
            Admission::Checked(check, Verdict::Later(decision)) => {
                let clone = self.inner.clone();
                let inner = mem::replace(&mut self.inner, clone);
                let cx = Ctx::new(layer, check, None);
                ResponseFuture::deciding(decision, inner, parts, body, cx)
            }
        }
    }
}
