//! The one error type shared by every layer.
//!
//! A layer that rejects a request builds an [`Error`] and turns it into a response with
//! [`Error::to_response`]: the right status, the protocol headers (`WWW-Authenticate`,
//! `Retry-After`), an empty body, and the `Error` itself in the response extensions. The
//! [`ErrorEnvelopeLayer`](crate::envelope::ErrorEnvelopeLayer) then renders the one public body.
//!
//! What a client sees is fixed per [`ErrorKind`]: a stable [`code`](Error::code), a short
//! [`message`](Error::message), the [`status`](Error::status) and [`grpc_code`](Error::grpc_code).
//! The *internal reason* ("token expired", "kid not found", "redis timeout") is kept for logs
//! through [`Error::reason`] and `Display`, and is never rendered.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::StatusCode;
//! use tower_shield::{Error, ErrorKind};
//!
//! let error = Error::new(ErrorKind::RateLimited)
//!     .with_reason("per-ip quota exhausted")
//!     .with_retry_after(Duration::from_millis(1500));
//!
//! assert_eq!(error.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(error.code(), "rate_limited");
//! assert_eq!(error.message(), "Too many requests");
//!
//! let response = error.to_response::<String>();
//! assert_eq!(response.headers()["retry-after"], "2"); // rounded up
//! assert!(response.extensions().get::<Error>().is_some());
//! ```

use std::{
    borrow::Cow,
    fmt,
    sync::{Arc, OnceLock},
    time::Duration,
};

use http::{header, HeaderValue, Response, StatusCode};
use serde::Serialize;

/// A type-erased error, as used by tower.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The shared error of every tower-shield layer.
///
/// Cheap to clone (shared behind one `Arc`: layers hand out clones of prepared errors), and
/// `Send + Sync + 'static` so it can travel in [`http::Extensions`].
///
/// See the [module docs](crate::error) for an example.
#[derive(Clone)]
pub struct Error {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    kind: ErrorKind,
    status: StatusCode,
    reason: Option<Cow<'static, str>>,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    details: Vec<Detail>,
    retry_after: Option<Duration>,
    challenge: Option<Challenge>,
    /// `RateLimit-Policy` and `RateLimit` of the quota that refused a handler's
    /// [`RateLimiter`](crate::rate_limit::RateLimiter) check.
    rate_limit: Option<Box<[HeaderValue; 2]>>,
}

/// What went wrong, as far as a client may know.
///
/// Each kind has a fixed HTTP status, a stable snake_case code, a short public message and a
/// gRPC code. New kinds may be added in minor releases.
///
/// # Example
///
/// ```
/// use http::StatusCode;
/// use tower_shield::{error::GrpcCode, Error, ErrorKind};
///
/// let kind = ErrorKind::Forbidden;
/// assert_eq!(kind.status(), StatusCode::FORBIDDEN);
/// assert_eq!(kind.code(), "forbidden");
/// assert_eq!(kind.message(), "Insufficient permissions");
/// assert_eq!(kind.grpc_code(), GrpcCode::PermissionDenied);
///
/// // A bare error status of an inner service maps back to its kind.
/// assert_eq!(ErrorKind::from_status(StatusCode::TOO_MANY_REQUESTS), ErrorKind::RateLimited);
///
/// // A layer or handler of your own rejects with a kind; the envelope renders the body.
/// let response = Error::from(kind).to_response::<String>();
/// assert_eq!(response.status(), StatusCode::FORBIDDEN);
/// assert_eq!(response.extensions().get::<Error>().unwrap().kind(), ErrorKind::Forbidden);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No credential was presented (401, `unauthenticated`).
    Unauthenticated,
    /// A credential was presented but is not valid: bad signature, expired, unknown key,
    /// revoked, wrong audience... (401, `invalid_token`).
    InvalidToken,
    /// The credential is valid but lacks the scope or role the route needs (403,
    /// `forbidden`).
    Forbidden,
    /// The credential is valid but its authentication is too old or too weak (RFC 9470; 401,
    /// `step_up_required`).
    StepUpRequired,
    /// A quota is exhausted (429, `rate_limited`).
    RateLimited,
    /// The request is malformed or fails validation (400, `invalid_request`); see
    /// [`Error::details`].
    InvalidRequest,
    /// The request body is larger than allowed (413, `payload_too_large`).
    PayloadTooLarge,
    /// The request body has a media type the route does not accept (415,
    /// `unsupported_media_type`).
    UnsupportedMediaType,
    /// A write that requires an `Idempotency-Key` was sent without one (400,
    /// `idempotency_key_missing`).
    IdempotencyKeyMissing,
    /// A request with the same `Idempotency-Key` is still being processed (409,
    /// `idempotency_key_in_use`).
    IdempotencyKeyInUse,
    /// The `Idempotency-Key` was already used for a different request (422,
    /// `idempotency_key_reused`).
    IdempotencyKeyReused,
    /// Nothing is there, or the caller may not learn that something is (404, `not_found`).
    NotFound,
    /// The route exists but not for this method (405, `method_not_allowed`).
    MethodNotAllowed,
    /// A backend the decision depends on (Redis, a JWKS or introspection endpoint) is down and
    /// the layer fails closed (503, `service_unavailable`).
    ServiceUnavailable,
    /// Something failed on the server; nothing more is said (500, `internal`).
    Internal,
    /// Any other error status produced by the inner service, kept as it was. Its code is the
    /// snake_case form of the status' canonical reason, e.g. `conflict` for 409.
    Other,
}

