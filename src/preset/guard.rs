//! The middle of a [`Shield`](super::Shield): its per-IP limit, authentication, per-principal
//! limit and (when it has one) scope table as one service, with one future and one `RateLimit`
//! header line for both limits.

use std::{
    fmt,
    future::Future,
    mem,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use http::{request::Parts, HeaderMap, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

#[cfg(feature = "scope")]
use crate::scope::{self, ScopeLayer};
use crate::{
    auth::{self, AuthLayer, BoxAuthFuture},
    error::Spent,
    principal::AuthMethod,
    rate_limit::{
        self, Admission, ClientIp, Decision, Limits, MemoryStore, PrincipalKey, RateLimitLayer,
        Store, Verdict, RATELIMIT, RATELIMIT_POLICY,
    },
};

/// A [`Shield`](super::Shield)'s per-client-IP limit, authentication, per-principal limit and
/// scopes (when [`with_scopes`](super::ShieldBuilder::with_scopes) gave it some), in that
/// order, as one service (the shield puts its envelope around it).
///
/// It does exactly what those layers stacked do ([`RateLimitLayer`] per IP, [`AuthLayer`],
/// [`RateLimitLayer`] per principal, [`ScopeLayer`](crate::scope::ScopeLayer) on every route
/// but the public ones), with one future instead of four, and it writes both limits' items on
/// one `RateLimit-Policy` and one `RateLimit` line (the per-principal item first, as the
/// stacked layers list them), e.g. `RateLimit: "per-principal";r=599;t=1, "per-ip";r=599;t=1`.
///
/// See the [module docs](crate::preset) for an example.
pub struct Guard<S, St = MemoryStore> {
    inner: S,
    config: Arc<GuardConfig<St>>,
}

/// What a [`Guard`] applies, shared by every clone of the shield.
pub(crate) struct GuardConfig<St> {
    per_ip: RateLimitLayer<ClientIp, St>,
    auth: AuthLayer,
    per_principal: RateLimitLayer<PrincipalKey, St>,
    /// The scopes of every route but the public ones.
    #[cfg(feature = "scope")]
    scopes: Option<ScopeLayer>,
    /// The quotas of both limits and their `RateLimit-Policy` lines, when both are fixed and
    /// write only the standard headers; otherwise each limit writes its own lines.
    pair: Option<Pair>,
}

struct Pair {
    principal: Limits,
    ip: Limits,
    /// The per-principal quota `i`'s item then the per-IP quota `j`'s, at `i * ip.len() + j`.
    policies: Box<[HeaderValue]>,
}

impl<St> GuardConfig<St> {
    pub(crate) fn new(
        per_ip: RateLimitLayer<ClientIp, St>,
        auth: AuthLayer,
        per_principal: RateLimitLayer<PrincipalKey, St>,
        #[cfg(feature = "scope")] scopes: Option<ScopeLayer>,
    ) -> Self {
        // The guard keeps only its limits' decisions, not the quotas chosen per request: the
        // shield builds both limits from fixed quotas.
        debug_assert!(per_ip.has_fixed_limits() && per_principal.has_fixed_limits());
        let pair = match (per_principal.pair_limits(), per_ip.pair_limits()) {
            (Some(principal), Some(ip)) => {
                let policies = principal
                    .policies()
                    .iter()
                    .flat_map(|p| ip.policies().iter().map(move |i| join(p, i)))
                    .collect();
                Some(Pair { principal: principal.clone(), ip: ip.clone(), policies })
            }
            _ => None,
        };
        Self {
            per_ip,
            auth,
            per_principal,
            #[cfg(feature = "scope")]
            scopes,
            pair,
        }
    }
}

/// `a, b`: two structured-field list values as one.
fn join(a: &HeaderValue, b: &HeaderValue) -> HeaderValue {
    let mut value = Vec::with_capacity(a.len() + 2 + b.len());
    value.extend_from_slice(a.as_bytes());
    value.extend_from_slice(b", ");
    value.extend_from_slice(b.as_bytes());
    HeaderValue::from_maybe_shared(bytes::Bytes::from(value))
        .expect("two valid header values joined by a comma are a valid header value")
}

impl<S, St> Guard<S, St> {
    pub(crate) fn new(inner: S, config: Arc<GuardConfig<St>>) -> Self {
        Self { inner, config }
    }

    define_inner_service_accessors!();
}

impl<S: Clone, St> Clone for Guard<S, St> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), config: Arc::clone(&self.config) }
    }
}

