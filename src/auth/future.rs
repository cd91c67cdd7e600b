use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::{layer::Config, service::settle, BoxAuthFuture};
use crate::{error::Spent, principal::AuthMethod};

pin_project! {
    /// Response future of [`Auth`](super::Auth).
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        // Only while an authenticator awaits (JWKS fetch, introspection): the request and the
        // ready service wait in a box, so the synchronous path's future stays small.
        Authenticating {
            future: BoxAuthFuture,
            pending: Option<Box<Pending<S, ReqBody>>>,
        },
        Inner { #[pin] future: S::Future },
        Rejected { response: Option<S::Response> },
    }
}

struct Pending<S, ReqBody> {
    request: Request<ReqBody>,
    inner: S,
    method: AuthMethod,
    config: Arc<Config>,
}

impl<S: Service<Request<ReqBody>>, ReqBody> ResponseFuture<S, ReqBody> {
    pub(crate) fn inner(future: S::Future) -> Self {
        Self { state: State::Inner { future } }
    }

    pub(crate) fn rejected(response: S::Response) -> Self {
        Self { state: State::Rejected { response: Some(response) } }
    }

    pub(crate) fn authenticating(
        future: BoxAuthFuture,
        request: Request<ReqBody>,
        inner: S,
        method: AuthMethod,
        config: Arc<Config>,
    ) -> Self {
        Self {
            state: State::Authenticating {
                future,
                pending: Some(Box::new(Pending { request, inner, method, config })),
            },
        }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Authenticating { future, pending } => {
                    let outcome = ready!(future.as_mut().poll(cx));
                    let Pending { mut request, mut inner, method, config } =
                        *pending.take().expect("ResponseFuture polled after completion");
                    match settle(&config, method, outcome, request.extensions()) {
                        Ok(principal) => {
                            request.extensions_mut().insert(principal);
                            let future = inner.call(request);
                            this.state.set(State::Inner { future });
                        }
                        Err(error) => {
                            this.state.set(State::Rejected { response: None });
                            let spent = Spent::request(&mut request);
                            return Poll::Ready(Ok(error.into_response(spent)));
                        }
                    }
                }
                StateProj::Inner { future } => return future.poll(cx),
                StateProj::Rejected { response } => {
                    let response = response.take().expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(response));
                }
            }
        }
    }
}