impl ErrorKind {
    /// The HTTP status of this kind. For [`ErrorKind::Other`] this is 500; an [`Error`] built
    /// with [`Error::from_status`] keeps its own status.
    pub const fn status(self) -> StatusCode {
        match self {
            Self::Unauthenticated | Self::InvalidToken | Self::StepUpRequired => {
                StatusCode::UNAUTHORIZED
            }
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::InvalidRequest | Self::IdempotencyKeyMissing => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::IdempotencyKeyInUse => StatusCode::CONFLICT,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal | Self::Other => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable, machine-readable code. Never changes for a kind.
    pub const fn code(self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::InvalidToken => "invalid_token",
            Self::Forbidden => "forbidden",
            Self::StepUpRequired => "step_up_required",
            Self::RateLimited => "rate_limited",
            Self::InvalidRequest => "invalid_request",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::IdempotencyKeyMissing => "idempotency_key_missing",
            Self::IdempotencyKeyInUse => "idempotency_key_in_use",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::ServiceUnavailable => "service_unavailable",
            Self::Internal => "internal",
            Self::Other => "error",
        }
    }

    /// The short public message. Says what happened, never why.
    pub const fn message(self) -> &'static str {
        match self {
            Self::Unauthenticated => "Authentication required",
            Self::InvalidToken => "Invalid or expired credentials",
            Self::Forbidden => "Insufficient permissions",
            Self::StepUpRequired => "Stronger or more recent authentication required",
            Self::RateLimited => "Too many requests",
            Self::InvalidRequest => "The request is invalid",
            Self::PayloadTooLarge => "Request body too large",
            Self::UnsupportedMediaType => "Unsupported content type",
            Self::IdempotencyKeyMissing => "An Idempotency-Key header is required",
            Self::IdempotencyKeyInUse => "A request with this Idempotency-Key is in progress",
            Self::IdempotencyKeyReused => "This Idempotency-Key was used for a different request",
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::ServiceUnavailable => "Service temporarily unavailable",
            Self::Internal => "Internal server error",
            Self::Other => "Request failed",
        }
    }

    /// The gRPC status code of this kind.
    pub const fn grpc_code(self) -> GrpcCode {
        match self {
            Self::Unauthenticated | Self::InvalidToken | Self::StepUpRequired => {
                GrpcCode::Unauthenticated
            }
            Self::Forbidden => GrpcCode::PermissionDenied,
            Self::RateLimited | Self::PayloadTooLarge => GrpcCode::ResourceExhausted,
            Self::InvalidRequest
            | Self::UnsupportedMediaType
            | Self::IdempotencyKeyMissing
            | Self::IdempotencyKeyReused => GrpcCode::InvalidArgument,
            Self::IdempotencyKeyInUse => GrpcCode::Aborted,
            Self::NotFound => GrpcCode::NotFound,
            Self::MethodNotAllowed => GrpcCode::Unimplemented,
            Self::ServiceUnavailable => GrpcCode::Unavailable,
            Self::Internal | Self::Other => GrpcCode::Internal,
        }
    }

