use std::{fmt, sync::Arc};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue};
use serde::Serialize;

use super::RequestId;
use crate::{error::Detail, Error};

/// The body format of an HTTP error response.
///
/// By default the envelope [negotiates](Format::negotiate) it from the client's `Accept`;
/// [`ErrorEnvelopeLayer::format`](super::ErrorEnvelopeLayer::format) fixes it.
///
/// # Example
///
/// ```
/// use http::{Request, StatusCode};
/// use http_body_util::BodyExt;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_shield::{envelope::{ErrorEnvelopeLayer, Format}, Error, ErrorKind};
///
/// # use std::convert::Infallible;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let service = ServiceBuilder::new()
///     // Problem details for every client, whatever its `Accept` says.
///     .layer(ErrorEnvelopeLayer::new().format(Format::Problem))
///     .service_fn(|_: Request<String>| async {
///         Ok::<_, Infallible>(Error::new(ErrorKind::Forbidden).to_response::<String>())
///     });
///
/// let request = Request::get("/orders/7").header("x-request-id", "req-1").body(String::new());
/// let response = service.oneshot(request.unwrap()).await.unwrap();
/// assert_eq!(response.status(), StatusCode::FORBIDDEN);
/// assert_eq!(response.headers()["content-type"], "application/problem+json");
/// let body = response.into_body().collect().await.unwrap().to_bytes();
/// assert_eq!(
///     serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
///     serde_json::json!({
///         "type": "about:blank", "title": "Forbidden", "status": 403,
///         "detail": "Insufficient permissions", "instance": "/orders/7",
///         "code": "forbidden", "request_id": "req-1",
///     }),
/// );
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// `application/json`: `{"code", "message", "request_id", "details"?}`.
    Json,
    /// `application/problem+json` (RFC 9457): `type`, `title`, `status`, `detail`, `instance`,
    /// plus `code`, `request_id` and `details`.
    Problem,
}

impl Format {
    /// The format a client asks for: [`Format::Problem`] when its `Accept` header names
    /// `application/problem+json` with a non-zero `q` at least as high as what it gives
    /// `application/json` (named, or matched by `application/*` or `*/*`, the most specific
    /// range counting, as RFC 9110 section 12.5.1 says), else [`Format::Json`]. A wildcard alone
    /// never asks for problem details.
    ///
    /// ```
    /// use http::{header::ACCEPT, HeaderMap};
    /// use tower_shield::envelope::Format;
    ///
    /// let mut headers = HeaderMap::new();
    /// assert_eq!(Format::negotiate(&headers), Format::Json);
    /// headers.insert(ACCEPT, "application/problem+json, application/json;q=0.5".parse().unwrap());
    /// assert_eq!(Format::negotiate(&headers), Format::Problem);
    /// headers.insert(ACCEPT, "application/json, application/problem+json;q=0.1".parse().unwrap());
    /// assert_eq!(Format::negotiate(&headers), Format::Json);
    /// ```
    pub fn negotiate(headers: &HeaderMap) -> Self {
        // The highest `q` of each: problem details (named only), and JSON by the most
        // specific range that matches it (0: named, 1: `application/*`, 2: `*/*`).
        let mut problem: Option<f32> = None;
        let mut json: Option<(u8, f32)> = None;
        for value in headers.get_all(header::ACCEPT) {
            let Ok(value) = value.to_str() else { continue };
            for range in value.split(',') {
                let mut parts = range.split(';');
                let media = parts.next().unwrap_or_default().trim();
                let q = parts.find_map(quality).unwrap_or(1.0);
                let specificity = if media.eq_ignore_ascii_case("application/problem+json") {
                    problem = Some(problem.map_or(q, |p| p.max(q)));
                    continue;
                } else if media.eq_ignore_ascii_case("application/json") {
                    0
                } else if media.eq_ignore_ascii_case("application/*") {
                    1
                } else if media == "*/*" {
                    2
                } else {
                    continue;
                };
                json = match json {
                    Some((s, old)) if s < specificity => Some((s, old)),
                    Some((s, old)) if s == specificity => Some((s, old.max(q))),
                    _ => Some((specificity, q)),
                };
            }
        }
        match problem {
            Some(p) if p > 0.0 && p >= json.map_or(0.0, |(_, q)| q) => Self::Problem,
            _ => Self::Json,
        }
    }
}

