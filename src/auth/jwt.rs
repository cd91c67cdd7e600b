//! JSON Web Token access tokens (RFC 9068, RFC 8725), verified locally.
//!
//! [`Jwt`] is an [`Authenticator`] for `Authorization: Bearer <jwt>`.
//! Build it with [`Jwt::builder`]: keys, the accepted issuer(s) and audience(s) are required.
//!
//! What a token must pass, in order (any failure is a 401 `invalid_token` whose public
//! message never says which rule failed; the reason goes to the `auth.failure` event):
//!
//! 1. At most [`max_token_len`](JwtBuilder::max_token_len) bytes (8 KiB), checked before
//!    any parsing.
//! 2. Exactly three base64url segments; a JSON header without `crit`.
//! 3. The header's `alg` names exactly the algorithm of the selected key (chosen by `kid` and
//!    `alg`, or every key of that algorithm in turn when the token has no `kid`: a forged
//!    kid-less token costs one signature check per such key). `none`, in any case, matches no
//!    key. Header `jwk`, `jku`, `x5u` and `x5c` are ignored: keys come only from configuration
//!    or from the [`KeySource`].
//! 4. The signature verifies.
//! 5. The payload is a JSON object with no claim name twice (RFC 7519 lets a parser keep the
//!    last one; rejecting leaves no room for a gateway and this crate to read different
//!    claims).
//! 6. `exp` is present and in the future, `nbf` (if present) is past, `iat` (if present) is not
//!    in the future, all with [`leeway`](JwtBuilder::leeway) (60 s), and time comes from the
//!    configured [`Clock`]. Optionally `exp - iat` is at most
//!    [`max_lifetime`](JwtBuilder::max_lifetime) and the header `typ` is `at+jwt`.
//! 7. `iss` is one of the configured issuers, `aud` (a string or an array) names one of the
//!    configured audiences, and `sub` is a non-empty string.
//! 8. The token is not revoked (with [`JwtBuilder::with_revocation`]).
//!
//! Scopes come from `scope` (a string of scope tokens separated by single spaces, or an
//! array), else from `scp` (the same forms); a tab or a line feed does not separate scopes.
//!
//! Verified tokens are cached (bounded, revocation-aware), so a repeated RS256 token costs
//! about what an HS256 one does. An entry keeps the token itself: a hit is a keyed hash
//! lookup plus a constant-time comparison of the whole token, so exactly the verified token,
//! and no other, finds it.
//!
//! A token that is not cached (first seen, or forged) costs one signature check. HMAC keys
//! are prepared once (RFC 2104's padded key hashed ahead), and each key remembers the header
//! segment of the first token whose signature and claims passed with it (steps 1 to 7): a
//! later token with exactly that segment (an issuer's tokens share it) skips decoding and
//! parsing the header, and is then judged by steps 3 to 8 as any other.
//!
//! # Example
//!
//! ```
//! use tower_shield::auth::jwt::Jwt;
//!
//! let jwt = Jwt::builder()
//!     .hs256_secret(b"an example secret of at least 32 bytes!!")
//!     .issuer("https://issuer.example")
//!     .audience("orders-api")
//!     .build()
//!     .unwrap();
//! # let _ = jwt;
//! ```
//!
//! See the [`auth` module docs](crate::auth) for the layer.

use std::{
    borrow::Cow,
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, UNIX_EPOCH},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{
    cache::{Token, TokenCache, Verified},
    key::HeaderMemo,
    revocation::{Revocation, RevocationCheck, RevocationQuery},
    AuthRequest, Authenticator, Verdict, VerifyingKey,
};
use crate::{
    clock::{Clock, SystemClock},
    error::ConfigError,
    principal::{AuthMethod, Principal},
    Error, ErrorKind,
};

/// A boxed future refreshing a [`KeySource`].
pub type BoxRefreshFuture = Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'static>>;

/// Where a [`Jwt`] gets its verifying keys: a fixed list, or a remote JWK set.
///
/// [`keys`](KeySource::keys) is called for every token that is not in the verified-token
/// cache, so it must be cheap (hand out a shared snapshot). When a token names a `kid` that
/// the snapshot lacks, [`refresh`](KeySource::refresh) is called once; a source that may
/// refetch returns a future that updates the snapshot, and the token is checked again against
/// the new [`keys`](KeySource::keys). A source must rate-limit its own refetches (a client can
/// send any `kid`): return `None` when a refetch is not allowed now.
///
/// An empty snapshot means "no keys loaded yet": `refresh` is then called for any well-formed
/// token (with an empty `kid` when the token has none), and a token that gets no refetch is
/// answered 503 [`ServiceUnavailable`](ErrorKind::ServiceUnavailable).
///
/// # Example
///
/// ```
/// use std::sync::{Arc, RwLock};
/// use jsonwebtoken::Algorithm;
/// use tower_shield::auth::{jwt::{Jwt, KeySource}, Verdict, VerifyingKey};
/// use tower_shield::ErrorKind;
///
/// /// Keys an operator swaps at run time (a file watcher, an admin endpoint...).
/// #[derive(Clone, Debug)]
/// struct Swappable(Arc<RwLock<Arc<[VerifyingKey]>>>);
///
/// impl KeySource for Swappable {
///     fn keys(&self) -> Arc<[VerifyingKey]> {
///         Arc::clone(&self.0.read().unwrap()) // a shared snapshot: cheap
///     }
/// }
///
/// const SECRET: &[u8] = b"an example secret of at least 32 bytes!!";
/// let source = Swappable(Arc::new(RwLock::new(Arc::from(Vec::new()))));
/// let jwt = Jwt::builder()
///     .with_key_source(source.clone())
///     .issuer("https://issuer.example")
///     .audience("orders-api")
///     .build()
///     .unwrap();
/// # let claims = serde_json::json!({
/// #     "iss": "https://issuer.example", "aud": "orders-api", "sub": "alice",
/// #     "exp": 4_000_000_000u64,
/// # });
/// # let key = jsonwebtoken::EncodingKey::from_secret(SECRET);
/// # let header = jsonwebtoken::Header::new(Algorithm::HS256);
/// # let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
/// let Verdict::Rejected(error) = jwt.verify(&token) else { panic!("not rejected") };
/// assert_eq!(error.kind(), ErrorKind::ServiceUnavailable); // no keys yet: 503
///
/// let key = VerifyingKey::from_secret(Algorithm::HS256, SECRET).unwrap();
/// *source.0.write().unwrap() = Arc::from(vec![key]);
/// assert!(matches!(jwt.verify(&token), Verdict::Authenticated(_)));
/// ```
pub trait KeySource: fmt::Debug + Send + Sync + 'static {
    /// The current keys.
    fn keys(&self) -> Arc<[VerifyingKey]>;

    /// Starts a refetch because a token names the unknown key id `kid`, or returns `None` when
    /// this source never refetches or may not refetch now.
    fn refresh(&self, kid: &str) -> Option<BoxRefreshFuture> {
        let _ = kid;
        None
    }
}

