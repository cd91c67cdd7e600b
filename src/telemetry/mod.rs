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
mod redact;

pub use self::{
    abuse::{PenaltyBox, PenaltyBoxLayer},
    redact::{fingerprint, Escaped},
};

/// The `tracing` target of every security event.
pub const SECURITY_TARGET: &str = "tower_shield::security";
