//! JWK sets: the public keys an identity provider publishes, each pinned to one algorithm.
//!
//! A [`KeySet`] is built from a JSON Web Key Set (RFC 7517), given inline as JSON text or as a
//! [`jsonwebtoken::jwk::JwkSet`], or fetched by [`RemoteJwks`](super::RemoteJwks) (feature
//! `jwks`). Every usable key becomes a [`VerifyingKey`] pinned to exactly one algorithm:
//!
//! - the JWK's `alg` when present;
//! - otherwise inferred from `kty`/`crv` where that is unambiguous: EC `P-256` → `ES256`,
//!   EC `P-384` → `ES384`, OKP `Ed25519` → `EdDSA`. An RSA key without `alg` could be meant
//!   for `RS*` or `PS*`: it is skipped unless [`KeySetConfig::allow_rsa_without_alg`] says to
//!   assume `RS256`.
//!
//! A key that cannot be used safely is **skipped with a warning**; it never makes the whole set
//! fail:
//!
//! - `use: enc`, an unknown `use`, or `key_ops` without `verify`;
//! - symmetric `oct` keys (a published key set must never carry HMAC secrets) and any `HS*`
//!   `alg`;
//! - `alg: none` or any algorithm this crate does not verify, in any letter case;
//! - an `alg` that does not fit the key (`ES384` on a P-256 key, `EdDSA` on an RSA key...);
//! - unsupported curves (`P-521`, `secp256k1`, `X25519`...) and unknown key types;
//! - malformed material: bad base64url, coordinates of the wrong length, RSA moduli outside
//!   2048..=8192 bits;
//! - a second key with the same `kid` and algorithm.
//!
//! The document as a whole is bounded: at most [`max_keys`](KeySetConfig::max_keys) entries
//! (default 64) and [`max_document_size`](KeySetConfig::max_document_size) bytes (default
//! 256 KiB). A document over either bound, one that is not a JWK set, or one without a single
//! usable key is an error.
//!
//! # Lookup
//!
//! [`KeySet::find`] takes the token header's `kid` and `alg`. A key matches only if both its
//! `kid` and its algorithm match, so a token can never choose how a key is used. A token
//! without `kid` matches only when the set holds **exactly one** key for its algorithm; with
//! several candidates it matches none. (A [`Jwt`](super::jwt::Jwt) verifying against the set
//! does not use `find`: it tries each key of the token's algorithm when the token has no
//! `kid`, as for keys configured directly; see the [`jwt`](super::jwt) module docs.)
//!
//! # Example
//!
//! ```
//! use jsonwebtoken::Algorithm;
//! use tower_shield::auth::KeySet;
//!
//! let jwks = r#"{"keys": [
//!     {"kty": "OKP", "crv": "Ed25519", "kid": "2026-01",
//!      "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
//!     {"kty": "oct", "kid": "leaked", "k": "c2VjcmV0"}
//! ]}"#;
//! let keys = KeySet::from_json(jwks)?;
//!
//! assert_eq!(keys.len(), 1); // the HMAC secret was skipped
//! let key = keys.find(Some("2026-01"), Algorithm::EdDSA).unwrap();
//! assert_eq!(key.algorithm(), Algorithm::EdDSA);
//! assert!(keys.find(Some("2026-01"), Algorithm::ES256).is_none());
//! assert!(keys.find(Some("leaked"), Algorithm::HS256).is_none());
//! # Ok::<(), tower_shield::error::ConfigError>(())
//! ```

use std::{fmt, num::NonZeroUsize, sync::Arc};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use jsonwebtoken::{
    jwk::{
        AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, KeyOperations, PublicKeyUse,
    },
    Algorithm, DecodingKey,
};
use serde::Deserialize;

use super::VerifyingKey;
use crate::error::ConfigError;

