use std::{
    mem,
    sync::Arc,
    task::{Context, Poll},
};

use http::{header, Extensions, HeaderMap, Method, Request, Response, Uri};
use tower_service::Service;

use super::{
    future::ResponseFuture,
    layer::{AuthLayer, Config},
    AuthRequest, Verdict,
};
use crate::{
    error::Spent,
    principal::{AuthMethod, Principal},
    Error, ErrorKind,
};

/// Authenticates requests; built by [`AuthLayer`].
///
/// See the [module docs](crate::auth) for an example.
#[derive(Clone, Debug)]
pub struct Auth<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S> Auth<S> {
    /// Wraps `inner` with the configuration of `layer`.
    pub fn new(inner: S, layer: AuthLayer) -> Self {
        Self { inner, layer }
    }

    define_inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Auth<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let config = &self.layer.config;
        mark_sensitive(config, request.headers_mut());
        let step =
            check(config, request.method(), request.uri(), request.headers(), request.extensions());
        match step {
            Step::Public => ResponseFuture::inner(self.inner.call(request)),
            Step::Pass(principal) => {
                if let Some(principal) = principal {
                    request.extensions_mut().insert(principal);
                }
                ResponseFuture::inner(self.inner.call(request))
            }
            Step::Reject(error) => {
                ResponseFuture::rejected(error.into_response(Spent::request(&mut request)))
            }
            Step::Pending(future, method) => {
                // The ready service goes into the future; a fresh clone stays here.
                let clone = self.inner.clone();
                let inner = mem::replace(&mut self.inner, clone);
                ResponseFuture::authenticating(
                    future,
                    request,
                    inner,
                    method,
                    Arc::clone(&self.layer.config),
                )
            }
        }
    }
}

/// The auth step of a request, shared by [`Auth`] and the preset's guard, which then put the
/// principal in the request or answer the rejection.
pub(crate) enum Step {
    /// A public route: let through without looking at credentials.
    Public,
    /// Let through: with a principal, or without one (optional auth).
    Pass(Option<Principal>),
    /// A 401 (or 400) with its challenge.
    Reject(Error),
    /// An authenticator must await (JWKS fetch, introspection); [`settle`] its outcome.
    Pending(super::BoxAuthFuture, AuthMethod),
}

/// Decides on a request whose credential headers are already marked sensitive
/// ([`mark_sensitive`]). Every outcome but `Pending` is logged.
pub(crate) fn check(
    config: &Config,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    extensions: &Extensions,
) -> Step {
    if config.public.contains(method, uri.path()) {
        crate::observe::record(extensions, "auth.outcome", "public");
        return Step::Public;
    }
    let auth_request = match AuthRequest::from_headers(headers) {
        Ok(auth_request) => auth_request,
        Err(reason) => {
            let error = Error::new(ErrorKind::InvalidRequest)
                .with_reason(reason)
                .with_challenge(config.challenge(Some("invalid_request")));
            log_failure(&error, None, extensions);
            return Step::Reject(error);
        }
    };
    match decide(config, &auth_request) {
        Decision::Authenticated(principal, method) => {
            log_success(&principal, method, extensions);
            Step::Pass(Some(principal))
        }
        Decision::Anonymous => {
            crate::observe::auth(extensions, "none", "anonymous");
            Step::Pass(None)
        }
        Decision::Rejected(error, method) => {
            let error = finish_rejection(config, error);
            log_failure(&error, method, extensions);
            Step::Reject(error)
        }
        Decision::Pending(future, method) => Step::Pending(future, method),
    }
}

/// The outcome of a [`Step::Pending`], logged; a rejection gets its challenge.
pub(crate) fn settle(
    config: &Config,
    method: AuthMethod,
    outcome: Result<Principal, Error>,
    extensions: &Extensions,
) -> Result<Principal, Error> {
    match outcome {
        Ok(principal) => {
            log_success(&principal, method, extensions);
            Ok(principal)
        }
        Err(error) => {
            let error = finish_rejection(config, error);
            log_failure(&error, Some(method), extensions);
            Err(error)
        }
    }
}

enum Decision {
    Authenticated(Principal, AuthMethod),
    Anonymous,
    Rejected(Error, Option<AuthMethod>),
    Pending(super::BoxAuthFuture, AuthMethod),
}