/// The `q` of an `Accept` parameter, if it is one, clamped to 0..=1; an unreadable value
/// counts as 1, as if it were absent.
fn quality(parameter: &str) -> Option<f32> {
    let parameter = parameter.trim();
    if !parameter.get(..2).is_some_and(|name| name.eq_ignore_ascii_case("q=")) {
        return None;
    }
    let q = parameter[2..].trim().parse::<f32>().ok().filter(|q| q.is_finite()).unwrap_or(1.0);
    Some(q.clamp(0.0, 1.0))
}

/// What the envelope knows about the request when it renders an error.
///
/// # Example
///
/// A [`Render`] of your own, for plain-text bodies.
///
/// ```
/// use http::{HeaderValue, Request};
/// use http_body_util::BodyExt;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_shield::envelope::{ErrorEnvelopeLayer, Render, RenderContext, Rendered};
/// use tower_shield::{Error, ErrorKind};
///
/// #[derive(Clone)]
/// struct PlainText;
/// impl Render for PlainText {
///     fn render(&self, error: &Error, cx: &RenderContext<'_>) -> Rendered {
///         // The public message only: `error.reason()` is for logs.
///         let body = format!("{} at {} ({})", error.message(), cx.path(), cx.request_id());
///         Rendered { content_type: HeaderValue::from_static("text/plain"), body: body.into() }
///     }
/// }
///
/// # use std::convert::Infallible;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let service = ServiceBuilder::new()
///     .layer(ErrorEnvelopeLayer::new().with_render(PlainText))
///     .service_fn(|_: Request<String>| async {
///         Ok::<_, Infallible>(Error::new(ErrorKind::NotFound).to_response::<String>())
///     });
/// let request = Request::get("/nope").header("x-request-id", "req-1").body(String::new());
/// let response = service.oneshot(request.unwrap()).await.unwrap();
/// let body = response.into_body().collect().await.unwrap().to_bytes();
/// assert_eq!(body, "Not found at /nope (req-1)");
/// # }
/// ```
#[derive(Debug)]
pub struct RenderContext<'a> {
    pub(crate) request_id: &'a RequestId,
    pub(crate) format: Format,
    pub(crate) path: &'a str,
}

impl RenderContext<'_> {
    /// The request id, as echoed in the response header.
    pub fn request_id(&self) -> &RequestId {
        self.request_id
    }

    /// The format the client asked for (or the configured one).
    pub fn format(&self) -> Format {
        self.format
    }

    /// The request path, without the query.
    pub fn path(&self) -> &str {
        self.path
    }
}

/// A rendered error body and its content type.
///
/// # Example
///
/// The default JSON body under a media type of your own, from a closure renderer:
///
/// ```
/// use http::{HeaderValue, Request, StatusCode};
/// use http_body_util::BodyExt;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_shield::envelope::{self, DefaultRender, Render, RenderContext, Rendered};
/// use tower_shield::{Error, ErrorKind};
///
/// # use std::convert::Infallible;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let render = |error: &Error, cx: &RenderContext<'_>| {
///     let Rendered { body, .. } = DefaultRender::new().render(error, cx);
///     Rendered { content_type: HeaderValue::from_static("application/vnd.example+json"), body }
/// };
/// let service = ServiceBuilder::new()
///     .layer(envelope::ErrorEnvelopeLayer::new().with_render(render))
///     .service_fn(|_: Request<String>| async {
///         Ok::<_, Infallible>(Error::new(ErrorKind::Unauthenticated).to_response::<String>())
///     });
/// let request = Request::get("/orders").header("x-request-id", "req-1").body(String::new());
/// let response = service.oneshot(request.unwrap()).await.unwrap();
/// assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
/// assert_eq!(response.headers()["content-type"], "application/vnd.example+json");
/// let body = response.into_body().collect().await.unwrap().to_bytes();
/// assert_eq!(
///     body,
///     r#"{"code":"unauthenticated","message":"Authentication required","request_id":"req-1"}"#,
/// );
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Rendered {
    /// The `Content-Type` of the body.
    pub content_type: HeaderValue,
    /// The body.
    pub body: Bytes,
}

