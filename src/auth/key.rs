use std::fmt;

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use crate::error::ConfigError;

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

impl VerifyingKey {
    /// An HMAC key (`HS256`, `HS384` or `HS512`) from a shared secret.
    ///
    /// # Errors
    ///
    /// `algorithm` is not an HMAC algorithm, or the secret is shorter than the hash output
    /// (32 bytes for HS256, 48 for HS384, 64 for HS512; RFC 7518 section 3.2): a short secret
    /// can be brute-forced offline from a single token.
    pub fn from_secret(algorithm: Algorithm, secret: &[u8]) -> Result<Self, ConfigError> {
        if algorithm.family() != AlgorithmFamily::Hmac {
            return Err(ConfigError::new("VerifyingKey::from_secret needs HS256, HS384 or HS512"));
        }
        check_hmac_len(algorithm, secret.len())?;
        Ok(Self::new(algorithm, DecodingKey::from_secret(secret)))
    }

    /// A public key from PEM (`-----BEGIN PUBLIC KEY-----`, or `RSA PUBLIC KEY` for RSA), for
    /// an RSA (`RS*`, `PS*`), EC (`ES256`, `ES384`) or Ed25519 (`EdDSA`) algorithm.
    ///
    /// # Errors
    ///
    /// `algorithm` is an HMAC algorithm, or the PEM does not hold a key of its family.
    pub fn from_pem(algorithm: Algorithm, pem: &[u8]) -> Result<Self, ConfigError> {
        let key = match algorithm.family() {
            AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem),
            AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem),
            AlgorithmFamily::Ed => DecodingKey::from_ed_pem(pem),
            AlgorithmFamily::Hmac => {
                return Err(ConfigError::new(
                    "an HMAC key is a secret, not a PEM: use VerifyingKey::from_secret",
                ))
            }
        };
        let key = key.map_err(|_| ConfigError::new("the PEM does not hold a public key"))?;
        Ok(Self::new(algorithm, key))
    }

    /// A public key from DER: PKCS#1 `RSAPublicKey` for RSA, the uncompressed point for EC,
    /// the 32 raw bytes for Ed25519 (the forms `jsonwebtoken`'s `DecodingKey::from_*_der`
    /// expect).
    ///
    /// # Errors
    ///
    /// `algorithm` is an HMAC algorithm.
    pub fn from_der(algorithm: Algorithm, der: &[u8]) -> Result<Self, ConfigError> {
        let key = match algorithm.family() {
            AlgorithmFamily::Rsa => DecodingKey::from_rsa_der(der),
            AlgorithmFamily::Ec => DecodingKey::from_ec_der(der),
            AlgorithmFamily::Ed => DecodingKey::from_ed_der(der),
            AlgorithmFamily::Hmac => {
                return Err(ConfigError::new(
                    "an HMAC key is a secret, not DER: use VerifyingKey::from_secret",
                ))
            }
        };
        Ok(Self::new(algorithm, key))
    }

    /// Checks that the key material is of the algorithm's family and that an HMAC secret is
    /// long enough.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if self.key.family() != self.algorithm.family() {
            return Err(ConfigError::new(
                "the key material does not belong to the key's algorithm family",
            ));
        }
        if self.algorithm.family() == AlgorithmFamily::Hmac {
            let len = self.key.try_get_as_bytes().map_or(0, <[u8]>::len);
            check_hmac_len(self.algorithm, len)?;
        }
        Ok(())
    }
}

fn check_hmac_len(algorithm: Algorithm, len: usize) -> Result<(), ConfigError> {
    let min = match algorithm {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    };
    if len < min {
        return Err(ConfigError::new(format!(
            "the {algorithm:?} secret must be at least {min} bytes (it has {len})"
        )));
    }
    Ok(())
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish()
    }
}
