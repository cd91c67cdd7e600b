//! [`ServiceBuilderExt`]: one method per layer on tower's `ServiceBuilder`.

#[allow(unused_imports)] // `Stack` is unused when every layer feature is off
use tower::{layer::util::Stack, ServiceBuilder};

#[cfg(feature = "auth")]
use crate::auth::AuthLayer;
#[cfg(feature = "envelope")]
use crate::envelope::ErrorEnvelopeLayer;
#[cfg(feature = "scope")]
use crate::scope::{Requirement, ScopeLayer};
#[cfg(feature = "validate")]
use crate::validate::ValidateLayer;

#[cfg(feature = "rate-limit")]
use crate::rate_limit::RateLimitLayer;

#[cfg(feature = "idempotency")]
use crate::idempotency::IdempotencyLayer;

#[cfg(feature = "telemetry")]
use crate::telemetry::PenaltyBoxLayer;

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

    /// Lets requests through only when their principal meets `requirement`, with a default
    /// [`ScopeLayer`] (realm `"api"`, system clock). Put it inside the authenticating layer.
    #[cfg(feature = "scope")]
    fn require_scope(self, requirement: Requirement) -> ServiceBuilder<Stack<ScopeLayer, L>>;

    /// Validates bodies, query strings and headers with `layer` (see
    /// [`validate`](crate::validate)).
    #[cfg(feature = "validate")]
    fn validate(self, layer: ValidateLayer) -> ServiceBuilder<Stack<ValidateLayer, L>>;

    /// Authenticates requests with `layer` (an [`AuthLayer`]): a [`Principal`] in the request
    /// extensions, or a 401.
    ///
    /// [`Principal`]: crate::principal::Principal
    #[cfg(feature = "auth")]
    fn authenticate(self, layer: AuthLayer) -> ServiceBuilder<Stack<AuthLayer, L>>;

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

    /// Makes writes safely retryable with `Idempotency-Key`: the first request runs, retries
    /// replay its response. See [`IdempotencyLayer`].
    #[cfg(feature = "idempotency")]
    fn idempotent(self, layer: IdempotencyLayer) -> ServiceBuilder<Stack<IdempotencyLayer, L>>;

    /// Counts suspicious responses per client and blocks clients past a threshold, with the
    /// given [`PenaltyBoxLayer`] (e.g. `PenaltyBoxLayer::per_ip()`). Put it outside the layers
    /// whose rejections it should count (auth, scope, validate).
    #[cfg(feature = "telemetry")]
    fn penalize_abuse<K>(
        self,
        layer: PenaltyBoxLayer<K>,
    ) -> ServiceBuilder<Stack<PenaltyBoxLayer<K>, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    #[cfg(feature = "envelope")]
    fn error_envelope(self) -> ServiceBuilder<Stack<ErrorEnvelopeLayer, L>> {
        self.layer(ErrorEnvelopeLayer::new())
    }

    #[cfg(feature = "scope")]
    fn require_scope(self, requirement: Requirement) -> ServiceBuilder<Stack<ScopeLayer, L>> {
        self.layer(ScopeLayer::new(requirement))
    }

    #[cfg(feature = "validate")]
    fn validate(self, layer: ValidateLayer) -> ServiceBuilder<Stack<ValidateLayer, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "auth")]
    fn authenticate(self, layer: AuthLayer) -> ServiceBuilder<Stack<AuthLayer, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "rate-limit")]
    fn rate_limited<K, St>(
        self,
        layer: RateLimitLayer<K, St>,
    ) -> ServiceBuilder<Stack<RateLimitLayer<K, St>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "idempotency")]
    fn idempotent(self, layer: IdempotencyLayer) -> ServiceBuilder<Stack<IdempotencyLayer, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "telemetry")]
    fn penalize_abuse<K>(
        self,
        layer: PenaltyBoxLayer<K>,
    ) -> ServiceBuilder<Stack<PenaltyBoxLayer<K>, L>> {
        self.layer(layer)
    }
}

mod sealed {
    pub trait Sealed<T> {}
    impl<T> Sealed<T> for tower::ServiceBuilder<T> {}
}