/// Default maximum number of keys in a JWK set.
const DEFAULT_MAX_KEYS: usize = 64;
/// Default maximum size of a JWK set document, in bytes.
const DEFAULT_MAX_DOCUMENT_SIZE: usize = 256 * 1024;
/// Longest `kid` written to a log line.
const MAX_LOGGED_KID: usize = 64;

/// Public keys by key id, each pinned to one algorithm.
///
/// Immutable once built and cheap to share (`Arc<KeySet>`). `Debug` lists key ids and
/// algorithms only.
///
/// See the [module docs](crate::auth::jwk) for the rules and an example.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: Box<[Arc<VerifyingKey>]>,
}

/// Limits and choices for turning a JWK set into a [`KeySet`].
///
/// ```
/// use std::num::NonZeroUsize;
/// use tower_shield::auth::KeySetConfig;
///
/// let config = KeySetConfig::new()
///     .max_keys(NonZeroUsize::new(16).unwrap())
///     .max_document_size(64 * 1024)
///     .allow_rsa_without_alg();
/// # let _ = config;
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct KeySetConfig {
    max_keys: NonZeroUsize,
    max_document_size: usize,
    rsa_without_alg: bool,
}

impl Default for KeySetConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl KeySetConfig {
    /// The defaults: at most 64 keys, 256 KiB, RSA keys without `alg` skipped.
    pub fn new() -> Self {
        Self {
            max_keys: NonZeroUsize::new(DEFAULT_MAX_KEYS).unwrap_or(NonZeroUsize::MIN),
            max_document_size: DEFAULT_MAX_DOCUMENT_SIZE,
            rsa_without_alg: false,
        }
    }

    /// The most entries a set may have (counted before any is skipped). A larger set is an
    /// error. Default 64.
    pub fn max_keys(mut self, max: NonZeroUsize) -> Self {
        self.max_keys = max;
        self
    }

    /// The largest JSON document accepted, in bytes. Default 256 KiB.
    pub fn max_document_size(mut self, bytes: usize) -> Self {
        self.max_document_size = bytes;
        self
    }

    /// Pins RSA keys that carry no `alg` to `RS256` instead of skipping them. Only enable this
    /// when the identity provider signs with RS256 and omits `alg` (some do).
    pub fn allow_rsa_without_alg(mut self) -> Self {
        self.rsa_without_alg = true;
        self
    }

    /// The configured maximum number of keys.
    pub fn max_keys_limit(&self) -> usize {
        self.max_keys.get()
    }

    /// The configured maximum document size, in bytes.
    pub fn max_document_size_limit(&self) -> usize {
        self.max_document_size
    }
}

#[derive(Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
}

impl KeySet {
    /// Parses a JWK set document (`{"keys": [...]}`) with the default [`KeySetConfig`].
    ///
    /// # Errors
    ///
    /// When the document is too large, not a JWK set, has too many keys or no usable key.
    pub fn from_json(json: impl AsRef<[u8]>) -> Result<Self, ConfigError> {
        Self::from_json_with(json, &KeySetConfig::new())
    }

    /// Parses a JWK set document with `config`.
    ///
    /// # Errors
    ///
    /// As [`KeySet::from_json`].
    pub fn from_json_with(
        json: impl AsRef<[u8]>,
        config: &KeySetConfig,
    ) -> Result<Self, ConfigError> {
        let json = json.as_ref();
        if json.len() > config.max_document_size {
            return Err(ConfigError::new(format!(
                "JWK set document is larger than {} bytes",
                config.max_document_size
            )));
        }
        let document: Document = serde_json::from_slice(json).map_err(|_| {
            ConfigError::new("JWK set document is not a JSON object with a `keys` array")
        })?;
        check_count(document.keys.len(), config)?;
        let mut builder = Builder::new(config);
        for value in &document.keys {
            match Jwk::deserialize(value) {
                Ok(jwk) => builder.add(&jwk),
                Err(_) => {
                    let kid = value.get("kid").and_then(serde_json::Value::as_str);
                    skip(kid, "malformed JWK");
                }
            }
        }
        builder.finish()
    }