    /// The kind that a bare error status from an inner service maps to.
    pub fn from_status(status: StatusCode) -> Self {
        match status {
            StatusCode::UNAUTHORIZED => Self::Unauthenticated,
            StatusCode::FORBIDDEN => Self::Forbidden,
            StatusCode::TOO_MANY_REQUESTS => Self::RateLimited,
            StatusCode::BAD_REQUEST => Self::InvalidRequest,
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::UnsupportedMediaType,
            StatusCode::NOT_FOUND => Self::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => Self::MethodNotAllowed,
            StatusCode::SERVICE_UNAVAILABLE => Self::ServiceUnavailable,
            StatusCode::INTERNAL_SERVER_ERROR => Self::Internal,
            _ => Self::Other,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// gRPC status codes, as in `google.rpc.Code`.
///
/// # Example
///
/// ```
/// use http::{Response, StatusCode};
/// use tower_shield::{error::GrpcCode, Error, ErrorKind};
///
/// let code = Error::new(ErrorKind::RateLimited).grpc_code();
/// assert_eq!(code, GrpcCode::ResourceExhausted);
/// assert_eq!(code.as_i32(), 8);
///
/// // The `grpc-status` of a response written by hand.
/// let mut response = Response::new(());
/// response.headers_mut().insert("grpc-status", code.header_value());
/// assert_eq!(response.headers()["grpc-status"], "8");
///
/// // An inner service's 409 reaches gRPC clients as `ABORTED`.
/// assert_eq!(Error::from_status(StatusCode::CONFLICT).grpc_code(), GrpcCode::Aborted);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum GrpcCode {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl GrpcCode {
    /// The numeric code, as sent in the `grpc-status` trailer.
    pub const fn as_i32(self) -> i32 {
        self as i32
    }

    /// The `grpc-status` value as a static header value.
    pub fn header_value(self) -> HeaderValue {
        const VALUES: [&str; 17] = [
            "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15",
            "16",
        ];
        HeaderValue::from_static(VALUES[self as usize])
    }
}

/// One field-level problem, rendered in the envelope's `details` array.
///
/// `field` is a location such as a JSON pointer (`/items/0/quantity`), `query:page` or
/// `header:Idempotency-Key`; `issue` is a stable keyword (`maximum`, `required`,
/// `unknown_field`...); `message` is an optional short human explanation. None of them may
/// contain the rejected value.
///
/// ```
/// use tower_shield::error::Detail;
///
/// let detail = Detail::new("/quantity", "maximum").with_message("must be at most 1000");
/// assert_eq!(
///     serde_json::to_string(&detail).unwrap(),
///     r#"{"field":"/quantity","issue":"maximum","message":"must be at most 1000"}"#,
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Detail {
    field: Cow<'static, str>,
    issue: Cow<'static, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<Cow<'static, str>>,
}

impl Detail {
    /// A problem with `field`, described by the keyword `issue`.
    pub fn new(field: impl Into<Cow<'static, str>>, issue: impl Into<Cow<'static, str>>) -> Self {
        Self { field: field.into(), issue: issue.into(), message: None }
    }

    /// Adds a short human explanation. It must not contain the rejected value.
    pub fn with_message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// Where the problem is.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The stable keyword naming the problem.
    pub fn issue(&self) -> &str {
        &self.issue
    }

    /// The human explanation, if any.
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }
}

/// A `WWW-Authenticate` challenge (RFC 6750 section 3, RFC 9470 section 3).
///
/// ```
/// use tower_shield::error::Challenge;
///
/// let challenge = Challenge::bearer("orders")
///     .with_error("insufficient_scope")
///     .with_param("scope", "orders:write");
/// assert_eq!(
///     challenge.to_string(),
///     r#"Bearer realm="orders", error="insufficient_scope", scope="orders:write""#,
/// );
/// ```
///
/// Cheap to clone (shared); its header value is rendered once, on first use, and shared by
/// its clones.
#[derive(Clone)]
pub struct Challenge {
    inner: Arc<ChallengeInner>,
}

#[derive(Clone)]
struct ChallengeInner {
    scheme: Cow<'static, str>,
    params: Vec<(Cow<'static, str>, Cow<'static, str>)>,
    /// The header value, rendered once: the envelope writes it again for every rejection
    /// that carries this challenge (or a clone of it). Reset by every change.
    rendered: OnceLock<HeaderValue>,
}

impl PartialEq for Challenge {
    fn eq(&self, other: &Self) -> bool {
        self.inner.scheme == other.inner.scheme && self.inner.params == other.inner.params
    }
}

impl Eq for Challenge {}

impl fmt::Debug for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Challenge")
            .field("scheme", &self.inner.scheme)
            .field("params", &self.inner.params)
            .finish()
    }
}

impl Challenge {
    /// A `Bearer` challenge for `realm`.
    pub fn bearer(realm: impl Into<Cow<'static, str>>) -> Self {
        Self::new("Bearer").with_param("realm", realm)
    }

    /// A challenge with another scheme, e.g. `ApiKey`.
    pub fn new(scheme: impl Into<Cow<'static, str>>) -> Self {
        Self {
            inner: Arc::new(ChallengeInner {
                scheme: scheme.into(),
                params: Vec::new(),
                rendered: OnceLock::new(),
            }),
        }
    }

    /// Adds the `error` parameter (`invalid_request`, `invalid_token`, `insufficient_scope`,
    /// `insufficient_user_authentication`).
    pub fn with_error(self, error: impl Into<Cow<'static, str>>) -> Self {
        self.with_param("error", error)
    }

    /// Adds an auth parameter. The value is quoted and escaped when rendered.
    pub fn with_param(
        mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<Cow<'static, str>>,
    ) -> Self {
        let inner = Arc::make_mut(&mut self.inner);
        inner.params.push((name.into(), value.into()));
        inner.rendered = OnceLock::new();
        self
    }

    /// The scheme, e.g. `Bearer`.
    pub fn scheme(&self) -> &str {
        &self.inner.scheme
    }

