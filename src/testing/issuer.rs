//! The test issuer: keys, tokens (good and deliberately bad), its JWK set, rotation.

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, PoisonError, RwLock,
    },
    time::{Duration, UNIX_EPOCH},
};

use aws_lc_rs::{
    encoding::AsDer,
    rsa::{KeyPair as RsaKeyPair, KeySize},
    signature::{
        EcdsaKeyPair, Ed25519KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
        ECDSA_P384_SHA384_FIXED_SIGNING,
    },
};
use base64::{
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
    Engine as _,
};
use jsonwebtoken::{
    jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse},
    Algorithm, EncodingKey, Header,
};
use serde_json::{json, Map, Value};

use crate::{
    auth::{
        jwt::{install_crypto_provider, Jwt, JwtBuilder, KeySource},
        KeySet, VerifyingKey,
    },
    clock::{Clock, SystemClock},
};

/// The key type (and algorithm) a [`TestIssuer`] signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyKind {
    /// HMAC with SHA-256 and a 32-byte secret. Never published in the JWK set.
    Hs256,
    /// RSA 2048 with PKCS#1 v1.5 padding and SHA-256.
    Rs256,
    /// RSA 2048 with PSS padding and SHA-256.
    Ps256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// ECDSA on P-384 with SHA-384.
    Es384,
    /// Ed25519.
    EdDsa,
}

impl KeyKind {
    /// Every kind, for tests that loop over them.
    pub const ALL: [KeyKind; 6] = [
        KeyKind::Hs256,
        KeyKind::Rs256,
        KeyKind::Ps256,
        KeyKind::Es256,
        KeyKind::Es384,
        KeyKind::EdDsa,
    ];

    /// The JWS algorithm of this kind.
    pub fn algorithm(self) -> Algorithm {
        match self {
            KeyKind::Hs256 => Algorithm::HS256,
            KeyKind::Rs256 => Algorithm::RS256,
            KeyKind::Ps256 => Algorithm::PS256,
            KeyKind::Es256 => Algorithm::ES256,
            KeyKind::Es384 => Algorithm::ES384,
            KeyKind::EdDsa => Algorithm::EdDSA,
        }
    }

    /// Whether the key is a shared secret (HMAC), which has no public half to publish.
    pub fn is_symmetric(self) -> bool {
        self == KeyKind::Hs256
    }
}

/// A deliberately bad token, for negative tests. [`TokenBuilder::defect`] mints one.
///
/// Every one of them must be rejected with a 401 `invalid_token` by a correctly configured
/// [`Jwt`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BadToken {
    /// `exp` one hour ago (`iat` two hours ago): past any sane leeway.
    Expired,
    /// `nbf` one hour from now.
    NotYetValid,
    /// `aud` is an audience the verifier does not accept.
    WrongAudience,
    /// `iss` is an issuer the verifier does not accept.
    WrongIssuer,
    /// Signed by the issuer's key, then one byte of the signature flipped.
    BadSignature,
    /// `alg: none` with an empty signature (the classic unsecured-JWT attack).
    AlgNone,
    /// Signed by an unrelated key of the same kind that claims the issuer's current `kid`.
    WrongKey,
    /// Signed by an unrelated key under a `kid` the issuer never published.
    UnknownKid,
    /// Not a JWT: three segments, but the header is not JSON.
    Malformed,
}

impl BadToken {
    /// Every defect, for tests that loop over them.
    pub const ALL: [BadToken; 9] = [
        BadToken::Expired,
        BadToken::NotYetValid,
        BadToken::WrongAudience,
        BadToken::WrongIssuer,
        BadToken::BadSignature,
        BadToken::AlgNone,
        BadToken::WrongKey,
        BadToken::UnknownKid,
        BadToken::Malformed,
    ];

    /// A short snake_case name (`expired`, `alg_none`...), used in battery reports.
    pub fn name(self) -> &'static str {
        match self {
            BadToken::Expired => "expired",
            BadToken::NotYetValid => "not_yet_valid",
            BadToken::WrongAudience => "wrong_audience",
            BadToken::WrongIssuer => "wrong_issuer",
            BadToken::BadSignature => "bad_signature",
            BadToken::AlgNone => "alg_none",
            BadToken::WrongKey => "wrong_key",
            BadToken::UnknownKid => "unknown_kid",
            BadToken::Malformed => "malformed",
        }
    }
}

