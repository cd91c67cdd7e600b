use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::{Extensions, HeaderMap, Method, Request, Response, Uri};
use tower_service::Service;

use super::{
    future::ResponseFuture,
    layer::{Config, Lookup, Rejection},
    requirement::{Facts, Verdict},
    Requirement, ScopeLayer,
};
use crate::{error::Spent, principal::Principal};

/// Lets a request through only when its [`Principal`] meets a [`Requirement`].
///
/// See the [module docs](crate::scope) for an example.
#[derive(Clone, Debug)]
pub struct Scope<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> Scope<S> {
    /// Wraps `inner` with the configuration of `layer`.
    pub fn new(inner: S, layer: ScopeLayer) -> Self {
        Self { inner, config: layer.config }
    }

    /// A [`ScopeLayer`] guarding every request with `requirement`.
    pub fn layer(requirement: Requirement) -> ScopeLayer {
        ScopeLayer::new(requirement)
    }

    define_inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Scope<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let head = Head::of(&request);
        match decide(&self.config, &head) {
            None => ResponseFuture::future(self.inner.call(request)),
            Some(rejection) => {
                ResponseFuture::rejected(rejection.response(Spent::request(&mut request)))
            }
        }
    }
}

/// The parts of a request a scope decision reads: a `Request`'s in [`Scope`], its `Parts`'
/// in the preset's guard.
pub(crate) struct Head<'a> {
    pub(crate) method: &'a Method,
    pub(crate) uri: &'a Uri,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) extensions: &'a Extensions,
}

impl<'a> Head<'a> {
    pub(crate) fn of<B>(request: &'a Request<B>) -> Self {
        let (method, uri) = (request.method(), request.uri());
        Self { method, uri, headers: request.headers(), extensions: request.extensions() }
    }
}

const TARGET: &str = "tower_shield::security";

/// `None` lets the request through; otherwise the denial. Every outcome is logged.
pub(crate) fn decide<'c>(config: &'c Config, head: &Head<'_>) -> Option<&'c Rejection> {
    let principal = head.extensions.get::<Principal>();
    let path = head.uri.path();
    let compiled = match config.lookup(
        head.method,
        path,
        if config.by_route() { route(head) } else { path },
    ) {
        Lookup::Guarded(compiled) => compiled,
        Lookup::Open => {
            crate::observe::scope(head.extensions, "open");
            return None;
        }
        Lookup::Unmapped => {
            let (outcome, rejection) = match principal {
                None => ("unauthenticated", &config.unauthenticated),
                Some(_) => ("unmapped", &config.unmapped),
            };
            crate::observe::scope(head.extensions, outcome);
            tracing::warn!(
                target: TARGET,
                event = "scope.denied",
                outcome,
                subject = principal.map(Principal::subject),
                tenant = principal.and_then(Principal::tenant),
                route = route(head),
                requirement = "unmapped",
                reason = rejection.error().reason(),
                "request denied: no requirement for this request"
            );
            return Some(rejection);
        }
    };
    let requirement = &*compiled.label;
    let Some(principal) = principal else {
        denied("scope.denied", "unauthenticated", None, head, requirement);
        return Some(&config.unauthenticated);
    };
    let facts = Facts {
        principal,
        clock: &*config.clock,
        uri: head.uri,
        headers: head.headers,
        extensions: head.extensions,
    };
    let (verdict, alternative) = compiled.requirement.evaluate(&facts);
    let (event, outcome, rejection) = match verdict {
        Verdict::Allow => {
            crate::observe::scope(head.extensions, "allowed");
            tracing::debug!(
                target: TARGET,
                event = "scope.allowed",
                outcome = "allowed",
                subject = principal.subject(),
                tenant = principal.tenant(),
                route = route(head),
                requirement,
                "request allowed"
            );
            return None;
        }
        Verdict::StepUp => (
            "step_up.required",
            "step_up",
            &compiled.step_up[alternative.min(compiled.step_up.len() - 1)],
        ),
        Verdict::Forbidden => ("scope.denied", "forbidden", &compiled.forbidden),
        Verdict::TenantForbidden => ("scope.denied", "tenant_forbidden", &config.tenant_forbidden),
        Verdict::Hidden => ("scope.denied", "not_found", &config.hidden),
    };
    denied(event, outcome, Some(principal), head, requirement);
    Some(rejection)
}

fn denied(
    event: &'static str,
    outcome: &'static str,
    principal: Option<&Principal>,
    head: &Head<'_>,
    requirement: &str,
) {
    crate::observe::scope(head.extensions, outcome);
    tracing::info!(
        target: TARGET,
        event,
        outcome,
        subject = principal.map(Principal::subject),
        tenant = principal.and_then(Principal::tenant),
        route = route(head),
        requirement,
        "request denied"
    );
}

/// The route template (axum's `MatchedPath`) when known, else the path; never the query.
fn route<'a>(head: &Head<'a>) -> &'a str {
    crate::observe::route(head.extensions, head.uri)
}