    /// Builds a set from an already parsed [`JwkSet`], with the default [`KeySetConfig`].
    ///
    /// # Errors
    ///
    /// When the set has too many keys or no usable key.
    pub fn from_jwk_set(set: &JwkSet) -> Result<Self, ConfigError> {
        Self::from_jwk_set_with(set, &KeySetConfig::new())
    }

    /// Builds a set from an already parsed [`JwkSet`] with `config` (the document size limit
    /// does not apply).
    ///
    /// # Errors
    ///
    /// As [`KeySet::from_jwk_set`].
    pub fn from_jwk_set_with(set: &JwkSet, config: &KeySetConfig) -> Result<Self, ConfigError> {
        check_count(set.keys.len(), config)?;
        let mut builder = Builder::new(config);
        for jwk in &set.keys {
            builder.add(jwk);
        }
        builder.finish()
    }

    /// A set of keys configured directly (e.g. from PEM files). Keys with the same `kid` and
    /// algorithm as an earlier one are dropped.
    pub fn from_keys(keys: impl IntoIterator<Item = VerifyingKey>) -> Self {
        let mut out: Vec<Arc<VerifyingKey>> = Vec::new();
        for key in keys {
            if !out.iter().any(|k| k.kid() == key.kid() && k.algorithm() == key.algorithm()) {
                out.push(Arc::new(key));
            }
        }
        Self { keys: out.into_boxed_slice() }
    }

    /// The key for a token whose header names `kid` and `alg`.
    ///
    /// With a `kid`, the key with that id and algorithm. Without one, the only key for `alg`,
    /// or `None` when the set holds zero or several keys for it.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&Arc<VerifyingKey>> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.algorithm() == alg && k.kid() == Some(kid)),
            None => {
                let mut candidates = self.keys.iter().filter(|k| k.algorithm() == alg);
                let first = candidates.next()?;
                candidates.next().is_none().then_some(first)
            }
        }
    }

    /// Whether the set holds a key with this `kid` (for any algorithm).
    pub fn contains_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid() == Some(kid))
    }

    /// All keys, in document order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Arc<VerifyingKey>> + '_ {
        self.keys.iter()
    }

    /// The number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.keys.iter()).finish()
    }
}

fn check_count(count: usize, config: &KeySetConfig) -> Result<(), ConfigError> {
    if count > config.max_keys.get() {
        return Err(ConfigError::new(format!(
            "JWK set has {count} keys, more than the limit of {}",
            config.max_keys
        )));
    }
    Ok(())
}

struct Builder<'a> {
    config: &'a KeySetConfig,
    keys: Vec<Arc<VerifyingKey>>,
}

impl<'a> Builder<'a> {
    fn new(config: &'a KeySetConfig) -> Self {
        Self { config, keys: Vec::new() }
    }

    fn add(&mut self, jwk: &Jwk) {
        let kid = jwk.common.key_id.as_deref();
        match convert(jwk, self.config) {
            Ok(key) => {
                if self.keys.iter().any(|k| k.kid() == kid && k.algorithm() == key.algorithm()) {
                    skip(kid, "duplicate kid and alg");
                } else {
                    self.keys.push(Arc::new(key));
                }
            }
            Err(reason) => skip(kid, reason),
        }
    }

    fn finish(self) -> Result<KeySet, ConfigError> {
        if self.keys.is_empty() {
            return Err(ConfigError::new("JWK set has no usable signature verification key"));
        }
        Ok(KeySet { keys: self.keys.into_boxed_slice() })
    }
}

fn skip(kid: Option<&str>, reason: &'static str) {
    let kid = kid.map(|kid| match kid.char_indices().nth(MAX_LOGGED_KID) {
        Some((end, _)) => &kid[..end],
        None => kid,
    });
    tracing::warn!(kid, reason, "skipping a key of a JWK set");
}