/// What happens to the previous key when a [`TestIssuer`] rotates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rotation {
    /// The previous key stays published (the overlap window of a real rotation): tokens it
    /// signed keep verifying until [`TestIssuer::retire_previous`].
    KeepPrevious,
    /// The previous key is removed at once: tokens it signed fail from now on.
    DropPrevious,
}

/// One signing key with its verifying half.
struct SigningKey {
    kid: Option<String>,
    encoding: EncodingKey,
    verifying: VerifyingKey,
    /// The public JWK (none for HMAC).
    public: Option<Jwk>,
}

impl SigningKey {
    fn generate(kind: KeyKind, kid: Option<String>) -> Self {
        let alg = kind.algorithm();
        let encoding = match kind {
            KeyKind::Hs256 => {
                let mut secret = [0u8; 32];
                aws_lc_rs::rand::fill(&mut secret).expect("the system random source failed");
                return Self::hmac(&secret, kid);
            }
            KeyKind::Rs256 | KeyKind::Ps256 => {
                let pair = RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA key generation");
                let der: aws_lc_rs::encoding::Pkcs8V1Der<'_> =
                    pair.as_der().expect("RSA key to PKCS#8");
                EncodingKey::from_rsa_pem(pem("PRIVATE KEY", der.as_ref()).as_bytes())
                    .expect("jsonwebtoken reads a PKCS#8 RSA key")
            }
            KeyKind::Es256 | KeyKind::Es384 => {
                let curve = if kind == KeyKind::Es256 {
                    &ECDSA_P256_SHA256_FIXED_SIGNING
                } else {
                    &ECDSA_P384_SHA384_FIXED_SIGNING
                };
                let pair = EcdsaKeyPair::generate(curve).expect("EC key generation");
                let der = pair.to_pkcs8v1().expect("EC key to PKCS#8");
                EncodingKey::from_ec_pem(pem("PRIVATE KEY", der.as_ref()).as_bytes())
                    .expect("jsonwebtoken reads a PKCS#8 EC key")
            }
            KeyKind::EdDsa => {
                let pair = Ed25519KeyPair::generate().expect("Ed25519 key generation");
                let der = pair.to_pkcs8v1().expect("Ed25519 key to PKCS#8");
                EncodingKey::from_ed_pem(pem("PRIVATE KEY", der.as_ref()).as_bytes())
                    .expect("jsonwebtoken reads a PKCS#8 Ed25519 key")
            }
        };
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).expect("public JWK of a new key");
        jwk.common.key_id.clone_from(&kid);
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk.common.key_algorithm = Some(key_algorithm(kind));
        // Through the crate's own JWK rules, so the served set and the verifier agree.
        let set = KeySet::from_jwk_set(&JwkSet { keys: vec![jwk.clone()] })
            .expect("the crate accepts the JWK of a generated key");
        let verifying = VerifyingKey::clone(set.iter().next().expect("one key"));
        Self { kid, encoding, verifying, public: Some(jwk) }
    }

    fn hmac(secret: &[u8], kid: Option<String>) -> Self {
        let mut verifying = VerifyingKey::from_secret(Algorithm::HS256, secret)
            .unwrap_or_else(|e| panic!("TestIssuer: {e}"));
        if let Some(kid) = &kid {
            verifying = verifying.with_kid(kid.clone());
        }
        Self { kid, encoding: EncodingKey::from_secret(secret), verifying, public: None }
    }
}

/// The `kid` of the `n`th key (from 1).
fn kid_for(base: Option<&str>, kind: KeyKind, n: u64) -> Option<String> {
    match (base, kind.is_symmetric()) {
        (Some(base), _) if n == 1 => Some(base.to_owned()),
        (Some(base), _) => Some(format!("{base}-{n}")),
        (None, true) => None,
        (None, false) => Some(format!("test-key-{n}")),
    }
}