impl<S: fmt::Debug, St: fmt::Debug> fmt::Debug for Guard<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("inner", &self.inner)
            .field("per_ip", &self.config.per_ip)
            .field("auth", &self.config.auth)
            .field("per_principal", &self.config.per_principal)
            .finish_non_exhaustive()
    }
}

impl<S, St, ReqBody, ResBody> Service<Request<ReqBody>> for Guard<S, St>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    St: Store + Clone,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, St, ReqBody, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let (parts, body) = request.into_parts();
        let mut decisions = Decisions::default();
        let next =
            run(&self.config, Step::Ip, Inner::Ready(&mut self.inner), parts, body, &mut decisions);
        ResponseFuture::new(next, &self.config, decisions)
    }
}

/// The checks, in order.
#[derive(Clone, Copy)]
enum Step {
    Ip,
    Auth,
    Principal,
    Scope,
    Call,
}

/// The decisions of both limits, for the response headers.
#[derive(Default)]
struct Decisions {
    ip: Option<Decision>,
    principal: Option<Decision>,
    /// An in-memory store's time, read once for both limits.
    now: Option<u64>,
    /// A public route: no scope check.
    public: bool,
}

/// The inner service: the ready one of `call` (called in place, cloned only to wait), or the
/// one a waiting future owns.
enum Inner<'a, S> {
    Ready(&'a mut S),
    Owned(S),
}

impl<S: Clone> Inner<'_, S> {
    fn call<B>(self, request: Request<B>) -> S::Future
    where
        S: Service<Request<B>>,
    {
        match self {
            Self::Ready(inner) => inner.call(request),
            Self::Owned(mut inner) => inner.call(request),
        }
    }

    fn into_owned(self) -> S {
        match self {
            // The ready service goes into the future; a fresh clone stays in the guard.
            Self::Ready(inner) => {
                let clone = inner.clone();
                mem::replace(inner, clone)
            }
            Self::Owned(inner) => inner,
        }
    }
}

/// A request waiting for a store or an authenticator, with the ready inner service.
struct Pending<S, B> {
    inner: S,
    parts: Parts,
    body: B,
    /// While a limit's store decides: its check.
    check: Option<rate_limit::Check>,
    /// While an authenticator decides: its method.
    method: Option<AuthMethod>,
}

/// Where a request goes after the checks that could be made at once.
enum Next<S, St, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    St: Store,
{
    Wait(State<S, St, ReqBody, ResBody>),
    Answer(Response<ResBody>),
}

/// Runs the checks from `step` on: until one must be awaited, refuses, or every one passed and
/// the inner service is called. A refusal carries the headers of the limits that decided
/// (its own, then the per-IP limit's).
fn run<S, St, ReqBody, ResBody>(
    config: &GuardConfig<St>,
    mut step: Step,
    inner: Inner<'_, S>,
    mut parts: Parts,
    body: ReqBody,
    decisions: &mut Decisions,
) -> Next<S, St, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    St: Store,
    ResBody: Default,
{
    loop {
        step = match step {
            Step::Ip | Step::Principal => {
                let now = &mut decisions.now;
                let admission = match step {
                    Step::Ip => config.per_ip.admit(&mut parts, now),
                    _ => config.per_principal.admit(&mut parts, now),
                };
                let (check, outcome) = match admission {
                    Admission::Skip => {
                        step = next(step);
                        continue;
                    }
                    Admission::Refused(error) => {
                        let mut response = error.into_response(Spent::parts(&mut parts));
                        config.write_headers(response.headers_mut(), decisions);
                        return Next::Answer(response);
                    }
                    Admission::Checked(check, Verdict::Now(outcome)) => (check, outcome),
                    Admission::Checked(check, Verdict::Later(decision)) => {
                        let pending = pending(inner, parts, body, Some(check), None);
                        return Next::Wait(match step {
                            Step::Ip => State::Ip { decision, pending },
                            _ => State::Principal { decision, pending },
                        });
                    }
                };
                match config.settle(step, &check, outcome, &mut parts, decisions) {
                    Ok(()) => next(step),
                    Err(response) => return Next::Answer(response),
                }
            }
            Step::Auth => {
                let auth = &config.auth.config;
                auth::mark_sensitive(auth, &mut parts.headers);
                let verdict =
                    auth::check(auth, &parts.method, &parts.uri, &parts.headers, &parts.extensions);
                match verdict {
                    auth::Step::Public => {
                        decisions.public = true;
                        Step::Principal
                    }
                    auth::Step::Pass(principal) => {
                        if let Some(principal) = principal {
                            parts.extensions.insert(principal);
                        }
                        Step::Principal
                    }
                    auth::Step::Reject(error) => {
                        return Next::Answer(config.refuse(error, &mut parts, decisions));
                    }
                    auth::Step::Pending(future, method) => {
                        let pending = pending(inner, parts, body, None, Some(method));
                        return Next::Wait(State::Authenticating { future, pending });
                    }
                }
            }
            Step::Scope => {
                #[cfg(feature = "scope")]
                if let Some(response) = config.check_scopes(&mut parts, decisions) {
                    return Next::Answer(response);
                }
                Step::Call
            }
            Step::Call => {
                let future = inner.call(Request::from_parts(parts, body));
                return Next::Wait(State::Calling { future });
            }
        };
    }
}

