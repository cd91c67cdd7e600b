//! API keys: `sk_live_<id>_<secret>`, stored only as SHA-256 hashes.
//!
//! [`ApiKeys`] is an [`Authenticator`] for `Authorization: ApiKey <key>`
//! and, when configured, a header such as `X-API-Key` (never the query string). A key is
//! `<prefix>_<id>_<secret>`: the id selects the stored entry, and the SHA-256 of the whole
//! presented key is compared in constant time with the stored hash. Only hashes are stored,
//! so a leaked key table does not leak keys.
//!
//! [`generate`] makes a new key from the operating system's CSPRNG: hand the
//! [`key`](GeneratedKey::key) to the client once, store the [`hash`](GeneratedKey::hash).
//! Several keys may map to one subject, which is how keys are rotated: add the new key, let
//! clients move, [`remove`](ApiKeys::remove) the old one.
//!
//! # Example
//!
//! ```
//! use tower_shield::auth::api_key::{generate, ApiKeys};
//! use tower_shield::principal::Principal;
//!
//! let new = generate("sk_live").unwrap();
//! assert!(new.key().starts_with("sk_live_"));
//!
//! let keys = ApiKeys::new("sk_live")
//!     .unwrap()
//!     .header(http::HeaderName::from_static("x-api-key"))
//!     .with_key(new.id(), new.hash(), Principal::builder("billing-service").scopes(["invoices:read"]))
//!     .unwrap();
//! # let _ = keys;
//! ```

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, RwLock},
};

use http::HeaderName;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{AuthRequest, Authenticator, Verdict};
use crate::{
    error::ConfigError,
    principal::{AuthMethod, Principal, PrincipalBuilder},
    Error, ErrorKind,
};

const MAX_ID_LEN: usize = 64;
const MAX_KEY_LEN: usize = 512;

/// Verifies API keys. Clones share the key table.
///
/// # Example
///
/// ```
/// use http::{header, HeaderMap, HeaderValue};
/// use tower_shield::auth::api_key::{generate, ApiKeys};
/// use tower_shield::auth::{AuthRequest, Authenticator, Verdict};
/// use tower_shield::principal::Principal;
///
/// let issued = generate("sk_live").unwrap();
/// let keys = ApiKeys::new("sk_live")
///     .unwrap()
///     .with_key(issued.id(), issued.hash(), Principal::builder("billing-service"))
///     .unwrap();
///
/// let mut headers = HeaderMap::new();
/// let value = HeaderValue::from_str(&format!("ApiKey {}", issued.key())).unwrap();
/// headers.insert(header::AUTHORIZATION, value);
/// let request = AuthRequest::from_headers(&headers).unwrap();
/// match keys.authenticate(&request) {
///     Verdict::Authenticated(principal) => {
///         assert_eq!(principal.subject(), "billing-service");
///         assert_eq!(principal.key_id(), Some(issued.id()));
///     }
///     other => panic!("{other:?}"),
/// }
///
/// // Rotation: once clients use their new key, remove the old one.
/// assert!(keys.remove(issued.id()));
/// assert!(matches!(keys.authenticate(&request), Verdict::Rejected(_)));
/// ```
#[derive(Clone)]
pub struct ApiKeys {
    inner: Arc<Inner>,
}

struct Inner {
    prefix: Box<str>,
    headers: Vec<HeaderName>,
    accept_bearer: bool,
    keys: RwLock<HashMap<Box<str>, Stored>>,
}

struct Stored {
    hash: [u8; 32],
    principal: Principal,
}

impl ApiKeys {
    /// An empty key table for keys starting with `prefix` (e.g. `sk_live`).
    ///
    /// A table answers for every API key a request presents (`Authorization: ApiKey`, or its
    /// key headers): a key with another prefix is refused (401 `invalid_token`), not passed to
    /// the next authenticator, so a second table chained after this one never sees it. Keep
    /// live and test keys in services of their own, or under one prefix.
    ///
    /// # Errors
    ///
    /// `prefix` is empty, longer than 32 bytes, or not made of ASCII letters, digits and `_`.
    pub fn new(prefix: &str) -> Result<Self, ConfigError> {
        check_prefix(prefix)?;
        Ok(Self {
            inner: Arc::new(Inner {
                prefix: prefix.into(),
                headers: Vec::new(),
                accept_bearer: false,
                keys: RwLock::new(HashMap::new()),
            }),
        })
    }