/// A fixed set of keys.
///
/// # Example
///
/// ```
/// use jsonwebtoken::Algorithm;
/// use tower_shield::auth::{jwt::{Jwt, KeySource, StaticKeys}, VerifyingKey};
///
/// let current = b"the current secret, at least 32 bytes long";
/// let next = b"the next secret, also at least 32 bytes long";
/// let keys = StaticKeys::new([
///     VerifyingKey::from_secret(Algorithm::HS256, current).unwrap().with_kid("2026-01"),
///     VerifyingKey::from_secret(Algorithm::HS256, next).unwrap().with_kid("2026-02"),
/// ]);
/// let snapshot = keys.keys(); // what a `Jwt` checks tokens against
/// assert_eq!(snapshot.len(), 2);
/// assert_eq!(snapshot[1].kid(), Some("2026-02"));
///
/// let jwt = Jwt::builder()
///     .with_key_source(keys)
///     .issuer("https://issuer.example")
///     .audience("orders-api")
///     .build();
/// assert!(jwt.is_ok());
/// ```
#[derive(Clone, Debug)]
pub struct StaticKeys {
    keys: Arc<[VerifyingKey]>,
}

impl StaticKeys {
    /// The keys.
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>) -> Self {
        Self { keys: keys.into_iter().collect() }
    }
}

impl KeySource for StaticKeys {
    fn keys(&self) -> Arc<[VerifyingKey]> {
        Arc::clone(&self.keys)
    }
}

/// Verifies JWT access tokens from `Authorization: Bearer`.
///
/// Cheap to clone (one `Arc`). See the [module docs](crate::auth::jwt) for the rules.
#[derive(Clone)]
pub struct Jwt {
    inner: Arc<Inner>,
}

struct Inner {
    source: Arc<dyn KeySource>,
    issuers: Option<Box<[Box<str>]>>,
    audiences: Option<Box<[Box<str>]>>,
    leeway: u64,
    max_lifetime: Option<u64>,
    typ: Option<Box<str>>,
    max_len: usize,
    roles_claim: Box<str>,
    tenant_claim: Option<Box<str>>,
    clock: Arc<dyn Clock>,
    cache: Option<TokenCache>,
    revocation: Option<Arc<dyn Revocation>>,
    pass_non_jwt: bool,
}

/// Builds a [`Jwt`]; see [`Jwt::builder`].
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_shield::auth::{jwt::Jwt, MemoryRevocation};
///
/// let builder = |key: &[u8]| Jwt::builder().hs256_secret(key).issuer("https://issuer.example");
/// let secret = b"an example secret of at least 32 bytes!!";
/// // An audience is required (or `insecure_skip_audience`).
/// assert!(builder(secret).build().is_err());
///
/// let jwt = builder(secret)
///     .audience("orders-api")
///     .require_typ("at+jwt") // RFC 9068 access tokens only, no ID tokens
///     .leeway(Duration::from_secs(30))
///     .max_lifetime(Duration::from_secs(3600))
///     .tenant_claim("org")
///     .with_revocation(MemoryRevocation::new())
///     .build()
///     .unwrap();
/// assert_eq!(jwt.cached_tokens(), 0);
///
/// // A secret shorter than the hash output (32 bytes for HS256) is refused.
/// assert!(builder(b"too short").audience("orders-api").build().is_err());
/// ```
#[must_use]
pub struct JwtBuilder {
    keys: Vec<VerifyingKey>,
    source: Option<Arc<dyn KeySource>>,
    issuers: Vec<Box<str>>,
    audiences: Vec<Box<str>>,
    skip_issuer: bool,
    skip_audience: bool,
    leeway: Duration,
    max_lifetime: Option<Duration>,
    typ: Option<Box<str>>,
    max_len: usize,
    roles_claim: Box<str>,
    tenant_claim: Option<Box<str>>,
    clock: Arc<dyn Clock>,
    cache: Option<(usize, Duration)>,
    revocation: Option<Arc<dyn Revocation>>,
    pass_non_jwt: bool,
    error: Option<ConfigError>,
}

