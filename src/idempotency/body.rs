//! The request body the inner service sees and the response body the layer returns.

use std::{
    collections::VecDeque,
    convert::Infallible,
    fmt,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::body::Buffered;

pin_project! {
    /// The request body handed to the inner service: the [`Buffered`] body the layer read to
    /// fingerprint it, or the client's body untouched when the layer does not apply (another
    /// method, no key).
    pub struct RequestBody<B> {
        #[pin]
        kind: ReqKind<B>,
    }
}

pin_project! {
    #[project = ReqKindProj]
    enum ReqKind<B> {
        Buffered { body: Buffered },
        Streaming { #[pin] body: B },
    }
}

impl<B> RequestBody<B> {
    pub(crate) fn buffered(bytes: Bytes) -> Self {
        Self { kind: ReqKind::Buffered { body: Buffered::new(bytes) } }
    }

    pub(crate) fn streaming(body: B) -> Self {
        Self { kind: ReqKind::Streaming { body } }
    }

    /// The bytes the layer read, or `None` for a body passed through.
    pub fn buffered_bytes(&self) -> Option<Bytes> {
        match &self.kind {
            ReqKind::Buffered { body } => Some(body.bytes()),
            ReqKind::Streaming { .. } => None,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for RequestBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            ReqKindProj::Buffered { body } => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(|e: Infallible| match e {}))),
            ReqKindProj::Streaming { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ReqKind::Buffered { body } => body.is_end_stream(),
            ReqKind::Streaming { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ReqKind::Buffered { body } => body.size_hint(),
            ReqKind::Streaming { body } => body.size_hint(),
        }
    }
}

impl<B> fmt::Debug for RequestBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ReqKind::Buffered { body } => {
                f.debug_tuple("RequestBody::Buffered").field(body).finish()
            }
            ReqKind::Streaming { .. } => f.write_str("RequestBody::Streaming(..)"),
        }
    }
}

pin_project! {
    /// The response body of [`Idempotency`](super::Idempotency): the inner service's body,
    /// the same bytes after the layer read them (stored or replayed), or empty for a
    /// rejection.
    pub struct ResponseBody<B: Body> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B: Body> {
        Empty,
        Buffered { body: Buffered },
        Inner { #[pin] body: B },
        // Frames already read (the response was over the storage cap), then the rest.
        Prefixed { frames: VecDeque<Frame<Bytes>>, rest: Pin<Box<B>> },
        // Frames read before the inner body failed, then its error.
        Failed { frames: VecDeque<Frame<Bytes>>, error: Option<B::Error> },
    }
}

impl<B: Body> ResponseBody<B> {
    pub(crate) fn empty() -> Self {
        Self { kind: Kind::Empty }
    }

    pub(crate) fn buffered(bytes: Bytes) -> Self {
        Self { kind: Kind::Buffered { body: Buffered::new(bytes) } }
    }

    pub(crate) fn inner(body: B) -> Self {
        Self { kind: Kind::Inner { body } }
    }

    pub(crate) fn prefixed(frames: VecDeque<Frame<Bytes>>, rest: Pin<Box<B>>) -> Self {
        Self { kind: Kind::Prefixed { frames, rest } }
    }

    pub(crate) fn failed(frames: VecDeque<Frame<Bytes>>, error: B::Error) -> Self {
        Self { kind: Kind::Failed { frames, error: Some(error) } }
    }
}

impl<B: Body> Default for ResponseBody<B> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<B: Body<Data = Bytes>> Body for ResponseBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Empty => Poll::Ready(None),
            KindProj::Buffered { body } => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(|e: Infallible| match e {}))),
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Prefixed { frames, rest } => match frames.pop_front() {
                Some(frame) => Poll::Ready(Some(Ok(frame))),
                None => rest.as_mut().poll_frame(cx),
            },
            KindProj::Failed { frames, error } => match frames.pop_front() {
                Some(frame) => Poll::Ready(Some(Ok(frame))),
                None => Poll::Ready(error.take().map(Err)),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Buffered { body } => body.is_end_stream(),
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Prefixed { frames, rest } => frames.is_empty() && rest.is_end_stream(),
            Kind::Failed { frames, error } => frames.is_empty() && error.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Buffered { body } => body.size_hint(),
            Kind::Inner { body } => body.size_hint(),
            Kind::Prefixed { frames, rest } => {
                let head: u64 =
                    frames.iter().filter_map(|f| f.data_ref()).map(|d| d.len() as u64).sum();
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(head));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(head));
                }
                hint
            }
            Kind::Failed { .. } => SizeHint::new(),
        }
    }
}

impl<B: Body> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Empty => "Empty",
            Kind::Buffered { .. } => "Buffered",
            Kind::Inner { .. } => "Inner",
            Kind::Prefixed { .. } => "Prefixed",
            Kind::Failed { .. } => "Failed",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}
