//! Who the caller is.
//!
//! An authenticating layer builds a [`Principal`] and puts it in the request extensions; later
//! layers (scopes, rate limits per principal, idempotency) and handlers read it from there. With
//! feature `axum`, `Principal` is an extractor.
//!
//! # Example
//!
//! ```
//! use tower_shield::principal::{AuthMethod, Principal};
//!
//! let principal = Principal::builder("user-42")
//!     .scopes(["orders:read", "orders:write"])
//!     .tenant("acme")
//!     .auth_method(AuthMethod::Jwt)
//!     .build();
//!
//! assert_eq!(principal.subject(), "user-42");
//! assert!(principal.has_scope("orders:read"));
//! assert!(!principal.has_scope("orders:admin"));
//! assert_eq!(principal.tenant(), Some("acme"));
//! ```

use std::{fmt, sync::Arc, time::SystemTime};

use serde_json::{Map, Value};

/// The authenticated caller.
///
/// Cheap to clone: everything sits behind one `Arc`. Scopes and roles are kept sorted, so the
/// checks are binary searches.
///
/// # Example
///
/// A handler reads the principal that an authenticating layer put in the request extensions:
///
/// ```
/// use std::convert::Infallible;
/// use http::Request;
/// use tower::{service_fn, ServiceExt};
/// use tower_shield::principal::Principal;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let handler = service_fn(|request: Request<()>| async move {
///     let principal = request.extensions().get::<Principal>().expect("behind an auth layer");
///     let access = if principal.has_scope("orders:write") { "read-write" } else { "read-only" };
///     Ok::<_, Infallible>(format!("{}: {access}", principal.subject()))
/// });
///
/// let mut request = Request::new(());
/// request.extensions_mut().insert(Principal::builder("alice").scopes(["orders:read"]).build());
/// assert_eq!(handler.oneshot(request).await.unwrap(), "alice: read-only");
/// # }
/// ```
#[derive(Clone)]
pub struct Principal {
    inner: Arc<Inner>,
}

#[derive(Clone, Default)]
struct Inner {
    subject: Box<str>,
    scopes: Box<[Box<str>]>,
    roles: Box<[Box<str>]>,
    tenant: Option<Box<str>>,
    client_id: Option<Box<str>>,
    key_id: Option<Box<str>>,
    auth_method: AuthMethod,
    auth_time: Option<SystemTime>,
    acr: Option<Box<str>>,
    amr: Box<[Box<str>]>,
    claims: Map<String, Value>,
}

/// How the caller authenticated.
///
/// # Example
///
/// ```
/// use tower_shield::principal::{AuthMethod, Principal};
///
/// let service = Principal::builder("billing-service")
///     .auth_method(AuthMethod::ApiKey)
///     .key_id("key_01")
///     .build();
/// assert_eq!(service.auth_method(), AuthMethod::ApiKey);
/// assert_eq!(service.auth_method().as_str(), "api_key"); // the name in logs and metrics
///
/// // An authenticator of your own names itself; a principal built without one says `none`.
/// assert_eq!(AuthMethod::Custom("mtls").as_str(), "mtls");
/// assert_eq!(Principal::builder("test").build().auth_method(), AuthMethod::None);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthMethod {
    /// A JSON Web Token verified locally.
    Jwt,
    /// An API key.
    ApiKey,
    /// An opaque OAuth 2.0 token checked by introspection (RFC 7662).
    Introspection,
    /// An authenticator of the user's own, named.
    Custom(&'static str),
    /// Not authenticated by a credential (e.g. built in a test).
    #[default]
    None,
}

impl AuthMethod {
    /// A short stable name for logs and metrics: `jwt`, `api_key`, `introspection`, the custom
    /// name, or `none`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Jwt => "jwt",
            Self::ApiKey => "api_key",
            Self::Introspection => "introspection",
            Self::Custom(name) => name,
            Self::None => "none",
        }
    }
}

impl Principal {
    /// Starts a principal for `subject`.
    pub fn builder(subject: impl Into<String>) -> PrincipalBuilder {
        PrincipalBuilder {
            inner: Inner { subject: subject.into().into_boxed_str(), ..Inner::default() },
        }
    }

    /// The subject (`sub`): who the caller is.
    pub fn subject(&self) -> &str {
        &self.inner.subject
    }

    /// The granted scopes, sorted.
    pub fn scopes(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.inner.scopes.iter().map(|s| &**s)
    }

    /// Whether `scope` was granted.
    pub fn has_scope(&self, scope: &str) -> bool {
        contains(&self.inner.scopes, scope)
    }