impl Jwt {
    /// Starts a builder. Defaults: leeway 60 s, tokens up to 8 KiB, a cache of 10 000 verified
    /// tokens kept at most 5 minutes, roles from the `roles` claim, no tenant claim, the system
    /// clock.
    pub fn builder() -> JwtBuilder {
        JwtBuilder {
            keys: Vec::new(),
            source: None,
            issuers: Vec::new(),
            audiences: Vec::new(),
            skip_issuer: false,
            skip_audience: false,
            leeway: Duration::from_secs(60),
            max_lifetime: None,
            typ: None,
            max_len: 8 * 1024,
            roles_claim: "roles".into(),
            tenant_claim: None,
            clock: Arc::new(SystemClock),
            cache: Some((10_000, Duration::from_secs(300))),
            revocation: None,
            pass_non_jwt: false,
            error: None,
        }
    }

    /// Verifies `token` (without the `Bearer ` prefix), as the layer does.
    pub fn verify(&self, token: &str) -> Verdict {
        verify(&self.inner, token, true)
    }

    /// Revokes `token` by its `jti` in the configured [`Revocation`] store (until its `exp`)
    /// and evicts it from the verified-token cache.
    ///
    /// # Errors
    ///
    /// No revocation store is configured, the token is not valid (a token that is not valid
    /// needs no revocation), it has no `jti`, or the store fails.
    pub async fn revoke(&self, token: &str) -> Result<(), Error> {
        let revocation = self
            .inner
            .revocation
            .as_ref()
            .ok_or_else(|| Error::internal("Jwt::revoke needs JwtBuilder::with_revocation"))?;
        let verified = match verify_signed(&self.inner, token, false) {
            Signed::Verified(v) => v,
            Signed::Rejected(e) => return Err(e),
            Signed::Refresh(_) => return Err(invalid("jwt: unknown kid")),
        };
        let jti = verified.jti.as_deref().ok_or_else(|| invalid("jwt: token has no jti"))?;
        revocation.revoke_jti(jti, verified.expires_at).await?;
        if let Some(cache) = &self.inner.cache {
            cache.remove(Token(token));
        }
        Ok(())
    }

    /// How many verified tokens are cached.
    pub fn cached_tokens(&self) -> usize {
        self.inner.cache.as_ref().map_or(0, TokenCache::len)
    }
}

impl fmt::Debug for Jwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("Jwt")
            .field("keys", &inner.source)
            .field("issuers", &inner.issuers)
            .field("audiences", &inner.audiences)
            .field("leeway", &inner.leeway)
            .field("max_lifetime", &inner.max_lifetime)
            .field("typ", &inner.typ)
            .field("max_len", &inner.max_len)
            .field("cache", &inner.cache.is_some())
            .field("revocation", &inner.revocation)
            .finish()
    }
}

impl Authenticator for Jwt {
    fn authenticate(&self, request: &AuthRequest<'_>) -> Verdict {
        match request.bearer() {
            Some(token)
                if self.inner.pass_non_jwt && token.bytes().filter(|&b| b == b'.').count() != 2 =>
            {
                Verdict::NotMine
            }
            Some(token) => verify(&self.inner, token, true),
            None => Verdict::NotMine,
        }
    }

    fn method(&self) -> AuthMethod {
        AuthMethod::Jwt
    }
}

impl JwtBuilder {
    /// Adds a verifying key. Give keys a `kid` when there are several of one algorithm.
    pub fn key(mut self, key: VerifyingKey) -> Self {
        self.keys.push(key);
        self
    }

    /// Adds an HS256 key from a shared secret of at least 32 bytes (a shorter secret is a
    /// [`ConfigError`] from [`build`](Self::build)).
    pub fn hs256_secret(self, secret: impl AsRef<[u8]>) -> Self {
        match VerifyingKey::from_secret(Algorithm::HS256, secret.as_ref()) {
            Ok(key) => self.key(key),
            Err(e) => self.fail(e),
        }
    }

    /// Adds every key of a JWK set given inline (see [`KeySet`](super::KeySet) for which keys
    /// are kept and how their algorithms are pinned).
    ///
    /// ```
    /// use tower_shield::auth::{jwt::Jwt, KeySet};
    ///
    /// # fn main() -> Result<(), tower_shield::error::ConfigError> {
    /// let keys = KeySet::from_json(r#"{"keys": [{
    ///     "kty": "OKP", "crv": "Ed25519", "kid": "k1", "alg": "EdDSA",
    ///     "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    /// }]}"#)?;
    /// let jwt = Jwt::builder().jwk_set(&keys).issuer("https://issuer.example").audience("api").build()?;
    /// # let _ = jwt;
    /// # Ok(())
    /// # }
    /// ```
    pub fn jwk_set(mut self, keys: &super::KeySet) -> Self {
        self.keys.extend(keys.iter().map(|key| VerifyingKey::clone(key)));
        self
    }

    /// Adds a public key from PEM for `algorithm` (RS*, PS*, ES256, ES384, EdDSA).
    pub fn public_key_pem(self, algorithm: Algorithm, pem: impl AsRef<[u8]>) -> Self {
        match VerifyingKey::from_pem(algorithm, pem.as_ref()) {
            Ok(key) => self.key(key),
            Err(e) => self.fail(e),
        }
    }

