//! [`ServiceBuilderExt`]: one method per layer on tower's `ServiceBuilder`.

use tower::{layer::util::Stack, ServiceBuilder};

#[cfg(feature = "envelope")]
use crate::envelope::ErrorEnvelopeLayer;
#[cfg(feature = "idempotency")]
use crate::idempotency::IdempotencyLayer;

/// Adds tower-shield's layers to a [`ServiceBuilder`], one method per layer.
///
/// Sealed: implemented for `ServiceBuilder` only.
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response, StatusCode};
/// use http_body_util::Full;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_shield::ServiceBuilderExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let service = ServiceBuilder::new().error_envelope().service_fn(|_: Request<Full<Bytes>>| async {
///     Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::from("ok")))
/// });
/// let response = service.oneshot(Request::new(Full::default())).await.unwrap();
/// assert_eq!(response.status(), StatusCode::OK);
/// assert!(response.headers().contains_key("x-request-id"));
/// # }
/// ```
pub trait ServiceBuilderExt<L>: sealed::Sealed<L> + Sized {
    /// Renders every error as the envelope, assigns request ids and catches panics, with the
    /// default [`ErrorEnvelopeLayer`]. Put it first (outermost).
    #[cfg(feature = "envelope")]
    fn error_envelope(self) -> ServiceBuilder<Stack<ErrorEnvelopeLayer, L>>;

    /// Makes writes safely retryable with `Idempotency-Key`: the first request runs, retries
    /// replay its response. See [`IdempotencyLayer`].
    #[cfg(feature = "idempotency")]
    fn idempotent(self, layer: IdempotencyLayer) -> ServiceBuilder<Stack<IdempotencyLayer, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    #[cfg(feature = "envelope")]
    fn error_envelope(self) -> ServiceBuilder<Stack<ErrorEnvelopeLayer, L>> {
        self.layer(ErrorEnvelopeLayer::new())
    }

    #[cfg(feature = "idempotency")]
    fn idempotent(self, layer: IdempotencyLayer) -> ServiceBuilder<Stack<IdempotencyLayer, L>> {
        self.layer(layer)
    }
}

mod sealed {
    pub trait Sealed<T> {}
    impl<T> Sealed<T> for tower::ServiceBuilder<T> {}
}
