use http::HeaderName;
use tower_layer::Layer;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

use super::{DefaultRender, ErrorEnvelope, Format, MakeRequestId, MakeRequestUuid, Render};

/// Renders every error response, assigns request ids and catches panics.
///
/// Goes outermost: it is the one writer of error bodies. Rejections from tower-shield layers
/// (and any response carrying an [`Error`](crate::Error) in its extensions) are rendered from the
/// `Error`; bare error responses of the inner service (a router's 404 or 405, a handler's 500)
/// are normalised into the same envelope, and a 5xx body is always dropped.
///
/// See the [module docs](crate::envelope) for an example.
#[derive(Clone, Debug)]
#[must_use]
pub struct ErrorEnvelopeLayer<M = MakeRequestUuid, R = DefaultRender> {
    /// The request id header; `None` for `x-request-id`.
    header_name: Option<HeaderName>,
    pub(crate) make_request_id: M,
    pub(crate) render: R,
    pub(crate) format: Option<Format>,
    pub(crate) keep_client_error_bodies: bool,
    pub(crate) trust_request_id: bool,
    pub(crate) grpc: bool,
}

impl ErrorEnvelopeLayer {
    /// The default envelope: `x-request-id`, UUID v4 ids, JSON or (on request) problem+json.
    pub fn new() -> Self {
        Self {
            header_name: None,
            make_request_id: MakeRequestUuid,
            render: DefaultRender::new(),
            format: None,
            keep_client_error_bodies: false,
            trust_request_id: true,
            grpc: true,
        }
    }
}

impl Default for ErrorEnvelopeLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<M, R> ErrorEnvelopeLayer<M, R> {
    /// The request id header to read and echo (default `x-request-id`).
    pub fn header_name(mut self, name: HeaderName) -> Self {
        self.header_name = (name != X_REQUEST_ID).then_some(name);
        self
    }

    /// The request id header. The default is a constant, cheaper to put in a header map than a
    /// clone (a custom header name's clone goes through its bytes' vtable).
    pub(crate) fn id_header(&self) -> HeaderName {
        match &self.header_name {
            None => X_REQUEST_ID,
            Some(name) => name.clone(),
        }
    }

    /// Always render this format, whatever the client's `Accept` says. By default the client
    /// gets [`Format::Problem`] when it asks for `application/problem+json`, else JSON.
    pub fn format(mut self, format: Format) -> Self {
        self.format = Some(format);
        self
    }

    /// Lets 4xx responses of the inner service that carry a body of their own through
    /// unchanged (default: every 4xx is rendered as the envelope). 5xx bodies are always
    /// replaced, so internal text never reaches a client.
    pub fn keep_client_error_bodies(mut self, keep: bool) -> Self {
        self.keep_client_error_bodies = keep;
        self
    }

    /// Whether a client's request id is kept when it is safe (1 to 64 characters of
    /// `[A-Za-z0-9._-]`; default `true`). With `false` every request gets a fresh id, for
    /// services where clients must not choose the ids that appear in logs.
    pub fn trust_request_id(mut self, trust: bool) -> Self {
        self.trust_request_id = trust;
        self
    }

    /// Whether gRPC requests get gRPC statuses (default `true`): HTTP 200 with `grpc-status`
    /// and `grpc-message`, as gRPC clients need. With `false`, for a service that serves no
    /// gRPC, every error keeps its HTTP status and the envelope body whatever content type a
    /// client sends, so a client cannot make its 401s and 429s look like 200s in access logs.
    ///
    /// A request is gRPC when its `Content-Type` is `application/grpc-web*` (gRPC-Web, any HTTP
    /// version), or `application/grpc*` over HTTP/2 (gRPC runs on nothing else).
    ///
    /// ```
    /// use tower_shield::envelope::ErrorEnvelopeLayer;
    ///
    /// // A REST-only API.
    /// let layer = ErrorEnvelopeLayer::new().grpc(false);
    /// # let _ = layer;
    /// ```
    pub fn grpc(mut self, enabled: bool) -> Self {
        self.grpc = enabled;
        self
    }

    /// Replaces how new request ids are made.
    pub fn with_make_request_id<M2: MakeRequestId>(self, make: M2) -> ErrorEnvelopeLayer<M2, R> {
        ErrorEnvelopeLayer {
            header_name: self.header_name,
            make_request_id: make,
            render: self.render,
            format: self.format,
            keep_client_error_bodies: self.keep_client_error_bodies,
            trust_request_id: self.trust_request_id,
            grpc: self.grpc,
        }
    }

    /// Replaces how error bodies are rendered.
    pub fn with_render<R2: Render>(self, render: R2) -> ErrorEnvelopeLayer<M, R2> {
        ErrorEnvelopeLayer {
            header_name: self.header_name,
            make_request_id: self.make_request_id,
            render,
            format: self.format,
            keep_client_error_bodies: self.keep_client_error_bodies,
            trust_request_id: self.trust_request_id,
            grpc: self.grpc,
        }
    }
}

impl<S, M: Clone, R: Clone> Layer<S> for ErrorEnvelopeLayer<M, R> {
    type Service = ErrorEnvelope<S, M, R>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorEnvelope::new(inner, self.clone())
    }
}