    /// Takes keys from `source` (e.g. a remote JWK set) in addition to the keys added with
    /// [`key`](Self::key).
    pub fn with_key_source(mut self, source: impl KeySource) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// Adds an accepted issuer (`iss`). At least one is required.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuers.push(issuer.into().into_boxed_str());
        self
    }

    /// Adds an accepted audience (`aud`). At least one is required; a token is accepted when
    /// its `aud` names any of them.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audiences.push(audience.into().into_boxed_str());
        self
    }

    /// Accepts any issuer. Insecure: a token from any issuer your keys verify is accepted.
    pub fn insecure_skip_issuer(mut self) -> Self {
        self.skip_issuer = true;
        self
    }

    /// Accepts any audience. Insecure: a token minted for another service is accepted.
    pub fn insecure_skip_audience(mut self) -> Self {
        self.skip_audience = true;
        self
    }

    /// Clock skew allowed on `exp`, `nbf` and `iat` (default 60 s, whole seconds).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Rejects tokens whose `exp - iat` exceeds `max` (and tokens without `iat`).
    pub fn max_lifetime(mut self, max: Duration) -> Self {
        self.max_lifetime = Some(max);
        self
    }

    /// Requires the header `typ` to be `typ` or `application/<typ>`, case-insensitively, e.g.
    /// `at+jwt` for RFC 9068 access tokens (so an ID token cannot be used as an access token).
    pub fn require_typ(mut self, typ: impl Into<String>) -> Self {
        self.typ = Some(typ.into().into_boxed_str());
        self
    }

    /// The longest token accepted, in bytes (default 8 KiB). Longer ones are rejected before
    /// any parsing.
    pub fn max_token_len(mut self, max: usize) -> Self {
        self.max_len = max;
        self
    }

    /// The claim holding roles: an array of strings or a space-separated string (default
    /// `roles`).
    pub fn roles_claim(mut self, claim: impl Into<String>) -> Self {
        self.roles_claim = claim.into().into_boxed_str();
        self
    }

    /// The claim holding the tenant (none by default).
    pub fn tenant_claim(mut self, claim: impl Into<String>) -> Self {
        self.tenant_claim = Some(claim.into().into_boxed_str());
        self
    }

    /// Replaces the clock (tests use a [`FakeClock`](crate::clock::FakeClock)).
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Caches up to `capacity` verified tokens, each for at most `ttl` and never past its
    /// `exp` (default 10 000 tokens, 5 minutes).
    ///
    /// An entry holds the token (at most [`max_token_len`](JwtBuilder::max_token_len)) and
    /// its [`Principal`]; only tokens that verified get in. The TTL is measured on the clock
    /// `exp` is checked against.
    pub fn cache(mut self, capacity: usize, ttl: Duration) -> Self {
        self.cache = Some((capacity, ttl));
        self
    }

    /// Verifies every token from scratch.
    pub fn no_cache(mut self) -> Self {
        self.cache = None;
        self
    }

    /// Checks every verified token (cached ones included) against `revocation`.
    pub fn with_revocation(mut self, revocation: impl Revocation) -> Self {
        self.revocation = Some(Arc::new(revocation));
        self
    }

    /// Checks every verified token against a shared `revocation` store.
    pub fn with_revocation_arc(mut self, revocation: Arc<dyn Revocation>) -> Self {
        self.revocation = Some(revocation);
        self
    }

    /// Leaves bearer tokens that are not shaped like a JWT (not exactly three `.`-separated
    /// segments) to the next authenticator in the chain, e.g. an introspection authenticator
    /// for opaque tokens. By default every bearer token is this authenticator's to judge.
    pub fn pass_non_jwt_tokens(mut self) -> Self {
        self.pass_non_jwt = true;
        self
    }

    fn fail(mut self, error: ConfigError) -> Self {
        self.error.get_or_insert(error);
        self
    }

    /// Builds the authenticator.
    ///
    /// # Errors
    ///
    /// A key given to this builder was invalid (an HMAC secret shorter than the hash, a PEM
    /// that holds no key of its algorithm's family), there are no keys and no key source, no
    /// issuer or no audience is configured (without the `insecure_skip_*` methods), or
    /// `max_token_len` is 0.
    pub fn build(self) -> Result<Jwt, ConfigError> {
        install_crypto_provider();
        if let Some(error) = self.error {
            return Err(error);
        }
        for key in &self.keys {
            key.check()?;
        }
        let source: Arc<dyn KeySource> = match (self.source, self.keys.is_empty()) {
            (None, true) => {
                return Err(ConfigError::new("a Jwt needs at least one key or a key source"))
            }
            (None, false) => Arc::new(StaticKeys::new(self.keys)),
            (Some(source), true) => source,
            (Some(source), false) => Arc::new(Combined {
                keys: StaticKeys::new(self.keys),
                source,
                merged: Mutex::default(),
            }),
        };
        if self.issuers.is_empty() && !self.skip_issuer {
            return Err(ConfigError::new(
                "a Jwt needs an issuer (JwtBuilder::issuer), or insecure_skip_issuer",
            ));
        }
        if self.audiences.is_empty() && !self.skip_audience {
            return Err(ConfigError::new(
                "a Jwt needs an audience (JwtBuilder::audience), or insecure_skip_audience",
            ));
        }
        if self.max_len == 0 {
            return Err(ConfigError::new("max_token_len must be positive"));
        }
        let list = |v: Vec<Box<str>>, skip: bool| (!skip || !v.is_empty()).then(|| v.into());
        Ok(Jwt {
            inner: Arc::new(Inner {
                source,
                issuers: list(self.issuers, self.skip_issuer),
                audiences: list(self.audiences, self.skip_audience),
                leeway: self.leeway.as_secs(),
                max_lifetime: self.max_lifetime.map(|d| d.as_secs()),
                typ: self.typ,
                max_len: self.max_len,
                roles_claim: self.roles_claim,
                tenant_claim: self.tenant_claim,
                clock: self.clock,
                cache: self.cache.map(|(capacity, ttl)| TokenCache::new(capacity, ttl)),
                revocation: self.revocation,
                pass_non_jwt: self.pass_non_jwt,
            }),
        })
    }
}