    /// Also reads keys from `header` (e.g. `X-API-Key`); the layer marks it sensitive.
    #[must_use]
    pub fn header(mut self, header: HeaderName) -> Self {
        self.inner_mut().headers.push(header);
        self
    }

    /// Also accepts `Authorization: Bearer <key>` when the token starts with this prefix
    /// (other bearer tokens are left to the next authenticator, e.g. a JWT). Put `ApiKeys`
    /// first in the chain for this.
    #[must_use]
    pub fn accept_bearer(mut self) -> Self {
        self.inner_mut().accept_bearer = true;
        self
    }

    fn inner_mut(&mut self) -> &mut Inner {
        Arc::get_mut(&mut self.inner).expect("ApiKeys is configured before it is shared")
    }

    /// Adds the key `id` whose full key hashes to `hash_hex` (lowercase or uppercase hex of
    /// the SHA-256, as [`GeneratedKey::hash`] gives), for `principal`. The principal gets
    /// the key id and [`AuthMethod::ApiKey`].
    ///
    /// # Errors
    ///
    /// `id` is not 1 to 64 ASCII letters and digits, or `hash_hex` is not 64 hex digits.
    pub fn with_key(
        self,
        id: &str,
        hash_hex: &str,
        principal: PrincipalBuilder,
    ) -> Result<Self, ConfigError> {
        self.insert(id, hash_hex, principal)?;
        Ok(self)
    }

    /// Adds or replaces a key at run time; see [`with_key`](Self::with_key).
    ///
    /// # Errors
    ///
    /// As [`with_key`](Self::with_key).
    pub fn insert(
        &self,
        id: &str,
        hash_hex: &str,
        principal: PrincipalBuilder,
    ) -> Result<(), ConfigError> {
        if !is_id(id) {
            return Err(ConfigError::new("an API key id is 1 to 64 ASCII letters and digits"));
        }
        let hash = parse_hex(hash_hex)
            .ok_or_else(|| ConfigError::new("an API key hash is 64 hex digits (SHA-256)"))?;
        let principal = principal.key_id(id).auth_method(AuthMethod::ApiKey).build();
        self.write().insert(id.into(), Stored { hash, principal });
        Ok(())
    }

    /// Removes the key `id`; returns whether it was there.
    pub fn remove(&self, id: &str) -> bool {
        self.write().remove(id).is_some()
    }

    /// How many keys are stored.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Box<str>, Stored>> {
        self.inner.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Box<str>, Stored>> {
        self.inner.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The presented key, if this request carries one of ours. A key in the `Authorization`
    /// header and another in a key header is a 400, not a guess at which one counts.
    fn credential<'a>(&self, request: &AuthRequest<'a>) -> Option<Result<&'a str, Error>> {
        let from_header = self.header_credential(request);
        let from_authorization = request.authorization().and_then(|authorization| {
            if authorization.is_scheme("ApiKey") {
                return Some(authorization.credentials());
            }
            let token = authorization.credentials();
            let ours = self.inner.accept_bearer
                && authorization.is_scheme("Bearer")
                && token
                    .strip_prefix(&*self.inner.prefix)
                    .is_some_and(|rest| rest.starts_with('_'));
            ours.then_some(token)
        });
        match (from_authorization, from_header) {
            (Some(_), Some(_)) => Some(Err(Error::new(ErrorKind::InvalidRequest)
                .with_reason("api_key: a key in Authorization and in a key header"))),
            (Some(key), None) => Some(Ok(key)),
            (None, header) => header,
        }
    }

    /// The key of the first configured key header present.
    fn header_credential<'a>(&self, request: &AuthRequest<'a>) -> Option<Result<&'a str, Error>> {
        for name in &self.inner.headers {
            let mut values = request.headers().get_all(name).iter();
            match (values.next(), values.next()) {
                (None, _) => continue,
                (Some(_), Some(_)) => return Some(Err(invalid("api_key: several key headers"))),
                (Some(value), None) => {
                    return Some(
                        value
                            .to_str()
                            .ok()
                            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic()))
                            .ok_or_else(|| invalid("api_key: key header is not visible ASCII")),
                    )
                }
            }
        }
        None
    }

    fn check(&self, key: &str) -> Result<Principal, Error> {
        if key.len() > MAX_KEY_LEN {
            return Err(invalid("api_key: key too long"));
        }
        let rest = key
            .strip_prefix(&*self.inner.prefix)
            .and_then(|rest| rest.strip_prefix('_'))
            .ok_or_else(|| invalid("api_key: wrong prefix"))?;
        let (id, secret) = rest.split_once('_').ok_or_else(|| invalid("api_key: malformed key"))?;
        if !is_id(id) || secret.is_empty() {
            return Err(invalid("api_key: malformed key"));
        }
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let keys = self.read();
        let stored = keys.get(id).ok_or_else(|| invalid("api_key: unknown key id"))?;
        if bool::from(stored.hash.ct_eq(&hash)) {
            Ok(stored.principal.clone())
        } else {
            Err(invalid("api_key: wrong secret"))
        }
    }
}