    /// The roles, sorted.
    pub fn roles(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.inner.roles.iter().map(|s| &**s)
    }

    /// Whether the caller has `role`.
    pub fn has_role(&self, role: &str) -> bool {
        contains(&self.inner.roles, role)
    }

    /// The tenant the caller belongs to, if any.
    pub fn tenant(&self) -> Option<&str> {
        self.inner.tenant.as_deref()
    }

    /// The OAuth client the token was issued to (`client_id` / `azp`), if any.
    pub fn client_id(&self) -> Option<&str> {
        self.inner.client_id.as_deref()
    }

    /// The public id of the API key used, if the caller authenticated with one. Safe to log.
    pub fn key_id(&self) -> Option<&str> {
        self.inner.key_id.as_deref()
    }

    /// How the caller authenticated.
    pub fn auth_method(&self) -> AuthMethod {
        self.inner.auth_method
    }

    /// When the user last authenticated (`auth_time`), for step-up checks.
    pub fn auth_time(&self) -> Option<SystemTime> {
        self.inner.auth_time
    }

    /// The authentication context class (`acr`), for step-up checks.
    pub fn acr(&self) -> Option<&str> {
        self.inner.acr.as_deref()
    }

    /// The authentication methods (`amr`).
    pub fn amr(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.inner.amr.iter().map(|s| &**s)
    }

    /// All claims of the credential, as JSON.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.inner.claims
    }

    /// One claim, as JSON.
    pub fn claim(&self, name: &str) -> Option<&Value> {
        self.inner.claims.get(name)
    }

    /// One claim, deserialized into `T`. `None` when absent or of another shape.
    ///
    /// ```
    /// use tower_shield::principal::Principal;
    ///
    /// let principal = Principal::builder("u").claim("plan", "gold").build();
    /// assert_eq!(principal.claim_as::<String>("plan").as_deref(), Some("gold"));
    /// assert_eq!(principal.claim_as::<u64>("plan"), None);
    /// ```
    pub fn claim_as<T: serde::de::DeserializeOwned>(&self, name: &str) -> Option<T> {
        T::deserialize(self.inner.claims.get(name)?).ok()
    }

    /// All claims deserialized into a type of the user's, e.g. a struct with the custom claims
    /// their issuer adds.
    ///
    /// # Errors
    ///
    /// When the claims do not fit `T`.
    pub fn claims_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.inner.claims)
    }

    /// A builder pre-filled with this principal, to derive a changed one.
    pub fn to_builder(&self) -> PrincipalBuilder {
        PrincipalBuilder { inner: (*self.inner).clone() }
    }
}

fn contains(sorted: &[Box<str>], needle: &str) -> bool {
    sorted.binary_search_by(|s| (**s).cmp(needle)).is_ok()
}

fn sorted(values: impl IntoIterator<Item = impl Into<String>>) -> Box<[Box<str>]> {
    let mut values: Vec<Box<str>> = values.into_iter().map(|s| s.into().into_boxed_str()).collect();
    values.sort_unstable();
    values.dedup();
    values.into_boxed_slice()
}

