use std::{borrow::Cow, sync::Arc};

use http::{header, HeaderValue, Method, Response};
use tower_layer::Layer;

use super::{requirement::Requirement, Scope};
use crate::{
    clock::{Clock, SystemClock},
    error::{Challenge, ConfigError, Spent},
    Error, ErrorKind,
};

/// Lets a request through only when its [`Principal`](crate::principal::Principal) meets a
/// [`Requirement`].
///
/// [`ScopeLayer::new`] guards a route (in axum, with `route_layer`); [`ScopeLayer::per_route`]
/// guards a whole axum router with one table of routes (`Router::layer`);
/// [`ScopeLayer::per_method`] guards a gRPC server with one requirement per method. A request without a principal gets
/// 401, one that fails the requirement 403 (or 401 for step-up, 404 for a hidden tenant); see
/// the [module docs](crate::scope) for the exact answers.
///
/// Everything a denial needs (status, `WWW-Authenticate` header, the [`Error`]) is built once
/// here, not per request.
///
/// See the [module docs](crate::scope) for an example.
#[derive(Clone, Debug)]
#[must_use]
pub struct ScopeLayer {
    pub(crate) config: Arc<Config>,
}

#[derive(Clone, Debug)]
pub(crate) struct Config {
    realm: Cow<'static, str>,
    source: Source,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) table: Table,
    pub(crate) unauthenticated: Rejection,
    pub(crate) hidden: Rejection,
    pub(crate) tenant_forbidden: Rejection,
    pub(crate) unmapped: Rejection,
}

#[derive(Clone, Debug)]
enum Source {
    One(Requirement),
    Methods(MethodRequirements),
    Routes(RouteRequirements),
}

#[derive(Clone, Debug)]
pub(crate) enum Table {
    One(Compiled),
    Methods {
        /// Sorted by path.
        methods: Box<[(Box<str>, Compiled)]>,
        /// Sorted by service name.
        services: Box<[(Box<str>, Compiled)]>,
        unmapped: Option<Compiled>,
    },
    /// Sorted by route, then method; `None` for an open route.
    Routes(Box<[(Box<str>, Method, Option<Compiled>)]>),
}

/// What a table says of a request.
pub(crate) enum Lookup<'a> {
    /// Its requirement.
    Guarded(&'a Compiled),
    /// An open route: any caller, with or without a principal.
    Open,
    /// Not in the table: denied.
    Unmapped,
}

/// A requirement with its denials prepared.
#[derive(Clone, Debug)]
pub(crate) struct Compiled {
    pub(crate) requirement: Requirement,
    /// The requirement as logged.
    pub(crate) label: Box<str>,
    pub(crate) forbidden: Rejection,
    /// One per top-level alternative.
    pub(crate) step_up: Box<[Rejection]>,
}

/// A prepared denial: the error and its `WWW-Authenticate` value.
#[derive(Clone, Debug)]
pub(crate) struct Rejection {
    error: Error,
    challenge: Option<HeaderValue>,
}

impl Rejection {
    fn new(error: Error) -> Self {
        let challenge = error.challenge().map(Challenge::to_header_value);
        Self { error, challenge }
    }

    pub(crate) fn error(&self) -> &Error {
        &self.error
    }

    /// The same response as [`Error::to_response`], without rendering the challenge again, in
    /// the maps of the rejected request.
    pub(crate) fn response<B: Default>(&self, spent: Spent) -> Response<B> {
        let (headers, mut extensions) = spent.into_maps();
        extensions.insert(self.error.clone());
        let mut response = Response::new(B::default());
        *response.status_mut() = self.error.status();
        *response.headers_mut() = headers;
        if let Some(challenge) = &self.challenge {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge.clone());
        }
        *response.extensions_mut() = extensions;
        response
    }
}

impl ScopeLayer {
    /// Guards every request with `requirement`, realm `"api"` and the system clock.
    pub fn new(requirement: Requirement) -> Self {
        Self::build("api".into(), Arc::new(SystemClock), Source::One(requirement))
    }

    /// Guards a gRPC server (or any service routed by exact path) with one requirement per
    /// method; see [`MethodRequirements`].
    pub fn per_method(methods: MethodRequirements) -> Self {
        Self::build("api".into(), Arc::new(SystemClock), Source::Methods(methods))
    }

