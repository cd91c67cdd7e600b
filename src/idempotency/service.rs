use std::{
    fmt, mem,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::{
    future::{run, Ctx, ResponseFuture},
    key::{parse_key, record_key, Caller},
    layer::Config,
    IdempotencyLayer, RequestBody, ResponseBody,
};
use crate::{
    error::Challenge, observe::original_uri, principal::Principal, BoxError, Error, ErrorKind,
};

/// Makes writes safely retryable with the `Idempotency-Key` header.
///
/// See the [module docs](crate::idempotency) for an example.
#[derive(Clone)]
pub struct Idempotency<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> Idempotency<S> {
    /// Wraps `inner` with the configuration of `layer`.
    pub fn new(inner: S, layer: IdempotencyLayer) -> Self {
        Self { inner, config: layer.config }
    }

    /// The default [`IdempotencyLayer`].
    pub fn layer() -> IdempotencyLayer {
        IdempotencyLayer::new()
    }

    define_inner_service_accessors!();
}

impl<S: fmt::Debug> fmt::Debug for Idempotency<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotency")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Idempotency<S>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let config = &self.config;
        if !config.methods.contains(request.method()) {
            return ResponseFuture::passthrough(
                self.inner.call(request.map(RequestBody::streaming)),
            );
        }
        let key = match parse_key(request.headers()) {
            Ok(Some(key)) => key,
            Ok(None) if !config.required => {
                return ResponseFuture::passthrough(
                    self.inner.call(request.map(RequestBody::streaming)),
                );
            }
            Ok(None) => {
                let error = Error::new(ErrorKind::IdempotencyKeyMissing)
                    .with_reason("no Idempotency-Key on a route that requires one");
                return reject(&error, "missing", request.uri().path(), request.extensions());
            }
            Err(error) => {
                return reject(&error, "invalid", request.uri().path(), request.extensions())
            }
        };
        let (parts, body) = request.into_parts();
        let caller = match parts.extensions.get::<Principal>() {
            Some(principal) => Caller::of(principal),
            None => match config.anonymous.as_ref().and_then(|scope| scope.scope(&parts)) {
                Some(scope) => Caller::Anonymous(scope),
                None => {
                    let error = Error::new(ErrorKind::Unauthenticated)
                        .with_reason(
                            "anonymous request with an Idempotency-Key, no anonymous scope",
                        )
                        .with_challenge(Challenge::bearer(config.realm.clone()));
                    return reject(&error, "anonymous", parts.uri.path(), &parts.extensions);
                }
            },
        };
        let record = record_key(
            &caller,
            &parts.method,
            original_uri(&parts.extensions, &parts.uri).path(),
            &key,
        );
        let ctx = Ctx { config: Arc::clone(config), record, caller: caller.kind() };
        // The service that was polled ready serves this request; the clone stays for the next.
        let clone = self.inner.clone();
        let inner = mem::replace(&mut self.inner, clone);
        ResponseFuture::running(Box::pin(run(inner, ctx, Request::from_parts(parts, body))))
    }
}

fn reject<F, B: Body, E>(
    error: &Error,
    reason: &'static str,
    path: &str,
    extensions: &http::Extensions,
) -> ResponseFuture<F, B, E> {
    crate::observe::idempotency(crate::observe::span(extensions), reason);
    tracing::info!(
        target: "tower_shield::security",
        event = "idempotency.rejected",
        reason,
        route = path,
        code = error.code(),
        "request refused by the idempotency layer"
    );
    ResponseFuture::rejected(error.to_response::<ResponseBody<B>>())
}
