use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use http::{request::Parts, Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::{
    admit::Check,
    gcra::{Decision, Mode},
    layer::Shared,
    store::Store,
    RateLimitLayer,
};

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
            pending: Option<Box<(S, Parts, ReqBody)>>,
        },
        Calling { #[pin] future: S::Future },
        Recording { #[pin] decision: St::Future, response: Option<Response<ResBody>> },
        Rejected { response: Option<Response<ResBody>> },
        Done,
    }
}

pub(crate) struct Ctx<St> {
    shared: Arc<Shared>,
    check: Check,
    /// Only-failures counting: the store to charge.
    store: Option<St>,
    decision: Option<Decision>,
}

impl<St: Clone> Ctx<St> {
    pub(crate) fn new<K>(
        layer: &RateLimitLayer<K, St>,
        check: Check,
        decision: Option<Decision>,
    ) -> Self {
        let store = check.key.is_some().then(|| layer.store.clone());
        Self { shared: Arc::clone(&layer.shared), check, store, decision }
    }
}

impl<S, St, ReqBody, ResBody> ResponseFuture<S, St, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    St: Store,
{
    pub(crate) fn deciding(
        decision: St::Future,
        inner: S,
        parts: Parts,
        body: ReqBody,
        cx: Ctx<St>,
    ) -> Self {
        Self {
            state: State::Deciding { decision, pending: Some(Box::new((inner, parts, body))) },
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
                    let (mut inner, mut parts, body) =
                        *pending.take().expect("request present while deciding");
                    match ctx.shared.settle(&ctx.check, outcome, &mut parts) {
                        Err(response) => {
                            this.state.set(State::Done);
                            *this.cx = None;
                            return Poll::Ready(Ok(response));
                        }
                        Ok(decision) => ctx.decision = Some(decision),
                    }
                    let future = inner.call(Request::from_parts(parts, body));
                    this.state.set(State::Calling { future });
                }
                StateProj::Calling { future } => {
                    let mut response = ready!(future.poll(cx))?;
                    let Some(ctx) = this.cx.as_mut() else {
                        this.state.set(State::Done);
                        return Poll::Ready(Ok(response));
                    };
                    let charge = match (&ctx.store, &ctx.shared.count_only) {
                        (Some(_), Some(predicate)) => predicate(response.status()),
                        _ => false,
                    };
                    if charge {
                        let (Some(store), Some(key)) = (&ctx.store, &ctx.check.key) else {
                            unreachable!("a store to charge comes with its key")
                        };
                        let limits = ctx.shared.limits(&ctx.check);
                        let decision = store.decide(limits, key, ctx.check.cost, Mode::Charge);
                        this.state.set(State::Recording { decision, response: Some(response) });
                        continue;
                    }
                    let ctx = this.cx.take().expect("checked above");
                    if let Some(decision) = &ctx.decision {
                        let limits = ctx.shared.limits(&ctx.check);
                        ctx.shared.write_headers(response.headers_mut(), limits, decision);
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
                        let limits = ctx.shared.limits(&ctx.check);
                        ctx.shared.write_headers(response.headers_mut(), limits, &decision);
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
