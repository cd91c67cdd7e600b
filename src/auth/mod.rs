//! Authentication: turns a credential into a [`Principal`](crate::principal::Principal).

pub mod api_key;
mod authenticator;
mod cache;
mod future;
pub mod jwt;
mod key;
mod layer;
mod public;
pub mod revocation;
mod service;

pub use self::{
    authenticator::{AuthRequest, Authenticator, Authorization, BoxAuthFuture, Verdict},
    future::ResponseFuture,
    key::VerifyingKey,
    layer::AuthLayer,
    revocation::{MemoryRevocation, Revocation},
    service::Auth,
};

#[cfg(test)]
mod tests;
