use std::{
    collections::VecDeque,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::{
    key::fingerprint,
    layer::{BackendFailure, Config},
    store::{Begin, IdempotencyStore, LockToken, RecordKey, StoredResponse},
    RequestBody, ResponseBody,
};
use crate::{body::read_limited, BoxError, Error, ErrorKind};

/// The header that marks a replayed response.
pub(crate) const REPLAYED: &str = "idempotent-replayed";

type BoxResponseFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, E>> + Send + 'static>>;

pin_project! {
    /// Response future of [`Idempotency`](super::Idempotency).
    ///
    /// A request the layer does not apply to (another method, no key) polls the inner future
    /// directly; a request with a key runs the store round trips in one boxed future.
    pub struct ResponseFuture<F, B: Body, E> {
        #[pin]
        state: State<F, B, E>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B: Body, E> {
        Passthrough { #[pin] future: F },
        Running { future: BoxResponseFuture<B, E> },
        Rejected { response: Option<Response<ResponseBody<B>>> },
    }
}

impl<F, B: Body, E> ResponseFuture<F, B, E> {
    pub(crate) fn passthrough(future: F) -> Self {
        Self { state: State::Passthrough { future } }
    }

    pub(crate) fn running(future: BoxResponseFuture<B, E>) -> Self {
        Self { state: State::Running { future } }
    }

    pub(crate) fn rejected(response: Response<ResponseBody<B>>) -> Self {
        Self { state: State::Rejected { response: Some(response) } }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Passthrough { future } => {
                Poll::Ready(ready!(future.poll(cx)).map(|r| r.map(ResponseBody::inner)))
            }
            StateProj::Running { future } => future.as_mut().poll(cx),
            StateProj::Rejected { response } => {
                Poll::Ready(Ok(response.take().expect("ResponseFuture polled after completion")))
            }
        }
    }
}

impl<F, B: Body, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// What the request future needs besides the inner service and the request.
pub(crate) struct Ctx {
    pub(crate) config: Arc<Config>,
    pub(crate) record: RecordKey,
    pub(crate) caller: &'static str,
}

/// Releases the lock when the request ends without storing a response: dropped (the client
/// went away, a timeout layer gave up), panicked, or failed.
struct LockGuard {
    store: Arc<dyn IdempotencyStore>,
    record: RecordKey,
    token: LockToken,
    armed: bool,
}

impl LockGuard {
    /// Releases now (awaiting the store), logging a failure; the lock then expires by itself.
    /// Dropped midway, the guard still releases from `Drop`.
    async fn release(mut self) {
        let released = self.store.release(self.record, self.token).await;
        self.armed = false;
        if let Err(error) = released {
            crate::observe::backend_failure("idempotency");
            tracing::warn!(
                target: "tower_shield::security",
                event = "backend.failure",
                backend = "idempotency",
                key = %self.record.short(),
                reason = %error,
                "releasing an idempotency lock failed; it expires after the lock TTL"
            );
        }
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.armed {
            tracing::debug!(
                target: "tower_shield::security",
                event = "idempotency.released",
                key = %self.record.short(),
                "request dropped or panicked; idempotency lock released"
            );
            self.store.release_on_drop(self.record, self.token);
        }
    }
}

/// The request with a key: read and fingerprint the body, ask the store, then replay,
/// reject, or run the inner service and store its response.
pub(crate) async fn run<S, ReqBody, ResBody>(
    mut inner: S,
    ctx: Ctx,
    request: Request<ReqBody>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: Body<Data = Bytes>,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
{
    let Ctx { config, record, caller } = ctx;
    let (parts, body) = request.into_parts();
    // The request span, cloned only when a subscriber records it.
    let span = crate::observe::span(&parts.extensions).cloned();
    let span = span.as_ref();
    let bytes = match read_limited(body, &parts.headers, config.max_request_body).await {
        Ok(bytes) => bytes,
        Err(error) => return Ok(error.to_response()),
    };
    let fingerprint = fingerprint(&parts, &config.fingerprint_headers, &bytes);
    let route = format!("{} {}", parts.method, parts.uri.path());
    let request = Request::from_parts(parts, RequestBody::buffered(bytes));
    let key = record.short();

    let token = match config.store.begin(record, fingerprint, config.lock_ttl).await {
        Ok(Begin::Acquired(token)) => token,
        Ok(Begin::Completed(stored)) if stored.fingerprint() == fingerprint => {
            tracing::info!(
                target: "tower_shield::security",
                event = "idempotency.replayed",
                route,
                key,
                caller,
                status = stored.status().as_u16(),
                "replayed a stored response"
            );
            crate::observe::idempotency(span, "replayed");
            return Ok(replay(stored));
        }
        Ok(Begin::InFlight { fingerprint: held, .. }) if held == fingerprint => {
            tracing::info!(
                target: "tower_shield::security",
                event = "idempotency.conflict",
                route,
                key,
                caller,
                "a request with this key is in flight"
            );
            crate::observe::idempotency(span, "conflict");
            let error = Error::new(ErrorKind::IdempotencyKeyInUse)
                .with_reason("a request with this key is in flight")
                .with_retry_after(config.retry_after);
            return Ok(error.to_response());
        }
        Ok(_) => {
            tracing::warn!(
                target: "tower_shield::security",
                event = "idempotency.mismatch",
                route,
                key,
                caller,
                "the key was used for a different request"
            );
            crate::observe::idempotency(span, "mismatch");
            let error = Error::new(ErrorKind::IdempotencyKeyReused)
                .with_reason("the key was used for a different request");
            return Ok(error.to_response());
        }
        Err(error) => match config.backend_failure {
            BackendFailure::FailClosed => {
                crate::observe::backend_failure("idempotency");
                tracing::error!(
                    target: "tower_shield::security",
                    event = "backend.failure",
                    backend = "idempotency",
                    route,
                    key,
                    reason = %error,
                    "idempotency store failed; request refused (fail closed)"
                );
                crate::observe::idempotency(span, "error");
                let error = Error::new(ErrorKind::ServiceUnavailable)
                    .with_reason("idempotency store unavailable")
                    .with_source(error)
                    .with_retry_after(config.retry_after);
                return Ok(error.to_response());
            }
            BackendFailure::FailOpen => {
                crate::observe::backend_failure("idempotency");
                crate::observe::fail_open("idempotency");
                crate::observe::idempotency(span, "fail_open");
                tracing::warn!(
                    target: "tower_shield::security",
                    event = "backend.fail_open",
                    backend = "idempotency",
                    route,
                    key,
                    reason = %error,
                    "idempotency store failed; request runs without idempotency (fail open)"
                );
                let response = inner.call(request).await?;
                return Ok(response.map(ResponseBody::inner));
            }
        },
    };

    let guard = LockGuard { store: Arc::clone(&config.store), record, token, armed: true };
    let response = match inner.call(request).await {
        Ok(response) => response,
        Err(error) => {
            guard.release().await;
            return Err(error);
        }
    };
    let rejection = response.extensions().get::<Error>().is_some();
    if rejection || !(config.store_status)(response.status()) {
        tracing::debug!(
            target: "tower_shield::security",
            event = "idempotency.not_stored",
            reason = if rejection { "rejection" } else { "status" },
            route,
            key,
            status = response.status().as_u16(),
            "response not stored; key released for a retry"
        );
        crate::observe::idempotency(span, "not_stored");
        guard.release().await;
        return Ok(response.map(ResponseBody::inner));
    }

    let (parts, body) = response.into_parts();
    let bytes = match collect(body, config.max_response_body).await {
        Collected::Complete(bytes) => bytes,
        Collected::TooLarge(frames, rest) => {
            tracing::warn!(
                target: "tower_shield::security",
                event = "idempotency.not_stored",
                reason = "response_too_large",
                route,
                key,
                limit = config.max_response_body,
                "response over the storage cap served unstored; key released"
            );
            crate::observe::idempotency(span, "not_stored");
            guard.release().await;
            return Ok(Response::from_parts(parts, ResponseBody::prefixed(frames, rest)));
        }
        Collected::Failed(frames, error) => {
            guard.release().await;
            return Ok(Response::from_parts(parts, ResponseBody::failed(frames, error)));
        }
    };

    let mut headers = HeaderMap::new();
    for name in &config.replay_headers {
        for value in parts.headers.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let stored = StoredResponse::new(fingerprint, parts.status, headers, bytes.clone());
    match config.store.complete(record, token, stored, config.ttl).await {
        Ok(true) => {
            crate::observe::idempotency(span, "stored");
            guard.disarm();
        }
        Ok(false) => {
            crate::observe::idempotency(span, "not_stored");
            tracing::warn!(
                target: "tower_shield::security",
                event = "idempotency.not_stored",
                reason = "lock_lost",
                route,
                key,
                "the lock expired before the response was stored (raise lock_ttl) or it did not fit"
            );
            guard.disarm();
        }
        Err(error) => {
            crate::observe::backend_failure("idempotency");
            tracing::error!(
                target: "tower_shield::security",
                event = "backend.failure",
                backend = "idempotency",
                route,
                key,
                reason = %error,
                "storing the response failed; key released"
            );
            crate::observe::idempotency(span, "error");
            guard.release().await;
        }
    }
    Ok(Response::from_parts(parts, ResponseBody::buffered(bytes)))
}

fn replay<B: Body>(stored: StoredResponse) -> Response<ResponseBody<B>> {
    let (_, status, headers, body) = stored.into_parts();
    let mut response = Response::new(ResponseBody::buffered(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response.headers_mut().insert(REPLAYED, HeaderValue::from_static("true"));
    response
}

enum Collected<B: Body> {
    Complete(Bytes),
    TooLarge(VecDeque<Frame<Bytes>>, Pin<Box<B>>),
    Failed(VecDeque<Frame<Bytes>>, B::Error),
}

/// Reads a response body up to `limit` bytes. Past the limit, or at a trailers frame (which
/// is not stored), hands back what was read and the rest of the body.
async fn collect<B: Body<Data = Bytes>>(body: B, limit: usize) -> Collected<B> {
    if body.size_hint().lower() > limit as u64 {
        return Collected::TooLarge(VecDeque::new(), Box::pin(body));
    }
    let mut body = Box::pin(body);
    let mut frames = VecDeque::new();
    let mut total = 0usize;
    loop {
        match std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            None => break,
            Some(Err(error)) => return Collected::Failed(frames, error),
            Some(Ok(frame)) => {
                let stop = match frame.data_ref() {
                    Some(data) => {
                        total = total.saturating_add(data.len());
                        total > limit
                    }
                    None => true,
                };
                frames.push_back(frame);
                if stop {
                    return Collected::TooLarge(frames, body);
                }
            }
        }
    }
    let mut data = frames.into_iter().filter_map(|frame| frame.into_data().ok());
    let bytes = match (data.next(), data.next()) {
        (None, _) => Bytes::new(),
        (Some(only), None) => only,
        (Some(first), Some(second)) => {
            let mut bytes = BytesMut::with_capacity(total);
            bytes.extend_from_slice(&first);
            bytes.extend_from_slice(&second);
            data.for_each(|more| bytes.extend_from_slice(&more));
            bytes.freeze()
        }
    };
    Collected::Complete(bytes)
}
