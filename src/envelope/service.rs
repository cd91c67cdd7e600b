use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http::{header, Request, Response, Version};
use http_body::Body;
use tower_service::Service;
use tracing::{field::Empty, Span};

use super::{
    future::{Ctx, ResponseFuture, Route},
    DefaultRender, ErrorEnvelopeLayer, Format, MakeRequestId, MakeRequestUuid, Render, RequestId,
    ResponseBody,
};
use crate::observe::RequestSpan;

/// Renders every error response, assigns request ids and catches panics.
///
/// See the [module docs](crate::envelope) for an example.
#[derive(Clone, Debug)]
pub struct ErrorEnvelope<S, M = MakeRequestUuid, R = DefaultRender> {
    inner: S,
    config: Arc<ErrorEnvelopeLayer<M, R>>,
}

impl<S> ErrorEnvelope<S> {
    /// The default [`ErrorEnvelopeLayer`].
    pub fn layer() -> ErrorEnvelopeLayer {
        ErrorEnvelopeLayer::new()
    }
}

impl<S, M, R> ErrorEnvelope<S, M, R> {
    /// Wraps `inner` with the configuration of `layer`.
    pub fn new(inner: S, layer: ErrorEnvelopeLayer<M, R>) -> Self {
        Self { inner, config: Arc::new(layer) }
    }

    define_inner_service_accessors!();
}

impl<S, M, R, ReqBody, ResBody> Service<Request<ReqBody>> for ErrorEnvelope<S, M, R>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
    M: MakeRequestId,
    R: Render,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, M, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let config = &self.config;
        let header = config.id_header();
        let sent = request.headers().get(&header);
        let request_id =
            match sent.filter(|_| config.trust_request_id).and_then(RequestId::from_header) {
                Some(id) => id,
                None => config.make_request_id.make_request_id(&request),
            };
        // Inner services and their logs see the id we answer with, never an unsafe one.
        request.headers_mut().insert(header, request_id.header_value().clone());
        request.extensions_mut().insert(request_id.clone());

        let grpc = config.grpc && is_grpc(&request);
        let format = config.format.unwrap_or_else(|| Format::negotiate(request.headers()));
        let span = tracing::info_span!(
            target: "tower_shield",
            "request",
            request_id = %request_id,
            method = %request.method(),
            route = Empty,
            client_ip = Empty,
            subject = Empty,
            tenant = Empty,
            auth.method = Empty,
            auth.outcome = Empty,
            rate_limit.policy = Empty,
            rate_limit.outcome = Empty,
            abuse.outcome = Empty,
            scope.outcome = Empty,
            validation.outcome = Empty,
            idempotency.outcome = Empty,
            error.code = Empty,
            status = Empty,
            latency_ms = Empty,
        );
        // Nothing more when no subscriber records the span (and no metrics): no clone, no
        // insert, no clock. A disabled span is replaced by `Span::none()`, whose enter and
        // exit cost nothing even when `tracing`'s `log` feature is on.
        let enabled = !span.is_disabled();
        let span = if enabled { span } else { Span::none() };
        let route = if enabled || cfg!(feature = "metrics") {
            Route::of(&request, grpc)
        } else {
            Route::Unmatched
        };
        let started = if !enabled {
            None
        } else {
            if let Some(route) = route.span_value(request.uri()) {
                span.record("route", route);
            }
            request.extensions_mut().insert(RequestSpan(span.clone()));
            Some(Instant::now())
        };
        #[cfg(feature = "metrics")]
        let started = started.or_else(|| Some(Instant::now()));
        let cx = Ctx {
            config: Arc::clone(config),
            request_id,
            grpc,
            format,
            // Only what a rendering or the gRPC metric label will read.
            uri: (grpc || config.render.needs_path(format)).then(|| request.uri().clone()),
            #[cfg(feature = "metrics")]
            method: request.method().clone(),
            #[cfg(feature = "metrics")]
            route,
            started,
        };

        ResponseFuture::new(|| self.inner.call(request), cx, span)
    }
}

/// gRPC-Web (`application/grpc-web`, `application/grpc-web+proto`...) over any HTTP version,
/// gRPC (`application/grpc`, `application/grpc+proto`...) over HTTP/2 only: over HTTP/1.1 it
/// cannot be gRPC, only a client asking for its errors to look like 200s.
fn is_grpc<B>(request: &Request<B>) -> bool {
    let Some(content_type) = request.headers().get(header::CONTENT_TYPE) else { return false };
    let content_type = content_type.as_bytes();
    content_type.starts_with(b"application/grpc-web")
        || content_type.starts_with(b"application/grpc") && request.version() == Version::HTTP_2
}
