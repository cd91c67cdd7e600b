//! What every layer reports about a request: fields of the envelope's `request` span and, with
//! feature `metrics`, counters. One place, so the layers stay free of `cfg`s and of the cost
//! checks.
//!
//! Both are free when unused: span fields are only looked up when a subscriber listens at
//! `INFO` (and the envelope only puts a [`RequestSpan`] in the request when its span is
//! enabled), and every metric call compiles to nothing without feature `metrics`.

use http::Extensions;
use tracing::Span;

/// The envelope's `request` span, as it puts it in the request extensions (only when a
/// subscriber records the span). Every tower-shield layer records its outcome into it, whatever
/// spans other middleware (tower-http's `TraceLayer`...) opened in between; a handler can too.
///
/// See the [span fields](crate::envelope#the-request-span).
///
/// ```
/// use http::Request;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_shield::envelope::{ErrorEnvelopeLayer, RequestSpan};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let service = ServiceBuilder::new().layer(ErrorEnvelopeLayer::new()).service(service_fn(
///     |request: Request<String>| async move {
///         // `None` when no subscriber records the span: nothing to do then.
///         if let Some(span) = request.extensions().get::<RequestSpan>() {
///             span.span().record("subject", "alice");
///         }
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
///     },
/// ));
/// let response = service.oneshot(Request::new(String::new())).await.unwrap();
/// assert_eq!(response.status(), http::StatusCode::OK);
/// # }
/// ```
#[derive(Clone, Debug)]
#[cfg_attr(not(feature = "envelope"), allow(dead_code, unreachable_pub))]
pub struct RequestSpan(pub(crate) Span);

#[cfg_attr(not(feature = "envelope"), allow(dead_code, unreachable_pub))]
impl RequestSpan {
    /// The span. Record into it with [`Span::record`]; its fields are declared by the envelope.
    pub fn span(&self) -> &Span {
        &self.0
    }
}

/// The URI the client sent. Under an axum `Router::nest` the router strips the nest's prefix
/// (`/accounts/{id}`) from the URI the inner routes and their layers see, and keeps the whole
/// in `OriginalUri`: decisions about a resource (its tenant, its idempotency record) must read
/// the whole path, or two resources under one nest look alike.
#[cfg_attr(not(any(feature = "idempotency", feature = "scope")), allow(dead_code))]
pub(crate) fn original_uri<'a>(extensions: &'a Extensions, uri: &'a http::Uri) -> &'a http::Uri {
    #[cfg(feature = "axum")]
    if let Some(axum::extract::OriginalUri(original)) = extensions.get() {
        return original;
    }
    let _ = extensions;
    uri
}

/// The route of a request, for logs and scope tables: axum's matched route template when
/// known (`/orders/{id}`), else the path; never the query.
#[cfg_attr(
    not(any(feature = "rate-limit", feature = "scope", feature = "validate")),
    allow(dead_code)
)]
pub(crate) fn route<'a>(extensions: &'a Extensions, uri: &'a http::Uri) -> &'a str {
    #[cfg(feature = "axum")]
    if let Some(matched) = extensions.get::<axum::extract::MatchedPath>() {
        return matched.as_str();
    }
    let _ = extensions;
    uri.path()
}

/// The request span, when there is one and a subscriber could record into it.
#[inline]
pub(crate) fn span(extensions: &Extensions) -> Option<&Span> {
    if !tracing::level_enabled!(tracing::Level::INFO) {
        return None;
    }
    extensions.get::<RequestSpan>().map(RequestSpan::span)
}

/// Records `field = value` into the request span, if any.
#[inline]
pub(crate) fn record(extensions: &Extensions, field: &'static str, value: &str) {
    if let Some(span) = span(extensions) {
        span.record(field, value);
    }
}

/// Increments a counter (feature `metrics`; nothing at all otherwise: the label expressions
/// are type-checked, never evaluated). Label values must come from a bounded set:
/// configuration, `&'static str` outcomes, never a client-controlled string.
macro_rules! count {
    ($name:literal $(, $label:literal => $value:expr)* $(,)?) => {{
        #[cfg(feature = "metrics")]
        {
            ::metrics::counter!($name $(, $label => $value)*).increment(1);
        }
        #[cfg(not(feature = "metrics"))]
        #[allow(unreachable_code, clippy::diverging_sub_expression)]
        if false {
            $(let _ = &$value;)*
        }
    }};
}

// ===== per layer =====

/// An authentication decision: `outcome` is `success`, `failure` (4xx), `error` (the decision
/// needed a backend that failed: 5xx) or `anonymous` (optional auth, no credential).
#[inline]
pub(crate) fn auth(extensions: &Extensions, method: &'static str, outcome: &'static str) {
    if let Some(span) = span(extensions) {
        span.record("auth.method", method);
        span.record("auth.outcome", outcome);
    }
    #[cfg(feature = "metrics")]
    count_auth(method, outcome);
}

