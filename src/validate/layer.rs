use std::sync::Arc;

use http::HeaderName;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tower_layer::Layer;

use super::{
    json::{JsonRules, MAX_DEPTH_LIMIT},
    media::MediaTypes,
    schema::Schema,
    typed::{Check, Source, TypedCheck},
    Validate,
};
use crate::error::ConfigError;

/// The default body limit: 1 MiB.
pub const DEFAULT_MAX_BODY_SIZE: usize = 1024 * 1024;
/// The default nesting depth limit.
pub const DEFAULT_MAX_DEPTH: usize = 64;
/// The default number of details in one rejection.
pub const DEFAULT_MAX_DETAILS: usize = 20;

/// The status of a request whose body is well-formed JSON but breaks the
/// [schema](ValidateLayer::schema). Every other rejection keeps its status: syntax and shape
/// errors, query and header checks, and [`Check`] failures are 400.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response, StatusCode};
/// use http_body_util::Full;
/// use serde_json::json;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_shield::{body::Buffered, validate::{ValidateLayer, ViolationStatus}, Error};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let layer = ValidateLayer::new()
///     .schema(&json!({"properties": {"quantity": {"type": "integer", "minimum": 1}}}))?
///     .violation_status(ViolationStatus::UnprocessableEntity);
/// let service = ServiceBuilder::new().layer(layer).service_fn(|_: Request<Buffered>| async {
///     Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default()))
/// });
/// let post = |body: &'static str| {
///     let request = Request::post("/orders").header("content-type", "application/json");
///     request.body(Full::<Bytes>::from(body)).unwrap()
/// };
///
/// // Well-formed JSON that breaks the schema: 422.
/// let response = service.clone().oneshot(post(r#"{"quantity":0}"#)).await?;
/// assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
/// assert_eq!(response.extensions().get::<Error>().unwrap().code(), "unprocessable_entity");
/// // Not JSON at all: still 400.
/// assert_eq!(service.oneshot(post("{")).await?.status(), StatusCode::BAD_REQUEST);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ViolationStatus {
    /// 400, code `invalid_request` (the default): one status for every invalid input, as most
    /// API guidelines use.
    #[default]
    BadRequest,
    /// 422, code `unprocessable_entity`: syntax errors stay 400, schema violations are 422.
    UnprocessableEntity,
}

/// Validates request bodies (size, content type, JSON shape, JSON Schema), query strings and
/// selected headers before the inner service sees them.
///
/// The inner service receives `Request<`[`Buffered`](crate::body::Buffered)`>` with the parsed
/// document in its extensions as a [`JsonBody`](super::JsonBody).
///
/// See the [module docs](crate::validate) for an example.
#[derive(Clone, Debug)]
#[must_use]
pub struct ValidateLayer {
    pub(crate) config: Arc<Config>,
}

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) max_body_size: usize,
    pub(crate) media: MediaTypes,
    pub(crate) rules: JsonRules,
    pub(crate) schema: Option<Schema>,
    pub(crate) require_body: bool,
    pub(crate) violation_status: ViolationStatus,
    pub(crate) max_details: usize,
    pub(crate) query: Option<TypedCheck>,
    pub(crate) headers: Option<(Arc<[HeaderName]>, TypedCheck)>,
}

impl ValidateLayer {
    /// JSON bodies of at most 1 MiB, `Content-Type: application/json` (parameters allowed,
    /// charset UTF-8 only), nesting depth 64, no duplicate keys, integers within 64 bits, no
    /// schema.
    pub fn new() -> Self {
        Self {
            config: Arc::new(Config {
                max_body_size: DEFAULT_MAX_BODY_SIZE,
                media: MediaTypes::default(),
                rules: JsonRules { max_depth: DEFAULT_MAX_DEPTH, lossy_integers: false },
                schema: None,
                require_body: false,
                violation_status: ViolationStatus::BadRequest,
                max_details: DEFAULT_MAX_DETAILS,
                query: None,
                headers: None,
            }),
        }
    }

