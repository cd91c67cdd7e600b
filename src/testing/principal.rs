//! Principals and API keys for tests that skip tokens.

use std::task::{Context, Poll};

use http::Request;
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    auth::api_key::{self, ApiKeys},
    principal::{Principal, PrincipalBuilder},
};

/// Puts `principal` into the request's extensions, where [`AuthLayer`](crate::auth::AuthLayer)
/// puts the caller, so a handler or an inner layer (scopes, per-principal limits) can be tested
/// without a token.
///
/// ```
/// use http::Request;
/// use tower_shield::{principal::Principal, testing::with_principal};
///
/// let request = with_principal(
///     Request::new(()),
///     Principal::builder("alice").scopes(["orders:read"]).build(),
/// );
/// assert_eq!(request.extensions().get::<Principal>().unwrap().subject(), "alice");
/// ```
pub fn with_principal<B>(mut request: Request<B>, principal: Principal) -> Request<B> {
    request.extensions_mut().insert(principal);
    request
}

/// A layer that authenticates every request as one fixed [`Principal`], in place of
/// [`AuthLayer`](crate::auth::AuthLayer) in tests. It never rejects, so never use it outside
/// tests.
///
/// ```
/// use http::{Request, Response, StatusCode};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_shield::{
///     principal::Principal,
///     scope::{Requirement, ScopeLayer},
///     testing::FakeAuthLayer,
/// };
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let caller = Principal::builder("alice").scopes(["orders:read"]).build();
/// let app = ServiceBuilder::new()
///     .layer(FakeAuthLayer::new(caller))
///     .layer(ScopeLayer::new(Requirement::all(["orders:write"])))
///     .service(service_fn(|_req: Request<()>| async {
///         Ok::<_, std::convert::Infallible>(Response::new(String::new()))
///     }));
/// let response = app.oneshot(Request::new(())).await.unwrap();
/// assert_eq!(response.status(), StatusCode::FORBIDDEN);
/// # }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct FakeAuthLayer {
    principal: Principal,
}

impl FakeAuthLayer {
    /// Authenticates every request as `principal`.
    pub fn new(principal: Principal) -> Self {
        Self { principal }
    }
}

impl<S> Layer<S> for FakeAuthLayer {
    type Service = FakeAuth<S>;

    fn layer(&self, inner: S) -> FakeAuth<S> {
        FakeAuth { inner, principal: self.principal.clone() }
    }
}

/// The service of [`FakeAuthLayer`]. See the [module docs](crate::testing) for more examples.
#[derive(Clone, Debug)]
pub struct FakeAuth<S> {
    inner: S,
    principal: Principal,
}

impl<S> FakeAuth<S> {
    /// Wraps `inner`, authenticating every request as `principal`.
    pub fn new(inner: S, principal: Principal) -> Self {
        Self { inner, principal }
    }

    /// A [`FakeAuthLayer`].
    pub fn layer(principal: Principal) -> FakeAuthLayer {
        FakeAuthLayer::new(principal)
    }

    define_inner_service_accessors!();
}

impl<S, B> Service<Request<B>> for FakeAuth<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> S::Future {
        self.inner.call(with_principal(request, self.principal.clone()))
    }
}

/// An [`ApiKeys`] authenticator with prefix `prefix` holding one fresh key for `principal`,
/// and that key (to send as `Authorization: ApiKey <key>`), generated with [`api_key::generate`].
///
/// ```
/// use tower_shield::{principal::Principal, testing::api_key};
///
/// let (keys, key) = api_key("test", Principal::builder("ci-bot").scopes(["orders:read"]));
/// assert!(key.starts_with("test_"));
/// assert_eq!(keys.len(), 1);
/// ```
///
/// # Panics
///
/// `prefix` is not a valid API key prefix (see [`ApiKeys::new`]).
pub fn api_key(prefix: &str, principal: PrincipalBuilder) -> (ApiKeys, String) {
    let keys = ApiKeys::new(prefix).unwrap_or_else(|e| panic!("api_key: {e}"));
    let key = add_api_key(&keys, prefix, principal);
    (keys, key)
}

/// Adds a fresh key for `principal` to `keys` (whose prefix is `prefix`) and returns it.
///
/// # Panics
///
/// `prefix` is not a valid API key prefix.
pub fn add_api_key(keys: &ApiKeys, prefix: &str, principal: PrincipalBuilder) -> String {
    let generated = api_key::generate(prefix).unwrap_or_else(|e| panic!("api_key: {e}"));
    keys.insert(generated.id(), generated.hash(), principal)
        .expect("a generated key has a valid id and hash");
    generated.key().to_owned()
}
