use std::fmt;

use http::{HeaderValue, Request};

/// The id of one request, echoed in the response header and in every error body.
///
/// Always 1 to 64 characters of `[A-Za-z0-9._-]`, so it is safe in headers, logs and JSON. The
/// [`ErrorEnvelopeLayer`](super::ErrorEnvelopeLayer) puts it in the request extensions, where
/// handlers read it (with feature `axum`, it is also an extractor).
///
/// ```
/// use tower_shield::envelope::RequestId;
///
/// assert!(RequestId::parse("req-42.retry_1").is_some());
/// assert!(RequestId::parse("").is_none());
/// assert!(RequestId::parse("has space").is_none());
/// assert!(RequestId::parse("x\r\nSet-Cookie: a=b").is_none());
/// assert!(RequestId::parse(&"a".repeat(65)).is_none());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The longest id accepted from a client.
    pub const MAX_LEN: usize = 64;

    /// Accepts `id` if it is 1 to 64 characters of `[A-Za-z0-9._-]`.
    pub fn parse(id: &str) -> Option<Self> {
        Self::from_header(&HeaderValue::from_str(id).ok()?)
    }

    /// Accepts a header value under the same rule as [`RequestId::parse`].
    pub fn from_header(value: &HeaderValue) -> Option<Self> {
        let bytes = value.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= Self::MAX_LEN
            && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        valid.then(|| Self(value.clone()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever accepted, so this cannot fail. (`from_utf8` checks ASCII a word
        // at a time; `HeaderValue::to_str` would check it a byte at a time.)
        std::str::from_utf8(self.0.as_bytes()).unwrap_or_default()
    }

    /// The id as a header value.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }

    /// The id as a header value, without a clone.
    pub(crate) fn into_header_value(self) -> HeaderValue {
        self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RequestId").field(&self.as_str()).finish()
    }
}

/// Makes a new [`RequestId`] for a request that arrived without an acceptable one.
///
/// The id is trusted as it is: it must come from [`RequestId::parse`]. See [`MakeRequestUuid`]
/// for the default.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use http::Request;
/// use tower_shield::envelope::{MakeRequestId, RequestId};
///
/// #[derive(Clone, Debug, Default)]
/// struct Counter(std::sync::Arc<AtomicU64>);
///
/// impl MakeRequestId for Counter {
///     fn make_request_id<B>(&self, _request: &Request<B>) -> RequestId {
///         let n = self.0.fetch_add(1, Ordering::Relaxed);
///         RequestId::parse(&format!("req-{n}")).expect("valid id")
///     }
/// }
///
/// let counter = Counter::default();
/// assert_eq!(counter.make_request_id(&Request::new(())).as_str(), "req-0");
/// ```
pub trait MakeRequestId: Clone + Send + Sync + 'static {
    /// A new id for `request`.
    fn make_request_id<B>(&self, request: &Request<B>) -> RequestId;
}

/// The default [`MakeRequestId`]: a random UUID v4, e.g. `5e1f0c1a-3f1e-4a5b-9c2d-0e8f7a6b5c4d`.
///
/// # Example
///
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::{BodyExt, Full};
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_shield::envelope::{ErrorEnvelopeLayer, MakeRequestUuid, RequestId};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let service = ServiceBuilder::new()
///     // The default, spelled out.
///     .layer(ErrorEnvelopeLayer::new().with_make_request_id(MakeRequestUuid))
///     .service_fn(|request: Request<Full<Bytes>>| async move {
///         let id = request.extensions().get::<RequestId>().expect("set by the envelope");
///         Ok::<_, Infallible>(Response::new(Full::<Bytes>::from(id.to_string())))
///     });
///
/// // A request without an `x-request-id` gets a new UUID, echoed in the response.
/// let response = service.oneshot(Request::new(Full::default())).await.unwrap();
/// let id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
/// assert_eq!((id.len(), id.matches('-').count()), (36, 4));
/// assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), id);
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct MakeRequestUuid;

impl MakeRequestId for MakeRequestUuid {
    fn make_request_id<B>(&self, _request: &Request<B>) -> RequestId {
        let mut buf = [0; uuid::fmt::Hyphenated::LENGTH];
        uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
        // One allocation, shared by every clone (the request header, the extension, the
        // response header, the error body) without copying.
        let bytes = bytes::Bytes::from_owner(buf);
        RequestId(HeaderValue::from_maybe_shared(bytes).expect("a UUID is a valid header value"))
    }
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum_core::extract::FromRequestParts<S> for RequestId {
    type Rejection = crate::Error;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<RequestId>().cloned().ok_or_else(|| {
            crate::Error::internal(
                "no RequestId in request extensions: is ErrorEnvelopeLayer applied?",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_ids_are_valid_and_distinct() {
        let a = MakeRequestUuid.make_request_id(&Request::new(()));
        let b = MakeRequestUuid.make_request_id(&Request::new(()));
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 36);
        assert!(RequestId::parse(a.as_str()).is_some());
    }

    #[test]
    fn rejects_unsafe_ids() {
        for bad in ["", " ", "a b", "a\tb", "é", "a/b", "a;b", "<script>", "\"", "a,b"] {
            assert!(RequestId::parse(bad).is_none(), "{bad:?}");
        }
        assert!(RequestId::from_header(&HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()).is_none());
        assert!(RequestId::parse(&"a".repeat(64)).is_some());
        assert!(RequestId::parse(&"a".repeat(65)).is_none());
    }
}
