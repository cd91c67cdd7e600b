use std::{
    future::Future,
    panic::{catch_unwind, AssertUnwindSafe},
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http::{header, response::Parts, HeaderName, HeaderValue, Response, StatusCode, Uri};
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
    /// The request's URI, kept only when a rendering or the metrics will read its path.
    pub(crate) uri: Option<Uri>,
    #[cfg(feature = "metrics")]
    pub(crate) method: http::Method,
    #[cfg(feature = "metrics")]
    pub(crate) route: Route,
    /// When the request came in, if the span or the metrics need the latency.
    pub(crate) started: Option<Instant>,
}

/// The route of a request, for the span and the latency histogram: never a raw HTTP path,
/// which may hold ids (unbounded label values, personal data).
pub(crate) enum Route {
    /// axum's matched route template, e.g. `/orders/{id}`.
    #[cfg(feature = "axum")]
    Matched(axum::extract::MatchedPath),
    /// A gRPC request: its path is the method name, `/package.Service/Method`.
    Grpc,
    /// Not known here (no router match, or the envelope sits outside the router).
    Unmatched,
}

impl Route {
    pub(crate) fn of<B>(request: &http::Request<B>, grpc: bool) -> Self {
        #[cfg(feature = "axum")]
        if let Some(matched) = request.extensions().get::<axum::extract::MatchedPath>() {
            return Self::Matched(matched.clone());
        }
        let _ = request;
        if grpc {
            Self::Grpc
        } else {
            Self::Unmatched
        }
    }

    /// The `route` span field, if known.
    pub(crate) fn span_value<'a>(&'a self, uri: &'a Uri) -> Option<&'a str> {
        match self {
            #[cfg(feature = "axum")]
            Self::Matched(matched) => Some(matched.as_str()),
            Self::Grpc => Some(uri.path()),
            Self::Unmatched => None,
        }
    }

    /// The `route` metric label. A gRPC path is client-controlled until a service answered
    /// it (`served`): a rejection by a layer, or `UNIMPLEMENTED` from the router, counts as
    /// `unmatched`, so clients cannot mint label values.
    #[cfg(feature = "metrics")]
    fn label(&self, uri: Option<&Uri>, served: bool) -> metrics::SharedString {
        match (self, uri) {
            #[cfg(feature = "axum")]
            (Self::Matched(matched), _) => metrics::SharedString::from(matched.as_str().to_owned()),
            (Self::Grpc, Some(uri)) if served => metrics::SharedString::from(uri.path().to_owned()),
            _ => metrics::SharedString::const_str("unmatched"),
        }
    }
}

impl<F, M, R> ResponseFuture<F, M, R> {
    /// Calls the inner service through `call`; a panic there answers 500 when polled.
    pub(crate) fn new(call: impl FnOnce() -> F, cx: Ctx<M, R>, span: Span) -> Self {
        let mut this = Self { state: State::Panicked, cx: Some(cx), span };
        {
            let _entered = this.span.enter();
            let state = &mut this.state;
            // Assigned in place rather than returned through `catch_unwind`: the inner future
            // holds every inner layer's future, and each move of it is a large `memcpy`.
            let _ = catch_unwind(AssertUnwindSafe(|| *state = State::Future { future: call() }));
        }
        this
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
        let started = envelope.started;
        // The route label is built once, when it is known whether a service answered.
        #[cfg(feature = "metrics")]
        let metric = Metric::new(
            &envelope,
            matches!(&outcome, Some(Ok(response)) if Metric::served(response)),
        );
        let response = match outcome {
            Some(Ok(response)) => envelope.finish(response),
            Some(Err(error)) => return Poll::Ready(Err(error)),
            None => {
                // The payload is not logged: a panic message may hold anything, secrets
                // included. The panic hook has already printed it where the operator chose.
                tracing::error!(
                    target: "tower_shield::envelope",
                    request_id = %envelope.request_id,
                    "inner service panicked; answered 500"
                );
                let (mut parts, ()) = Response::new(()).into_parts();
                parts.extensions.insert(Error::internal("inner service panicked"));
                envelope.render(parts)
            }
        };
        let elapsed = started.map(|started| started.elapsed());
        if !this.span.is_disabled() {
            this.span.record("status", response.status().as_u16());
            if let Some(error) = response.extensions().get::<Error>() {
                this.span.record("error.code", error.code());
            }
            if let Some(elapsed) = elapsed {
                this.span.record("latency_ms", elapsed.as_secs_f64() * 1000.0);
            }
            // One line with every field, for formatters that print spans only with events.
            tracing::debug!(target: "tower_shield::envelope", "request completed");
        }
        #[cfg(feature = "metrics")]
        if let Some(elapsed) = elapsed {
            metric.record(response.status(), elapsed);
        }
        Poll::Ready(Ok(response))
    }
}

/// The latency histogram's labels, gathered before the context is consumed.
#[cfg(feature = "metrics")]
struct Metric {
    route: metrics::SharedString,
    method: &'static str,
}