    /// Guards an axum router with one requirement per route, denying the routes not listed;
    /// see [`RouteRequirements`]. Apply it with `Router::layer`, where axum's route template
    /// is known.
    pub fn per_route(routes: RouteRequirements) -> Self {
        Self::build("api".into(), Arc::new(SystemClock), Source::Routes(routes))
    }

    /// The `realm` of the `WWW-Authenticate` challenges (default `"api"`).
    pub fn realm(self, realm: impl Into<Cow<'static, str>>) -> Self {
        let config = &self.config;
        Self::build(realm.into(), Arc::clone(&config.clock), config.source.clone())
    }

    /// Replaces the clock that [`Requirement::max_age`] is checked against (default
    /// [`SystemClock`]).
    pub fn with_clock(self, clock: impl Clock) -> Self {
        let config = &self.config;
        Self::build(config.realm.clone(), Arc::new(clock), config.source.clone())
    }

    fn build(realm: Cow<'static, str>, clock: Arc<dyn Clock>, source: Source) -> Self {
        let compile = |requirement: &Requirement| compile(&realm, requirement);
        let table = match &source {
            Source::One(requirement) => Table::One(compile(requirement)),
            Source::Methods(methods) => {
                let mut paths: Vec<_> =
                    methods.methods.iter().map(|(p, r)| (p.clone(), compile(r))).collect();
                paths.sort_by(|a, b| a.0.cmp(&b.0));
                let mut services: Vec<_> =
                    methods.services.iter().map(|(s, r)| (s.clone(), compile(r))).collect();
                services.sort_by(|a, b| a.0.cmp(&b.0));
                Table::Methods {
                    methods: paths.into_boxed_slice(),
                    services: services.into_boxed_slice(),
                    unmapped: methods.unmapped.as_ref().map(compile),
                }
            }
            Source::Routes(routes) => {
                let mut routes: Vec<_> = routes
                    .routes
                    .iter()
                    .map(|(method, route, r)| {
                        (route.clone(), method.clone(), r.as_ref().map(compile))
                    })
                    .collect();
                routes.sort_by(|a, b| (&a.0, a.1.as_str()).cmp(&(&b.0, b.1.as_str())));
                Table::Routes(routes.into_boxed_slice())
            }
        };
        let unmapped = match source {
            Source::Routes(_) => "no requirement is configured for this route (deny by default)",
            _ => "no requirement is configured for this method (deny by default)",
        };
        let config = Config {
            unauthenticated: Rejection::new(
                Error::new(ErrorKind::Unauthenticated)
                    .with_reason("no principal: the request carried no credential")
                    .with_challenge(Challenge::bearer(realm.clone())),
            ),
            hidden: Rejection::new(
                Error::new(ErrorKind::NotFound).with_reason("tenant mismatch (hidden as 404)"),
            ),
            tenant_forbidden: Rejection::new(
                Error::new(ErrorKind::Forbidden).with_reason("tenant mismatch"),
            ),
            unmapped: Rejection::new(Error::new(ErrorKind::Forbidden).with_reason(unmapped)),
            realm,
            source,
            clock,
            table,
        };
        Self { config: Arc::new(config) }
    }
}

#[allow(clippy::ptr_arg)] // cloning the `Cow` keeps a `&'static` realm borrowed
fn compile(realm: &Cow<'static, str>, requirement: &Requirement) -> Compiled {
    let hints = requirement.node.hints();
    let mut challenge = Challenge::bearer(realm.clone()).with_error("insufficient_scope");
    if !hints.scopes.is_empty() {
        challenge = challenge.with_param("scope", hints.scopes.join(" "));
    }
    let forbidden = Rejection::new(
        Error::new(ErrorKind::Forbidden)
            .with_reason("the principal lacks a required scope or role")
            .with_challenge(challenge),
    );
    let step_up = requirement
        .alternatives()
        .iter()
        .map(|alternative| {
            let hints = alternative.hints();
            let mut challenge =
                Challenge::bearer(realm.clone()).with_error("insufficient_user_authentication");
            if let Some(acr) = &hints.acr {
                challenge = challenge.with_param("acr_values", acr.join(" "));
            }
            if let Some(max_age) = hints.max_age {
                challenge = challenge.with_param("max_age", max_age.as_secs().to_string());
            }
            Rejection::new(
                Error::new(ErrorKind::StepUpRequired)
                    .with_reason("authentication too old or too weak for this route")
                    .with_challenge(challenge),
            )
        })
        .collect();
    Compiled {
        label: requirement.to_string().into_boxed_str(),
        requirement: requirement.clone(),
        forbidden,
        step_up,
    }
}