fn decide(config: &Config, request: &AuthRequest<'_>) -> Decision {
    for authenticator in &config.authenticators {
        match authenticator.authenticate(request) {
            Verdict::NotMine => continue,
            Verdict::Authenticated(p) => return Decision::Authenticated(p, authenticator.method()),
            Verdict::Rejected(e) => return Decision::Rejected(e, Some(authenticator.method())),
            Verdict::Pending(f) => return Decision::Pending(f, authenticator.method()),
        }
    }
    let error = match request.authorization() {
        None if config.optional => return Decision::Anonymous,
        None => Error::new(ErrorKind::Unauthenticated).with_reason("no credential"),
        // A bearer token is a credential of a known kind that nobody accepts.
        Some(a) if a.is_scheme("Bearer") => Error::new(ErrorKind::InvalidToken)
            .with_reason("no authenticator recognises this bearer token"),
        Some(_) => Error::new(ErrorKind::Unauthenticated)
            .with_reason("no authenticator accepts this Authorization scheme"),
    };
    Decision::Rejected(error, None)
}

/// Adds the `WWW-Authenticate` challenge a 401 needs, if the authenticator did not.
pub(crate) fn finish_rejection(config: &Config, error: Error) -> Error {
    if error.challenge().is_some() {
        return error;
    }
    match error.kind() {
        ErrorKind::Unauthenticated => error.with_challenge(config.challenge(None)),
        ErrorKind::InvalidToken => error.with_challenge(config.challenge(Some("invalid_token"))),
        ErrorKind::InvalidRequest => {
            error.with_challenge(config.challenge(Some("invalid_request")))
        }
        _ => error,
    }
}

/// Marks the credential headers sensitive (`Authorization` and the API-key headers), so that
/// they never reach logs or HTTP/2 header compression tables.
pub(crate) fn mark_sensitive(config: &Config, headers: &mut HeaderMap) {
    // One pass over the few headers a request carries, rather than a hashed look-up per name.
    for (name, value) in headers.iter_mut() {
        if name == header::AUTHORIZATION || config.sensitive_headers.contains(name) {
            value.set_sensitive(true);
        }
    }
}

pub(crate) fn log_success(principal: &Principal, method: AuthMethod, extensions: &Extensions) {
    crate::observe::auth(extensions, method.as_str(), "success");
    crate::observe::principal(extensions, principal);
    tracing::debug!(
        target: "tower_shield::security",
        event = "auth.success",
        subject = principal.subject(),
        tenant = principal.tenant(),
        auth_method = method.as_str(),
    );
}

pub(crate) fn log_failure(error: &Error, method: Option<AuthMethod>, extensions: &Extensions) {
    let method = method.map_or("none", |m| m.as_str());
    crate::observe::auth(extensions, method, crate::observe::auth_failure_outcome(error));
    tracing::info!(
        target: "tower_shield::security",
        event = "auth.failure",
        code = error.code(),
        reason = error.reason().unwrap_or(""),
        auth_method = method,
    );
}

#[cfg(test)]
mod tests {
    use http::{header, HeaderName, HeaderValue, Request};

    use super::mark_sensitive;
    use crate::auth::{api_key::ApiKeys, AuthLayer};

    #[test]
    fn every_credential_value_is_marked_sensitive_and_nothing_else() {
        let api_key = HeaderName::from_static("x-api-key");
        let keys = ApiKeys::new("sk_live").unwrap().header(api_key.clone());
        let layer = AuthLayer::new(keys);
        let mut request = Request::new(());
        let headers = request.headers_mut();
        headers.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        headers.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        headers.insert(&api_key, HeaderValue::from_static("sk_live_x_y"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));

        mark_sensitive(&layer.config, request.headers_mut());

        let headers = request.headers();
        assert!(headers.get_all(header::AUTHORIZATION).iter().all(HeaderValue::is_sensitive));
        assert_eq!(headers.get_all(header::AUTHORIZATION).iter().count(), 2);
        assert!(headers[&api_key].is_sensitive());
        assert!(!headers[header::ACCEPT].is_sensitive());
    }
}