fn next(step: Step) -> Step {
    match step {
        Step::Ip => Step::Auth,
        Step::Auth => Step::Principal,
        Step::Principal => Step::Scope,
        Step::Scope | Step::Call => Step::Call,
    }
}

fn pending<S: Clone, B>(
    inner: Inner<'_, S>,
    parts: Parts,
    body: B,
    check: Option<rate_limit::Check>,
    method: Option<AuthMethod>,
) -> Option<Box<Pending<S, B>>> {
    Some(Box::new(Pending { inner: inner.into_owned(), parts, body, check, method }))
}

impl<St> GuardConfig<St> {
    /// A limit's answer: its decision kept, or the response to send instead (a 429 with its
    /// own headers, then the per-IP limit's).
    fn settle<B: Default>(
        &self,
        step: Step,
        check: &rate_limit::Check,
        outcome: Result<Decision, crate::Error>,
        parts: &mut Parts,
        decisions: &mut Decisions,
    ) -> Result<(), Response<B>> {
        let (shared, slot) = match step {
            Step::Ip => (&self.per_ip.shared, &mut decisions.ip),
            _ => (&self.per_principal.shared, &mut decisions.principal),
        };
        match shared.settle(check, outcome, parts) {
            Ok(decision) => {
                *slot = Some(decision);
                Ok(())
            }
            Err(mut response) => {
                if let Step::Principal = step {
                    self.write_headers(response.headers_mut(), decisions);
                }
                Err(response)
            }
        }
    }

    /// The scope check of a route that is not public: `None` lets the request through,
    /// otherwise the denial, with both limits' headers.
    #[cfg(feature = "scope")]
    fn check_scopes<B: Default>(
        &self,
        parts: &mut Parts,
        decisions: &Decisions,
    ) -> Option<Response<B>> {
        let scopes = self.scopes.as_ref().filter(|_| !decisions.public)?;
        let head = scope::Head {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
            extensions: &parts.extensions,
        };
        let rejection = scope::decide(&scopes.config, &head)?;
        let mut response = rejection.response(Spent::parts(parts));
        self.write_headers(response.headers_mut(), decisions);
        Some(response)
    }

    /// The response for an authentication failure, with the per-IP limit's headers.
    fn refuse<B: Default>(
        &self,
        error: crate::Error,
        parts: &mut Parts,
        decisions: &Decisions,
    ) -> Response<B> {
        let mut response = error.into_response(Spent::parts(parts));
        self.write_headers(response.headers_mut(), decisions);
        response
    }

    /// The `RateLimit-Policy` and `RateLimit` of the limits that decided: one line each for
    /// both, the per-principal item first.
    fn write_headers(&self, headers: &mut HeaderMap, decisions: &Decisions) {
        match (&decisions.principal, &decisions.ip, &self.pair) {
            (Some(principal), Some(ip), Some(pair)) => {
                let i = principal.quota_index() * pair.ip.policies().len() + ip.quota_index();
                headers.append(RATELIMIT_POLICY, pair.policies[i].clone());
                let value =
                    rate_limit::ratelimit_value(&[(&pair.principal, principal), (&pair.ip, ip)]);
                headers.append(RATELIMIT, value);
            }
            (principal, ip, _) => {
                if let Some(principal) = principal {
                    self.per_principal.write_fixed_headers(headers, principal);
                }
                if let Some(ip) = ip {
                    self.per_ip.write_fixed_headers(headers, ip);
                }
            }
        }
    }
}