impl fmt::Debug for JwtBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtBuilder")
            .field("keys", &self.keys)
            .field("issuers", &self.issuers)
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

/// Static keys first, then a key source.
#[derive(Debug)]
struct Combined {
    keys: StaticKeys,
    source: Arc<dyn KeySource>,
    /// The source's keys last seen, and the list made with them: a token is checked against
    /// the same list until the source's keys change, instead of a fresh copy of every key.
    merged: Mutex<Option<(Arc<[VerifyingKey]>, Arc<[VerifyingKey]>)>>,
}

impl KeySource for Combined {
    fn keys(&self) -> Arc<[VerifyingKey]> {
        let remote = self.source.keys();
        if remote.is_empty() {
            return self.keys.keys();
        }
        let mut merged = self.merged.lock().unwrap_or_else(PoisonError::into_inner);
        match &*merged {
            Some((seen, list)) if Arc::ptr_eq(seen, &remote) => Arc::clone(list),
            _ => {
                let list: Arc<[VerifyingKey]> =
                    self.keys.keys.iter().chain(remote.iter()).cloned().collect();
                *merged = Some((remote, Arc::clone(&list)));
                list
            }
        }
    }

    fn refresh(&self, kid: &str) -> Option<BoxRefreshFuture> {
        self.source.refresh(kid)
    }
}

/// Installs jsonwebtoken's aws-lc-rs `CryptoProvider` when both of its crypto backends are
/// enabled (features `jwt-aws-lc-rs` and `jwt-rust-crypto`, as under `--all-features`); does
/// nothing otherwise, or when a provider is already installed.
///
/// With both backends jsonwebtoken cannot pick one and panics at its first use unless a
/// provider is installed. [`JwtBuilder::build`] calls this; call it yourself before using
/// `jsonwebtoken` directly (e.g. to mint test tokens) before any `Jwt` is built.
pub fn install_crypto_provider() {
    #[cfg(all(feature = "jwt-aws-lc-rs", feature = "jwt-rust-crypto"))]
    {
        // An Err means a provider is already installed, which is all we need.
        let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
            &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
        );
    }
}

fn invalid(reason: &'static str) -> Error {
    Error::new(ErrorKind::InvalidToken).with_reason(reason)
}

/// The outcome of the signature and claims checks, before revocation.
enum Signed {
    Verified(Arc<Verified>),
    Rejected(Error),
    /// The token names an unknown `kid` and the key source started a refetch.
    Refresh(BoxRefreshFuture),
}

fn verify(inner: &Arc<Inner>, token: &str, allow_refresh: bool) -> Verdict {
    let verified = match verify_signed(inner, token, allow_refresh) {
        Signed::Verified(v) => v,
        Signed::Rejected(e) => return Verdict::Rejected(e),
        Signed::Refresh(refresh) => {
            let inner = Arc::clone(inner);
            let token = token.to_owned();
            return Verdict::Pending(Box::pin(async move {
                refresh.await?;
                match verify(&inner, &token, false) {
                    Verdict::Authenticated(p) => Ok(p),
                    Verdict::Rejected(e) => Err(e),
                    Verdict::Pending(f) => f.await,
                    Verdict::NotMine => Err(invalid("jwt: no decision")),
                }
            }));
        }
    };
    check_revocation(inner, token, verified)
}

fn check_revocation(inner: &Arc<Inner>, token: &str, verified: Arc<Verified>) -> Verdict {
    let Some(revocation) = &inner.revocation else {
        return Verdict::Authenticated(verified.principal.clone());
    };
    let query = RevocationQuery {
        jti: verified.jti.as_deref(),
        subject: verified.principal.subject(),
        issued_at: verified.issued_at,
    };
    match revocation.check(&query) {
        RevocationCheck::Ready(Ok(false)) => Verdict::Authenticated(verified.principal.clone()),
        RevocationCheck::Ready(Ok(true)) => {
            evict(inner, token);
            Verdict::Rejected(invalid("jwt: token revoked"))
        }
        RevocationCheck::Ready(Err(e)) => Verdict::Rejected(e),
        RevocationCheck::Pending(check) => {
            let inner = Arc::clone(inner);
            let token: Option<Box<str>> = inner.cache.as_ref().map(|_| token.into());
            Verdict::Pending(Box::pin(async move {
                if check.await? {
                    if let (Some(cache), Some(token)) = (&inner.cache, token) {
                        cache.remove(Token(&token));
                    }
                    return Err(invalid("jwt: token revoked"));
                }
                Ok(verified.principal.clone())
            }))
        }
    }
}

fn evict(inner: &Inner, token: &str) {
    if let Some(cache) = &inner.cache {
        cache.remove(Token(token));
    }
}