impl Config {
    /// The requirement for a request: by its path (`/package.Service/Method` for gRPC), or,
    /// in a route table, by its method and `route` (axum's template, else the path).
    pub(crate) fn lookup(&self, method: &Method, path: &str, route: &str) -> Lookup<'_> {
        match &self.table {
            Table::One(compiled) => Lookup::Guarded(compiled),
            Table::Methods { methods, services, unmapped } => {
                if let Ok(i) = methods.binary_search_by(|(p, _)| (**p).cmp(path)) {
                    return Lookup::Guarded(&methods[i].1);
                }
                let service = path.strip_prefix('/').and_then(|p| p.split_once('/')).map(|s| s.0);
                if let Some(service) = service {
                    if let Ok(i) = services.binary_search_by(|(s, _)| (**s).cmp(service)) {
                        return Lookup::Guarded(&services[i].1);
                    }
                }
                unmapped.as_ref().map_or(Lookup::Unmapped, Lookup::Guarded)
            }
            Table::Routes(routes) => {
                let find = |method: &Method| {
                    let key = (route, method.as_str());
                    routes.binary_search_by(|(r, m, _)| (&**r, m.as_str()).cmp(&key)).ok()
                };
                // axum answers HEAD with the GET handler: HEAD falls back to GET's entry.
                let found = find(method)
                    .or_else(|| (method == Method::HEAD).then(|| find(&Method::GET)).flatten());
                match found.map(|i| &routes[i].2) {
                    Some(Some(compiled)) => Lookup::Guarded(compiled),
                    Some(None) => Lookup::Open,
                    None => Lookup::Unmapped,
                }
            }
        }
    }

    /// Whether requests are looked up by route template (a [`RouteRequirements`] table).
    pub(crate) fn by_route(&self) -> bool {
        matches!(self.table, Table::Routes(_))
    }
}

impl<S> Layer<S> for ScopeLayer {
    type Service = Scope<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Scope::new(inner, self.clone())
    }
}

/// Requirements per gRPC method, for [`ScopeLayer::per_method`].
///
/// A request is matched by its path, `/package.Service/Method`: first an exact
/// [`method`](MethodRequirements::method), then its [`service`](MethodRequirements::service),
/// then the [`unmapped`](MethodRequirements::unmapped) requirement. **Unmapped methods are
/// denied by default** (403, gRPC `PERMISSION_DENIED`, logged with the path), so a method added
/// to the service later is closed until someone decides who may call it. A request without a
/// principal still gets 401 first.
///
/// ```
/// use tower_shield::scope::{MethodRequirements, Requirement, ScopeLayer};
///
/// # fn main() -> Result<(), tower_shield::error::ConfigError> {
/// let layer = ScopeLayer::per_method(
///     MethodRequirements::new()
///         .method("/shop.Orders/Get", Requirement::scope("orders:read"))?
///         .method("/shop.Orders/Delete", Requirement::scope("orders:admin"))?
///         .service("grpc.health.v1.Health", Requirement::authenticated())?,
/// );
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct MethodRequirements {
    methods: Vec<(Box<str>, Requirement)>,
    services: Vec<(Box<str>, Requirement)>,
    unmapped: Option<Requirement>,
}

impl MethodRequirements {
    /// No method mapped: everything denied.
    pub fn new() -> Self {
        Self::default()
    }

    /// `requirement` for the method at `path`, `/package.Service/Method`.
    ///
    /// # Errors
    ///
    /// When `path` is not of that form, or is mapped already.
    pub fn method(
        mut self,
        path: impl Into<String>,
        requirement: Requirement,
    ) -> Result<Self, ConfigError> {
        let path = path.into();
        let valid = path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .is_some_and(|(s, m)| !s.is_empty() && !m.is_empty() && !m.contains('/'));
        if !valid {
            return Err(ConfigError::new(format!(
                "gRPC method path {path:?} must look like /package.Service/Method"
            )));
        }
        if self.methods.iter().any(|(p, _)| **p == path) {
            return Err(ConfigError::new(format!("gRPC method {path:?} is mapped twice")));
        }
        self.methods.push((path.into_boxed_str(), requirement));
        Ok(self)
    }