/// The auth counter, on every request: the built-in methods and outcomes use static keys
/// (no label list allocated, key hashed at compile time); the same counter as `count!` gives.
#[cfg(feature = "metrics")]
fn count_auth(method: &'static str, outcome: &'static str) {
    macro_rules! by_outcome {
        ($method:literal) => {
            match outcome {
                "success" => ::metrics::counter!(
                    "tower_shield_auth_total", "method" => $method, "outcome" => "success"
                ),
                "failure" => ::metrics::counter!(
                    "tower_shield_auth_total", "method" => $method, "outcome" => "failure"
                ),
                "error" => ::metrics::counter!(
                    "tower_shield_auth_total", "method" => $method, "outcome" => "error"
                ),
                "anonymous" => ::metrics::counter!(
                    "tower_shield_auth_total", "method" => $method, "outcome" => "anonymous"
                ),
                _ => ::metrics::counter!(
                    "tower_shield_auth_total", "method" => $method, "outcome" => outcome
                ),
            }
        };
    }
    let counter = match method {
        "jwt" => by_outcome!("jwt"),
        "api_key" => by_outcome!("api_key"),
        "introspection" => by_outcome!("introspection"),
        "none" => by_outcome!("none"),
        _ => ::metrics::counter!(
            "tower_shield_auth_total", "method" => method, "outcome" => outcome
        ),
    };
    counter.increment(1);
}

/// The outcome of an auth rejection, from its status.
pub(crate) fn auth_failure_outcome(error: &crate::Error) -> &'static str {
    if error.status().is_server_error() {
        "error"
    } else {
        "failure"
    }
}

/// Who the caller is, once authenticated.
#[inline]
pub(crate) fn principal(extensions: &Extensions, principal: &crate::principal::Principal) {
    if let Some(span) = span(extensions) {
        span.record("subject", principal.subject());
        if let Some(tenant) = principal.tenant() {
            span.record("tenant", tenant);
        }
    }
}

/// The client IP as the rate limiter resolved it (proxy-aware).
#[inline]
pub(crate) fn client_ip(extensions: &Extensions, ip: std::net::IpAddr) {
    if let Some(span) = span(extensions) {
        span.record("client_ip", tracing::field::display(ip));
    }
}

/// A rate-limit decision: `outcome` is `allowed`, `rejected` or `error` (store failed closed).
#[inline]
pub(crate) fn rate_limit(
    extensions: &Extensions,
    policy: &str,
    key_kind: &str,
    outcome: &'static str,
) {
    if let Some(span) = span(extensions) {
        span.record("rate_limit.policy", policy);
        span.record("rate_limit.outcome", outcome);
    }
    if outcome == "rejected" {
        count!(
            "tower_shield_rate_limit_rejected_total",
            "policy" => policy.to_owned(),
            "key_kind" => key_kind.to_owned(),
        );
    }
}

/// An authorization decision: `allowed`, or the denial's outcome (`forbidden`, `step_up`...).
#[inline]
pub(crate) fn scope(extensions: &Extensions, outcome: &'static str) {
    record(extensions, "scope.outcome", outcome);
    // `open`: a route of a table that anyone may call, not a denial.
    #[cfg(feature = "metrics")]
    if !matches!(outcome, "allowed" | "open") {
        count_scope_denied(outcome);
    }
}

/// The scope counter: every denial the scope layer knows by a static key (no label list
/// allocated, key hashed at compile time), as for [`count_auth`].
#[cfg(feature = "metrics")]
fn count_scope_denied(outcome: &'static str) {
    macro_rules! denied {
        ($($outcome:literal),+) => {
            match outcome {
                $($outcome => ::metrics::counter!(
                    "tower_shield_scope_denied_total", "outcome" => $outcome
                ),)+
                _ => ::metrics::counter!("tower_shield_scope_denied_total", "outcome" => outcome),
            }
        };
    }
    let counter = denied!(
        "forbidden",
        "unauthenticated",
        "step_up",
        "tenant_forbidden",
        "not_found",
        "unmapped"
    );
    counter.increment(1);
}

/// Validation passed.
#[inline]
pub(crate) fn validation_passed(extensions: &Extensions) {
    record(extensions, "validation.outcome", "passed");
}

/// Validation rejected the request by `rule`.
#[inline]
pub(crate) fn validation_rejected(extensions: &Extensions, rule: &'static str) {
    record(extensions, "validation.outcome", "rejected");
    count!("tower_shield_validation_rejected_total", "rule" => rule);
}

/// An idempotency outcome: `stored`, `replayed`, `conflict`, `mismatch`, `missing`,
/// `invalid`, `anonymous`, `not_stored`, `fail_open` or `error`.
#[inline]
pub(crate) fn idempotency(span: Option<&Span>, outcome: &'static str) {
    if let Some(span) = span {
        span.record("idempotency.outcome", outcome);
    }
    count!("tower_shield_idempotency_total", "outcome" => outcome);
}

/// The penalty box refused a request of a blocked client.
#[inline]
pub(crate) fn abuse_rejected(extensions: &Extensions, key_kind: &str) {
    record(extensions, "abuse.outcome", "blocked");
    count!("tower_shield_abuse_rejected_total", "key_kind" => key_kind.to_owned());
}

/// The penalty box started blocking a client.
#[inline]
pub(crate) fn abuse_blocked(key_kind: &str) {
    count!("tower_shield_abuse_blocks_total", "key_kind" => key_kind.to_owned());
}

/// A backend (Redis, JWKS, introspection...) failed: counted, whatever the log rate limit.
#[inline]
pub(crate) fn backend_failure(backend: &'static str) {
    count!("tower_shield_backend_errors_total", "backend" => backend);
}

/// A request went on without a backend that failed (fail-open policy).
#[inline]
pub(crate) fn fail_open(backend: &'static str) {
    count!("tower_shield_fail_open_total", "backend" => backend);
}