impl Authenticator for ApiKeys {
    fn authenticate(&self, request: &AuthRequest<'_>) -> Verdict {
        match self.credential(request) {
            None => Verdict::NotMine,
            Some(Err(e)) => Verdict::Rejected(e),
            Some(Ok(key)) => match self.check(key) {
                Ok(principal) => Verdict::Authenticated(principal),
                Err(e) => Verdict::Rejected(e),
            },
        }
    }

    fn method(&self) -> AuthMethod {
        AuthMethod::ApiKey
    }

    fn credential_headers(&self) -> &[HeaderName] {
        &self.inner.headers
    }
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeys")
            .field("prefix", &self.inner.prefix)
            .field("headers", &self.inner.headers)
            .field("accept_bearer", &self.inner.accept_bearer)
            .field("keys", &self.len())
            .finish()
    }
}

fn invalid(reason: &'static str) -> Error {
    Error::new(ErrorKind::InvalidToken).with_reason(reason)
}

fn check_prefix(prefix: &str) -> Result<(), ConfigError> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 32
        && prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new("an API key prefix is 1 to 32 ASCII letters, digits and `_`"))
    }
}

fn is_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

fn to_hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The SHA-256 of `key` in lowercase hex: what [`ApiKeys::with_key`] stores.
pub fn hash_key(key: &str) -> String {
    to_hex(&Sha256::digest(key.as_bytes()))
}

/// A new API key and what to store for it. `Debug` hides the key.
///
/// # Example
///
/// ```
/// use tower_shield::auth::api_key::{generate, hash_key};
///
/// let generated = generate("sk_live").unwrap();
/// // `<prefix>_<id>_<secret>`: hand the key to the client once, store the id and the hash.
/// assert!(generated.key().starts_with(&format!("sk_live_{}_", generated.id())));
/// assert_eq!(generated.id().len(), 12);
/// assert_eq!(generated.hash(), hash_key(generated.key()));
/// assert!(!format!("{generated:?}").contains(generated.key()));
/// ```
#[derive(Clone)]
pub struct GeneratedKey {
    key: String,
    id: String,
    hash: String,
}

impl GeneratedKey {
    /// The full key, to hand to the client once. Never store or log it.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The key id (12 base62 characters), not secret.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The SHA-256 of the key in hex, to store.
    pub fn hash(&self) -> &str {
        &self.hash
    }
}

impl fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("key", &"<redacted>")
            .field("id", &self.id)
            .field("hash", &self.hash)
            .finish()
    }
}

