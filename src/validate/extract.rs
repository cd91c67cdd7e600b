//! The axum extractors: [`Validated<T>`] and [`JsonBody`].

use axum_core::extract::{FromRequest, FromRequestParts, Request};
use http::request::Parts;
use serde::de::DeserializeOwned;

use super::{
    json::{self, JsonRules},
    layer::DEFAULT_MAX_BODY_SIZE,
    media::MediaTypes,
    service::{emit, violation_error},
    typed::{serde_detail, Check, Source},
    JsonBody, ViolationStatus,
};
use crate::{body::read_limited, Error, ErrorKind};

/// A JSON body deserialized into `T` and checked by `T`'s [`Check`]: an axum extractor.
///
/// Behind a [`ValidateLayer`](super::ValidateLayer) it deserializes the document the layer
/// already parsed (no second parse; the layer's limits and schema have applied). Without the
/// layer it applies the layer's defaults itself: `application/json` (415 otherwise), at most
/// 1 MiB (413), depth 64, no duplicate keys, integers within 64 bits (400).
///
/// Use `#[serde(deny_unknown_fields)]` on `T` so that unknown fields are refused (mass
/// assignment). A serde failure is a 400 with one detail whose `field` is the JSON pointer of
/// the failing field (`/quantity`, or `/role` with issue `unknown_field`), and whose message
/// is built from the expected type, never from the input. [`Check`] failures are 400 with the
/// details `check` returned.
///
/// ```
/// use axum::{routing::post, Router};
/// use tower_shield::validate::{Check, Validated};
///
/// #[derive(serde::Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct NewOrder {
///     item: String,
///     quantity: u32,
/// }
///
/// impl Check for NewOrder {}
///
/// async fn create(Validated(order): Validated<NewOrder>) -> String {
///     format!("{} x {}", order.quantity, order.item)
/// }
///
/// let app: Router = Router::new().route("/orders", post(create));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Validated<T>(pub T);

impl<S, T> FromRequest<S> for Validated<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Check,
{
    type Rejection = Error;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Error> {
        let (parts, body) = request.into_parts();
        let route = crate::observe::route(&parts.extensions, &parts.uri).to_owned();
        let reject = |rule: &'static str, error: Error| {
            crate::observe::validation_rejected(&parts.extensions, rule);
            emit(&route, rule, &error);
            error
        };
        let document = match parts.extensions.get::<JsonBody>() {
            Some(document) => document.clone(),
            None => {
                if !MediaTypes::default().accepts(&parts.headers) {
                    let error = Error::new(ErrorKind::UnsupportedMediaType)
                        .with_reason("content type missing or not accepted");
                    return Err(reject("content_type", error));
                }
                let bytes = read_limited(body, &parts.headers, DEFAULT_MAX_BODY_SIZE)
                    .await
                    .map_err(|e| reject("body_size", e))?;
                let value = json::parse(&bytes, JsonRules::default()).map_err(|shape| {
                    let error = Error::new(ErrorKind::InvalidRequest)
                        .with_reason(format!("body is not acceptable JSON ({})", shape.rule))
                        .with_detail(shape.detail);
                    reject(shape.rule, error)
                })?;
                JsonBody::new(value)
            }
        };
        let value: T = serde_path_to_error::deserialize(document.value()).map_err(|e| {
            let detail = serde_detail(e.path(), &e.inner().to_string(), Source::Body);
            let error = Error::new(ErrorKind::InvalidRequest)
                .with_reason("body does not deserialize into the expected type")
                .with_detail(detail);
            reject("typed", error)
        })?;
        if let Err(details) = value.check() {
            let error = violation_error(ViolationStatus::BadRequest)
                .with_reason("body failed its semantic checks")
                .with_details(details.into_iter().take(super::DEFAULT_MAX_DETAILS));
            return Err(reject("check", error));
        }
        Ok(Self(value))
    }
}

/// Reads the document a [`ValidateLayer`](super::ValidateLayer) parsed. Missing means the
/// layer is not applied to this route, or the request had no body: a 500 (a server bug), not
/// a client error. Use `Option<JsonBody>` where a body is optional.
impl<S: Send + Sync> FromRequestParts<S> for JsonBody {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Error> {
        parts.extensions.get::<JsonBody>().cloned().ok_or_else(|| {
            tracing::error!(
                target: "tower_shield::security",
                "JsonBody extractor used on a route without a ValidateLayer"
            );
            Error::internal("no JsonBody in request extensions: is ValidateLayer applied?")
        })
    }
}

impl<S: Send + Sync> axum_core::extract::OptionalFromRequestParts<S> for JsonBody {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<JsonBody>().cloned())
    }
}