fn verify_signed(inner: &Inner, token: &str, allow_refresh: bool) -> Signed {
    if token.len() > inner.max_len {
        return Signed::Rejected(invalid("jwt: token longer than max_token_len"));
    }
    // One clock read: the claims and the cache entry's TTL are both on the wall clock.
    let now = inner.clock.now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let now_unix = now.as_secs();
    if let Some(cache) = &inner.cache {
        if let Some(verified) = cache.get(Token(token), now) {
            return Signed::Verified(verified);
        }
    }
    let keys = inner.source.keys();
    let mut scratch = HeaderScratch::new();
    let parsed = match Parsed::new(token, &mut scratch, &keys) {
        Ok(parsed) => parsed,
        Err(reason) => return Signed::Rejected(invalid(reason)),
    };
    if let Some(typ) = &inner.typ {
        if !parsed.header.typ.as_deref().is_some_and(|t| typ_matches(t, typ)) {
            return Signed::Rejected(invalid("jwt: header typ is not the required one"));
        }
    }
    if keys.is_empty() {
        // Only a remote source that has not loaded yet has no keys: fetch, or answer 503
        // (fail closed) while the identity provider cannot be reached.
        if allow_refresh {
            if let Some(refresh) = inner.source.refresh(parsed.header.kid.as_deref().unwrap_or(""))
            {
                return Signed::Refresh(refresh);
            }
        }
        return Signed::Rejected(
            Error::new(ErrorKind::ServiceUnavailable)
                .with_reason("jwt: no verifying keys available yet"),
        );
    }
    let key = match verify_signature(&keys, &parsed) {
        KeyOutcome::Verified(key) => key,
        KeyOutcome::Rejected(reason) => return Signed::Rejected(invalid(reason)),
        KeyOutcome::UnknownKid(kid) => {
            if allow_refresh {
                if let Some(refresh) = inner.source.refresh(kid) {
                    return Signed::Refresh(refresh);
                }
            }
            return Signed::Rejected(invalid("jwt: unknown kid"));
        }
    };
    let verified = match validate_claims(inner, &parsed, now_unix) {
        Ok(verified) => verified,
        Err(reason) => return Signed::Rejected(invalid(reason)),
    };
    key.remember_header(|| parsed.header.memo(parsed.header_segment));
    Signed::Verified(match &inner.cache {
        Some(cache) => cache.insert(Token(token), verified, now),
        None => Arc::new(verified),
    })
}

fn typ_matches(sent: &str, wanted: &str) -> bool {
    sent.eq_ignore_ascii_case(wanted)
        || sent.get(..12).is_some_and(|p| p.eq_ignore_ascii_case("application/"))
            && sent[12..].eq_ignore_ascii_case(wanted)
}

/// The JOSE header. Its strings borrow from the decoded header unless they hold escapes.
#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(default, borrow)]
    kid: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    typ: Option<Cow<'a, str>>,
    /// Critical extensions we do not understand: their presence alone rejects the token
    /// (RFC 7515 section 4.1.11).
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

impl<'a> Header<'a> {
    /// The header a key remembered, borrowed from it.
    fn remembered(memo: &'a HeaderMemo) -> Self {
        Self {
            alg: Cow::Borrowed(&memo.alg),
            kid: memo.kid.as_deref().map(Cow::Borrowed),
            typ: memo.typ.as_deref().map(Cow::Borrowed),
            crit: None,
        }
    }

    /// What a key remembers of this header, which arrived as `segment`.
    fn memo(&self, segment: &str) -> HeaderMemo {
        HeaderMemo {
            segment: segment.into(),
            alg: (*self.alg).into(),
            kid: self.kid.as_deref().map(Into::into),
            typ: self.typ.as_deref().map(Into::into),
        }
    }
}

/// Where the header is decoded: on the stack when it fits, as it does for the headers
/// identity providers issue, else on the heap (up to `max_token_len`).
struct HeaderScratch {
    stack: [u8; 256],
    heap: Vec<u8>,
}

impl HeaderScratch {
    fn new() -> Self {
        Self { stack: [0; 256], heap: Vec::new() }
    }

    /// The decoded `header` segment.
    fn decode(&mut self, header: &str) -> Result<&[u8], base64::DecodeSliceError> {
        match URL_SAFE_NO_PAD.decode_slice(header, &mut self.stack) {
            Ok(len) => Ok(&self.stack[..len]),
            Err(base64::DecodeSliceError::OutputSliceTooSmall) => {
                self.heap = URL_SAFE_NO_PAD.decode(header)?;
                Ok(&self.heap)
            }
            Err(e) => Err(e),
        }
    }
}

struct Parsed<'a> {
    header: Header<'a>,
    /// The header as sent (base64url).
    header_segment: &'a str,
    /// `header.payload`, the signing input.
    message: &'a str,
    payload: &'a str,
    signature: &'a str,
}