    /// The value of a parameter, if present.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.inner.params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_ref())
    }

    /// The header value. Characters that cannot appear in a quoted string are dropped.
    pub fn to_header_value(&self) -> HeaderValue {
        self.inner.rendered.get_or_init(|| self.render()).clone()
    }

    fn render(&self) -> HeaderValue {
        let mut out = String::with_capacity(self.len_hint());
        self.write_to(&mut out);
        HeaderValue::from_maybe_shared(bytes::Bytes::from(out))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
    }

    /// The length of the header text when no value needs escaping, so that it is written
    /// without reallocating.
    fn len_hint(&self) -> usize {
        self.inner
            .params
            .iter()
            .fold(self.inner.scheme.len(), |len, (name, value)| len + name.len() + value.len() + 5)
    }

    /// The header text, written without `core::fmt` (every 401 and 403 renders one).
    fn write_to(&self, out: &mut String) {
        out.push_str(&self.inner.scheme);
        for (i, (name, value)) in self.inner.params.iter().enumerate() {
            out.push_str(if i == 0 { " " } else { ", " });
            out.push_str(name);
            out.push_str("=\"");
            // Most values (realms, error codes, scopes) need neither escaping nor dropping.
            if value.bytes().all(|b| {
                (b == b' ' || b == b'\t' || (b'!'..=b'~').contains(&b)) && b != b'"' && b != b'\\'
            }) {
                out.push_str(value);
                out.push('"');
                continue;
            }
            for c in value.chars() {
                match c {
                    '"' | '\\' => {
                        out.push('\\');
                        out.push(c);
                    }
                    ' ' | '\t' | '!'..='~' => out.push(c),
                    _ => {}
                }
            }
            out.push('"');
        }
    }
}

impl fmt::Display for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::with_capacity(64);
        self.write_to(&mut out);
        f.write_str(&out)
    }
}

impl Error {
    /// An error of `kind`, with the kind's status.
    pub fn new(kind: ErrorKind) -> Self {
        Self {
            inner: Arc::new(Inner {
                kind,
                status: kind.status(),
                reason: None,
                source: None,
                details: Vec::new(),
                retry_after: None,
                challenge: None,
                rate_limit: None,
            }),
        }
    }

    /// The error for a bare error status from an inner service: a known status gets its kind,
    /// any other keeps its status as [`ErrorKind::Other`].
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_shield::{Error, ErrorKind};
    ///
    /// assert_eq!(Error::from_status(StatusCode::NOT_FOUND).kind(), ErrorKind::NotFound);
    /// let conflict = Error::from_status(StatusCode::CONFLICT);
    /// assert_eq!((conflict.status(), conflict.code()), (StatusCode::CONFLICT, "conflict"));
    /// ```
    pub fn from_status(status: StatusCode) -> Self {
        let kind = ErrorKind::from_status(status);
        let mut error = Self::new(kind);
        if kind == ErrorKind::Other {
            error.inner_mut().status = status;
        }
        error
    }

