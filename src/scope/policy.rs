use std::{
    borrow::Cow,
    fmt,
    future::Future,
    mem,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{request::Parts, Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::{error::Challenge, principal::Principal, Error, ErrorKind};

/// The answer of a [`Policy`].
///
/// # Example
///
/// ```
/// use http::{request::Parts, Request, StatusCode};
/// use tower_shield::{principal::Principal, scope::Decision};
///
/// struct Document { tenant: String, listed: bool }
///
/// // The owning tenant may read; others see that a listed document exists, not an unlisted one.
/// fn read_policy(principal: &Principal, _: &Parts, doc: &Document) -> Decision {
///     match principal.tenant() {
///         Some(tenant) if tenant == doc.tenant => Decision::Allow,
///         _ if doc.listed => Decision::Deny,
///         _ => Decision::NotFound,
///     }
/// }
///
/// let (parts, ()) = Request::new(()).into_parts();
/// let bob = Principal::builder("bob").tenant("globex").build();
/// let doc = |listed| Document { tenant: "acme".into(), listed };
/// assert_eq!(read_policy(&bob, &parts, &doc(true)), Decision::Deny);
///
/// // `authorize` and `PolicyLayer` answer with `into_result`'s error.
/// let hidden = read_policy(&bob, &parts, &doc(false)).into_result().unwrap_err();
/// assert_eq!(hidden.status(), StatusCode::NOT_FOUND);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// The caller may act on the resource.
    Allow,
    /// The caller may know the resource exists but may not act on it: 403
    /// ([`ErrorKind::Forbidden`]).
    Deny,
    /// The caller must not learn that the resource exists: 404 ([`ErrorKind::NotFound`]), the
    /// same answer as for a resource that is really missing.
    NotFound,
}

impl Decision {
    /// `Ok(())` for [`Allow`](Decision::Allow), else the error to answer with.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Forbidden`] for [`Deny`](Decision::Deny), [`ErrorKind::NotFound`] for
    /// [`NotFound`](Decision::NotFound).
    pub fn into_result(self) -> Result<(), Error> {
        match self {
            Decision::Allow => Ok(()),
            Decision::Deny => {
                Err(Error::new(ErrorKind::Forbidden).with_reason("denied by a resource policy"))
            }
            Decision::NotFound => Err(Error::new(ErrorKind::NotFound)
                .with_reason("denied by a resource policy (hidden as 404)")),
        }
    }

    fn outcome(self) -> &'static str {
        match self {
            Decision::Allow => "allowed",
            Decision::Deny => "forbidden",
            Decision::NotFound => "not_found",
        }
    }
}

/// Resource-level (object-level) authorization: may this principal act on this resource?
///
/// Scopes say what *kind* of thing a caller may do (`orders:read`); a policy says whether they
/// may do it to *this* object (order 42 is Alice's, not Bob's). Missing object-level checks are
/// the first risk of the OWASP API Security Top 10 (API1, "broken object level
/// authorization"). Implement the trait for your rule and call it with [`authorize`] in the
/// handler, once the resource is loaded, or with a [`PolicyLayer`] when the resource can be
/// derived from the request.
///
/// Answer [`Decision::NotFound`] rather than [`Decision::Deny`] when the caller must not learn
/// that the object exists: a 403 on `/orders/42` tells an attacker that order 42 is real, so
/// enumerating ids maps someone else's data. Then also answer a really missing object with the
/// same 404 ([`ErrorKind::NotFound`]), so the two cannot be told apart.
///
/// A closure `Fn(&Principal, &Parts, &R) -> Decision` is a policy:
///
/// ```
/// use http::request::Parts;
/// use tower_shield::{principal::Principal, scope::Decision};
///
/// struct Order { owner: String }
///
/// let owner_only = |principal: &Principal, _: &Parts, order: &Order| {
///     if order.owner == principal.subject() { Decision::Allow } else { Decision::NotFound }
/// };
/// # let _ = owner_only;
/// ```
pub trait Policy<R: ?Sized>: Send + Sync {
    /// Decides whether `principal` may make `request` on `resource`.
    fn decide(
        &self,
        principal: &Principal,
        request: &Parts,
        resource: &R,
    ) -> impl Future<Output = Decision> + Send;

    /// A short name for logs (the `policy` field). Defaults to `"policy"`.
    fn name(&self) -> &str {
        "policy"
    }
}