fn key_algorithm(kind: KeyKind) -> KeyAlgorithm {
    match kind {
        KeyKind::Hs256 => KeyAlgorithm::HS256,
        KeyKind::Rs256 => KeyAlgorithm::RS256,
        KeyKind::Ps256 => KeyAlgorithm::PS256,
        KeyKind::Es256 => KeyAlgorithm::ES256,
        KeyKind::Es384 => KeyAlgorithm::ES384,
        KeyKind::EdDsa => KeyAlgorithm::EdDSA,
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The keys of an issuer: the signing one, and the previous ones still published.
struct Keys {
    current: Arc<SigningKey>,
    previous: Vec<Arc<SigningKey>>,
    /// What [`KeySource::keys`] hands out: current first, then previous.
    snapshot: Arc<[VerifyingKey]>,
}

impl Keys {
    fn new(current: SigningKey) -> Self {
        let mut keys =
            Self { current: Arc::new(current), previous: Vec::new(), snapshot: [].into() };
        keys.refresh_snapshot();
        keys
    }

    fn refresh_snapshot(&mut self) {
        self.snapshot = std::iter::once(&self.current)
            .chain(&self.previous)
            .map(|k| k.verifying.clone())
            .collect();
    }

    fn all(&self) -> impl Iterator<Item = &Arc<SigningKey>> {
        std::iter::once(&self.current).chain(&self.previous)
    }
}

struct Inner {
    kind: KeyKind,
    issuer: String,
    audience: String,
    lifetime: Duration,
    clock: Arc<dyn Clock>,
    kid_base: Option<String>,
    generation: AtomicU64,
    keys: RwLock<Keys>,
}

/// A token issuer for tests: it generates its keys at run time, mints tokens (valid ones and
/// each [`BadToken`]), publishes its JWK set and rotates keys on demand.
///
/// Cheap to clone; clones share keys, so a [`Jwt`] built from [`jwt`](Self::jwt) (which uses
/// the issuer as its [`KeySource`]) sees every rotation at once. For a [`Jwt`] that fetches
/// keys over HTTP, [`serve`](Self::serve) the JWK set on 127.0.0.1 and point a
/// [`RemoteJwks`](crate::auth::RemoteJwks) at it (feature `jwks`).
///
/// Defaults: issuer `https://issuer.test`, audience `test-api`, tokens valid 15 minutes, the
/// system clock; asymmetric keys have `kid`s `test-key-1`, `test-key-2`... and HMAC keys
/// have no `kid` unless one is set (so tokens fit a verifier configured with only the secret,
/// such as [`JwtBuilder::hs256_secret`]).
///
/// `Debug` shows the kind, issuer, audience and key ids, never key material.
///
/// # Example
///
/// ```
/// use tower_shield::{auth::Verdict, testing::{BadToken, TestIssuer}};
///
/// let issuer = TestIssuer::es256();
/// let jwt = issuer.jwt().build().unwrap();
///
/// let token = issuer.token().subject("alice").scope("orders:read").sign();
/// let Verdict::Authenticated(principal) = jwt.verify(&token) else { panic!("valid token") };
/// assert_eq!(principal.subject(), "alice");
/// assert!(principal.has_scope("orders:read"));
///
/// for defect in BadToken::ALL {
///     let bad = issuer.token().defect(defect).sign();
///     assert!(matches!(jwt.verify(&bad), Verdict::Rejected(_)), "{defect:?}");
/// }
/// ```
///
/// # Panics
///
/// The constructors panic if the system's random source fails, and
/// [`hs256`](Self::hs256) panics on a secret shorter than 32 bytes: this is test code.
#[derive(Clone)]
pub struct TestIssuer {
    inner: Arc<Inner>,
}

/// Builds a [`TestIssuer`]; see [`TestIssuer::builder`].
#[must_use]
pub struct TestIssuerBuilder {
    kind: KeyKind,
    secret: Option<Vec<u8>>,
    issuer: String,
    audience: String,
    lifetime: Duration,
    clock: Arc<dyn Clock>,
    kid: Option<String>,
}

impl TestIssuer {
    /// Starts a builder for an issuer of `kind`.
    pub fn builder(kind: KeyKind) -> TestIssuerBuilder {
        TestIssuerBuilder {
            kind,
            secret: None,
            issuer: "https://issuer.test".into(),
            audience: "test-api".into(),
            lifetime: Duration::from_secs(15 * 60),
            clock: Arc::new(SystemClock),
            kid: None,
        }
    }

    /// An issuer with a fresh key of `kind` and the defaults.
    pub fn new(kind: KeyKind) -> Self {
        Self::builder(kind).build()
    }

    /// An HS256 issuer with the shared `secret` (at least 32 bytes), e.g. the `JWT_SECRET` a
    /// service under test was started with.
    ///
    /// # Panics
    ///
    /// The secret is shorter than 32 bytes.
    pub fn hs256(secret: impl AsRef<[u8]>) -> Self {
        Self::builder(KeyKind::Hs256).secret(secret).build()
    }

    /// An RS256 issuer with a fresh 2048-bit key.
    pub fn rs256() -> Self {
        Self::new(KeyKind::Rs256)
    }

    /// An ES256 issuer with a fresh P-256 key.
    pub fn es256() -> Self {
        Self::new(KeyKind::Es256)
    }

    /// An ES384 issuer with a fresh P-384 key.
    pub fn es384() -> Self {
        Self::new(KeyKind::Es384)
    }

    /// An EdDSA issuer with a fresh Ed25519 key.
    pub fn ed25519() -> Self {
        Self::new(KeyKind::EdDsa)
    }

    /// The key kind.
    pub fn kind(&self) -> KeyKind {
        self.inner.kind
    }

    /// The `iss` of valid tokens.
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// The `aud` of valid tokens.
    pub fn audience(&self) -> &str {
        &self.inner.audience
    }

    /// The `kid` of the current signing key, if it has one.
    pub fn kid(&self) -> Option<String> {
        self.read().current.kid.clone()
    }

    /// Starts a token: by default subject `test-user`, no scopes, valid for the issuer's
    /// token lifetime from the issuer's clock, with a unique `jti`.
    pub fn token(&self) -> TokenBuilder {
        TokenBuilder {
            issuer: self.clone(),
            subject: "test-user".into(),
            scopes: Vec::new(),
            lifetime: self.inner.lifetime,
            claims: Map::new(),
            typ: None,
            defect: None,
        }
    }

    /// A [`JwtBuilder`] that verifies this issuer's tokens: this issuer as the
    /// [`KeySource`], its issuer and audience, and its clock. Add settings and `build()`.
    pub fn jwt(&self) -> JwtBuilder {
        Jwt::builder()
            .with_key_source(self.clone())
            .issuer(self.issuer())
            .audience(self.audience())
            .with_clock(Arc::clone(&self.inner.clock))
    }

    /// The published JWK set: the public halves of the current and previous keys, never a
    /// private key and never an HMAC secret (an HS256 issuer publishes an empty set).
    pub fn jwk_set(&self) -> JwkSet {
        JwkSet { keys: self.read().all().filter_map(|k| k.public.clone()).collect() }
    }

    /// [`jwk_set`](Self::jwk_set) as JSON text.
    pub fn jwks_json(&self) -> String {
        serde_json::to_string(&self.jwk_set()).expect("a JWK set serializes")
    }

    /// The verifying keys of the current and previous keys (HMAC secrets included), as a
    /// [`KeySet`] for [`JwtBuilder::jwk_set`].
    pub fn key_set(&self) -> KeySet {
        KeySet::from_keys(self.read().snapshot.iter().cloned())
    }

    /// Replaces the signing key by a fresh one of the same kind (for HMAC: a random secret)
    /// with the next `kid`, and returns that `kid`. Tokens minted from now on use the new key.
    /// With [`Rotation::KeepPrevious`] the old key stays published until
    /// [`retire_previous`](Self::retire_previous); with [`Rotation::DropPrevious`] its tokens
    /// fail at once.
    ///
    /// A [`Jwt`] keeps accepting a token it has already verified while the token sits in its
    /// verified-token cache (as in production); build it with
    /// [`no_cache`](JwtBuilder::no_cache) to see a retired key's tokens fail at once. A
    /// [`RemoteJwks`](crate::auth::RemoteJwks) learns a new `kid` on its next refetch (at most
    /// once per refetch cooldown, measured on its clock).
    ///
    /// ```
    /// use tower_shield::{auth::Verdict, testing::{Rotation, TestIssuer}};
    ///
    /// let issuer = TestIssuer::ed25519();
    /// let jwt = issuer.jwt().no_cache().build().unwrap();
    /// let old = issuer.token().sign();
    ///
    /// assert_eq!(issuer.rotate(Rotation::KeepPrevious).as_deref(), Some("test-key-2"));
    /// assert!(matches!(jwt.verify(&old), Verdict::Authenticated(_)));
    /// issuer.retire_previous();
    /// assert!(matches!(jwt.verify(&old), Verdict::Rejected(_)));
    /// assert!(matches!(jwt.verify(&issuer.token().sign()), Verdict::Authenticated(_)));
    /// ```
    pub fn rotate(&self, rotation: Rotation) -> Option<String> {
        let kid = self.next_kid();
        let key = SigningKey::generate(self.inner.kind, kid.clone());
        let mut keys = self.write();
        let old = std::mem::replace(&mut keys.current, Arc::new(key));
        match rotation {
            Rotation::KeepPrevious => keys.previous.insert(0, old),
            Rotation::DropPrevious => keys.previous.clear(),
        }
        keys.refresh_snapshot();
        kid
    }

    /// Unpublishes every key but the current one: tokens signed by them fail from now on.
    pub fn retire_previous(&self) {
        let mut keys = self.write();
        keys.previous.clear();
        keys.refresh_snapshot();
    }

    fn next_kid(&self) -> Option<String> {
        let n = self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1;
        kid_for(self.inner.kid_base.as_deref(), self.inner.kind, n)
    }

    fn now(&self) -> u64 {
        self.inner.clock.now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Keys> {
        self.inner.keys.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Keys> {
        self.inner.keys.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl KeySource for TestIssuer {
    fn keys(&self) -> Arc<[VerifyingKey]> {
        Arc::clone(&self.read().snapshot)
    }
}

impl fmt::Debug for TestIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = self.read();
        let kids: Vec<_> = keys.all().map(|k| k.kid.clone()).collect();
        f.debug_struct("TestIssuer")
            .field("kind", &self.inner.kind)
            .field("issuer", &self.inner.issuer)
            .field("audience", &self.inner.audience)
            .field("kids", &kids)
            .finish()
    }
}

impl TestIssuerBuilder {
    /// The HMAC secret (at least 32 bytes) of an [`KeyKind::Hs256`] issuer; by default a
    /// random one. Ignored by other kinds.
    pub fn secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.secret = Some(secret.as_ref().to_vec());
        self
    }

    /// The `iss` of valid tokens (default `https://issuer.test`).
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = issuer.into();
        self
    }

    /// The `aud` of valid tokens (default `test-api`).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = audience.into();
        self
    }

    /// The `kid` of the first key; rotated keys get `<kid>-2`, `<kid>-3`... Sets a `kid` on
    /// HMAC keys too.
    pub fn kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// How long minted tokens are valid (default 15 minutes).
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// The clock that `iat`, `nbf` and `exp` are computed from (default the system clock).
    /// Give the same [`FakeClock`](crate::clock::FakeClock) to the issuer and the verifier.
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Generates the key and builds the issuer.
    ///
    /// # Panics
    ///
    /// A given HMAC secret is shorter than 32 bytes, or the system's random source fails.
    pub fn build(self) -> TestIssuer {
        install_crypto_provider();
        let kid = kid_for(self.kid.as_deref(), self.kind, 1);
        let first = match (self.kind, &self.secret) {
            (KeyKind::Hs256, Some(secret)) => SigningKey::hmac(secret, kid),
            (kind, _) => SigningKey::generate(kind, kid),
        };
        TestIssuer {
            inner: Arc::new(Inner {
                kind: self.kind,
                issuer: self.issuer,
                audience: self.audience,
                lifetime: self.lifetime,
                clock: self.clock,
                kid_base: self.kid,
                generation: AtomicU64::new(1),
                keys: RwLock::new(Keys::new(first)),
            }),
        }
    }
}

impl fmt::Debug for TestIssuerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestIssuerBuilder")
            .field("kind", &self.kind)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("lifetime", &self.lifetime)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// A token being minted; see [`TestIssuer::token`].
#[must_use]
pub struct TokenBuilder {
    issuer: TestIssuer,
    subject: String,
    scopes: Vec<String>,
    lifetime: Duration,
    claims: Map<String, Value>,
    typ: Option<String>,
    defect: Option<BadToken>,
}

impl TokenBuilder {
    /// The `sub` claim (default `test-user`).
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = subject.into();
        self
    }

    /// Adds a scope (the `scope` claim, space-separated).
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scopes.push(scope.into());
        self
    }

    /// Adds scopes.
    pub fn scopes(mut self, scopes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.scopes.extend(scopes.into_iter().map(Into::into));
        self
    }

    /// Valid for `lifetime` from now (default: the issuer's token lifetime).
    pub fn expires_in(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// Sets any claim; it overrides the standard ones (`iss`, `aud`, `exp`...) set by the
    /// builder, so this also mints unusual tokens (an `aud` array, a `roles` claim...).
    pub fn claim(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.claims.insert(name.into(), value.into());
        self
    }

    /// The header `typ` (none by default), e.g. `at+jwt`.
    pub fn typ(mut self, typ: impl Into<String>) -> Self {
        self.typ = Some(typ.into());
        self
    }

    /// Makes the token bad in one way: see [`BadToken`].
    pub fn defect(mut self, defect: BadToken) -> Self {
        self.defect = Some(defect);
        self
    }

    /// Signs the token and returns it in compact form (without `Bearer `).
    pub fn sign(self) -> String {
        let now = self.issuer.now();
        let lifetime = self.lifetime.as_secs();
        let mut claims = Map::new();
        claims.insert("iss".into(), self.issuer.issuer().into());
        claims.insert("aud".into(), self.issuer.audience().into());
        claims.insert("sub".into(), self.subject.into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), now.saturating_add(lifetime).into());
        claims.insert("jti".into(), unique_id().into());
        if !self.scopes.is_empty() {
            claims.insert("scope".into(), self.scopes.join(" ").into());
        }
        claims.extend(self.claims);
        let key = Arc::clone(&self.issuer.read().current);
        let kind = self.issuer.kind();
        let mut header = Header::new(kind.algorithm());
        header.kid.clone_from(&key.kid);
        header.typ = self.typ;
        match self.defect {
            None => encode(&header, &claims, &key.encoding),
            Some(BadToken::Expired) => {
                claims.insert("iat".into(), now.saturating_sub(7200).into());
                claims.insert("exp".into(), now.saturating_sub(3600).into());
                encode(&header, &claims, &key.encoding)
            }
            Some(BadToken::NotYetValid) => {
                claims.insert("nbf".into(), now.saturating_add(3600).into());
                claims.insert("exp".into(), now.saturating_add(3600 + lifetime).into());
                encode(&header, &claims, &key.encoding)
            }
            Some(BadToken::WrongAudience) => {
                claims.insert("aud".into(), "https://wrong-audience.invalid".into());
                encode(&header, &claims, &key.encoding)
            }
            Some(BadToken::WrongIssuer) => {
                claims.insert("iss".into(), "https://wrong-issuer.invalid".into());
                encode(&header, &claims, &key.encoding)
            }
            Some(BadToken::BadSignature) => {
                let token = encode(&header, &claims, &key.encoding);
                let (message, signature) = token.rsplit_once('.').expect("three segments");
                let mut signature = URL_SAFE_NO_PAD.decode(signature).expect("base64url");
                let middle = signature.len() / 2;
                signature[middle] ^= 0x01;
                format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature))
            }
            Some(BadToken::AlgNone) => {
                let mut header = json!({"alg": "none", "typ": "JWT"});
                if let Some(kid) = &key.kid {
                    header["kid"] = kid.as_str().into();
                }
                format!("{}.{}.", segment(&header), segment(&Value::Object(claims)))
            }
            Some(BadToken::WrongKey) => {
                let forged = SigningKey::generate(kind, key.kid.clone());
                encode(&header, &claims, &forged.encoding)
            }
            Some(BadToken::UnknownKid) => {
                let kid = format!("unknown-{}", unique_id());
                let forged = SigningKey::generate(kind, Some(kid.clone()));
                header.kid = Some(kid);
                encode(&header, &claims, &forged.encoding)
            }
            Some(BadToken::Malformed) => {
                let header = URL_SAFE_NO_PAD.encode("not a JSON header");
                format!("{header}.{}.c2lnbmF0dXJl", segment(&Value::Object(claims)))
            }
        }
    }
}

impl fmt::Debug for TokenBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenBuilder")
            .field("issuer", &self.issuer)
            .field("subject", &self.subject)
            .field("scopes", &self.scopes)
            .field("lifetime", &self.lifetime)
            .field("claims", &self.claims)
            .field("typ", &self.typ)
            .field("defect", &self.defect)
            .finish()
    }
}

fn encode(header: &Header, claims: &Map<String, Value>, key: &EncodingKey) -> String {
    jsonwebtoken::encode(header, claims, key).expect("signing a test token")
}

fn segment(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).expect("JSON serializes"))
}

/// 128 random bits in hex.
fn unique_id() -> String {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random source failed");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
