//! Input validation at the edge: body size, content type, JSON shape, JSON Schema, query
//! strings, headers, and typed DTOs.
//!
//! [`ValidateLayer`] checks a request before any business logic sees it, in this order, and
//! rejects through the shared [`Error`](crate::Error) (rendered by the
//! [envelope](crate::envelope)):
//!
//! | check | rejection |
//! |---|---|
//! | query string / selected headers against a typed struct ([`ValidateLayer::query`], [`ValidateLayer::headers`]) | 400, `field` `query:<name>` / `header:<name>` |
//! | body size: `Content-Length` before reading, then while streaming (default 1 MiB) | 413 |
//! | `Content-Type`: `application/json` (parameters allowed, a `charset` other than UTF-8 refused), plus [added](ValidateLayer::add_content_type) types and optionally [`+json`](ValidateLayer::json_suffix); a body without a content type is refused | 415 |
//! | empty body where JSON is required (any method but `GET`, `HEAD`, `DELETE`, `OPTIONS`, unless [`require_body`](ValidateLayer::require_body)) | 400, issue `required` |
//! | UTF-8 | 400, issue `invalid_utf8` |
//! | nesting depth (default 64), checked by an iterative scan: a 100,000-level document costs one pass, not a stack overflow | 400, issue `depth` |
//! | number range: `1e400` and integers outside `i64::MIN..=u64::MAX` such as `2^64` | 400, issue `number_out_of_range` |
//! | syntax | 400, issue `syntax`, message with line and column |
//! | duplicate object keys (`{"quantity":1,"quantity":100000}`) | 400, issue `duplicate_key` |
//! | JSON Schema draft 2020-12 ([`ValidateLayer::schema`]) | 400 (or [422](ViolationStatus)), one detail per violation |
//!
//! The inner service receives `Request<`[`Buffered`](crate::body::Buffered)`>` (the bytes
//! read, so memory never exceeds the limit plus one frame) and, when there was a body, the
//! parsed document as a [`JsonBody`] in the request extensions: handlers do not parse twice.
//!
//! # Details
//!
//! Every rejection of the body lists what is wrong in the envelope's `details`, and never the
//! rejected value: `{"field": "/quantity", "issue": "maximum", "message": "must be at most
//! 1000"}`. `field` is a JSON pointer (`""` is the whole document), `issue` the schema
//! keyword (`required`, `type`, `maxLength`, `additionalProperties`...) or one of the shape
//! issues above. Messages are built from the schema, never from the instance (jsonschema's
//! own messages quote it). Property names are client input: where one is part of a `field`
//! (an unknown property, a duplicate key) it is JSON-pointer escaped, cut to 64 bytes
//! (ending in `...`), and a `field` stops at 256 bytes (ending in `/...`); values never
//! appear. At most [20](ValidateLayer::max_details) details are listed.
//!
//! # Numbers
//!
//! Integers from `i64::MIN` to `u64::MAX` are kept exactly. Integer literals outside that
//! range (`18446744073709551616`, i.e. 2^64, or a 30-digit id) are refused rather than
//! silently rounded to a float, which different readers would see differently;
//! [`ValidateLayer::allow_lossy_integers`] accepts them as `f64`. Numbers with a fraction or
//! exponent are `f64`; one that overflows (`1e400`) is refused. Send large identifiers as
//! strings.
//!
//! # Mass assignment
//!
//! Set `"additionalProperties": false` on every object of a schema (or
//! `#[serde(deny_unknown_fields)]` on a DTO): a client then cannot slip `"role": "admin"` or
//! `"owner": "someone-else"` into a body that the handler forwards to storage. Unknown
//! properties are reported as `{"field": "/role", "issue": "additionalProperties"}`.
//!
//! # Typed validation
//!
//! With feature `axum`, [`Validated<T>`] deserializes the body into a DTO (serde, with the
//! path of the failing field) and runs its [`Check`]; its rejections have the same shape.
//!
//! # Security events
//!
//! Every rejection emits `validate.rejected` at target `tower_shield::security` with the
//! `route`, the `rule` that failed, the first `field` and the number of `details`; never a
//! value.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use serde_json::json;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_shield::{body::Buffered, validate::{JsonBody, ValidateLayer}, Error};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let orders = ValidateLayer::new()
//!     .max_body_size(16 * 1024)
//!     .schema(&json!({
//!         "type": "object",
//!         "additionalProperties": false,
//!         "required": ["item", "quantity"],
//!         "properties": {
//!             "item": {"type": "string", "minLength": 1, "maxLength": 80},
//!             "quantity": {"type": "integer", "minimum": 1, "maximum": 1000},
//!             "note": {"type": "string", "maxLength": 500}
//!         }
//!     }))?;
//!
//! let service = ServiceBuilder::new().layer(orders).service_fn(|request: Request<Buffered>| async move {
//!     // The parsed, validated document: no second parse.
//!     let order = request.extensions().get::<JsonBody>().expect("validated");
//!     assert_eq!(order.value()["quantity"], 2);
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default()))
//! });
//!
//! let post = |body: &'static str| {
//!     Request::post("/orders")
//!         .header("content-type", "application/json")
//!         .body(Full::<Bytes>::from(body))
//!         .unwrap()
//! };
//! let response = service.clone().oneshot(post(r#"{"item":"book","quantity":2}"#)).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//!
//! let response = service.oneshot(post(r#"{"item":"book","quantity":2,"role":"admin"}"#)).await?;
//! assert_eq!(response.status(), StatusCode::BAD_REQUEST);
//! let error = response.extensions().get::<Error>().unwrap();
//! assert_eq!(error.details()[0].field(), "/role");
//! assert_eq!(error.details()[0].issue(), "additionalProperties");
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use serde_json::Value;

#[cfg(feature = "axum")]
mod extract;
mod future;
pub(crate) mod json;
mod layer;
mod media;
mod schema;
mod service;
mod typed;

#[cfg(feature = "axum")]
pub use self::extract::Validated;
pub use self::{
    future::ResponseFuture,
    layer::{
        ValidateLayer, ViolationStatus, DEFAULT_MAX_BODY_SIZE, DEFAULT_MAX_DEPTH,
        DEFAULT_MAX_DETAILS,
    },
    service::Validate,
    typed::Check,
};

/// The request body as parsed and validated by [`ValidateLayer`], in the request extensions.
///
/// Present whenever the request had a body that passed. Cheap to clone (the document is
/// behind an `Arc`). With feature `axum` it is an extractor (a missing `JsonBody` means the
/// layer is not applied to the route: 500).
///
/// ```
/// use serde_json::json;
/// use tower_shield::validate::JsonBody;
///
/// let body = JsonBody::new(json!({"item": "book"}));
/// assert_eq!(body.value()["item"], "book");
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct JsonBody {
    value: Arc<Value>,
}

impl JsonBody {
    /// Wraps a parsed document.
    pub fn new(value: Value) -> Self {
        Self { value: Arc::new(value) }
    }

    /// The document.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The document, cloned only if another `JsonBody` still shares it.
    pub fn into_value(self) -> Value {
        Arc::try_unwrap(self.value).unwrap_or_else(|shared| (*shared).clone())
    }
}

#[cfg(test)]
mod tests;
