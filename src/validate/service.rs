use std::{
    mem,
    sync::{Arc, LazyLock},
    task::{Context, Poll},
};

use http::{request::Parts, HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;

use super::{
    future::ResponseFuture,
    json,
    layer::{Config, ViolationStatus},
    typed::encode_headers,
    JsonBody, ValidateLayer,
};
use crate::{
    body::{content_length, read_limited, Buffered},
    error::Detail,
    BoxError, Error, ErrorKind,
};

/// Validates request bodies, query strings and selected headers before the inner service.
///
/// See the [module docs](crate::validate) for an example.
#[derive(Clone, Debug)]
pub struct Validate<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> Validate<S> {
    /// Wraps `inner` with the configuration of `layer`.
    pub fn new(inner: S, layer: ValidateLayer) -> Self {
        Self { inner, config: layer.config }
    }

    /// The default [`ValidateLayer`].
    pub fn layer() -> ValidateLayer {
        ValidateLayer::new()
    }

    define_inner_service_accessors!();
}

/// A rejection: the rule that failed (for the security event) and the error.
pub(crate) struct Rejection {
    pub(crate) rule: &'static str,
    pub(crate) error: Error,
}

impl Rejection {
    fn new(rule: &'static str, error: Error) -> Self {
        Self { rule, error }
    }

    /// Emits `validate.rejected` and builds the response.
    pub(crate) fn into_response<B: Default>(self, parts: &Parts) -> Response<B> {
        crate::observe::validation_rejected(&parts.extensions, self.rule);
        emit(crate::observe::route(&parts.extensions, &parts.uri), self.rule, &self.error);
        self.error.to_response()
    }
}

/// The `validate.rejected` security event: route, rule and field, never a value.
pub(crate) fn emit(route: &str, rule: &'static str, error: &Error) {
    tracing::info!(
        target: "tower_shield::security",
        event = "validate.rejected",
        route,
        rule,
        field = error.details().first().map_or("", Detail::field),
        details = error.details().len(),
        status = error.status().as_u16(),
        "request rejected by validation"
    );
}

pub(crate) type ReadFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<bytes::Bytes, Error>> + Send>>;

/// `read_limited` checks `Content-Length` itself when given the headers; the layer has done
/// that already (to answer 413 without allocating), so the read gets none and borrows nothing.
static NO_HEADERS: LazyLock<HeaderMap> = LazyLock::new(HeaderMap::new);

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Validate<S>
where
    S: Service<Request<Buffered>, Response = Response<ResBody>> + Clone,
    ReqBody: Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let (parts, body) = request.into_parts();
        let config = &self.config;
        if let Err(rejection) = check_parts(config, &parts) {
            return ResponseFuture::rejected(rejection.into_response(&parts));
        }

        let declared = content_length(&parts.headers);
        if declared.is_some_and(|n| n > config.max_body_size as u64) {
            let error = Error::new(ErrorKind::PayloadTooLarge)
                .with_reason(format!("declared body over {} bytes", config.max_body_size));
            return ResponseFuture::rejected(
                Rejection::new("body_size", error).into_response(&parts),
            );
        }
        let has_body = match declared {
            Some(n) => n > 0,
            None => !body.is_end_stream(),
        };
        if !has_body {
            return match after_read(config, &parts, &[]) {
                Ok(json) => {
                    crate::observe::validation_passed(&parts.extensions);
                    let request = into_request(parts, Buffered::default(), json);
                    ResponseFuture::calling(self.inner.call(request))
                }
                Err(rejection) => ResponseFuture::rejected(rejection.into_response(&parts)),
            };
        }
        if !config.media.accepts(&parts.headers) {
            let error = Error::new(ErrorKind::UnsupportedMediaType)
                .with_reason("content type missing or not accepted");
            return ResponseFuture::rejected(
                Rejection::new("content_type", error).into_response(&parts),
            );
        }

        let read: ReadFuture = Box::pin(read_limited(body, &NO_HEADERS, config.max_body_size));
        let clone = self.inner.clone();
        let inner = mem::replace(&mut self.inner, clone);
        ResponseFuture::reading(read, parts, inner, Arc::clone(config))
    }
}

/// Query string and selected headers.
fn check_parts(config: &Config, parts: &Parts) -> Result<(), Rejection> {
    if let Some(query) = &config.query {
        if let Some(detail) = query.run(parts.uri.query().unwrap_or("").as_bytes()) {
            let error = Error::new(ErrorKind::InvalidRequest)
                .with_reason("query string failed validation")
                .with_detail(detail);
            return Err(Rejection::new("query", error));
        }
    }
    if let Some((names, check)) = &config.headers {
        let detail = match encode_headers(&parts.headers, names) {
            Ok(encoded) => check.run(encoded.as_bytes()),
            Err(detail) => Some(detail),
        };
        if let Some(detail) = detail {
            let error = Error::new(ErrorKind::InvalidRequest)
                .with_reason("headers failed validation")
                .with_detail(detail);
            return Err(Rejection::new("header", error));
        }
    }
    Ok(())
}

/// Checks the body read so far: `Ok(None)` for an accepted bodiless request, `Ok(Some)` with
/// the parsed document otherwise.
pub(crate) fn after_read(
    config: &Config,
    parts: &Parts,
    bytes: &[u8],
) -> Result<Option<JsonBody>, Rejection> {
    if bytes.is_empty() && !config.require_body && bodiless(&parts.method) {
        return Ok(None);
    }
    if bytes.is_empty()
        && parts.headers.contains_key(http::header::CONTENT_TYPE)
        && !config.media.accepts(&parts.headers)
    {
        let error =
            Error::new(ErrorKind::UnsupportedMediaType).with_reason("content type not accepted");
        return Err(Rejection::new("content_type", error));
    }
    let value = json::parse(bytes, config.rules).map_err(|shape| {
        let error = Error::new(ErrorKind::InvalidRequest)
            .with_reason(format!("body is not acceptable JSON ({})", shape.rule))
            .with_detail(shape.detail);
        Rejection::new(shape.rule, error)
    })?;
    if let Some(schema) = &config.schema {
        let details = schema.violations(&value, config.max_details);
        if !details.is_empty() {
            let error = violation_error(config.violation_status)
                .with_reason("body does not match the schema")
                .with_details(details);
            return Err(Rejection::new("schema", error));
        }
    }
    Ok(Some(JsonBody::new(value)))
}

/// The error for schema and [`Check`](super::Check) violations.
pub(crate) fn violation_error(status: ViolationStatus) -> Error {
    match status {
        ViolationStatus::BadRequest => Error::new(ErrorKind::InvalidRequest),
        ViolationStatus::UnprocessableEntity => {
            Error::from_status(StatusCode::UNPROCESSABLE_ENTITY)
        }
    }
}

/// Methods that normally carry no body.
fn bodiless(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS)
}

pub(crate) fn into_request(
    mut parts: Parts,
    body: Buffered,
    json: Option<JsonBody>,
) -> Request<Buffered> {
    if let Some(json) = json {
        parts.extensions.insert(json);
    }
    Request::from_parts(parts, body)
}