#[cfg(feature = "metrics")]
impl Metric {
    /// `served`: a service answered (no error, no gRPC `UNIMPLEMENTED`); a panic or a
    /// rejection keeps the template if known, never a gRPC path.
    fn new<M, R>(cx: &Ctx<M, R>, served: bool) -> Self {
        Self { route: cx.route.label(cx.uri.as_ref(), served), method: method_label(&cx.method) }
    }

    fn served<B>(response: &Response<B>) -> bool {
        response.extensions().get::<Error>().is_none()
            && response.headers().get(&GRPC_STATUS).is_none_or(|s| s != "12")
    }

    fn record(self, status: StatusCode, elapsed: std::time::Duration) {
        metrics::histogram!(
            "tower_shield_request_duration_seconds",
            "route" => self.route,
            "method" => self.method,
            "status" => status_class(status),
        )
        .record(elapsed.as_secs_f64());
    }
}

/// Standard methods by name; any other (clients can invent them) as `other`.
#[cfg(feature = "metrics")]
fn method_label(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

#[cfg(feature = "metrics")]
fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// The headers of the inner response that describe a body the envelope replaces.
const STRIPPED: [HeaderName; 7] = [
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::TRANSFER_ENCODING,
    header::CONTENT_RANGE,
    header::ETAG,
    header::LAST_MODIFIED,
];

/// The index of `name` in [`STRIPPED`]: one `match` on the text (by length first), rather than
/// seven comparisons of header names.
fn stripped(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "content-type" => 0,
        "content-length" => 1,
        "content-encoding" => 2,
        "transfer-encoding" => 3,
        "content-range" => 4,
        "etag" => 5,
        "last-modified" => 6,
        _ => return None,
    })
}

impl<M, R: Render> Ctx<M, R> {
    fn finish<B: Body<Data = Bytes>>(self, response: Response<B>) -> Response<ResponseBody<B>> {
        let (mut parts, body) = response.into_parts();
        if parts.extensions.get::<Error>().is_none() {
            let status = parts.status;
            let passes = !(status.is_client_error() || status.is_server_error())
                || (status.is_client_error()
                    && self.config.keep_client_error_bodies
                    && !self.grpc
                    && !body.is_end_stream()
                    && body.size_hint().exact() != Some(0));
            if passes {
                parts.headers.insert(self.config.id_header(), self.request_id.into_header_value());
                return Response::from_parts(parts, ResponseBody::inner(body));
            }
            if status.is_server_error() {
                tracing::error!(
                    target: "tower_shield::envelope",
                    status = status.as_u16(),
                    "inner service answered a server error; its body was replaced"
                );
            }
            parts.extensions.insert(Error::from_status(status));
        }
        self.render(parts)
    }

    /// Renders the [`Error`] in `parts`' extensions, which stays there for outer layers.
    fn render<B>(self, mut parts: Parts) -> Response<ResponseBody<B>> {
        let error = parts.extensions.get::<Error>().expect("the caller put the error there");
        tracing::debug!(
            target: "tower_shield::envelope",
            code = error.code(),
            status = error.status().as_u16(),
            reason = error.reason().unwrap_or(""),
            "rendered error"
        );
        let headers = &mut parts.headers;
        // One pass over the names present, then a removal only for those found: cheaper than
        // seven hashed lookups in a map that usually holds none of them.
        let mut present = 0u8;
        for name in headers.keys() {
            if let Some(i) = stripped(name) {
                present |= 1 << i;
            }
        }
        for (i, name) in STRIPPED.iter().enumerate() {
            if present & (1 << i) != 0 {
                headers.remove(name);
            }
        }
        // A rejection's headers were written when it became a response; an error put in the
        // extensions some other way gets them here.
        error.write_missing_headers(headers);

        let body = if self.grpc {
            // A trailers-only response: HTTP 200, the status in the headers, no body.
            parts.status = StatusCode::OK;
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert(GRPC_STATUS, error.grpc_code().header_value());
            headers.insert(GRPC_MESSAGE, grpc_message(error.message()));
            Bytes::new()
        } else {
            parts.status = error.status();
            let rendered = self.config.render.render(
                error,
                &RenderContext {
                    request_id: &self.request_id,
                    format: self.format,
                    path: self.uri.as_ref().map_or("", Uri::path),
                },
            );
            // No `Content-Length`: the body's exact size hint gives it to the server (hyper
            // writes it), and the map stays within the six names it is sized for.
            headers.insert(header::CONTENT_TYPE, rendered.content_type);
            headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            rendered.body
        };
        headers.insert(self.config.id_header(), self.request_id.into_header_value());
        Response::from_parts(parts, ResponseBody::full(body))
    }
}

impl<F, M, R> std::fmt::Debug for ResponseFuture<F, M, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripped_names_are_found_by_text() {
        for (i, name) in STRIPPED.iter().enumerate() {
            assert_eq!(stripped(name), Some(i), "{name}");
        }
        for name in [header::WWW_AUTHENTICATE, header::RETRY_AFTER, GRPC_STATUS] {
            assert_eq!(stripped(&name), None, "{name}");
        }
    }
}
