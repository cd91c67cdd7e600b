//! [`ServiceBuilderExt`]: one method per layer on tower's `ServiceBuilder`.

use tower::{layer::util::Stack, ServiceBuilder};

#[cfg(feature = "envelope")]
use crate::envelope::ErrorEnvelopeLayer;
#[cfg(feature = "rate-limit")]
use crate::rate_limit::RateLimitLayer;

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

    /// Applies quotas per key and answers 429 when one is exhausted, with the given
    /// [`RateLimitLayer`] (e.g. `RateLimitLayer::per_ip(quota)`).
    ///
    /// Not named `rate_limit`: tower's `ServiceBuilder` has an inherent `rate_limit(num, per)`
    /// (feature `limit`), which would shadow a trait method of that name.
    #[cfg(feature = "rate-limit")]
    fn rate_limited<K, St>(
        self,
        layer: RateLimitLayer<K, St>,
    ) -> ServiceBuilder<Stack<RateLimitLayer<K, St>, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    #[cfg(feature = "envelope")]
    fn error_envelope(self) -> ServiceBuilder<Stack<ErrorEnvelopeLayer, L>> {
        self.layer(ErrorEnvelopeLayer::new())
    }

    #[cfg(feature = "rate-limit")]
    fn rate_limited<K, St>(
        self,
        layer: RateLimitLayer<K, St>,
    ) -> ServiceBuilder<Stack<RateLimitLayer<K, St>, L>> {
        self.layer(layer)
    }
}

mod sealed {
    pub trait Sealed<T> {}
    impl<T> Sealed<T> for tower::ServiceBuilder<T> {}
}