    /// Shorthand for `Error::new(ErrorKind::Internal).with_reason(reason)`.
    pub fn internal(reason: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Internal).with_reason(reason)
    }

    /// Sets the internal reason, for logs only. Must not contain secrets (tokens, keys,
    /// passwords): it is written to tracing events.
    pub fn with_reason(mut self, reason: impl Into<Cow<'static, str>>) -> Self {
        self.inner_mut().reason = Some(reason.into());
        self
    }

    /// Attaches the underlying error, for logs only.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.inner_mut().source = Some(Arc::from(source.into()));
        self
    }

    /// Adds a field-level [`Detail`], rendered in the body.
    pub fn with_detail(mut self, detail: Detail) -> Self {
        self.inner_mut().details.push(detail);
        self
    }

    /// Adds several field-level [`Detail`]s.
    pub fn with_details(mut self, details: impl IntoIterator<Item = Detail>) -> Self {
        self.inner_mut().details.extend(details);
        self
    }

    /// Sets how long the client should wait; rendered as `Retry-After` in whole seconds,
    /// rounded up.
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.inner_mut().retry_after = Some(retry_after);
        self
    }

    /// Sets the `WWW-Authenticate` challenge.
    pub fn with_challenge(mut self, challenge: Challenge) -> Self {
        self.inner_mut().challenge = Some(challenge);
        self
    }

    /// Sets the `RateLimit-Policy` and `RateLimit` items of the quota that refused.
    #[cfg(feature = "rate-limit")]
    pub(crate) fn with_rate_limit(mut self, policy: HeaderValue, state: HeaderValue) -> Self {
        self.inner_mut().rate_limit = Some(Box::new([policy, state]));
        self
    }

    /// The fields, unshared first if a clone shares them.
    fn inner_mut(&mut self) -> &mut Inner {
        Arc::make_mut(&mut self.inner)
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.inner.status
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self.inner.kind {
            ErrorKind::Other => status_code_name(self.inner.status),
            kind => kind.code(),
        }
    }

    /// The short public message.
    pub fn message(&self) -> &'static str {
        match self.inner.kind {
            ErrorKind::Other => self.inner.status.canonical_reason().unwrap_or("Request failed"),
            kind => kind.message(),
        }
    }

    /// The gRPC status code.
    pub fn grpc_code(&self) -> GrpcCode {
        match self.inner.kind {
            ErrorKind::Other => match self.inner.status {
                StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => {
                    GrpcCode::DeadlineExceeded
                }
                StatusCode::CONFLICT => GrpcCode::Aborted,
                StatusCode::PRECONDITION_FAILED => GrpcCode::FailedPrecondition,
                StatusCode::NOT_IMPLEMENTED => GrpcCode::Unimplemented,
                StatusCode::BAD_GATEWAY => GrpcCode::Unavailable,
                s if s.is_client_error() => GrpcCode::InvalidArgument,
                _ => GrpcCode::Unknown,
            },
            kind => kind.grpc_code(),
        }
    }

    /// The internal reason, for logs. Never rendered to the client.
    pub fn reason(&self) -> Option<&str> {
        self.inner.reason.as_deref()
    }

    /// The field-level details, rendered in the body.
    pub fn details(&self) -> &[Detail] {
        &self.inner.details
    }

    /// How long the client should wait, if known.
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }

    /// The `WWW-Authenticate` challenge, if any.
    pub fn challenge(&self) -> Option<&Challenge> {
        self.inner.challenge.as_ref()
    }

    /// The rejection response: the status, `WWW-Authenticate` and `Retry-After` where they
    /// apply, an empty body, and this error in the extensions for the
    /// [envelope](crate::envelope) to render.
    pub fn to_response<B: Default>(&self) -> Response<B> {
        self.clone().into_response(Spent::default())
    }

    /// [`Error::to_response`] for an error the caller no longer needs (no clone), in the maps
    /// of the rejected request (see [`Spent`]).
    pub(crate) fn into_response<B: Default>(self, spent: Spent) -> Response<B> {
        let (headers, mut extensions) = spent.into_maps();
        let mut response = Response::new(B::default());
        *response.status_mut() = self.status();
        *response.headers_mut() = headers;
        self.write_headers(response.headers_mut());
        extensions.insert(self);
        *response.extensions_mut() = extensions;
        response
    }

    /// Writes the protocol headers this error needs (`WWW-Authenticate`, `Retry-After`, and
    /// for a [`RateLimiter`](crate::rate_limit::RateLimiter)'s 429 the refusing quota's
    /// `RateLimit-Policy` and `RateLimit`).
    ///
    /// The rate-limit items are added only to a map without a `RateLimit` field: the first
    /// call (when the error becomes a response) lists them first, outer limit layers append
    /// their own after them, and a later call (the envelope's) does not add them twice.
    pub fn write_headers(&self, headers: &mut http::HeaderMap) {
        self.write_headers_where(headers, |_, _| true);
    }

    /// [`Error::write_headers`], leaving `WWW-Authenticate` and `Retry-After` alone where they
    /// are already set: the envelope's pass over a rejection whose headers were written when
    /// it became a response (a lookup is cheaper than an insertion that replaces).
    #[cfg(feature = "envelope")]
    pub(crate) fn write_missing_headers(&self, headers: &mut http::HeaderMap) {
        self.write_headers_where(headers, |headers, name| !headers.contains_key(name));
    }

    fn write_headers_where(
        &self,
        headers: &mut http::HeaderMap,
        write: impl Fn(&http::HeaderMap, &header::HeaderName) -> bool,
    ) {
        if let Some(challenge) = &self.inner.challenge {
            if write(headers, &header::WWW_AUTHENTICATE) {
                headers.insert(header::WWW_AUTHENTICATE, challenge.to_header_value());
            }
        }
        if let Some(retry_after) = self.inner.retry_after {
            if write(headers, &header::RETRY_AFTER) {
                headers.insert(header::RETRY_AFTER, retry_after_value(retry_after));
            }
        }
        // Set only by a `RateLimiter`, so only with its feature.
        #[cfg(feature = "rate-limit")]
        if let Some(rate_limit) = &self.inner.rate_limit {
            use crate::rate_limit::{RATELIMIT, RATELIMIT_POLICY};
            if !headers.contains_key(&RATELIMIT) {
                let [policy, state] = &**rate_limit;
                headers.append(RATELIMIT_POLICY, policy.clone());
                headers.append(RATELIMIT, state.clone());
            }
        }
    }
}

#[cfg(any(feature = "envelope", feature = "axum"))]
impl Error {
    /// The JSON envelope body: `{"code", "message", "request_id"?, "details"?}`.
    ///
    /// `request_id` is the text of a [`RequestId`](crate::envelope::RequestId), only
    /// `[A-Za-z0-9._-]`, and codes and messages are fixed texts without quotes, backslashes or
    /// control characters (the test `json_body_matches_serde` checks every one): without
    /// details, the body is written as it is, with no escaping to look for.
    pub(crate) fn json_body(&self, request_id: Option<&str>) -> Vec<u8> {
        #[derive(Serialize)]
        struct JsonBody<'a> {
            code: &'a str,
            message: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            request_id: Option<&'a str>,
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            details: &'a [Detail],
        }
        let (code, message) = (self.code(), self.message());
        debug_assert!(json_plain(code) && json_plain(message));
        debug_assert!(request_id.is_none_or(json_plain), "request ids are plain");
        if self.details().is_empty() {
            // The common case, without serde: the same bytes as `serde_json::to_vec` below.
            // Allocated at its exact length, so that `Bytes::from` takes the buffer as it is
            // instead of allocating a shared header for the spare capacity.
            let len = 24 + code.len() + message.len() + request_id.map_or(0, |id| 16 + id.len());
            let mut body = Vec::with_capacity(len);
            body.extend_from_slice(b"{\"code\":\"");
            body.extend_from_slice(code.as_bytes());
            body.extend_from_slice(b"\",\"message\":\"");
            body.extend_from_slice(message.as_bytes());
            if let Some(id) = request_id {
                body.extend_from_slice(b"\",\"request_id\":\"");
                body.extend_from_slice(id.as_bytes());
            }
            body.extend_from_slice(b"\"}");
            debug_assert_eq!(body.len(), len, "the length is exact");
            return body;
        }
        // Serializing strings cannot fail.
        serde_json::to_vec(&JsonBody {
            code: self.code(),
            message: self.message(),
            request_id,
            details: self.details(),
        })
        .unwrap_or_default()
    }
}