/// Renders the body of an HTTP error response. gRPC errors are not rendered: they become
/// trailers-only responses.
///
/// Implemented for closures `Fn(&Error, &RenderContext<'_>) -> Rendered`. A renderer must not
/// put [`Error::reason`] in the body: it is for logs.
///
/// ```
/// use http::HeaderValue;
/// use tower_shield::envelope::{ErrorEnvelopeLayer, RenderContext, Rendered};
/// use tower_shield::Error;
///
/// let layer = ErrorEnvelopeLayer::new().with_render(|error: &Error, cx: &RenderContext<'_>| {
///     Rendered {
///         content_type: HeaderValue::from_static("text/plain; charset=utf-8"),
///         body: format!("{} ({})", error.message(), cx.request_id()).into(),
///     }
/// });
/// # let _ = layer;
/// ```
pub trait Render: Clone + Send + Sync + 'static {
    /// Renders `error`.
    fn render(&self, error: &Error, cx: &RenderContext<'_>) -> Rendered;

    /// Whether bodies in `format` use [`RenderContext::path`] (default: yes). When not, the
    /// envelope keeps no copy of the request path, and the context's path is empty.
    fn needs_path(&self, format: Format) -> bool {
        let _ = format;
        true
    }
}

impl<F> Render for F
where
    F: Fn(&Error, &RenderContext<'_>) -> Rendered + Clone + Send + Sync + 'static,
{
    fn render(&self, error: &Error, cx: &RenderContext<'_>) -> Rendered {
        self(error, cx)
    }
}

/// The default [`Render`]: the JSON envelope, or RFC 9457 problem details.
///
/// Problem `type` is `about:blank` (with the status phrase as `title` and the public message as
/// `detail`) unless [`DefaultRender::problem_type_base`] is set, in which case `type` is the
/// base followed by the code (e.g. `https://api.example.com/errors/rate_limited`) and `title`
/// is the public message.
///
/// # Example
///
/// ```
/// use http::{header::ACCEPT, Request, StatusCode};
/// use http_body_util::BodyExt;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_shield::{envelope::{DefaultRender, ErrorEnvelopeLayer}, Error, ErrorKind};
///
/// # use std::convert::Infallible;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let render = DefaultRender::new().problem_type_base("https://api.example.com/errors/");
/// let service = ServiceBuilder::new()
///     .layer(ErrorEnvelopeLayer::new().with_render(render))
///     .service_fn(|_: Request<String>| async {
///         Ok::<_, Infallible>(Error::new(ErrorKind::RateLimited).to_response::<String>())
///     });
///
/// let request = Request::post("/orders").header(ACCEPT, "application/problem+json");
/// let response = service.oneshot(request.body(String::new()).unwrap()).await.unwrap();
/// assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
/// let body = response.into_body().collect().await.unwrap().to_bytes();
/// let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
/// assert_eq!(problem["type"], "https://api.example.com/errors/rate_limited");
/// assert_eq!(problem["title"], "Too many requests");
/// assert_eq!(problem["instance"], "/orders");
/// # }
/// ```
#[derive(Clone, Default)]
pub struct DefaultRender {
    problem_type_base: Option<Arc<str>>,
}

impl DefaultRender {
    /// The default renderer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the URI prefix of problem `type`s; the code is appended.
    pub fn problem_type_base(mut self, base: impl Into<String>) -> Self {
        self.problem_type_base = Some(base.into().into());
        self
    }
}

impl fmt::Debug for DefaultRender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DefaultRender").field("problem_type_base", &self.problem_type_base).finish()
    }
}

impl Render for DefaultRender {
    /// Only problem details carry the path (as `instance`).
    fn needs_path(&self, format: Format) -> bool {
        format == Format::Problem
    }

    fn render(&self, error: &Error, cx: &RenderContext<'_>) -> Rendered {
        let (content_type, body) = render_json(
            error,
            Some(cx.request_id),
            cx.format,
            self.problem_type_base.as_deref().unwrap_or(""),
            cx.path,
        );
        Rendered { content_type, body }
    }
}

