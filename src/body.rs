//! Request bodies that a layer has read: capped reading and the buffered body handed on.
//!
//! Layers that must see the whole body (validation, idempotency fingerprints) read it with a
//! size cap and pass the bytes on as a [`Buffered`] body, so memory never exceeds the cap plus
//! one frame, whatever the client sends.

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf as _, Bytes, BytesMut};
use http::{header, HeaderMap};
use http_body::{Body, Frame, SizeHint};

use crate::{Error, ErrorKind};

/// A body already read into memory. Yields its bytes as one frame.
///
/// ```
/// use http_body::Body;
/// use tower_shield::body::Buffered;
///
/// let body = Buffered::new("hello");
/// assert_eq!(body.size_hint().exact(), Some(5));
/// assert_eq!(body.bytes(), "hello");
/// ```
#[derive(Clone, Debug, Default)]
pub struct Buffered {
    data: Option<Bytes>,
    len: u64,
}

impl Buffered {
    /// A body of `data`.
    pub fn new(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        let len = data.len() as u64;
        Self { data: (!data.is_empty()).then_some(data), len }
    }

    /// The bytes not yet polled (all of them before the body is read).
    pub fn bytes(&self) -> Bytes {
        self.data.clone().unwrap_or_default()
    }
}

impl From<Bytes> for Buffered {
    fn from(data: Bytes) -> Self {
        Self::new(data)
    }
}

impl Body for Buffered {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.data.take().map(|data| Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(if self.data.is_some() { self.len } else { 0 })
    }
}

/// The declared `Content-Length`, if present and well-formed.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// Reads `body` completely, failing as soon as it would exceed `limit` bytes: first by its
/// declared length (`Content-Length` of `headers`, or the body's size hint), then while it
/// streams. Memory never exceeds `limit` plus one frame.
///
/// # Errors
///
/// [`ErrorKind::PayloadTooLarge`] past the limit; [`ErrorKind::InvalidRequest`] when the body
/// stream fails (the client went away or sent a malformed body), with the cause as source.
///
/// ```
/// use http::HeaderMap;
/// use http_body_util::Full;
/// use tower_shield::{body::read_limited, ErrorKind};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let bytes = read_limited(Full::<bytes::Bytes>::from("hello"), &HeaderMap::new(), 16).await.unwrap();
/// assert_eq!(bytes, "hello");
///
/// let error = read_limited(Full::<bytes::Bytes>::from("hello"), &HeaderMap::new(), 4).await.unwrap_err();
/// assert_eq!(error.kind(), ErrorKind::PayloadTooLarge);
/// # }
/// ```
pub async fn read_limited<B>(body: B, headers: &HeaderMap, limit: usize) -> Result<Bytes, Error>
where
    B: Body,
    B::Error: Into<crate::BoxError>,
{
    let limit64 = limit as u64;
    if content_length(headers).is_some_and(|n| n > limit64) || body.size_hint().lower() > limit64 {
        return Err(too_large(limit));
    }
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    let mut total = 0usize;
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = frame.map_err(|e| {
            Error::new(ErrorKind::InvalidRequest)
                .with_reason("reading the body failed")
                .with_source(e)
        })?;
        let Ok(mut data) = frame.into_data() else { continue };
        let chunk = data.copy_to_bytes(data.remaining());
        total = total.saturating_add(chunk.len());
        if total > limit {
            return Err(too_large(limit));
        }
        match (&mut first, &mut rest) {
            (None, _) => first = Some(chunk),
            (Some(head), None) => {
                let mut buf = BytesMut::with_capacity(total.min(limit));
                buf.extend_from_slice(head);
                buf.extend_from_slice(&chunk);
                rest = Some(buf);
            }
            (Some(_), Some(buf)) => buf.extend_from_slice(&chunk),
        }
    }
    Ok(match (first, rest) {
        (_, Some(buf)) => buf.freeze(),
        (Some(head), None) => head,
        (None, None) => Bytes::new(),
    })
}

fn too_large(limit: usize) -> Error {
    Error::new(ErrorKind::PayloadTooLarge).with_reason(format!("body over {limit} bytes"))
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full, StreamBody};

    use super::*;

    fn chunked(chunks: Vec<&'static str>) -> impl Body<Data = Bytes, Error = Infallible> {
        let frames = chunks.into_iter().map(|c| Ok::<_, Infallible>(Frame::data(Bytes::from(c))));
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn reads_within_the_limit() {
        let bytes = read_limited(chunked(vec!["ab", "cd", "e"]), &HeaderMap::new(), 5).await;
        assert_eq!(bytes.unwrap(), "abcde");
        let bytes = read_limited(Full::new(Bytes::from("x")), &HeaderMap::new(), 5).await;
        assert_eq!(bytes.unwrap(), "x");
        let bytes = read_limited(Full::new(Bytes::new()), &HeaderMap::new(), 0).await;
        assert_eq!(bytes.unwrap(), "");
    }

    #[tokio::test]
    async fn streaming_oversize_stops_early() {
        let result = read_limited(chunked(vec!["abc", "def"]), &HeaderMap::new(), 5).await;
        assert_eq!(result.unwrap_err().kind(), ErrorKind::PayloadTooLarge);
    }

    #[tokio::test]
    async fn declared_oversize_is_refused_before_reading() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, "6".parse().unwrap());
        let result = read_limited(chunked(vec![]), &headers, 5).await;
        assert_eq!(result.unwrap_err().kind(), ErrorKind::PayloadTooLarge);
        let result = read_limited(Full::new(Bytes::from("123456")), &HeaderMap::new(), 5).await;
        assert_eq!(result.unwrap_err().kind(), ErrorKind::PayloadTooLarge);
    }

    #[tokio::test]
    async fn buffered_body_round_trips() {
        let body = Buffered::new("payload");
        assert_eq!(body.clone().collect().await.unwrap().to_bytes(), "payload");
        assert!(Buffered::new("").is_end_stream());
    }
}