    /// `requirement` for every method of `service` (`package.Service`, no slashes) that has no
    /// [`method`](MethodRequirements::method) entry of its own.
    ///
    /// # Errors
    ///
    /// When `service` is empty or has a `/`, or is mapped already.
    pub fn service(
        mut self,
        service: impl Into<String>,
        requirement: Requirement,
    ) -> Result<Self, ConfigError> {
        let service = service.into();
        if service.is_empty() || service.contains('/') {
            return Err(ConfigError::new(format!(
                "gRPC service name {service:?} must look like package.Service"
            )));
        }
        if self.services.iter().any(|(s, _)| **s == service) {
            return Err(ConfigError::new(format!("gRPC service {service:?} is mapped twice")));
        }
        self.services.push((service.into_boxed_str(), requirement));
        Ok(self)
    }

    /// `requirement` for methods mapped neither by path nor by service, instead of denying
    /// them. Think twice: `Requirement::authenticated()` here opens every future method to
    /// every caller.
    pub fn unmapped(mut self, requirement: Requirement) -> Self {
        self.unmapped = Some(requirement);
        self
    }
}

/// Requirements per HTTP route, for [`ScopeLayer::per_route`]: who may call what, in one
/// table.
///
/// A request is matched by its method and its route: axum's route template
/// ([`MatchedPath`](https://docs.rs/axum/latest/axum/extract/struct.MatchedPath.html), e.g.
/// `/orders/{id}`), which axum sets when the layer runs inside the router (`Router::layer`);
/// without one (the layer outside the router, or no axum), the request path, exactly, so a
/// template never matches there. `HEAD` uses `GET`'s entry when it has none of its own (axum
/// answers `HEAD` with the `GET` handler).
///
/// **Routes not listed are denied** (403; 401 without a principal), a path no route matches
/// included, so a route added later is closed until someone decides who may call it.
/// [`open`](RouteRequirements::open) routes let every caller through, with or without a
/// principal.
///
/// ```
/// use http::Method;
/// use tower_shield::scope::{Requirement, RouteRequirements, ScopeLayer};
///
/// # fn main() -> Result<(), tower_shield::error::ConfigError> {
/// let layer = ScopeLayer::per_route(
///     RouteRequirements::new()
///         .open(Method::GET, "/health")?
///         .route(Method::GET, "/orders", Requirement::scope("orders:read"))?
///         .route(Method::POST, "/orders", Requirement::scope("orders:write"))?
///         .route(Method::GET, "/orders/{id}", Requirement::scope("orders:read"))?
///         .route(Method::DELETE, "/orders/{id}", Requirement::scope("orders:admin"))?,
/// );
/// // router.layer(layer), inside the authentication layer
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct RouteRequirements {
    routes: Vec<(Method, Box<str>, Option<Requirement>)>,
}

impl RouteRequirements {
    /// No route listed: everything denied.
    pub fn new() -> Self {
        Self::default()
    }

    /// `requirement` for `method` on `route`, an axum route template such as `/orders/{id}`.
    ///
    /// # Errors
    ///
    /// When `route` does not start with `/`, has a query or a fragment, or is listed already
    /// for `method`.
    pub fn route(
        self,
        method: Method,
        route: &str,
        requirement: Requirement,
    ) -> Result<Self, ConfigError> {
        self.add(method, route, Some(requirement))
    }

    /// Lets every caller through `method` on `route`, with or without a principal (a health
    /// check, a login).
    ///
    /// # Errors
    ///
    /// As for [`route`](RouteRequirements::route).
    pub fn open(self, method: Method, route: &str) -> Result<Self, ConfigError> {
        self.add(method, route, None)
    }

    fn add(
        mut self,
        method: Method,
        route: &str,
        requirement: Option<Requirement>,
    ) -> Result<Self, ConfigError> {
        if !route.starts_with('/') || route.contains(['?', '#']) {
            return Err(ConfigError::new(format!(
                "route {route:?} must be a path starting with `/`, without query or fragment"
            )));
        }
        if self.routes.iter().any(|(m, r, _)| *m == method && **r == *route) {
            return Err(ConfigError::new(format!("route {method} {route:?} is listed twice")));
        }
        self.routes.push((method, route.into(), requirement));
        Ok(self)
    }
}