#[derive(Serialize)]
struct ProblemBody<'a> {
    #[serde(rename = "type")]
    type_: &'a str,
    title: &'a str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    instance: &'a str,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    details: &'a [Detail],
}

/// Renders the JSON or problem body. An empty `problem_type_base` means `about:blank`; an empty
/// `instance` is left out.
pub(crate) fn render_json(
    error: &Error,
    request_id: Option<&RequestId>,
    format: Format,
    problem_type_base: &str,
    instance: &str,
) -> (HeaderValue, Bytes) {
    let request_id = request_id.map(RequestId::as_str);
    let body = match format {
        Format::Json => Ok(error.json_body(request_id)),
        Format::Problem => {
            let type_;
            let (title, detail) = if problem_type_base.is_empty() {
                type_ = String::from("about:blank");
                (error.status().canonical_reason().unwrap_or("Error"), Some(error.message()))
            } else {
                type_ = format!("{problem_type_base}{}", error.code());
                (error.message(), None)
            };
            serde_json::to_vec(&ProblemBody {
                type_: &type_,
                title,
                status: error.status().as_u16(),
                detail,
                instance,
                code: error.code(),
                request_id,
                details: error.details(),
            })
        }
    };
    let content_type = match format {
        Format::Json => HeaderValue::from_static("application/json"),
        Format::Problem => HeaderValue::from_static("application/problem+json"),
    };
    // Serializing strings and integers cannot fail.
    (content_type, Bytes::from(body.unwrap_or_default()))
}

/// Percent-encodes a `grpc-message` as the gRPC HTTP/2 protocol requires: bytes outside
/// 0x20..=0x7E, and `%`, become `%XX`.
pub(crate) fn grpc_message(message: &str) -> HeaderValue {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).expect("percent-encoded text is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(grpc_message("Too many requests"), "Too many requests");
        assert_eq!(grpc_message("100% é\n"), "100%25 %C3%A9%0A");
    }

    #[test]
    fn negotiation_respects_q_zero() {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/problem+json;q=0"));
        assert_eq!(Format::negotiate(&headers), Format::Json);
        headers
            .insert(header::ACCEPT, HeaderValue::from_static("Application/Problem+JSON ; q=0.1"));
        assert_eq!(Format::negotiate(&headers), Format::Problem);
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert_eq!(Format::negotiate(&headers), Format::Json);
    }

    #[test]
    fn negotiation_weighs_json_against_problem_details() {
        let cases = [
            ("application/problem+json", Format::Problem),
            ("application/json, application/problem+json", Format::Problem),
            ("application/json;q=1, application/problem+json;q=0.1", Format::Json),
            ("application/problem+json;q=0.5, application/json;q=0.9", Format::Json),
            ("application/problem+json;q=0.9, application/json;q=0.5", Format::Problem),
            // The most specific range counts: `application/json;q=0.2` beats `*/*`.
            ("application/problem+json;q=0.5, application/json;q=0.2, */*", Format::Problem),
            ("application/problem+json;q=0.5, */*", Format::Json),
            ("application/problem+json;q=0.5, application/*;q=0.4", Format::Problem),
            ("application/problem+json;q=0.5, application/*;q=0.6, */*;q=0.1", Format::Json),
            ("text/html, application/problem+json;q=0.3", Format::Problem),
            ("application/problem+json;q=abc", Format::Problem),
            ("application/problem+json;q=7", Format::Problem),
            ("application/problem+json;q=-1", Format::Json),
            ("application/problem+json;level=1;q=0", Format::Json),
            ("application/problem+jsonx", Format::Json),
            ("", Format::Json),
        ];
        for (accept, want) in cases {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, HeaderValue::from_static(accept));
            assert_eq!(Format::negotiate(&headers), want, "{accept}");
        }
        // Several `Accept` fields are one list.
        let mut headers = HeaderMap::new();
        headers.append(header::ACCEPT, HeaderValue::from_static("application/json"));
        headers.append(header::ACCEPT, HeaderValue::from_static("application/problem+json;q=0.5"));
        assert_eq!(Format::negotiate(&headers), Format::Json);
    }
}
