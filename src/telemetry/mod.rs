//! Security telemetry: the event target, and safe forms of values for logs.
//!
//! Every tower-shield layer reports security decisions as [`tracing`] events at the target
//! [`SECURITY_TARGET`] (`tower_shield::security`), with a field `event` naming what happened
//! (`auth.failure`, `scope.denied`, `rate_limit.rejected`, ...). Route those events where your
//! security monitoring reads them, e.g. with `tracing-subscriber`'s JSON formatter and an
//! `EnvFilter` of `tower_shield::security=info`.
//!
//! No event, error or `Debug` output holds a token, API key, password or cookie. Where an
//! identifier helps correlation, the layers log a [`fingerprint`] (or an API key's public id);
//! client-controlled strings are written through [`Escaped`], so they cannot forge log lines.
//!
//! Besides these events, the envelope's `request` span carries one request's whole story
//! (route, client IP, subject, each layer's outcome, status, latency): see
//! [the request span](crate::envelope#the-request-span). With feature `metrics`, the layers
//! also count their decisions through the `metrics` facade: see `telemetry::metrics`.
//!
//! # Security events
//!
//! Every event below has the target `tower_shield::security` and the field `event`. Field
//! names are stable; events within a request also carry the request span's fields.
//!
//! | `event` | level | when | fields |
//! |---|---|---|---|
//! | `auth.success` | debug | a credential was accepted | `subject`, `tenant`, `auth_method` |
//! | `auth.failure` | info | a credential was missing, malformed or refused, or a backend the check needs failed | `code` (the public [`Error::code`](crate::Error::code)), `reason` (the internal reason: `expired`, `bad signature`, `revoked`...), `auth_method` |
//! | `scope.allowed` | debug | authorization passed | `outcome`, `subject`, `tenant`, `route`, `requirement` or `policy` |
//! | `scope.denied` | info (warn when unmapped) | a scope, role, tenant or resource policy refused the caller | `outcome` (`unauthenticated`, `forbidden`, `tenant_forbidden`, `not_found`, `unmapped`), `subject`, `tenant`, `route`, `requirement` or `policy`, `reason` |
//! | `step_up.required` | info | the login is too old or too weak (RFC 9470 challenge) | `outcome` = `step_up`, `subject`, `tenant`, `route`, `requirement` |
//! | `rate_limit.rejected` | info | a quota was exhausted (429), or a request costs more than a burst | `policy`, `key_kind`, `route`, `retry_after_ms` or `reason` |
//! | `validate.rejected` | info | validation refused the request (400, 413, 415, 422) | `route`, `rule`, `field` (a JSON pointer, never a value), `details`, `status` |
//! | `idempotency.replayed` | info | a stored response was replayed | `route`, `key` (a short hash), `caller`, `status` |
//! | `idempotency.conflict` | info | the same key is in flight (409) | `route`, `key`, `caller` |
//! | `idempotency.mismatch` | warn | the key was reused for a different request (422) | `route`, `key`, `caller` |
//! | `idempotency.rejected` | info | no key where one is required, an invalid key, an anonymous caller | `reason`, `route`, `code` |
//! | `idempotency.not_stored`, `idempotency.released` | debug/warn | a response was not stored; a dropped request's lock was released | `reason`, `route`, `key` |
//! | `abuse.blocked` | warn | the penalty box started blocking a client | `key_kind`, `client` (a [`fingerprint`]), `strikes`, `cool_down_ms` |
//! | `abuse.unblocked` | info | a client's cool-down ended | `key_kind`, `client`, `strikes` |
//! | `backend.failure` | warn/error | Redis (rate limits, idempotency, revocation), a JWKS fetch, token introspection or a full revocation store failed | `backend` (`redis`, `idempotency`, `redis_revocation`, `memory_revocation`, `jwks`, `introspection`), `reason`, and `kept_keys` for `jwks` |
//! | `backend.fail_open` | warn | a request went on without the failed backend (fail-open policy) | `backend`, `reason` |
//!
//! The Redis rate-limit store logs its failures at most once per second; the metrics count
//! every one.
//!
//! [`PenaltyBoxLayer`] (module [`abuse`]) turns those signals into a control: it counts
//! suspicious responses (401, 403, 404, validation failures) per client and blocks clients past
//! a threshold for a cool-down that doubles on repeat, answering 429 with `Retry-After`.
//!
//! # Example
//!
//! ```
//! use tower_shield::telemetry::{fingerprint, Escaped, SECURITY_TARGET};
//!
//! let username = "mallory\nINFO login ok for admin";
//! tracing::warn!(
//!     target: SECURITY_TARGET,
//!     event = "auth.failure",
//!     username = %Escaped(username),
//!     token = %fingerprint(b"the token itself is never logged"),
//!     "login failed"
//! );
//! ```

pub mod abuse;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
mod redact;

pub use self::{
    abuse::{PenaltyBox, PenaltyBoxLayer},
    redact::{fingerprint, Escaped},
};

/// The `tracing` target of every security event.
pub const SECURITY_TARGET: &str = "tower_shield::security";
