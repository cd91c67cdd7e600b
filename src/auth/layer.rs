use std::{borrow::Cow, fmt, sync::Arc};

use http::{HeaderName, Method};
use tower_layer::Layer;

use super::{public::PublicRoutes, Auth, Authenticator};
use crate::error::{Challenge, ConfigError};

/// Authenticates requests: turns a credential into a [`Principal`](crate::principal::Principal)
/// in the request extensions, or rejects with 401 (400 for a malformed `Authorization`
/// header).
///
/// Authenticators are asked in the order they were added; the first that recognises the
/// credential decides. Without a credential the answer is 401 `unauthenticated` with
/// `WWW-Authenticate: Bearer realm="api"`, unless the route is public or the layer is
/// [`optional`](AuthLayer::optional).
///
/// See the [module docs](crate::auth) for an example.
#[derive(Clone)]
#[must_use]
pub struct AuthLayer {
    pub(crate) config: Arc<Config>,
}

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) authenticators: Vec<Arc<dyn Authenticator>>,
    pub(crate) realm: Cow<'static, str>,
    pub(crate) public: PublicRoutes,
    pub(crate) optional: bool,
    pub(crate) sensitive_headers: Vec<HeaderName>,
    /// The 401 challenges for `realm`, rendered once: without `error`, with
    /// `error="invalid_token"`, with `error="invalid_request"`.
    challenges: [Challenge; 3],
}

impl AuthLayer {
    /// A layer with one authenticator, e.g. a [`Jwt`](super::jwt::Jwt).
    pub fn new(authenticator: impl Authenticator) -> Self {
        Self::from_arc(Arc::new(authenticator))
    }

    /// A layer with one shared authenticator.
    pub fn from_arc(authenticator: Arc<dyn Authenticator>) -> Self {
        let sensitive_headers = authenticator.credential_headers().to_vec();
        Self {
            config: Arc::new(Config {
                authenticators: vec![authenticator],
                challenges: challenges(Cow::Borrowed("api")),
                realm: Cow::Borrowed("api"),
                public: PublicRoutes::default(),
                optional: false,
                sensitive_headers,
            }),
        }
    }

    /// Adds an authenticator, asked after the ones already added (e.g. API keys after JWTs).
    pub fn or(self, authenticator: impl Authenticator) -> Self {
        self.or_arc(Arc::new(authenticator))
    }

    /// Adds a shared authenticator, asked after the ones already added.
    pub fn or_arc(mut self, authenticator: Arc<dyn Authenticator>) -> Self {
        let config = Arc::make_mut(&mut self.config);
        config.sensitive_headers.extend_from_slice(authenticator.credential_headers());
        config.authenticators.push(authenticator);
        self
    }

    /// The realm of the `WWW-Authenticate` challenge (default `"api"`).
    pub fn realm(mut self, realm: impl Into<Cow<'static, str>>) -> Self {
        let config = Arc::make_mut(&mut self.config);
        config.realm = realm.into();
        config.challenges = challenges(config.realm.clone());
        self
    }

    /// Lets `method path` through without a credential (no principal is attached).
    ///
    /// The match is exact on the raw request path: a public `/health` does not make
    /// `/health/`, `/healthz` or `/health/x` public, and a request path with dot segments,
    /// `//`, or percent-encoded `/`, `.` or `\` is never public, so `/health/../orders` still
    /// needs a credential. A public `GET` makes `HEAD` on the same path public too (HEAD is
    /// GET without the body, and axum's `get` answers both); other methods are separate.
    ///
    /// # Errors
    ///
    /// `path` is not absolute, or contains one of the ambiguous forms above, a query or a
    /// fragment.
    pub fn add_public(mut self, method: Method, path: &str) -> Result<Self, ConfigError> {
        Arc::make_mut(&mut self.config).public.add(method, path)?;
        Ok(self)
    }

    /// Optional authentication: a request without a credential goes through with no principal;
    /// a request with a credential is authenticated as usual, so an invalid one is still
    /// rejected with 401. For routes that serve anonymous and signed-in callers differently.
    pub fn optional(mut self) -> Self {
        Arc::make_mut(&mut self.config).optional = true;
        self
    }
}

impl Config {
    /// The `Bearer` challenge for the realm, with the `error` parameter if given (one of
    /// `invalid_token`, `invalid_request`).
    pub(crate) fn challenge(&self, error: Option<&'static str>) -> Challenge {
        let [plain, invalid_token, invalid_request] = &self.challenges;
        match error {
            None => plain.clone(),
            Some("invalid_token") => invalid_token.clone(),
            Some("invalid_request") => invalid_request.clone(),
            Some(error) => plain.clone().with_error(error),
        }
    }
}

/// The three 401 challenges of `realm`, their header values rendered now.
fn challenges(realm: Cow<'static, str>) -> [Challenge; 3] {
    let plain = Challenge::bearer(realm);
    let challenges = [
        plain.clone(),
        plain.clone().with_error("invalid_token"),
        plain.with_error("invalid_request"),
    ];
    for challenge in &challenges {
        let _ = challenge.to_header_value();
    }
    challenges
}

impl fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthLayer")
            .field("authenticators", &self.config.authenticators)
            .field("realm", &self.config.realm)
            .field("public", &self.config.public)
            .field("optional", &self.config.optional)
            .finish()
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth::new(inner, self.clone())
    }
}