    fn config(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// The largest body accepted, in bytes (default 1 MiB). Larger bodies are answered 413:
    /// by their `Content-Length` before anything is read, or as soon as a streamed body
    /// passes the limit.
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.config().max_body_size = bytes;
        self
    }

    /// Validates every body against `schema` (JSON Schema draft 2020-12), compiled now.
    /// `format` is asserted (an `"email"` that is not one is a violation); `$ref`s to other
    /// documents cannot be fetched and are refused.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `schema` is not a valid schema.
    pub fn schema(mut self, schema: &Value) -> Result<Self, ConfigError> {
        self.config().schema = Some(Schema::compile(schema)?);
        Ok(self)
    }

    /// Also accepts `media_type` (`type/subtype`, e.g. `application/merge-patch+json`); the
    /// body is still parsed as JSON.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `media_type` is not `type/subtype` (parameters are not part of
    /// it).
    pub fn add_content_type(mut self, media_type: &str) -> Result<Self, ConfigError> {
        self.config().media.add(media_type)?;
        Ok(self)
    }

    /// Also accepts any `application/*+json` media type (default `false`).
    pub fn json_suffix(mut self, allow: bool) -> Self {
        self.config().media.json_suffix = allow;
        self
    }

    /// The deepest nesting of arrays and objects accepted (default 64).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] unless `depth` is 1 to 127.
    pub fn max_depth(mut self, depth: usize) -> Result<Self, ConfigError> {
        if !(1..=MAX_DEPTH_LIMIT).contains(&depth) {
            return Err(ConfigError::new(format!(
                "max_depth must be 1 to {MAX_DEPTH_LIMIT}, not {depth}"
            )));
        }
        self.config().rules.max_depth = depth;
        Ok(self)
    }

    /// Accepts integer literals outside `i64::MIN..=u64::MAX` as (rounded) floats (default
    /// `false`: they are refused, so `18446744073709551616` cannot reach one reader as
    /// `2^64` and another as `1.8446744073709552e19`).
    pub fn allow_lossy_integers(mut self, allow: bool) -> Self {
        self.config().rules.lossy_integers = allow;
        self
    }

    /// Requires a body on every method (default `false`: a `GET`, `HEAD`, `DELETE` or
    /// `OPTIONS` request without a body passes without one).
    pub fn require_body(mut self, require: bool) -> Self {
        self.config().require_body = require;
        self
    }

    /// The status of schema violations (default 400); see [`ViolationStatus`].
    pub fn violation_status(mut self, status: ViolationStatus) -> Self {
        self.config().violation_status = status;
        self
    }

    /// The most details one rejection lists (default 20, at least 1), so that a huge invalid
    /// document cannot produce a huge response.
    pub fn max_details(mut self, max: usize) -> Self {
        self.config().max_details = max.max(1);
        self
    }

    /// Validates the query string by deserializing it into `T` (serde; use
    /// `#[serde(deny_unknown_fields)]` to refuse unknown parameters) and running its
    /// [`Check`]. Failures are 400 with `field` `query:<name>`.
    pub fn query<T: DeserializeOwned + Check + 'static>(mut self) -> Self {
        self.config().query = Some(TypedCheck::new::<T>(Source::Query));
        self
    }

    /// Validates the headers named in `names` by deserializing them into `T` (field names are
    /// the lowercase header names, e.g. `#[serde(rename = "x-page")]` or
    /// `#[serde(rename_all = "kebab-case")]`) and running its [`Check`]. Other headers are
    /// not looked at. A listed header that is repeated or not visible ASCII is refused.
    /// Failures are 400 with `field` `header:<name>`.
    pub fn headers<T: DeserializeOwned + Check + 'static>(
        mut self,
        names: impl IntoIterator<Item = HeaderName>,
    ) -> Self {
        let names: Arc<[HeaderName]> = names.into_iter().collect();
        self.config().headers = Some((names, TypedCheck::new::<T>(Source::Header)));
        self
    }
}

impl Default for ValidateLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for ValidateLayer {
    type Service = Validate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Validate::new(inner, self.clone())
    }
}
