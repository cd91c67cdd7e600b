use std::{
    future::Future,
    panic::{catch_unwind, AssertUnwindSafe},
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use http::{header, response::Parts, HeaderValue, Response, StatusCode, Uri};
use http_body::Body;
use pin_project_lite::pin_project;
use tracing::Span;

use super::{
    render::grpc_message, ErrorEnvelopeLayer, Format, Render, RenderContext, RequestId,
    ResponseBody,
};
use crate::Error;

pin_project! {
    /// Response future of [`ErrorEnvelope`](super::ErrorEnvelope).
    pub struct ResponseFuture<F, M, R> {
        #[pin]
        state: State<F>,
        cx: Option<Ctx<M, R>>,
        span: Span,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Future { #[pin] future: F },
        Panicked,
        Done,
    }
}

pub(crate) struct Ctx<M, R> {
    pub(crate) config: Arc<ErrorEnvelopeLayer<M, R>>,
    pub(crate) request_id: RequestId,
    pub(crate) grpc: bool,
    pub(crate) format: Format,
    pub(crate) uri: Uri,
}

impl<F, M, R> ResponseFuture<F, M, R> {
    /// `future` is `None` when calling the inner service panicked.
    pub(crate) fn new(future: Option<F>, cx: Ctx<M, R>, span: Span) -> Self {
        let state = match future {
            Some(future) => State::Future { future },
            None => State::Panicked,
        };
        Self { state, cx: Some(cx), span }
    }
}

impl<F, M, R, B, E> Future for ResponseFuture<F, M, R>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes>,
    R: Render,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.span.enter();
        let outcome = match this.state.as_mut().project() {
            StateProj::Future { future } => {
                match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
                    Ok(poll) => Some(ready!(poll)),
                    Err(_) => None,
                }
            }
            StateProj::Panicked => None,
            StateProj::Done => panic!("ResponseFuture polled after completion"),
        };
        this.state.set(State::Done);
        let envelope = this.cx.take().expect("context is taken only once");
        Poll::Ready(match outcome {
            Some(Ok(response)) => Ok(envelope.finish(response)),
            Some(Err(error)) => Err(error),
            None => {
                // The payload is not logged: a panic message may hold anything, secrets
                // included. The panic hook has already printed it where the operator chose.
                tracing::error!(
                    target: "tower_shield::envelope",
                    request_id = %envelope.request_id,
                    "inner service panicked; answered 500"
                );
                let (parts, ()) = Response::new(()).into_parts();
                Ok(envelope.render(Error::internal("inner service panicked"), parts))
            }
        })
    }
}

impl<M, R: Render> Ctx<M, R> {
    fn finish<B: Body<Data = Bytes>>(self, response: Response<B>) -> Response<ResponseBody<B>> {
        let (mut parts, body) = response.into_parts();
        let error = match parts.extensions.remove::<Error>() {
            Some(error) => error,
            None => {
                let status = parts.status;
                let passes = !(status.is_client_error() || status.is_server_error())
                    || (status.is_client_error()
                        && self.config.keep_client_error_bodies
                        && !self.grpc
                        && !body.is_end_stream()
                        && body.size_hint().exact() != Some(0));
                if passes {
                    parts.headers.insert(
                        self.config.header_name.clone(),
                        self.request_id.header_value().clone(),
                    );
                    return Response::from_parts(parts, ResponseBody::inner(body));
                }
                if status.is_server_error() {
                    tracing::error!(
                        target: "tower_shield::envelope",
                        status = status.as_u16(),
                        "inner service answered a server error; its body was replaced"
                    );
                }
                Error::from_status(status)
            }
        };
        self.render(error, parts)
    }

    fn render<B>(self, error: Error, mut parts: Parts) -> Response<ResponseBody<B>> {
        tracing::debug!(
            target: "tower_shield::envelope",
            code = error.code(),
            status = error.status().as_u16(),
            reason = error.reason().unwrap_or(""),
            "rendered error"
        );
        let headers = &mut parts.headers;
        for name in [
            header::CONTENT_TYPE,
            header::CONTENT_LENGTH,
            header::CONTENT_ENCODING,
            header::TRANSFER_ENCODING,
            header::CONTENT_RANGE,
            header::ETAG,
            header::LAST_MODIFIED,
        ] {
            headers.remove(name);
        }
        error.write_headers(headers);
        headers.insert(self.config.header_name.clone(), self.request_id.header_value().clone());

        let body = if self.grpc {
            // A trailers-only response: HTTP 200, the status in the headers, no body.
            parts.status = StatusCode::OK;
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert("grpc-status", error.grpc_code().header_value());
            headers.insert("grpc-message", grpc_message(error.message()));
            Bytes::new()
        } else {
            parts.status = error.status();
            let rendered = self.config.render.render(
                &error,
                &RenderContext {
                    request_id: &self.request_id,
                    format: self.format,
                    path: self.uri.path(),
                },
            );
            headers.insert(header::CONTENT_TYPE, rendered.content_type);
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(rendered.body.len()));
            headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            rendered.body
        };
        parts.extensions.insert(error);
        Response::from_parts(parts, ResponseBody::full(body))
    }
}

impl<F, M, R> std::fmt::Debug for ResponseFuture<F, M, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