impl<'a> Parsed<'a> {
    /// Splits and checks `token`, reading its header from `scratch`, or from the memo of one
    /// of `keys` when it is the header segment that key remembers.
    fn new(
        token: &'a str,
        scratch: &'a mut HeaderScratch,
        keys: &'a [VerifyingKey],
    ) -> Result<Self, &'static str> {
        // Exactly two dots (`memchr` is vectorised: a token is a few hundred bytes).
        let mut dots = memchr::memchr_iter(b'.', token.as_bytes());
        let (Some(first), Some(second), None) = (dots.next(), dots.next(), dots.next()) else {
            return Err("jwt: not three segments");
        };
        let (header, payload, signature) =
            (&token[..first], &token[first + 1..second], &token[second + 1..]);
        if header.is_empty() || payload.is_empty() || signature.is_empty() {
            return Err("jwt: empty segment");
        }
        let message = &token[..token.len() - signature.len() - 1];
        let header_segment = header;
        let header = match keys.iter().find_map(|key| key.header_memo(header_segment)) {
            // The same bytes as a header that passed every check below.
            Some(memo) => Header::remembered(memo),
            None => Self::read_header(header_segment, scratch)?,
        };
        Ok(Self { header, header_segment, message, payload, signature })
    }

    fn read_header(
        segment: &str,
        scratch: &'a mut HeaderScratch,
    ) -> Result<Header<'a>, &'static str> {
        let json = scratch.decode(segment).map_err(|_| "jwt: header is not base64url")?;
        // UTF-8 checked first: serde_json skips the members it ignores without checking them.
        let json = std::str::from_utf8(json).map_err(|_| "jwt: header is not valid JSON")?;
        let header: Header<'a> =
            serde_json::from_str(json).map_err(|_| "jwt: header is not valid JSON")?;
        // A JOSE header is a JSON object (RFC 7515 section 4); serde also reads a struct from
        // an array such as `["HS256"]`.
        if !json.trim_start().starts_with('{') {
            return Err("jwt: header is not a JSON object");
        }
        if header.crit.is_some() {
            return Err("jwt: header has crit");
        }
        Ok(header)
    }
}

enum KeyOutcome<'a, 'k> {
    /// By this key.
    Verified(&'k VerifyingKey),
    Rejected(&'static str),
    UnknownKid(&'a str),
}

/// The JOSE name of `alg`; `None` for an algorithm added to jsonwebtoken later, which then
/// matches no token.
fn alg_name(alg: Algorithm) -> Option<&'static str> {
    Some(match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
        _ => return None,
    })
}

fn verify_signature<'a, 'k>(
    keys: &'k [VerifyingKey],
    parsed: &'a Parsed<'_>,
) -> KeyOutcome<'a, 'k> {
    let alg = &*parsed.header.alg;
    let check = |key: &&VerifyingKey| key.verify(parsed.message.as_bytes(), parsed.signature);
    if let Some(kid) = parsed.header.kid.as_deref() {
        // A JWK set may hold one `kid` under several algorithms: the key is the one with
        // both the token's `kid` and its `alg`.
        let mut with_kid = keys.iter().filter(|k| k.kid() == Some(kid)).peekable();
        if with_kid.peek().is_none() {
            return KeyOutcome::UnknownKid(kid);
        }
        let Some(key) = with_kid.find(|k| alg_name(k.algorithm()) == Some(alg)) else {
            return KeyOutcome::Rejected("jwt: alg does not match the key's algorithm");
        };
        return if check(&key) {
            KeyOutcome::Verified(key)
        } else {
            KeyOutcome::Rejected("jwt: bad signature")
        };
    }
    let mut candidates = keys.iter().filter(|k| alg_name(k.algorithm()) == Some(alg)).peekable();
    if candidates.peek().is_none() {
        return KeyOutcome::Rejected("jwt: no key for the token's alg");
    }
    match candidates.find(check) {
        Some(key) => KeyOutcome::Verified(key),
        None => KeyOutcome::Rejected("jwt: bad signature"),
    }
}

/// A NumericDate: a non-negative number of seconds (fractions are truncated), up to the last
/// second of year 9999: later values are not dates (and would overflow a `SystemTime` built
/// from them).
fn numeric_date(value: &Value) -> Option<u64> {
    const MAX: u64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let Value::Number(n) = value else { return None };
    let secs = n.as_u64().or_else(|| {
        // NaN and infinities fail the range check; `as` truncates the fraction.
        n.as_f64().filter(|f| (0.0..=MAX as f64).contains(f)).map(|f| f as u64)
    });
    secs.filter(|&secs| secs <= MAX)
}

fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        // Scope tokens are separated by one space (RFC 6749, section 3.3) and contain no
        // other whitespace: a tab or a line feed stays inside its token, which then matches no
        // requirement, instead of splitting it as an identity provider would not.
        Some(Value::String(s)) => {
            s.split(' ').filter(|t| !t.is_empty()).map(str::to_owned).collect()
        }
        Some(Value::Array(items)) => {
            items.iter().filter_map(Value::as_str).map(str::to_owned).collect()
        }
        _ => Vec::new(),
    }
}

const DUPLICATE_CLAIM: &str = "duplicate claim name";

/// The claims set, read as a JSON object whose member names are unique. RFC 7519 (section 4)
/// lets a parser keep the last of duplicated names instead; rejecting them leaves no room for
/// a parser differential (a gateway that reads the first `sub`, this crate the last).
struct Claims(Map<String, Value>);

impl<'de> Deserialize<'de> for Claims {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;

        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = Claims;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Claims, A::Error> {
                let mut claims = Map::new();
                while let Some((name, value)) = map.next_entry::<String, Value>()? {
                    if claims.insert(name, value).is_some() {
                        return Err(serde::de::Error::custom(DUPLICATE_CLAIM));
                    }
                }
                Ok(Claims(claims))
            }
        }

        deserializer.deserialize_map(Members)
    }
}