/// The maps of a rejected request, handed to its rejection response, which reuses them
/// emptied rather than allocating its own: the extension map (allocated as soon as the request
/// carries anything, a request id or a peer address), and the header map when it has room for
/// the rejection's headers (a browser sends more headers than a rejection carries).
///
/// Emptied means every value dropped, credentials included; nothing of the request reaches
/// the response.
#[derive(Default)]
pub(crate) struct Spent {
    extensions: http::Extensions,
    headers: http::HeaderMap,
}

impl Spent {
    /// The maps of a request taken apart.
    #[cfg(feature = "rate-limit")]
    pub(crate) fn parts(parts: &mut http::request::Parts) -> Self {
        let extensions = std::mem::take(&mut parts.extensions);
        Self { extensions, headers: std::mem::take(&mut parts.headers) }
    }

    /// The maps of a request.
    #[cfg(any(feature = "auth", feature = "scope"))]
    pub(crate) fn request<B>(request: &mut http::Request<B>) -> Self {
        let extensions = std::mem::take(request.extensions_mut());
        Self { extensions, headers: std::mem::take(request.headers_mut()) }
    }

    /// The response's header and extension maps, empty.
    pub(crate) fn into_maps(self) -> (http::HeaderMap, http::Extensions) {
        let Self { mut extensions, mut headers } = self;
        let wanted = rejection_header_count(&extensions);
        let headers = if headers.capacity() >= wanted {
            headers.clear();
            headers
        } else {
            http::HeaderMap::with_capacity(wanted)
        };
        extensions.clear();
        (headers, extensions)
    }
}

/// How many header names a rejection carries on its way out of the recommended stack, for a
/// map allocated once, not grown: `WWW-Authenticate` or `Retry-After`, `RateLimit-Policy`,
/// `RateLimit`, the request id, `Content-Type` and `nosniff`, and inside an axum router (the
/// request has a matched path) the `Content-Length` axum adds.
///
/// Six names is the most a map holds in the block glibc's per-thread cache serves fastest;
/// seven need the next size, which is why that size is only taken inside a router.
fn rejection_header_count(request: &http::Extensions) -> usize {
    #[cfg(feature = "axum")]
    if request.get::<axum::extract::MatchedPath>().is_some() {
        return 7;
    }
    let _ = request;
    6
}

/// Whether `serde_json` writes `s` as is between quotes: no `"`, `\\` or control character.
#[cfg(any(feature = "envelope", feature = "axum"))]
fn json_plain(s: &str) -> bool {
    // A fold without early exit, which the compiler vectorises.
    !s.bytes().fold(false, |escape, b| escape | (b == b'"') | (b == b'\\') | (b < 0x20))
}

/// `Retry-After` in delay-seconds, rounded up, at least 1 for any non-zero wait.
pub(crate) fn retry_after_value(wait: Duration) -> HeaderValue {
    let mut secs = wait.as_secs();
    if wait.subsec_nanos() > 0 {
        secs += 1;
    }
    HeaderValue::from(secs)
}

/// `conflict` for 409, `request_timeout` for 408...: the canonical reason in snake_case.
fn status_code_name(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        402 => "payment_required",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        406 => "not_acceptable",
        407 => "proxy_authentication_required",
        408 => "request_timeout",
        409 => "conflict",
        410 => "gone",
        411 => "length_required",
        412 => "precondition_failed",
        413 => "payload_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        416 => "range_not_satisfiable",
        417 => "expectation_failed",
        418 => "im_a_teapot",
        421 => "misdirected_request",
        422 => "unprocessable_entity",
        423 => "locked",
        424 => "failed_dependency",
        425 => "too_early",
        426 => "upgrade_required",
        428 => "precondition_required",
        429 => "too_many_requests",
        431 => "request_header_fields_too_large",
        451 => "unavailable_for_legal_reasons",
        500 => "internal",
        501 => "not_implemented",
        502 => "bad_gateway",
        503 => "service_unavailable",
        504 => "gateway_timeout",
        505 => "http_version_not_supported",
        506 => "variant_also_negotiates",
        507 => "insufficient_storage",
        508 => "loop_detected",
        510 => "not_extended",
        511 => "network_authentication_required",
        s if s < 500 => "client_error",
        _ => "server_error",
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind).field("status", &self.inner.status);
        if let Some(reason) = &self.inner.reason {
            d.field("reason", reason);
        }
        if let Some(source) = &self.inner.source {
            d.field("source", source);
        }
        if !self.inner.details.is_empty() {
            d.field("details", &self.inner.details);
        }
        if let Some(retry_after) = &self.inner.retry_after {
            d.field("retry_after", retry_after);
        }
        if let Some(rate_limit) = &self.inner.rate_limit {
            d.field("rate_limit", &rate_limit[1]);
        }
        d.finish()
    }
}

