use std::{future::Future, sync::Arc};

use super::{
    gcra::{Decision, Mode},
    key::RateKey,
    quota::Limits,
};
use crate::Error;

/// Where quota state lives: [`MemoryStore`](super::MemoryStore) in process (the default) or
/// `RedisStore` (feature `redis`) shared by every instance.
///
/// The future is an associated type so the memory store answers with a ready future and costs
/// no allocation per request.
pub trait Store: Send + Sync + 'static {
    /// The future of [`decide`](Store::decide).
    type Future: Future<Output = Result<Decision, Error>> + Send + 'static;

    /// Checks (and, per `mode`, charges) `cost` units of every quota of `limits` for `key`.
    ///
    /// # Errors
    ///
    /// An [`Error`] of kind [`ServiceUnavailable`](crate::ErrorKind::ServiceUnavailable) when
    /// the backend is down and the store fails closed; the layer answers it as is.
    fn decide(&self, limits: &Limits, key: &RateKey, cost: u32, mode: Mode) -> Self::Future;
}

impl<S: Store + ?Sized> Store for Arc<S> {
    type Future = S::Future;

    fn decide(&self, limits: &Limits, key: &RateKey, cost: u32, mode: Mode) -> Self::Future {
        (**self).decide(limits, key, cost, mode)
    }
}