impl<R, F> Policy<R> for F
where
    R: ?Sized,
    F: Fn(&Principal, &Parts, &R) -> Decision + Send + Sync,
{
    fn decide(
        &self,
        principal: &Principal,
        request: &Parts,
        resource: &R,
    ) -> impl Future<Output = Decision> + Send {
        std::future::ready(self(principal, request, resource))
    }
}

/// Asks `policy` about `resource`, logs the decision, and turns it into a `Result` for `?`.
///
/// In an axum handler, extract the [`Principal`] and the request [`Parts`] (both are
/// extractors), load the resource, then:
///
/// ```
/// use http::{request::Parts, Request};
/// use tower_shield::{principal::Principal, scope::{authorize, Decision}, Error, ErrorKind};
///
/// struct Order { id: u64, owner: String }
///
/// fn owner_only(principal: &Principal, _: &Parts, order: &Order) -> Decision {
///     if order.owner == principal.subject() { Decision::Allow } else { Decision::NotFound }
/// }
///
/// // With axum: `async fn get_order(principal: Principal, parts: Parts, Path(id): Path<u64>)`.
/// async fn get_order(principal: Principal, parts: Parts, id: u64) -> Result<String, Error> {
///     let order = load(id).ok_or(Error::new(ErrorKind::NotFound))?; // missing: 404
///     authorize(&owner_only, &principal, &parts, &order).await?;    // someone else's: the same 404
///     Ok(format!("order {}", order.id))
/// }
/// # fn load(id: u64) -> Option<Order> { (id == 1).then(|| Order { id, owner: "alice".into() }) }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// # let parts = || Request::new(()).into_parts().0;
/// let bob = Principal::builder("bob").build();
/// let theirs = get_order(bob.clone(), parts(), 1).await.unwrap_err();
/// let missing = get_order(bob, parts(), 2).await.unwrap_err();
/// assert_eq!((theirs.kind(), missing.kind()), (ErrorKind::NotFound, ErrorKind::NotFound));
/// # }
/// ```
///
/// # Errors
///
/// [`ErrorKind::Forbidden`] when the policy denies, [`ErrorKind::NotFound`] when it hides the
/// resource.
pub async fn authorize<P, R>(
    policy: &P,
    principal: &Principal,
    request: &Parts,
    resource: &R,
) -> Result<(), Error>
where
    P: Policy<R> + ?Sized,
    R: ?Sized,
{
    let decision = policy.decide(principal, request, resource).await;
    log(policy.name(), decision, principal, request);
    decision.into_result()
}

fn log(policy: &str, decision: Decision, principal: &Principal, request: &Parts) {
    let route = crate::observe::route(&request.extensions, &request.uri);
    crate::observe::scope(&request.extensions, decision.outcome());
    if decision == Decision::Allow {
        tracing::debug!(
            target: "tower_shield::security",
            event = "scope.allowed",
            outcome = decision.outcome(),
            policy,
            subject = principal.subject(),
            tenant = principal.tenant(),
            route,
            "resource policy allowed"
        );
    } else {
        tracing::info!(
            target: "tower_shield::security",
            event = "scope.denied",
            outcome = decision.outcome(),
            policy,
            subject = principal.subject(),
            tenant = principal.tenant(),
            route,
            "resource policy denied"
        );
    }
}

/// Runs a [`Policy`] before the inner service, on a resource derived from the request.
///
/// `resource` derives the resource from the request parts, e.g. the id in the path or a tenant
/// header; the policy may be async and load what it needs. When `resource` returns `None` (no
/// resource can be named), the answer is 404. A request without a [`Principal`] gets 401 with
/// `WWW-Authenticate: Bearer realm="api"`.
///
/// The checks run in a boxed future (the policy borrows the request while it awaits), so the
/// inner service must be `Clone + Send + 'static`, as axum and tonic services are.
///
/// ```
/// use http::{request::Parts, Request, Response, StatusCode};
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_shield::{principal::Principal, scope::{Decision, PolicyLayer}};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // `/users/{id}/profile`: only the user themself; others cannot tell who exists.
/// let layer = PolicyLayer::new(
///     |principal: &Principal, _: &Parts, user: &String| {
///         if *user == principal.subject() { Decision::Allow } else { Decision::NotFound }
///     },
///     |parts: &Parts| parts.uri.path().split('/').nth(2).map(str::to_owned),
/// );
/// let service = ServiceBuilder::new().layer(layer).service_fn(|_: Request<String>| async {
///     Ok::<_, std::convert::Infallible>(Response::new(String::from("profile")))
/// });
/// let mut request = Request::get("/users/bob/profile").body(String::new()).unwrap();
/// request.extensions_mut().insert(Principal::builder("alice").build());
/// let response = service.oneshot(request).await.unwrap();
/// assert_eq!(response.status(), StatusCode::NOT_FOUND);
/// # }
/// ```
///
/// See the [module docs](crate::scope) for an example.
#[must_use]
pub struct PolicyLayer<P, D> {
    policy: Arc<P>,
    resource: Arc<D>,
    unauthenticated: Error,
}