fn validate_claims(inner: &Inner, parsed: &Parsed<'_>, now: u64) -> Result<Verified, &'static str> {
    let payload =
        URL_SAFE_NO_PAD.decode(parsed.payload).map_err(|_| "jwt: payload is not base64url")?;
    let Claims(claims) = serde_json::from_slice(&payload).map_err(|e| {
        if e.is_data() && e.to_string().starts_with(DUPLICATE_CLAIM) {
            "jwt: duplicate claim name"
        } else {
            "jwt: payload is not a JSON object"
        }
    })?;
    let leeway = inner.leeway;

    let exp = claims.get("exp").ok_or("jwt: no exp")?;
    let exp = numeric_date(exp).ok_or("jwt: exp is not a NumericDate")?;
    let valid_until = exp.saturating_add(leeway);
    if now >= valid_until {
        return Err("jwt: expired");
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = numeric_date(nbf).ok_or("jwt: nbf is not a NumericDate")?;
        if nbf > now.saturating_add(leeway) {
            return Err("jwt: not yet valid (nbf)");
        }
    }
    let iat = match claims.get("iat") {
        Some(iat) => Some(numeric_date(iat).ok_or("jwt: iat is not a NumericDate")?),
        None => None,
    };
    if iat.is_some_and(|iat| iat > now.saturating_add(leeway)) {
        return Err("jwt: issued in the future (iat)");
    }
    if let Some(max) = inner.max_lifetime {
        let iat = iat.ok_or("jwt: no iat, but a max lifetime is configured")?;
        if exp.saturating_sub(iat) > max {
            return Err("jwt: lifetime exceeds max_lifetime");
        }
    }
    if let Some(issuers) = &inner.issuers {
        let iss = claims.get("iss").and_then(Value::as_str).ok_or("jwt: no iss")?;
        if !issuers.iter().any(|i| **i == *iss) {
            return Err("jwt: issuer not accepted");
        }
    }
    if let Some(audiences) = &inner.audiences {
        let accepted = |a: &str| audiences.iter().any(|x| **x == *a);
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => accepted(a),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).any(accepted),
            _ => return Err("jwt: no aud"),
        };
        if !ok {
            return Err("jwt: audience not accepted");
        }
    }
    let subject =
        claims.get("sub").and_then(Value::as_str).filter(|s| !s.is_empty()).ok_or("jwt: no sub")?;

    let mut principal = Principal::builder(subject).auth_method(AuthMethod::Jwt);
    let scopes = match claims.get("scope") {
        Some(scope) => strings(Some(scope)),
        None => strings(claims.get("scp")),
    };
    principal = principal.scopes(scopes).roles(strings(claims.get(&*inner.roles_claim)));
    if let Some(claim) = &inner.tenant_claim {
        if let Some(tenant) = claims.get(&**claim).and_then(Value::as_str) {
            principal = principal.tenant(tenant);
        }
    }
    if let Some(client) =
        claims.get("client_id").or_else(|| claims.get("azp")).and_then(Value::as_str)
    {
        principal = principal.client_id(client);
    }
    if let Some(auth_time) = claims.get("auth_time").and_then(numeric_date) {
        principal = principal.auth_time(UNIX_EPOCH + Duration::from_secs(auth_time));
    }
    if let Some(acr) = claims.get("acr").and_then(Value::as_str) {
        principal = principal.acr(acr);
    }
    if let Some(amr) = claims.get("amr") {
        principal = principal.amr(strings(Some(amr)));
    }
    let jti = claims.get("jti").and_then(Value::as_str).map(Into::into);
    let principal = principal.claims(claims).build();
    Ok(Verified {
        principal,
        valid_until,
        jti,
        issued_at: iat.map(|iat| UNIX_EPOCH + Duration::from_secs(iat)),
        expires_at: UNIX_EPOCH + Duration::from_secs(exp),
        cached_until: Duration::ZERO,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Debug)]
    struct Swappable(Mutex<Arc<[VerifyingKey]>>);

    impl KeySource for Arc<Swappable> {
        fn keys(&self) -> Arc<[VerifyingKey]> {
            Arc::clone(&self.0.lock().unwrap())
        }
    }

    fn hs256(kid: &str) -> VerifyingKey {
        VerifyingKey::from_secret(Algorithm::HS256, &[7; 32]).unwrap().with_kid(kid)
    }

    /// Static keys and a source's keys are listed once per set of source keys, not copied for
    /// every token, and a new set from the source is seen at once.
    #[test]
    fn combined_keys_are_listed_once_per_source_set() {
        let remote = Arc::new(Swappable(Mutex::new(Arc::from(Vec::new()))));
        let combined = Combined {
            keys: StaticKeys::new([hs256("static")]),
            source: Arc::new(Arc::clone(&remote)),
            merged: Mutex::default(),
        };
        let kids = |keys: &[VerifyingKey]| -> Vec<String> {
            keys.iter().map(|k| k.kid().unwrap().to_owned()).collect()
        };
        // Nothing fetched yet: the static keys alone.
        assert_eq!(kids(&combined.keys()), ["static"]);

        *remote.0.lock().unwrap() = Arc::from(vec![hs256("r1")]);
        let first = combined.keys();
        assert_eq!(kids(&first), ["static", "r1"]);
        assert!(Arc::ptr_eq(&first, &combined.keys()), "the same list while the set is unchanged");

        *remote.0.lock().unwrap() = Arc::from(vec![hs256("r2"), hs256("r3")]);
        let rotated = combined.keys();
        assert_eq!(kids(&rotated), ["static", "r2", "r3"]);
        assert!(!Arc::ptr_eq(&first, &rotated));
    }
}