/// Generates `<prefix>_<id>_<secret>` with a 12-character id and a 43-character secret
/// (about 256 bits), both base62 from the operating system's CSPRNG.
///
/// # Errors
///
/// An invalid prefix, or the operating system's random source failed.
pub fn generate(prefix: &str) -> Result<GeneratedKey, ConfigError> {
    check_prefix(prefix)?;
    let id = base62(12)?;
    let secret = base62(43)?;
    let key = format!("{prefix}_{id}_{secret}");
    let hash = hash_key(&key);
    Ok(GeneratedKey { key, id, hash })
}

fn base62(len: usize) -> Result<String, ConfigError> {
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buf)
            .map_err(|_| ConfigError::new("the operating system's random source failed"))?;
        // Rejection sampling: 248 = 4 * 62, so every character is equally likely.
        for &b in buf.iter().filter(|&&b| b < 248) {
            if out.len() == len {
                break;
            }
            out.push(ALPHABET[usize::from(b % 62)] as char);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use http::{header, HeaderMap, HeaderValue};

    use super::*;

    fn verdict(keys: &ApiKeys, headers: &HeaderMap) -> Result<Option<Principal>, Error> {
        match keys.authenticate(&AuthRequest::from_headers(headers).unwrap()) {
            Verdict::NotMine => Ok(None),
            Verdict::Authenticated(p) => Ok(Some(p)),
            Verdict::Rejected(e) => Err(e),
            Verdict::Pending(_) => panic!("API keys are synchronous"),
        }
    }

    fn with(name: HeaderName, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).unwrap());
        headers
    }

    fn setup() -> (ApiKeys, GeneratedKey) {
        let generated = generate("sk_live").unwrap();
        let keys = ApiKeys::new("sk_live")
            .unwrap()
            .header(HeaderName::from_static("x-api-key"))
            .with_key(
                generated.id(),
                generated.hash(),
                Principal::builder("billing").scopes(["invoices:read"]).tenant("acme"),
            )
            .unwrap();
        (keys, generated)
    }

    #[test]
    fn generated_keys_verify_from_authorization_and_header() {
        let (keys, generated) = setup();
        assert_eq!(generated.key().len(), "sk_live_".len() + 12 + 1 + 43);
        assert_eq!(hash_key(generated.key()), generated.hash());
        let auth = with(header::AUTHORIZATION, &format!("ApiKey {}", generated.key()));
        let p = verdict(&keys, &auth).unwrap().unwrap();
        assert_eq!(p.subject(), "billing");
        assert_eq!(p.key_id(), Some(generated.id()));
        assert_eq!(p.auth_method(), AuthMethod::ApiKey);
        assert_eq!(p.tenant(), Some("acme"));
        assert!(p.has_scope("invoices:read"));
        let header = with(HeaderName::from_static("x-api-key"), generated.key());
        assert_eq!(verdict(&keys, &header).unwrap().unwrap().subject(), "billing");
        // Not ours: no credential, a bearer token (not accepted), another scheme.
        assert!(verdict(&keys, &HeaderMap::new()).unwrap().is_none());
        let bearer = with(header::AUTHORIZATION, &format!("Bearer {}", generated.key()));
        assert!(verdict(&keys, &bearer).unwrap().is_none());
    }

    #[test]
    fn wrong_keys_are_rejected() {
        let (keys, generated) = setup();
        let reason = |key: &str| {
            let headers = with(header::AUTHORIZATION, &format!("ApiKey {key}"));
            verdict(&keys, &headers).unwrap_err().reason().map(str::to_owned)
        };
        let wrong_prefix = generated.key().replacen("sk_live", "sk_test", 1);
        assert_eq!(reason(&wrong_prefix).as_deref(), Some("api_key: wrong prefix"));
        let mut wrong_secret = generated.key().to_owned();
        let last = wrong_secret.pop().unwrap();
        wrong_secret.push(if last == 'a' { 'b' } else { 'a' });
        assert_eq!(reason(&wrong_secret).as_deref(), Some("api_key: wrong secret"));
        let unknown = format!("sk_live_nobody_{}", "x".repeat(43));
        assert_eq!(reason(&unknown).as_deref(), Some("api_key: unknown key id"));
        assert_eq!(reason("sk_live_nosecret").as_deref(), Some("api_key: malformed key"));
        assert_eq!(reason(&"k".repeat(600)).as_deref(), Some("api_key: key too long"));
        let mut two = with(HeaderName::from_static("x-api-key"), generated.key());
        two.append(HeaderName::from_static("x-api-key"), HeaderValue::from_static("x"));
        assert!(verdict(&keys, &two).is_err());
    }

    #[test]
    fn a_key_in_two_places_is_a_400_not_a_guess() {
        let (keys, generated) = setup();
        let other = generate("sk_live").unwrap();
        keys.insert(other.id(), other.hash(), Principal::builder("other")).unwrap();
        let mut both = with(header::AUTHORIZATION, &format!("ApiKey {}", generated.key()));
        both.insert(HeaderName::from_static("x-api-key"), other.key().parse().unwrap());
        let error = verdict(&keys, &both).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidRequest);
        assert_eq!(error.reason(), Some("api_key: a key in Authorization and in a key header"));
        // The same key twice is still two places.
        both.insert(HeaderName::from_static("x-api-key"), generated.key().parse().unwrap());
        assert_eq!(verdict(&keys, &both).unwrap_err().kind(), ErrorKind::InvalidRequest);
        // A bearer token that is not ours does not count as a key.
        let mut bearer = with(header::AUTHORIZATION, "Bearer eyJ.eyJ.sig");
        bearer.insert(HeaderName::from_static("x-api-key"), other.key().parse().unwrap());
        assert_eq!(verdict(&keys, &bearer).unwrap().unwrap().subject(), "other");
    }

    #[test]
    fn rotation_several_keys_per_principal() {
        let (keys, old) = setup();
        let new = generate("sk_live").unwrap();
        assert_ne!(new.key(), old.key());
        keys.insert(new.id(), new.hash(), Principal::builder("billing")).unwrap();
        let auth = |k: &GeneratedKey| with(header::AUTHORIZATION, &format!("ApiKey {}", k.key()));
        assert_eq!(verdict(&keys, &auth(&old)).unwrap().unwrap().subject(), "billing");
        assert_eq!(verdict(&keys, &auth(&new)).unwrap().unwrap().subject(), "billing");
        assert!(keys.remove(old.id()));
        assert!(verdict(&keys, &auth(&old)).is_err());
        assert_eq!(verdict(&keys, &auth(&new)).unwrap().unwrap().key_id(), Some(new.id()));
        assert_eq!(keys.len(), 1);
    }

    #[test]
    fn bearer_with_the_prefix_when_enabled() {
        let generated = generate("sk_live").unwrap();
        let keys = ApiKeys::new("sk_live")
            .unwrap()
            .accept_bearer()
            .with_key(generated.id(), generated.hash(), Principal::builder("svc"))
            .unwrap();
        let bearer = with(header::AUTHORIZATION, &format!("Bearer {}", generated.key()));
        assert_eq!(verdict(&keys, &bearer).unwrap().unwrap().subject(), "svc");
        let jwt = with(header::AUTHORIZATION, "Bearer eyJhbGciOiJIUzI1NiJ9.e30.x");
        assert!(verdict(&keys, &jwt).unwrap().is_none());
    }

    #[test]
    fn config_and_secrecy() {
        assert!(ApiKeys::new("").is_err());
        assert!(ApiKeys::new("sk-live").is_err());
        assert!(generate("bad prefix").is_err());
        let keys = ApiKeys::new("sk").unwrap();
        assert!(keys.insert("id_1", &"0".repeat(64), Principal::builder("s")).is_err());
        assert!(keys.insert("id1", "abc", Principal::builder("s")).is_err());
        assert!(keys.insert("id1", &"g".repeat(64), Principal::builder("s")).is_err());
        assert!(keys.is_empty());
        let generated = generate("sk").unwrap();
        assert!(!format!("{generated:?}").contains(generated.key()));
        keys.insert(generated.id(), &generated.hash().to_uppercase(), Principal::builder("s"))
            .unwrap();
        let debug = format!("{keys:?}");
        assert!(!debug.contains(generated.hash()), "{debug}");
    }
}