impl<P, D> PolicyLayer<P, D> {
    /// Checks `policy` against the resource that `resource` derives from each request.
    pub fn new(policy: P, resource: D) -> Self {
        Self {
            policy: Arc::new(policy),
            resource: Arc::new(resource),
            unauthenticated: unauthenticated("api".into()),
        }
    }

    /// The `realm` of the 401 challenge (default `"api"`).
    pub fn realm(mut self, realm: impl Into<Cow<'static, str>>) -> Self {
        self.unauthenticated = unauthenticated(realm.into());
        self
    }
}

fn unauthenticated(realm: Cow<'static, str>) -> Error {
    Error::new(ErrorKind::Unauthenticated)
        .with_reason("no principal: the request carried no credential")
        .with_challenge(Challenge::bearer(realm))
}

impl<P, D> Clone for PolicyLayer<P, D> {
    fn clone(&self) -> Self {
        Self {
            policy: Arc::clone(&self.policy),
            resource: Arc::clone(&self.resource),
            unauthenticated: self.unauthenticated.clone(),
        }
    }
}

impl<P, D> fmt::Debug for PolicyLayer<P, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyLayer")
            .field("policy", &"<policy>")
            .field("resource", &"<fn>")
            .finish()
    }
}

impl<S, P, D> Layer<S> for PolicyLayer<P, D> {
    type Service = PolicyService<S, P, D>;

    fn layer(&self, inner: S) -> Self::Service {
        PolicyService { inner, layer: self.clone() }
    }
}

/// The service of a [`PolicyLayer`].
///
/// See the [module docs](crate::scope) for an example.
pub struct PolicyService<S, P, D> {
    inner: S,
    layer: PolicyLayer<P, D>,
}

impl<S, P, D> PolicyService<S, P, D> {
    /// Wraps `inner` with the configuration of `layer`.
    pub fn new(inner: S, layer: PolicyLayer<P, D>) -> Self {
        Self { inner, layer }
    }

    define_inner_service_accessors!();
}

impl<S: Clone, P, D> Clone for PolicyService<S, P, D> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), layer: self.layer.clone() }
    }
}

impl<S: fmt::Debug, P, D> fmt::Debug for PolicyService<S, P, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyService")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, P, D, R, ReqBody, ResBody> Service<Request<ReqBody>> for PolicyService<S, P, D>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    P: Policy<R> + 'static,
    D: Fn(&Parts) -> Option<R> + Send + Sync + 'static,
    R: Send + Sync + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = PolicyFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let Some(principal) = request.extensions().get::<Principal>().cloned() else {
            crate::observe::scope(request.extensions(), "unauthenticated");
            tracing::info!(
                target: "tower_shield::security",
                event = "scope.denied",
                outcome = "unauthenticated",
                policy = self.layer.policy.name(),
                route = crate::observe::route(request.extensions(), request.uri()),
                "request denied"
            );
            let response = self.layer.unauthenticated.to_response();
            return PolicyFuture { future: Box::pin(std::future::ready(Ok(response))) };
        };
        // The ready service is the one to call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = mem::replace(&mut self.inner, clone);
        let policy = Arc::clone(&self.layer.policy);
        let derive = Arc::clone(&self.layer.resource);
        let future = async move {
            let (parts, body) = request.into_parts();
            let decision = match derive(&parts) {
                Some(resource) => policy.decide(&principal, &parts, &resource).await,
                None => Decision::NotFound,
            };
            log(policy.name(), decision, &principal, &parts);
            match decision.into_result() {
                Ok(()) => inner.call(Request::from_parts(parts, body)).await,
                Err(error) => Ok(error.to_response()),
            }
        };
        PolicyFuture { future: Box::pin(future) }
    }
}

/// Response future of [`PolicyService`].
pub struct PolicyFuture<B, E> {
    future: Pin<Box<dyn Future<Output = Result<Response<B>, E>> + Send>>,
}

impl<B, E> Future for PolicyFuture<B, E> {
    type Output = Result<Response<B>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.future.as_mut().poll(cx)
    }
}

impl<B, E> fmt::Debug for PolicyFuture<B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyFuture").finish_non_exhaustive()
    }
}