/// Claims may hold personal data; `Debug` lists their names, not their values.
impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("Principal")
            .field("subject", &i.subject)
            .field("scopes", &i.scopes)
            .field("roles", &i.roles)
            .field("tenant", &i.tenant)
            .field("client_id", &i.client_id)
            .field("key_id", &i.key_id)
            .field("auth_method", &i.auth_method)
            .field("claims", &i.claims.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Principal`]; see [`Principal::builder`].
///
/// # Example
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use tower_shield::principal::{AuthMethod, Principal};
///
/// let principal = Principal::builder("user-42")
///     .scopes(["orders:write", "orders:read", "orders:read"]) // kept sorted, without repeats
///     .roles(["support"])
///     .client_id("web-app")
///     .auth_method(AuthMethod::Jwt)
///     .auth_time(UNIX_EPOCH + Duration::from_secs(1_735_689_600))
///     .amr(["pwd", "otp"])
///     .claim("plan", "gold")
///     .build();
/// assert_eq!(principal.scopes().collect::<Vec<_>>(), ["orders:read", "orders:write"]);
/// assert!(principal.has_role("support"));
/// assert_eq!(principal.claim_as::<String>("plan").as_deref(), Some("gold"));
///
/// // A changed copy, e.g. with fewer scopes: everything else is kept.
/// let narrowed = principal.to_builder().scopes(["orders:read"]).build();
/// assert!(!narrowed.has_scope("orders:write"));
/// assert_eq!(narrowed.client_id(), Some("web-app"));
/// ```
#[must_use]
pub struct PrincipalBuilder {
    inner: Inner,
}

impl PrincipalBuilder {
    /// Sets the granted scopes (replacing any set before).
    pub fn scopes(mut self, scopes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.inner.scopes = sorted(scopes);
        self
    }

    /// Sets the roles (replacing any set before).
    pub fn roles(mut self, roles: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.inner.roles = sorted(roles);
        self
    }

    /// Sets the tenant.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.inner.tenant = Some(tenant.into().into_boxed_str());
        self
    }

    /// Sets the OAuth client id.
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.inner.client_id = Some(client_id.into().into_boxed_str());
        self
    }

    /// Sets the public id of the API key used.
    pub fn key_id(mut self, key_id: impl Into<String>) -> Self {
        self.inner.key_id = Some(key_id.into().into_boxed_str());
        self
    }

    /// Sets how the caller authenticated.
    pub fn auth_method(mut self, method: AuthMethod) -> Self {
        self.inner.auth_method = method;
        self
    }

    /// Sets when the user last authenticated.
    pub fn auth_time(mut self, auth_time: SystemTime) -> Self {
        self.inner.auth_time = Some(auth_time);
        self
    }

    /// Sets the authentication context class.
    pub fn acr(mut self, acr: impl Into<String>) -> Self {
        self.inner.acr = Some(acr.into().into_boxed_str());
        self
    }

    /// Sets the authentication methods.
    pub fn amr(mut self, amr: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.inner.amr = amr.into_iter().map(|s| s.into().into_boxed_str()).collect();
        self
    }

    /// Adds one claim.
    pub fn claim(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.inner.claims.insert(name.into(), value.into());
        self
    }

    /// Sets all claims (replacing any set before).
    pub fn claims(mut self, claims: Map<String, Value>) -> Self {
        self.inner.claims = claims;
        self
    }

    /// Builds the principal.
    pub fn build(self) -> Principal {
        Principal { inner: Arc::new(self.inner) }
    }
}

impl fmt::Debug for PrincipalBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrincipalBuilder").field("subject", &self.inner.subject).finish()
    }
}

#[cfg(feature = "axum")]
mod axum_impl {
    use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
    use http::request::Parts;

    use super::Principal;
    use crate::Error;

    /// Extracts the principal that an authenticating layer put in the request.
    ///
    /// A missing principal means the layer was not applied to this route: the rejection is a
    /// 500 (a server bug), not a 401. Use `Option<Principal>` on routes where authentication is
    /// optional.
    impl<S: Send + Sync> FromRequestParts<S> for Principal {
        type Rejection = Error;

        async fn from_request_parts(
            parts: &mut Parts,
            _state: &S,
        ) -> Result<Self, Self::Rejection> {
            parts.extensions.get::<Principal>().cloned().ok_or_else(|| {
                tracing::error!(
                    target: "tower_shield::security",
                    "Principal extractor used on a route without an authentication layer"
                );
                Error::internal("no Principal in request extensions: is AuthLayer applied?")
            })
        }
    }

    impl<S: Send + Sync> OptionalFromRequestParts<S> for Principal {
        type Rejection = std::convert::Infallible;

        async fn from_request_parts(
            parts: &mut Parts,
            _state: &S,
        ) -> Result<Option<Self>, Self::Rejection> {
            Ok(parts.extensions.get::<Principal>().cloned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_roles_are_sorted_and_deduplicated() {
        let p = Principal::builder("s").scopes(["b", "a", "b"]).roles(["admin"]).build();
        assert_eq!(p.scopes().collect::<Vec<_>>(), ["a", "b"]);
        assert!(p.has_scope("a") && p.has_scope("b") && !p.has_scope("c"));
        assert!(p.has_role("admin") && !p.has_role("Admin"));
    }

    #[test]
    fn debug_hides_claim_values() {
        let p = Principal::builder("s").claim("email", "alice@example.com").build();
        let debug = format!("{p:?}");
        assert!(debug.contains("email"));
        assert!(!debug.contains("alice@example.com"));
    }

    #[test]
    fn typed_claims() {
        #[derive(serde::Deserialize)]
        struct Custom {
            plan: String,
        }
        let p = Principal::builder("s").claim("plan", "gold").build();
        assert_eq!(p.claims_as::<Custom>().unwrap().plan, "gold");
    }
}
