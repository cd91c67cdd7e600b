//! Authentication: turns a credential into a [`Principal`](crate::principal::Principal).

mod key;

pub use self::key::VerifyingKey;