/// Turns one JWK into a pinned key, or says why it is skipped.
fn convert(jwk: &Jwk, config: &KeySetConfig) -> Result<VerifyingKey, &'static str> {
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(PublicKeyUse::Encryption) => return Err("key is for encryption (use: enc)"),
        Some(PublicKeyUse::Other(_)) => return Err("unknown key use"),
    }
    if let Some(ops) = &jwk.common.key_operations {
        if !ops.contains(&KeyOperations::Verify) {
            return Err("key_ops does not include verify");
        }
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(KeyAlgorithm::HS256 | KeyAlgorithm::HS384 | KeyAlgorithm::HS512) => {
            return Err("symmetric algorithm in a JWK set")
        }
        Some(alg) => Some(Algorithm::try_from(alg).map_err(|_| "unsupported or encryption alg")?),
    };
    let (algorithm, key) = match &jwk.algorithm {
        AlgorithmParameters::OctetKey(_) => return Err("symmetric (oct) key in a JWK set"),
        AlgorithmParameters::RSA(rsa) => {
            let algorithm = match alg {
                Some(
                    a @ (Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512),
                ) => a,
                Some(_) => return Err("alg does not fit an RSA key"),
                None if config.rsa_without_alg => Algorithm::RS256,
                None => return Err("RSA key without alg"),
            };
            let n = decode(&rsa.n)?;
            let e = decode(&rsa.e)?;
            let n = strip_leading_zeros(&n);
            // An empty modulus (all zeros) has no bits, and must not underflow.
            let bits =
                (n.len() * 8).saturating_sub(n.first().map_or(0, |b| b.leading_zeros() as usize));
            if !(2048..=8192).contains(&bits) {
                return Err("RSA modulus outside 2048..=8192 bits");
            }
            let e = strip_leading_zeros(&e);
            if e.is_empty() || e.len() > 4 {
                return Err("malformed RSA exponent");
            }
            (algorithm, DecodingKey::from_rsa_raw_components(n, e))
        }
        AlgorithmParameters::EllipticCurve(ec) => {
            let (inferred, len) = match ec.curve {
                EllipticCurve::P256 => (Algorithm::ES256, 32),
                EllipticCurve::P384 => (Algorithm::ES384, 48),
                _ => return Err("unsupported elliptic curve"),
            };
            if alg.is_some_and(|alg| alg != inferred) {
                return Err("alg does not fit the curve");
            }
            if decode(&ec.x)?.len() != len || decode(&ec.y)?.len() != len {
                return Err("malformed EC coordinates");
            }
            let key = DecodingKey::from_ec_components(&ec.x, &ec.y)
                .map_err(|_| "malformed EC coordinates")?;
            (inferred, key)
        }
        AlgorithmParameters::OctetKeyPair(okp) => {
            if okp.curve != EllipticCurve::Ed25519 {
                return Err("unsupported OKP curve");
            }
            if alg.is_some_and(|alg| alg != Algorithm::EdDSA) {
                return Err("alg does not fit an Ed25519 key");
            }
            if decode(&okp.x)?.len() != 32 {
                return Err("malformed Ed25519 key");
            }
            let key =
                DecodingKey::from_ed_components(&okp.x).map_err(|_| "malformed Ed25519 key")?;
            (Algorithm::EdDSA, key)
        }
        _ => return Err("unsupported key type"),
    };
    let key = VerifyingKey::new(algorithm, key);
    Ok(match &jwk.common.key_id {
        Some(kid) => key.with_kid(kid.clone()),
        None => key,
    })
}

fn decode(value: &str) -> Result<Vec<u8>, &'static str> {
    URL_SAFE_NO_PAD.decode(value).map_err(|_| "malformed base64url key material")
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// HTTP helpers shared by [`RemoteJwks`](super::RemoteJwks) and
/// [`Introspection`](super::Introspection).
#[cfg(any(feature = "jwks", feature = "introspection"))]
pub(crate) mod fetch {
    use bytes::{Bytes, BytesMut};
    use reqwest::Url;

