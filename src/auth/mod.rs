//! Authentication: turns a credential into a [`Principal`](crate::principal::Principal).
//!
//! Key sources for JWT verification: [`KeySet`] (a JWK set given inline, see [`jwk`]) and, with
//! feature `jwks`, [`RemoteJwks`] (a JWK set fetched from a JWKS or OIDC discovery URL, see
//! [`jwks`]). With feature `introspection`, [`Introspection`] checks opaque OAuth 2.0 tokens
//! (RFC 7662, see [`introspection`]).

mod key;

pub mod jwk;

pub use self::jwk::{KeySet, KeySetConfig};
pub use self::key::VerifyingKey;

#[cfg(feature = "jwks")]
pub mod jwks;

#[cfg(feature = "jwks")]
pub use self::jwks::{RemoteJwks, RemoteJwksBuilder};

#[cfg(feature = "introspection")]
pub mod introspection;

#[cfg(feature = "introspection")]
pub use self::introspection::{Introspection, IntrospectionBuilder};
