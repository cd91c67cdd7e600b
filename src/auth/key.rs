use std::fmt;

use jsonwebtoken::{Algorithm, DecodingKey};

/// A key that verifies JWT signatures, pinned to exactly one algorithm.
///
/// The algorithm comes from configuration or from the key itself (a JWK's `alg`, or its `kty`
/// and `crv`), never from the token: a token whose header names another algorithm is rejected
/// before any signature work, so an RSA public key can never be used as an HMAC secret.
///
/// `Debug` prints the key id and algorithm only, never key material.
///
/// ```
/// use jsonwebtoken::{Algorithm, DecodingKey};
/// use tower_shield::auth::VerifyingKey;
///
/// let key = VerifyingKey::new(Algorithm::HS256, DecodingKey::from_secret(&[7; 32])).with_kid("k1");
/// assert_eq!(key.algorithm(), Algorithm::HS256);
/// assert_eq!(key.kid(), Some("k1"));
/// assert_eq!(format!("{key:?}"), r#"VerifyingKey { kid: Some("k1"), algorithm: HS256 }"#);
/// ```
#[derive(Clone)]
pub struct VerifyingKey {
    kid: Option<Box<str>>,
    algorithm: Algorithm,
    key: DecodingKey,
}

impl VerifyingKey {
    /// A key for `algorithm`.
    pub fn new(algorithm: Algorithm, key: DecodingKey) -> Self {
        Self { kid: None, algorithm, key }
    }

    /// Sets the key id (`kid`) that tokens name to select this key.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into().into_boxed_str());
        self
    }

    /// The key id, if any.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The one algorithm this key verifies.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The key material, for `jsonwebtoken`.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish()
    }
}