pin_project! {
    /// Response future of [`Guard`].
    pub struct ResponseFuture<S, St, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        St: Store,
    {
        #[pin]
        state: State<S, St, ReqBody, ResBody>,
        config: Option<Arc<GuardConfig<St>>>,
        decisions: Decisions,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, St, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        St: Store,
    {
        // The waits (a Redis store, an authenticator fetching keys): the request and the ready
        // service wait in a box, so the in-process path's future stays small.
        Ip { #[pin] decision: St::Future, pending: Option<Box<Pending<S, ReqBody>>> },
        Authenticating { future: BoxAuthFuture, pending: Option<Box<Pending<S, ReqBody>>> },
        Principal { #[pin] decision: St::Future, pending: Option<Box<Pending<S, ReqBody>>> },
        Calling { #[pin] future: S::Future },
        Answered { response: Option<Response<ResBody>> },
        Done,
    }
}

impl<S, St, ReqBody, ResBody> ResponseFuture<S, St, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    St: Store,
{
    fn new(
        next: Next<S, St, ReqBody, ResBody>,
        config: &Arc<GuardConfig<St>>,
        decisions: Decisions,
    ) -> Self {
        // A waiting future needs the config (for the remaining checks and the headers after
        // the inner service answers); an answered one does not.
        let config = matches!(next, Next::Wait(_)).then(|| Arc::clone(config));
        Self { state: next.into_state(), config, decisions }
    }
}

impl<S, St, ReqBody, ResBody> Future for ResponseFuture<S, St, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    St: Store,
    ResBody: Default,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let (step, decision, pending) = match this.state.as_mut().project() {
                StateProj::Ip { decision, pending } => (Step::Ip, decision, pending),
                StateProj::Principal { decision, pending } => (Step::Principal, decision, pending),
                StateProj::Authenticating { future, pending } => {
                    let outcome = ready!(future.as_mut().poll(cx));
                    let config = this.config.as_deref().expect("a waiting future keeps its config");
                    let mut pending = pending.take().expect("request present while authenticating");
                    let method = pending.method.expect("an authenticator's method is kept");
                    let extensions = &pending.parts.extensions;
                    match auth::settle(&config.auth.config, method, outcome, extensions) {
                        Ok(principal) => {
                            pending.parts.extensions.insert(principal);
                        }
                        Err(error) => {
                            let response = config.refuse(error, &mut pending.parts, this.decisions);
                            this.state.set(State::Answered { response: Some(response) });
                            continue;
                        }
                    }
                    let Pending { inner, parts, body, .. } = *pending;
                    let next = run(
                        config,
                        Step::Principal,
                        Inner::Owned(inner),
                        parts,
                        body,
                        this.decisions,
                    );
                    this.state.set(next.into_state());
                    continue;
                }
                StateProj::Calling { future } => {
                    let mut response = ready!(future.poll(cx))?;
                    if let Some(config) = this.config.as_deref() {
                        config.write_headers(response.headers_mut(), this.decisions);
                    }
                    this.state.set(State::Done);
                    return Poll::Ready(Ok(response));
                }
                StateProj::Answered { response } => {
                    let response = response.take().expect("response present");
                    this.state.set(State::Done);
                    return Poll::Ready(Ok(response));
                }
                StateProj::Done => panic!("preset::ResponseFuture polled after completion"),
            };
            // A limit's store answered.
            let outcome = ready!(decision.poll(cx));
            let config = this.config.as_deref().expect("a waiting future keeps its config");
            let mut pending = pending.take().expect("request present while deciding");
            let check = pending.check.take().expect("a deciding limit keeps its check");
            let settled = config.settle(step, &check, outcome, &mut pending.parts, this.decisions);
            let next = match settled {
                Err(response) => Next::Answer(response),
                Ok(()) => {
                    let Pending { inner, parts, body, .. } = *pending;
                    run(config, next(step), Inner::Owned(inner), parts, body, this.decisions)
                }
            };
            this.state.set(next.into_state());
        }
    }
}

impl<S, St, ReqBody, ResBody> Next<S, St, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    St: Store,
{
    fn into_state(self) -> State<S, St, ReqBody, ResBody> {
        match self {
            Self::Wait(state) => state,
            Self::Answer(response) => State::Answered { response: Some(response) },
        }
    }
}

impl<S, St, ReqBody, ResBody> fmt::Debug for ResponseFuture<S, St, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    St: Store,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
