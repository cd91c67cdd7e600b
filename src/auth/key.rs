use std::{
    fmt,
    sync::{Arc, OnceLock},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use hmac::{Hmac, Mac as _};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use sha2::{Sha256, Sha384, Sha512};

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
    /// For an HMAC algorithm with a secret: the HMAC state after the key, prepared once, so
    /// that a verification hashes only the token.
    hmac: Option<Arc<HmacKey>>,
    /// The JOSE header of the first token this key verified, shared by the key's clones.
    header: Arc<OnceLock<HeaderMemo>>,
}

/// A JOSE header read once, by its exact base64url text. An issuer sends the same header
/// segment in every token signed with one key, so later tokens skip decoding and parsing it.
/// Filled only from a token whose signature and claims passed (a header is a pure function of
/// its bytes, so a revocation checked later changes nothing here); a key holds one, and a
/// rotated key set brings new, empty ones.
pub(crate) struct HeaderMemo {
    pub(crate) segment: Box<str>,
    pub(crate) alg: Box<str>,
    pub(crate) kid: Option<Box<str>>,
    pub(crate) typ: Option<Box<str>>,
}

impl VerifyingKey {
    /// A key for `algorithm`.
    pub fn new(algorithm: Algorithm, key: DecodingKey) -> Self {
        let hmac = HmacKey::new(algorithm, &key).map(Arc::new);
        Self { kid: None, algorithm, key, hmac, header: Arc::default() }
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

    /// The header this key remembers, if it is `segment`.
    pub(crate) fn header_memo(&self, segment: &str) -> Option<&HeaderMemo> {
        self.header.get().filter(|memo| *memo.segment == *segment)
    }

    /// Remembers the header of a token this key verified, if it holds none yet.
    pub(crate) fn remember_header(&self, memo: impl FnOnce() -> HeaderMemo) {
        self.header.get_or_init(memo);
    }

    /// Whether `signature` (base64url, as in the token) signs `message` under this key.
    pub(crate) fn verify(&self, message: &[u8], signature: &str) -> bool {
        match &self.hmac {
            Some(hmac) => hmac.verify(message, signature),
            None => jsonwebtoken::crypto::verify(signature, message, &self.key, self.algorithm)
                .unwrap_or(false),
        }
    }
}

/// An HMAC key with its inner and outer pads already hashed (RFC 2104).
#[derive(Clone)]
enum HmacKey {
    Hs256(Hmac<Sha256>),
    Hs384(Hmac<Sha384>),
    Hs512(Hmac<Sha512>),
}

impl HmacKey {
    /// `None` for another algorithm, or for key material that is not a secret (which
    /// [`VerifyingKey::check`] refuses).
    fn new(algorithm: Algorithm, key: &DecodingKey) -> Option<Self> {
        if key.family() != AlgorithmFamily::Hmac {
            return None;
        }
        let secret = key.try_get_as_bytes().ok()?;
        // HMAC takes a key of any length (RFC 2104 section 2).
        Some(match algorithm {
            Algorithm::HS256 => Self::Hs256(Hmac::new_from_slice(secret).ok()?),
            Algorithm::HS384 => Self::Hs384(Hmac::new_from_slice(secret).ok()?),
            Algorithm::HS512 => Self::Hs512(Hmac::new_from_slice(secret).ok()?),
            _ => return None,
        })
    }

    /// Decodes the signature as jsonwebtoken does (base64url without padding, canonical
    /// trailing bits) and compares it in constant time; a signature of another length fails
    /// before any hashing (the length is no secret).
    fn verify(&self, message: &[u8], signature: &str) -> bool {
        // Large enough for HS512; a longer signature does not fit and fails.
        let mut tag = [0u8; 64];
        let Ok(len) = URL_SAFE_NO_PAD.decode_slice(signature, &mut tag) else {
            return false;
        };
        let expected = match self {
            Self::Hs256(_) => 32,
            Self::Hs384(_) => 48,
            Self::Hs512(_) => 64,
        };
        if len != expected {
            return false;
        }
        let tag = &tag[..len];
        match self {
            Self::Hs256(key) => key.clone().chain_update(message).verify_slice(tag).is_ok(),
            Self::Hs384(key) => key.clone().chain_update(message).verify_slice(tag).is_ok(),
            Self::Hs512(key) => key.clone().chain_update(message).verify_slice(tag).is_ok(),
        }
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

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};

    use super::*;

    /// The prepared HMAC answers exactly as jsonwebtoken does, for the signature and for every
    /// way of spelling it wrong: a changed character (the last one changes only the unused
    /// trailing bits), a truncated or extended tag, padding, the standard alphabet, another key.
    #[test]
    fn hmac_agrees_with_jsonwebtoken() {
        crate::auth::jwt::install_crypto_provider();
        for (alg, len) in [(Algorithm::HS256, 32), (Algorithm::HS384, 48), (Algorithm::HS512, 64)] {
            let secret: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5c).collect();
            let claims = serde_json::json!({"sub": "alice", "exp": 4_102_444_800_u64});
            let token = jsonwebtoken::encode(
                &Header::new(alg),
                &claims,
                &EncodingKey::from_secret(&secret),
            )
            .unwrap();
            let (message, signature) = token.rsplit_once('.').unwrap();
            let key = VerifyingKey::from_secret(alg, &secret).unwrap();
            assert!(key.hmac.is_some(), "{alg:?}");
            assert!(key.verify(message.as_bytes(), signature), "{alg:?}");

            let mut spellings = vec![
                String::new(),
                signature[..signature.len() - 1].to_owned(),
                signature[..signature.len() / 2].to_owned(),
                format!("{signature}A"),
                format!("{signature}AAAA"),
                format!("{signature}="),
                signature.replace('-', "+").replace('_', "/"),
                "A".repeat(200),
            ];
            for i in [0, signature.len() / 2, signature.len() - 1] {
                for c in ['A', 'B', 'Q', 'g', 'w', '-', '_', '+', '.'] {
                    let mut changed = signature.to_owned();
                    changed.replace_range(i..=i, &c.to_string());
                    spellings.push(changed);
                }
            }
            let other = VerifyingKey::from_secret(alg, &vec![1; len]).unwrap();
            assert!(!other.verify(message.as_bytes(), signature), "{alg:?}");
            assert!(!key.verify(b"eyJhbGciOiJub25lIn0.e30", signature), "{alg:?}");
            for spelled in &spellings {
                let theirs =
                    jsonwebtoken::crypto::verify(spelled, message.as_bytes(), &key.key, alg)
                        .unwrap_or(false);
                assert_eq!(key.verify(message.as_bytes(), spelled), theirs, "{alg:?} {spelled}");
                assert_eq!(theirs, spelled == signature, "{alg:?} {spelled}");
            }
        }
    }

    #[test]
    fn only_hmac_secrets_are_prepared() {
        let secret = DecodingKey::from_secret(&[7; 32]);
        assert!(VerifyingKey::new(Algorithm::HS256, secret.clone()).hmac.is_some());
        // An HMAC secret named for another algorithm is refused by `check`, not prepared.
        assert!(VerifyingKey::new(Algorithm::RS256, secret).hmac.is_none());
        let ed = DecodingKey::from_ed_der(&[3; 32]);
        assert!(VerifyingKey::new(Algorithm::HS256, ed.clone()).hmac.is_none());
        assert!(VerifyingKey::new(Algorithm::HS256, ed).check().is_err());
    }
}
