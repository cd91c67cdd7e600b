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
    layer::Config,
    service::{after_read, into_request, ReadFuture, Rejection},
};
use crate::body::Buffered;

pin_project! {
    /// Response future of [`Validate`](super::Validate).
    pub struct ResponseFuture<S, F, B> {
        #[pin]
        state: State<S, F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, F, B> {
        Reading {
            read: ReadFuture,
            parts: Option<Parts>,
            inner: Option<S>,
            config: Arc<Config>,
        },
        Calling { #[pin] future: F },
        Rejected { response: Option<Response<B>> },
    }
}

impl<S, F, B> ResponseFuture<S, F, B> {
    pub(crate) fn reading(read: ReadFuture, parts: Parts, inner: S, config: Arc<Config>) -> Self {
        Self { state: State::Reading { read, parts: Some(parts), inner: Some(inner), config } }
    }

    pub(crate) fn calling(future: F) -> Self {
        Self { state: State::Calling { future } }
    }

    pub(crate) fn rejected(response: Response<B>) -> Self {
        Self { state: State::Rejected { response: Some(response) } }
    }
}

impl<S, F, B, E> Future for ResponseFuture<S, F, B>
where
    S: Service<Request<Buffered>, Response = Response<B>, Error = E, Future = F>,
    F: Future<Output = Result<Response<B>, E>>,
    B: Default,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let future = match this.state.as_mut().project() {
                StateProj::Reading { read, parts, inner, config } => {
                    let read = ready!(read.as_mut().poll(cx));
                    let parts = parts.take().expect("ResponseFuture polled after completion");
                    let mut inner = inner.take().expect("ResponseFuture polled after completion");
                    let checked = read
                        .map_err(|error| {
                            let rule = match error.kind() {
                                crate::ErrorKind::PayloadTooLarge => "body_size",
                                _ => "body_read",
                            };
                            Rejection { rule, error }
                        })
                        .and_then(|bytes| {
                            let json = after_read(config, &parts, &bytes)?;
                            Ok((Buffered::new(bytes), json))
                        });
                    match checked {
                        Ok((body, json)) => {
                            crate::observe::validation_passed(&parts.extensions);
                            inner.call(into_request(parts, body, json))
                        }
                        Err(rejection) => {
                            let response = rejection.into_response(&parts);
                            this.state.set(State::Rejected { response: None });
                            return Poll::Ready(Ok(response));
                        }
                    }
                }
                StateProj::Calling { future } => return future.poll(cx),
                StateProj::Rejected { response } => {
                    let response = response.take().expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(response));
                }
            };
            this.state.set(State::Calling { future });
        }
    }
}

impl<S, F, B> std::fmt::Debug for ResponseFuture<S, F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