    /// `https`, or `http` to a loopback host, or `http` anywhere when `insecure` allows.
    pub(crate) fn check_url(url: &Url, insecure: bool) -> Result<(), &'static str> {
        match url.scheme() {
            "https" => Ok(()),
            "http" if insecure || is_loopback(url) => Ok(()),
            "http" => Err("URL must use https (http is only allowed for loopback hosts)"),
            _ => Err("URL must use https"),
        }
    }

    fn is_loopback(url: &Url) -> bool {
        let Some(host) = url.host_str() else { return false };
        let ip = host.trim_start_matches('[').trim_end_matches(']');
        match ip.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.is_loopback(),
            Err(_) => host.eq_ignore_ascii_case("localhost"),
        }
    }

    /// The host of `url`, for log lines (no user info, path or query).
    pub(crate) fn host(url: &Url) -> String {
        match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap_or("")),
            None => url.host_str().unwrap_or("").to_owned(),
        }
    }

    /// Reads a response body, failing as soon as it would exceed `limit` bytes.
    pub(crate) async fn read_capped(
        response: &mut reqwest::Response,
        limit: usize,
    ) -> Result<Bytes, String> {
        if response.content_length().is_some_and(|len| len > limit as u64) {
            return Err(format!("body larger than {limit} bytes"));
        }
        let mut body = BytesMut::new();
        while let Some(chunk) =
            response.chunk().await.map_err(|e| format!("reading body: {}", e.without_url()))?
        {
            if body.len() + chunk.len() > limit {
                return Err(format!("body larger than {limit} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }

    /// A short description of a client error, without the URL.
    pub(crate) fn describe(error: &reqwest::Error) -> &'static str {
        if error.is_timeout() {
            "timed out"
        } else if error.is_connect() {
            "connection failed"
        } else if error.is_redirect() {
            "redirect refused"
        } else if error.is_body() || error.is_decode() {
            "broken response body"
        } else {
            "request failed"
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use jsonwebtoken::{EncodingKey, Header, Validation};
    use serde_json::{json, Value};

    use super::*;

    pub(crate) const RSA_PEM: &[u8] = include_bytes!("../../tests/fixtures/test-only-rsa-2048.pem");
    pub(crate) const P256_A_PEM: &[u8] =
        include_bytes!("../../tests/fixtures/test-only-ec-p256-a.pem");
    pub(crate) const P256_B_PEM: &[u8] =
        include_bytes!("../../tests/fixtures/test-only-ec-p256-b.pem");
    pub(crate) const P384_PEM: &[u8] = include_bytes!("../../tests/fixtures/test-only-ec-p384.pem");
    pub(crate) const ED25519_PEM: &[u8] =
        include_bytes!("../../tests/fixtures/test-only-ed25519.pem");

    /// With both crypto backends enabled (`--all-features`) jsonwebtoken cannot pick one by
    /// itself; the tests pick aws-lc-rs.
    pub(crate) fn install_crypto_provider() {
        #[cfg(all(feature = "jwt-rust-crypto", feature = "jwt-aws-lc-rs"))]
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    }

    pub(crate) fn encoding_key(alg: Algorithm, pem: &[u8]) -> EncodingKey {
        install_crypto_provider();
        match alg {
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem).unwrap(),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem).unwrap(),
            _ => EncodingKey::from_rsa_pem(pem).unwrap(),
        }
    }

    /// The public JWK of a fixture, as JSON, with `kid` and `alg` set.
    pub(crate) fn jwk(alg: Algorithm, pem: &[u8], kid: &str) -> Value {
        let jwk = Jwk::from_encoding_key(&encoding_key(alg, pem), alg).unwrap();
        let mut value = serde_json::to_value(jwk).unwrap();
        value["kid"] = json!(kid);
        value
    }

    fn without(mut value: Value, field: &str) -> Value {
        value.as_object_mut().unwrap().remove(field);
        value
    }

    fn with(mut value: Value, field: &str, v: Value) -> Value {
        value[field] = v;
        value
    }

    fn set(keys: &[Value]) -> String {
        json!({ "keys": keys }).to_string()
    }

    fn token(alg: Algorithm, pem: &[u8], kid: Option<&str>) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(
            &header,
            &json!({"sub": "alice", "exp": 4_000_000_000u64}),
            &encoding_key(alg, pem),
        )
        .unwrap()
    }

    fn verifies(key: &VerifyingKey, token: &str) -> bool {
        let mut validation = Validation::new(key.algorithm());
        validation.required_spec_claims.clear();
        jsonwebtoken::decode::<Value>(token, key.decoding_key(), &validation).is_ok()
    }

    #[test]
    fn every_supported_key_type_verifies_its_tokens() {
        let cases = [
            (Algorithm::RS256, RSA_PEM),
            (Algorithm::PS384, RSA_PEM),
            (Algorithm::ES256, P256_A_PEM),
            (Algorithm::ES384, P384_PEM),
            (Algorithm::EdDSA, ED25519_PEM),
        ];
        let keys = KeySet::from_json(set(&cases
            .iter()
            .map(|(alg, pem)| jwk(*alg, pem, &format!("{alg:?}")))
            .collect::<Vec<_>>()))
        .unwrap();
        assert_eq!(keys.len(), cases.len());
        for (alg, pem) in cases {
            let kid = format!("{alg:?}");
            let key = keys.find(Some(&kid), alg).unwrap();
            assert_eq!(key.algorithm(), alg);
            assert!(verifies(key, &token(alg, pem, Some(&kid))), "{alg:?}");
        }
    }

    #[test]
    fn algorithm_is_inferred_only_where_unambiguous() {
        let keys = KeySet::from_json(set(&[
            without(jwk(Algorithm::ES256, P256_A_PEM, "p256"), "alg"),
            without(jwk(Algorithm::ES384, P384_PEM, "p384"), "alg"),
            without(jwk(Algorithm::EdDSA, ED25519_PEM, "ed"), "alg"),
            without(jwk(Algorithm::RS256, RSA_PEM, "rsa"), "alg"),
        ]))
        .unwrap();
        assert_eq!(keys.len(), 3);
        assert_eq!(
            keys.find(Some("p256"), Algorithm::ES256).unwrap().algorithm(),
            Algorithm::ES256
        );
        assert_eq!(
            keys.find(Some("p384"), Algorithm::ES384).unwrap().algorithm(),
            Algorithm::ES384
        );
        assert_eq!(keys.find(Some("ed"), Algorithm::EdDSA).unwrap().algorithm(), Algorithm::EdDSA);
        assert!(!keys.contains_kid("rsa"));

        let config = KeySetConfig::new().allow_rsa_without_alg();
        let keys = KeySet::from_json_with(
            set(&[without(jwk(Algorithm::RS256, RSA_PEM, "rsa"), "alg")]),
            &config,
        )
        .unwrap();
        let key = keys.find(Some("rsa"), Algorithm::RS256).unwrap();
        assert!(verifies(key, &token(Algorithm::RS256, RSA_PEM, Some("rsa"))));
        assert!(keys.find(Some("rsa"), Algorithm::PS256).is_none());
    }

    #[test]
    fn unsafe_or_unusable_keys_are_skipped_not_fatal() {
        let good = jwk(Algorithm::ES256, P256_A_PEM, "good");
        let ec = jwk(Algorithm::ES256, P256_B_PEM, "x");
        let skipped = [
            with(ec.clone(), "use", json!("enc")),
            with(ec.clone(), "use", json!("wat")),
            with(ec.clone(), "key_ops", json!(["encrypt"])),
            json!({"kty": "oct", "kid": "x", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}),
            json!({"kty": "oct", "kid": "x", "alg": "HS256", "k": "c2VjcmV0"}),
            with(ec.clone(), "alg", json!("none")),
            with(ec.clone(), "alg", json!("None")),
            with(ec.clone(), "alg", json!("NONE")),
            with(ec.clone(), "alg", json!("HS256")),
            with(ec.clone(), "alg", json!("ES384")),
            with(ec.clone(), "alg", json!("RSA-OAEP")),
            with(jwk(Algorithm::RS256, RSA_PEM, "x"), "alg", json!("ES256")),
            with(jwk(Algorithm::RS256, RSA_PEM, "x"), "alg", json!("HS256")),
            with(jwk(Algorithm::EdDSA, ED25519_PEM, "x"), "alg", json!("ES256")),
            with(ec.clone(), "crv", json!("P-521")),
            with(ec.clone(), "crv", json!("secp256k1")),
            with(jwk(Algorithm::EdDSA, ED25519_PEM, "x"), "crv", json!("X25519")),
            with(ec.clone(), "x", json!("not base64!")),
            with(ec.clone(), "y", json!("AAAA")),
            without(ec, "y"),
            with(jwk(Algorithm::EdDSA, ED25519_PEM, "x"), "x", json!("AAAA")),
            with(
                jwk(Algorithm::RS256, RSA_PEM, "x"),
                "n",
                json!(URL_SAFE_NO_PAD.encode([0xff; 128])),
            ),
            with(jwk(Algorithm::RS256, RSA_PEM, "x"), "e", json!("")),
            // A modulus of zero bytes, or of zeros only: no bits at all.
            with(jwk(Algorithm::RS256, RSA_PEM, "x"), "n", json!("AA")),
            with(jwk(Algorithm::RS256, RSA_PEM, "x"), "n", json!("")),
            json!({"kty": "EC", "kid": 7}),
            json!({"kty": "WAT", "kid": "x"}),
            json!("not an object"),
        ];
        for bad in skipped {
            let keys = KeySet::from_json(set(&[good.clone(), bad.clone()]))
                .unwrap_or_else(|e| panic!("{bad}: {e}"));
            assert_eq!(keys.len(), 1, "{bad} was not skipped");
            assert!(!keys.contains_kid("x"), "{bad} was not skipped");
            assert!(keys.find(Some("good"), Algorithm::ES256).is_some());
        }
    }

    #[test]
    fn no_usable_key_is_an_error() {
        let err = KeySet::from_json(set(&[json!({"kty": "oct", "k": "c2VjcmV0"})])).unwrap_err();
        assert!(err.message().contains("no usable"), "{err}");
        assert!(KeySet::from_json(set(&[])).is_err());
    }

    #[test]
    fn malformed_documents_are_errors() {
        for doc in ["", "[]", "{}", r#"{"keys": {}}"#, r#"{"keys": [}"#, "null"] {
            assert!(KeySet::from_json(doc).is_err(), "{doc}");
        }
    }

    #[test]
    fn key_count_and_document_size_are_bounded() {
        let key = jwk(Algorithm::ES256, P256_A_PEM, "k");
        let many: Vec<Value> =
            (0..65).map(|i| with(key.clone(), "kid", json!(i.to_string()))).collect();
        assert!(KeySet::from_json(set(&many)).unwrap_err().message().contains("more than"));
        assert_eq!(KeySet::from_json(set(&many[..64])).unwrap().len(), 64);

        let config = KeySetConfig::new().max_keys(NonZeroUsize::new(2).unwrap());
        assert!(KeySet::from_json_with(set(&many[..3]), &config).is_err());
        assert_eq!(KeySet::from_json_with(set(&many[..2]), &config).unwrap().len(), 2);

        let document = set(&[key]);
        let config = KeySetConfig::new().max_document_size(document.len() - 1);
        assert!(KeySet::from_json_with(&document, &config)
            .unwrap_err()
            .message()
            .contains("larger"));
        let padded = format!("{document}{}", " ".repeat(DEFAULT_MAX_DOCUMENT_SIZE));
        assert!(KeySet::from_json(padded).is_err());
    }

    #[test]
    fn lookup_pins_kid_and_algorithm() {
        let keys = KeySet::from_json(set(&[
            jwk(Algorithm::ES256, P256_A_PEM, "a"),
            jwk(Algorithm::ES256, P256_B_PEM, "b"),
            jwk(Algorithm::RS256, RSA_PEM, "r"),
        ]))
        .unwrap();
        assert!(keys.find(Some("a"), Algorithm::ES256).is_some());
        assert!(keys.find(Some("a"), Algorithm::ES384).is_none());
        assert!(keys.find(Some("a"), Algorithm::HS256).is_none());
        assert!(keys.find(Some("r"), Algorithm::HS256).is_none());
        assert!(keys.find(Some("c"), Algorithm::ES256).is_none());
        // Without kid: unique per algorithm only.
        assert_eq!(keys.find(None, Algorithm::RS256).unwrap().kid(), Some("r"));
        assert!(keys.find(None, Algorithm::ES256).is_none());
        assert!(keys.find(None, Algorithm::EdDSA).is_none());
        // A key signed by `b` does not verify with `a`.
        assert!(!verifies(
            keys.find(Some("a"), Algorithm::ES256).unwrap(),
            &token(Algorithm::ES256, P256_B_PEM, Some("a"))
        ));
    }

    #[test]
    fn duplicate_kid_and_alg_keeps_the_first() {
        let keys = KeySet::from_json(set(&[
            jwk(Algorithm::ES256, P256_A_PEM, "same"),
            jwk(Algorithm::ES256, P256_B_PEM, "same"),
            jwk(Algorithm::RS256, RSA_PEM, "same"),
            jwk(Algorithm::PS256, RSA_PEM, "same"),
        ]))
        .unwrap();
        assert_eq!(keys.len(), 3);
        let key = keys.find(Some("same"), Algorithm::ES256).unwrap();
        assert!(verifies(key, &token(Algorithm::ES256, P256_A_PEM, Some("same"))));
        assert!(keys.find(Some("same"), Algorithm::PS256).is_some());
    }

    #[test]
    fn keys_without_kid_match_kidless_tokens() {
        let keys =
            KeySet::from_json(set(&[without(jwk(Algorithm::EdDSA, ED25519_PEM, ""), "kid")]))
                .unwrap();
        let key = keys.find(None, Algorithm::EdDSA).unwrap();
        assert_eq!(key.kid(), None);
        assert!(verifies(key, &token(Algorithm::EdDSA, ED25519_PEM, None)));
        assert!(keys.find(Some("any"), Algorithm::EdDSA).is_none());
    }

    #[test]
    fn from_jwk_set_applies_the_same_rules() {
        let mut set: JwkSet = serde_json::from_value(json!({"keys": [
            jwk(Algorithm::ES256, P256_A_PEM, "a"),
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
        ]}))
        .unwrap();
        let keys = KeySet::from_jwk_set(&set).unwrap();
        assert_eq!(keys.len(), 1);
        set.keys = (0..65).map(|_| set.keys[0].clone()).collect();
        assert!(KeySet::from_jwk_set(&set).is_err());
    }

    #[test]
    fn from_keys_and_debug() {
        let keys = KeySet::from_keys([
            VerifyingKey::new(Algorithm::HS256, DecodingKey::from_secret(&[1; 32])).with_kid("h"),
            VerifyingKey::new(Algorithm::HS256, DecodingKey::from_secret(&[2; 32])).with_kid("h"),
        ]);
        assert_eq!(keys.len(), 1);
        assert_eq!(format!("{keys:?}"), r#"[VerifyingKey { kid: Some("h"), algorithm: HS256 }]"#);
    }
}