/// `code: reason: source`, for logs.
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())?;
        if let Some(reason) = &self.inner.reason {
            write!(f, ": {reason}")?;
        }
        if let Some(source) = &self.inner.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.source.as_deref().map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Self {
        Self::new(kind)
    }
}

/// A mistake in a layer's configuration, returned by builder methods instead of panicking.
///
/// ```
/// use tower_shield::error::ConfigError;
///
/// let error = ConfigError::new("HMAC secret must be at least 32 bytes");
/// assert_eq!(error.to_string(), "invalid configuration: HMAC secret must be at least 32 bytes");
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid configuration: {message}")]
pub struct ConfigError {
    message: Cow<'static, str>,
}

impl ConfigError {
    /// A configuration error with a message that says what to change.
    pub fn new(message: impl Into<Cow<'static, str>>) -> Self {
        Self { message: message.into() }
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

#[cfg(feature = "axum")]
mod axum_impl {
    use axum_core::response::{IntoResponse, Response};

    use super::Error;

    /// Renders the JSON envelope (without a request id) and keeps the `Error` in the
    /// extensions, so an outer [`ErrorEnvelopeLayer`](crate::envelope::ErrorEnvelopeLayer)
    /// re-renders it with the request id and the negotiated format.
    impl IntoResponse for Error {
        fn into_response(self) -> Response {
            let mut response = self.to_response::<axum_core::body::Body>();
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            *response.body_mut() = axum_core::body::Body::from(self.json_body(None));
            response
        }
    }
}

#[cfg(feature = "tonic")]
mod tonic_impl {
    use super::{Error, GrpcCode};

    impl From<GrpcCode> for tonic::Code {
        fn from(code: GrpcCode) -> Self {
            tonic::Code::from_i32(code.as_i32())
        }
    }

    /// The status carries the public message only; the internal reason stays out of it.
    impl From<Error> for tonic::Status {
        fn from(error: Error) -> Self {
            tonic::Status::new(error.grpc_code().into(), error.message())
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Every kind, for tests that walk them all (the envelope's too).
    pub(crate) const ALL: [ErrorKind; 16] = [
        ErrorKind::Unauthenticated,
        ErrorKind::InvalidToken,
        ErrorKind::Forbidden,
        ErrorKind::StepUpRequired,
        ErrorKind::RateLimited,
        ErrorKind::InvalidRequest,
        ErrorKind::PayloadTooLarge,
        ErrorKind::UnsupportedMediaType,
        ErrorKind::IdempotencyKeyMissing,
        ErrorKind::IdempotencyKeyInUse,
        ErrorKind::IdempotencyKeyReused,
        ErrorKind::NotFound,
        ErrorKind::MethodNotAllowed,
        ErrorKind::ServiceUnavailable,
        ErrorKind::Internal,
        ErrorKind::Other,
    ];

    #[test]
    fn codes_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for kind in ALL {
            let code = kind.code();
            assert!(seen.insert(code), "duplicate code {code}");
            assert!(code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{code}");
            assert!(kind.status().is_client_error() || kind.status().is_server_error());
        }
    }

    #[test]
    fn error_is_clone_send_sync_static() {
        fn assert_bounds<T: Clone + Send + Sync + 'static>() {}
        assert_bounds::<Error>();
    }

    #[test]
    fn reason_is_in_display_not_in_message() {
        let error = Error::new(ErrorKind::InvalidToken).with_reason("token expired");
        assert_eq!(error.to_string(), "invalid_token: token expired");
        assert_eq!(error.message(), "Invalid or expired credentials");
        assert_eq!(error.reason(), Some("token expired"));
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_value(Duration::from_millis(1)), "1");
        assert_eq!(retry_after_value(Duration::from_secs(3)), "3");
        assert_eq!(retry_after_value(Duration::from_millis(3001)), "4");
        assert_eq!(retry_after_value(Duration::ZERO), "0");
    }

    #[test]
    fn challenge_quotes_and_drops_control_characters() {
        let challenge = Challenge::bearer("a\"b\\c\r\nd");
        assert_eq!(challenge.to_string(), r#"Bearer realm="a\"b\\cd""#);
        assert!(HeaderValue::from_str(&challenge.to_string()).is_ok());
    }

    #[test]
    fn from_status_keeps_unknown_statuses() {
        let gone = Error::from_status(StatusCode::GONE);
        assert_eq!(gone.kind(), ErrorKind::Other);
        assert_eq!(gone.status(), StatusCode::GONE);
        assert_eq!(gone.code(), "gone");
        assert_eq!(gone.message(), "Gone");
        assert_eq!(gone.grpc_code(), GrpcCode::InvalidArgument);
        let teapot = Error::from_status(StatusCode::from_u16(499).unwrap());
        assert_eq!(teapot.code(), "client_error");
    }

    /// A rejection takes the rejected request's maps, emptied: its extension map always, its
    /// header map when it has room for the rejection's headers, and nothing of the request
    /// reaches the response.
    #[cfg(feature = "auth")]
    #[test]
    fn a_rejection_reuses_the_request_maps_emptied() {
        let mut request = http::Request::new(());
        for i in 0..10 {
            let name = header::HeaderName::from_bytes(format!("x-sent-{i}").as_bytes()).unwrap();
            request.headers_mut().insert(name, HeaderValue::from_static("secret"));
        }
        request.headers_mut().insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer s"));
        request.extensions_mut().insert(42_u32);
        let capacity = request.headers().capacity();
        assert!(capacity > 6);

        let error = Error::new(ErrorKind::InvalidToken)
            .with_challenge(Challenge::bearer("api").with_error("invalid_token"));
        let response: Response<()> = error.into_response(Spent::request(&mut request));
        assert_eq!(response.headers().capacity(), capacity, "the request's map, reused");
        let names: Vec<_> = response.headers().keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["www-authenticate"], "nothing of the request is left");
        assert!(response.extensions().get::<u32>().is_none());
        assert!(response.extensions().get::<Error>().is_some());

        // A request with few headers: a map of the response's own, for six names.
        let mut request = http::Request::new(());
        request.headers_mut().insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        let response: Response<()> =
            Error::new(ErrorKind::Forbidden).into_response(Spent::request(&mut request));
        assert_eq!(response.headers().capacity(), 6);
        assert!(response.headers().is_empty());
    }

    #[test]
    fn to_response_sets_headers_and_extension() {
        let error = Error::new(ErrorKind::InvalidToken)
            .with_challenge(Challenge::bearer("api").with_error("invalid_token"));
        let response = error.to_response::<String>();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="api", error="invalid_token""#
        );
        assert!(response.body().is_empty());
        assert_eq!(response.extensions().get::<Error>().unwrap().kind(), ErrorKind::InvalidToken);
    }

    #[cfg(feature = "tonic")]
    #[test]
    fn into_tonic_status_keeps_the_reason_out() {
        let status: tonic::Status =
            Error::new(ErrorKind::Forbidden).with_reason("missing orders:admin").into();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(status.message(), "Insufficient permissions");
        let status: tonic::Status = Error::new(ErrorKind::RateLimited).into();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    }

    #[test]
    fn grpc_status_values() {
        assert_eq!(GrpcCode::Unauthenticated.header_value(), "16");
        assert_eq!(GrpcCode::Ok.header_value(), "0");
        assert_eq!(ErrorKind::RateLimited.grpc_code(), GrpcCode::ResourceExhausted);
        assert_eq!(ErrorKind::Forbidden.grpc_code(), GrpcCode::PermissionDenied);
    }

    /// The hand-written JSON body is byte for byte what serde writes, escaping included.
    #[cfg(any(feature = "envelope", feature = "axum"))]
    #[test]
    fn json_body_matches_serde() {
        let quoted = |s: &str| serde_json::to_string(s).unwrap();
        // Every code and message, of every kind and status: written without escaping.
        let statuses = (100..1000).filter_map(|s| StatusCode::from_u16(s).ok());
        let errors = ALL.into_iter().map(Error::new).chain(statuses.map(Error::from_status));
        for error in errors {
            for id in [None, Some("5e1f0c1a-3f1e-4a5b"), Some("a.b_c")] {
                let id_part =
                    id.map_or(String::new(), |id| format!(",\"request_id\":{}", quoted(id)));
                let expected = format!(
                    "{{\"code\":{},\"message\":{}{id_part}}}",
                    quoted(error.code()),
                    quoted(error.message()),
                );
                assert_eq!(String::from_utf8(error.json_body(id)).unwrap(), expected);
            }
        }
        let detailed = Error::new(ErrorKind::InvalidRequest).with_detail(Detail::new("a", "b"));
        assert!(String::from_utf8(detailed.json_body(None)).unwrap().contains("\"details\":["));
    }

    #[test]
    fn challenge_escapes_and_drops_like_before() {
        let challenge = Challenge::bearer("r\"e\\a l\u{e9}m\n").with_error("invalid_token");
        assert_eq!(
            challenge.to_header_value(),
            r#"Bearer realm="r\"e\\a lm", error="invalid_token""#
        );
        assert_eq!(challenge.to_string(), r#"Bearer realm="r\"e\\a lm", error="invalid_token""#);
    }

    #[test]
    fn challenge_rendering_is_cached_until_changed() {
        let challenge = Challenge::bearer("api");
        assert_eq!(challenge.to_header_value(), r#"Bearer realm="api""#);
        let copy = challenge.clone();
        assert_eq!(copy.to_header_value(), r#"Bearer realm="api""#);
        let changed = challenge.with_error("invalid_token");
        assert_eq!(changed.to_header_value(), r#"Bearer realm="api", error="invalid_token""#);
        assert_eq!(changed, Challenge::bearer("api").with_error("invalid_token"));
        assert_ne!(changed, copy);
        assert_eq!(
            format!("{copy:?}"),
            r#"Challenge { scheme: "Bearer", params: [("realm", "api")] }"#
        );
    }
}
