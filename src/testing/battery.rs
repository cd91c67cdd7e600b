//! The negative-test battery: the standard security checks against one route of a service.

use std::{collections::BTreeSet, fmt, marker::PhantomData};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use serde_json::Value;
use tower_service::Service;

use super::{BadToken, TestIssuer};
use crate::{
    body::{read_limited, Buffered},
    BoxError,
};

/// Largest response body the battery reads.
const MAX_RESPONSE_BODY: usize = 1024 * 1024;
/// How much of a body a report quotes.
const EXCERPT: usize = 160;

/// Runs the standard negative security checks against one route of a service and reports
/// each one as passed, failed or skipped.
///
/// Give it the service (an axum `Router` or any `Clone` tower service of `Request<B>`), the
/// route, and what the route requires; checks that do not apply are skipped and say why:
///
/// | check | needs | expects |
/// |---|---|---|
/// | `valid_request` | – | a request meeting every requirement is not refused (no 401, 403, 429, 5xx; with a JSON sample no 400, 413, 415, 422) |
/// | `missing_credential` | [`bearer`](Self::bearer) | 401 with `WWW-Authenticate: Bearer …` |
/// | `<defect>_token`, one per [`BadToken`] (expired, not yet valid, wrong audience, wrong issuer, bad signature, `alg: none`, wrong key, unknown `kid`, malformed) | [`bearer`](Self::bearer) | 401 with `error="invalid_token"` in `WWW-Authenticate` |
/// | `missing_scope` | [`scope`](Self::scope) | a valid token without the scopes: 403 with `error="insufficient_scope"` |
/// | `malformed_json` | [`json`](Self::json) | 400 with `details` in the error body |
/// | `unknown_field` | [`json`](Self::json) with an object | the sample plus an unknown field: 400 with `details` |
/// | `wrong_content_type` | [`json`](Self::json) | the sample as `text/plain`: 415 |
/// | `oversized_body` | [`max_body`](Self::max_body) | a body one byte over: 413 |
/// | `rate_limit` | [`burst`](Self::burst) | a 429 within `burst + 1` valid requests, with `Retry-After`, `RateLimit` and `RateLimit-Policy` |
/// | `error_envelope` | – | every error response of every check is the JSON envelope (`code`, `message`, `request_id`) and its `request_id` equals the `X-Request-Id` header |
/// | `no_server_error` | – | no response of any check was a 5xx, and the service never returned an `Err` |
///
/// Requests carry the valid token (when a [`bearer`](Self::bearer) issuer is set), the JSON
/// sample with `Content-Type: application/json` (when [`json`](Self::json) is set) and the
/// extra [`header`](Self::header)s, except where a check changes exactly one of them.
/// `rate_limit` runs last, so the earlier checks are not throttled by it (give the service a
/// quota larger than the dozen or so requests the other checks send).
///
/// See the [module docs](crate::testing) for an example.
#[must_use]
pub struct Battery<S, B = Buffered> {
    service: S,
    route: Option<(Method, String)>,
    issuer: Option<TestIssuer>,
    scopes: Vec<String>,
    json: Option<Value>,
    max_body: Option<usize>,
    burst: Option<u32>,
    headers: HeaderMap,
    idempotency_keys: bool,
    request_id_header: HeaderName,
    skip: BTreeSet<String>,
    _body: PhantomData<fn() -> B>,
}

impl<S> Battery<S> {
    /// A battery for `service`, sending `Request<`[`Buffered`]`>` (an axum `Router` accepts
    /// any body; see [`with_body_type`](Self::with_body_type) for a service that needs another).
    pub fn new(service: S) -> Self {
        Self {
            service,
            route: None,
            issuer: None,
            scopes: Vec::new(),
            json: None,
            max_body: None,
            burst: None,
            headers: HeaderMap::new(),
            idempotency_keys: false,
            request_id_header: HeaderName::from_static("x-request-id"),
            skip: BTreeSet::new(),
            _body: PhantomData,
        }
    }
}

impl<S, B> Battery<S, B> {
    /// Sends requests with body type `B2` (built `From<Bytes>`), e.g. `axum::body::Body`.
    pub fn with_body_type<B2>(self) -> Battery<S, B2> {
        Battery {
            service: self.service,
            route: self.route,
            issuer: self.issuer,
            scopes: self.scopes,
            json: self.json,
            max_body: self.max_body,
            burst: self.burst,
            headers: self.headers,
            idempotency_keys: self.idempotency_keys,
            request_id_header: self.request_id_header,
            skip: self.skip,
            _body: PhantomData,
        }
    }

    /// The route to test, e.g. `(Method::POST, "/orders")` or `(Method::DELETE, "/orders/1")`.
    /// Required.
    pub fn route(mut self, method: Method, path: impl Into<String>) -> Self {
        self.route = Some((method, path.into()));
        self
    }

    /// The route requires a bearer token that `issuer` mints (configure the service's
    /// [`Jwt`](crate::auth::jwt::Jwt) with the issuer's keys, issuer and audience). Enables
    /// `missing_credential` and the bad-token checks.
    pub fn bearer(mut self, issuer: &TestIssuer) -> Self {
        self.issuer = Some(issuer.clone());
        self
    }

    /// The route requires `scope`; valid tokens carry every scope given. Enables
    /// `missing_scope`.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scopes.push(scope.into());
        self
    }

    /// The route takes a JSON body; `sample` is a valid one. Enables `malformed_json`,
    /// `unknown_field` and `wrong_content_type`.
    pub fn json(mut self, sample: Value) -> Self {
        self.json = Some(sample);
        self
    }

    /// The route refuses bodies over `bytes` with 413. Enables `oversized_body`.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = Some(bytes);
        self
    }

    /// A client may send at most `burst` requests at once before a 429. Enables `rate_limit`.
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Adds a header to every request.
    ///
    /// # Panics
    ///
    /// `name` or `value` is not a valid header name or value.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name = HeaderName::try_from(name).expect("Battery::header: invalid header name");
        let value = HeaderValue::try_from(value).expect("Battery::header: invalid header value");
        self.headers.append(name, value);
        self
    }

    /// Sends a unique `Idempotency-Key` with every request, for routes behind an
    /// [`IdempotencyLayer`](crate::idempotency::IdempotencyLayer) that requires one.
    pub fn idempotency_keys(mut self) -> Self {
        self.idempotency_keys = true;
        self
    }

    /// The response header holding the request id (default `x-request-id`).
    ///
    /// # Panics
    ///
    /// `name` is not a valid header name.
    pub fn request_id_header(mut self, name: &str) -> Self {
        self.request_id_header =
            HeaderName::try_from(name).expect("Battery::request_id_header: invalid header name");
        self
    }

    /// Skips the check named `check`: its requests are not sent and it is reported as skipped.
    /// For a route that deliberately differs, e.g. `unknown_field` for an API that ignores
    /// unknown fields.
    pub fn skip(mut self, check: impl Into<String>) -> Self {
        self.skip.insert(check.into());
        self
    }
}

impl<S, B, ResBody> Battery<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    B: From<Bytes>,
    ResBody: Body,
    ResBody::Error: Into<BoxError>,
{
    /// Runs every check and reports each one.
    ///
    /// # Panics
    ///
    /// [`route`](Self::route) was not called.
    pub async fn run(self) -> Report {
        let (method, path) = self.route.clone().expect("Battery::route is required");
        let mut run = Run { battery: &self, method, path, seen: Vec::new(), checks: Vec::new() };
        run.valid_request().await;
        run.auth().await;
        run.missing_scope().await;
        run.body().await;
        run.rate_limit().await;
        run.envelope();
        run.no_server_error();
        Report { route: format!("{} {}", run.method, run.path), checks: run.checks }
    }
}

impl<S: fmt::Debug, B> fmt::Debug for Battery<S, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Battery")
            .field("service", &self.service)
            .field("route", &self.route)
            .field("issuer", &self.issuer)
            .field("scopes", &self.scopes)
            .field("json", &self.json.is_some())
            .field("max_body", &self.max_body)
            .field("burst", &self.burst)
            .finish_non_exhaustive()
    }
}

/// A response the battery saw, or the service's error.
struct Seen {
    check: String,
    outcome: Result<Answer, String>,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: impl header::AsHeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn describe(&self) -> String {
        let body = String::from_utf8_lossy(&self.body);
        let mut excerpt: String = body.chars().take(EXCERPT).collect();
        if body.chars().count() > EXCERPT {
            excerpt.push('…');
        }
        format!("{} {excerpt}", self.status.as_u16())
    }

    fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The envelope's `details` is a non-empty array.
    fn has_details(&self) -> bool {
        self.json()
            .and_then(|v| v.get("details").and_then(Value::as_array).map(|d| !d.is_empty()))
            .unwrap_or(false)
    }
}

/// The body of one request: its bytes and content type.
struct Payload {
    bytes: Bytes,
    content_type: Option<&'static str>,
}

/// The credential of one request.
enum Credential {
    None,
    Token(String),
}

struct Run<'a, S, B> {
    battery: &'a Battery<S, B>,
    method: Method,
    path: String,
    seen: Vec<Seen>,
    checks: Vec<CheckResult>,
}

impl<S, B, ResBody> Run<'_, S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    B: From<Bytes>,
    ResBody: Body,
    ResBody::Error: Into<BoxError>,
{
    fn valid_token(&self) -> Credential {
        match &self.battery.issuer {
            Some(issuer) => {
                Credential::Token(issuer.token().scopes(self.battery.scopes.iter().cloned()).sign())
            }
            None => Credential::None,
        }
    }

    fn sample(&self) -> Payload {
        match &self.battery.json {
            Some(sample) => Payload {
                bytes: serde_json::to_vec(sample).expect("JSON serializes").into(),
                content_type: Some("application/json"),
            },
            None => Payload { bytes: Bytes::new(), content_type: None },
        }
    }

    fn skipped(&self, name: &str) -> bool {
        self.battery.skip.contains(name)
    }

    fn record(&mut self, name: impl Into<String>, outcome: Outcome) {
        let name = name.into();
        let outcome = if self.skipped(&name) {
            Outcome::Skipped("skipped with Battery::skip".into())
        } else {
            outcome
        };
        self.checks.push(CheckResult { name, outcome });
    }

    /// Sends one request; `Err` when the service failed (a server would drop the connection).
    async fn send(
        &mut self,
        check: &str,
        credential: Credential,
        payload: Payload,
    ) -> Result<&Answer, String> {
        if self.skipped(check) {
            // Not sent at all; `record` reports the check as skipped.
            return Err("skipped".into());
        }
        let mut request = Request::builder().method(self.method.clone()).uri(self.path.as_str());
        let headers = request.headers_mut().expect("a fresh request builder");
        headers.extend(self.battery.headers.clone());
        if let Credential::Token(token) = &credential {
            let value = HeaderValue::try_from(format!("Bearer {token}"))
                .expect("a JWT is a valid header value");
            headers.insert(header::AUTHORIZATION, value);
        }
        if let Some(content_type) = payload.content_type {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        }
        if !payload.bytes.is_empty() || payload.content_type.is_some() {
            headers.insert(header::CONTENT_LENGTH, payload.bytes.len().into());
        }
        if self.battery.idempotency_keys {
            let key = HeaderValue::try_from(format!("battery-{}", unique()))
                .expect("hex is a valid header value");
            headers.insert(HeaderName::from_static("idempotency-key"), key);
        }
        let request = request.body(B::from(payload.bytes)).map_err(|e| {
            format!("the battery could not build a request for {} {}: {e}", self.method, self.path)
        })?;
        let outcome = call(self.battery.service.clone(), request).await;
        self.seen.push(Seen { check: check.to_owned(), outcome });
        match &self.seen.last().expect("just pushed").outcome {
            Ok(answer) => Ok(answer),
            Err(error) => Err(error.clone()),
        }
    }

    async fn valid_request(&mut self) {
        let (credential, payload) = (self.valid_token(), self.sample());
        let with_body = self.battery.json.is_some();
        let outcome = match self.send("valid_request", credential, payload).await {
            Err(error) => Outcome::Failed(error),
            Ok(answer) => {
                let refused = matches!(answer.status.as_u16(), 401 | 403 | 429)
                    || answer.status.is_server_error()
                    || with_body && matches!(answer.status.as_u16(), 400 | 413 | 415 | 422);
                if refused {
                    Outcome::Failed(format!(
                        "a request meeting every requirement was refused: {}",
                        answer.describe()
                    ))
                } else {
                    Outcome::Passed(format!("{}", answer.status.as_u16()))
                }
            }
        };
        self.record("valid_request", outcome);
    }

    async fn auth(&mut self) {
        let Some(issuer) = self.battery.issuer.clone() else {
            let why = "no bearer issuer given (Battery::bearer)";
            self.record("missing_credential", Outcome::Skipped(why.into()));
            for defect in BadToken::ALL {
                self.record(format!("{}_token", defect.name()), Outcome::Skipped(why.into()));
            }
            return;
        };
        let payload = self.sample();
        let outcome = match self.send("missing_credential", Credential::None, payload).await {
            Err(error) => Outcome::Failed(error),
            Ok(answer) => {
                let challenge = answer.header(header::WWW_AUTHENTICATE).unwrap_or("");
                let bearer = challenge.get(..6).is_some_and(|s| s.eq_ignore_ascii_case("bearer"));
                if answer.status != StatusCode::UNAUTHORIZED {
                    Outcome::Failed(format!("expected 401, got {}", answer.describe()))
                } else if !bearer {
                    Outcome::Failed(format!(
                        "401 without a `WWW-Authenticate: Bearer` challenge (got {challenge:?})"
                    ))
                } else {
                    Outcome::Passed(format!("401, WWW-Authenticate: {challenge}"))
                }
            }
        };
        self.record("missing_credential", outcome);

        for defect in BadToken::ALL {
            let name = format!("{}_token", defect.name());
            let token = issuer.token().scopes(self.battery.scopes.iter().cloned()).defect(defect);
            let payload = self.sample();
            let outcome = match self.send(&name, Credential::Token(token.sign()), payload).await {
                Err(error) => Outcome::Failed(error),
                Ok(answer) => {
                    let challenge = answer.header(header::WWW_AUTHENTICATE).unwrap_or("");
                    if answer.status != StatusCode::UNAUTHORIZED {
                        Outcome::Failed(format!("expected 401, got {}", answer.describe()))
                    } else if !challenge.contains(r#"error="invalid_token""#) {
                        Outcome::Failed(format!(
                            "401 without error=\"invalid_token\" in WWW-Authenticate (got {challenge:?})"
                        ))
                    } else {
                        Outcome::Passed("401 invalid_token".into())
                    }
                }
            };
            self.record(name, outcome);
        }
    }

    async fn missing_scope(&mut self) {
        let issuer = match (&self.battery.issuer, self.battery.scopes.is_empty()) {
            (None, _) => {
                let why = "no bearer issuer given (Battery::bearer)";
                return self.record("missing_scope", Outcome::Skipped(why.into()));
            }
            (_, true) => {
                let why = "no required scope given (Battery::scope)";
                return self.record("missing_scope", Outcome::Skipped(why.into()));
            }
            (Some(issuer), false) => issuer.clone(),
        };
        let token = issuer.token().sign();
        let payload = self.sample();
        let outcome = match self.send("missing_scope", Credential::Token(token), payload).await {
            Err(error) => Outcome::Failed(error),
            Ok(answer) => {
                let challenge = answer.header(header::WWW_AUTHENTICATE).unwrap_or("");
                if answer.status != StatusCode::FORBIDDEN {
                    Outcome::Failed(format!(
                        "a valid token without the scopes: expected 403, got {}",
                        answer.describe()
                    ))
                } else if !challenge.contains(r#"error="insufficient_scope""#) {
                    Outcome::Failed(format!(
                        "403 without error=\"insufficient_scope\" in WWW-Authenticate (got {challenge:?})"
                    ))
                } else {
                    Outcome::Passed(format!("403, WWW-Authenticate: {challenge}"))
                }
            }
        };
        self.record("missing_scope", outcome);
    }

    async fn body(&mut self) {
        match self.battery.json.clone() {
            None => {
                let why = "no JSON sample given (Battery::json)";
                for name in ["malformed_json", "unknown_field", "wrong_content_type"] {
                    self.record(name, Outcome::Skipped(why.into()));
                }
            }
            Some(sample) => {
                let text = serde_json::to_string(&sample).expect("JSON serializes");
                let truncated = Bytes::from(text[..text.len().saturating_sub(1)].to_owned());
                let payload = Payload { bytes: truncated, content_type: Some("application/json") };
                self.expect_400("malformed_json", payload).await;

                if let Value::Object(mut object) = sample {
                    object.insert("battery_unknown_field".into(), Value::Bool(true));
                    let bytes = serde_json::to_vec(&object).expect("JSON serializes").into();
                    let payload = Payload { bytes, content_type: Some("application/json") };
                    self.expect_400("unknown_field", payload).await;
                } else {
                    let why = "the JSON sample is not an object";
                    self.record("unknown_field", Outcome::Skipped(why.into()));
                }

                let payload = Payload { bytes: text.into(), content_type: Some("text/plain") };
                self.expect_status(
                    "wrong_content_type",
                    payload,
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                )
                .await;
            }
        }
        match self.battery.max_body {
            None => {
                let why = "no maximum body size given (Battery::max_body)";
                self.record("oversized_body", Outcome::Skipped(why.into()));
            }
            Some(max) => {
                // A JSON object of exactly `max + 1` bytes.
                let padding = (max + 1).saturating_sub(r#"{"battery_padding":""}"#.len());
                let bytes = format!(r#"{{"battery_padding":"{}"}}"#, "a".repeat(padding));
                let payload =
                    Payload { bytes: bytes.into(), content_type: Some("application/json") };
                self.expect_status("oversized_body", payload, StatusCode::PAYLOAD_TOO_LARGE).await;
            }
        }
    }

    async fn expect_400(&mut self, name: &str, payload: Payload) {
        let credential = self.valid_token();
        let outcome = match self.send(name, credential, payload).await {
            Err(error) => Outcome::Failed(error),
            Ok(answer) if answer.status != StatusCode::BAD_REQUEST => {
                Outcome::Failed(format!("expected 400, got {}", answer.describe()))
            }
            Ok(answer) if !answer.has_details() => Outcome::Failed(format!(
                "400 without `details` saying what is wrong: {}",
                answer.describe()
            )),
            Ok(_) => Outcome::Passed("400 with details".into()),
        };
        self.record(name, outcome);
    }

    async fn expect_status(&mut self, name: &str, payload: Payload, expected: StatusCode) {
        let credential = self.valid_token();
        let outcome = match self.send(name, credential, payload).await {
            Err(error) => Outcome::Failed(error),
            Ok(answer) if answer.status != expected => Outcome::Failed(format!(
                "expected {}, got {}",
                expected.as_u16(),
                answer.describe()
            )),
            Ok(_) => Outcome::Passed(format!("{}", expected.as_u16())),
        };
        self.record(name, outcome);
    }

    async fn rate_limit(&mut self) {
        let Some(burst) = self.battery.burst else {
            let why = "no burst given (Battery::burst)";
            return self.record("rate_limit", Outcome::Skipped(why.into()));
        };
        let attempts = burst.saturating_add(1);
        let mut outcome = Outcome::Failed(format!(
            "no 429 after {attempts} valid requests (burst {burst}, plus the earlier checks)"
        ));
        for sent in 1..=attempts {
            let (credential, payload) = (self.valid_token(), self.sample());
            let answer = match self.send("rate_limit", credential, payload).await {
                Err(error) => {
                    outcome = Outcome::Failed(error);
                    break;
                }
                Ok(answer) => answer,
            };
            if answer.status != StatusCode::TOO_MANY_REQUESTS {
                continue;
            }
            let retry_after = answer.header(header::RETRY_AFTER);
            let missing: Vec<&str> = [
                ("Retry-After", retry_after.is_some_and(|v| v.parse::<u64>().is_ok())),
                ("RateLimit", answer.headers.contains_key("ratelimit")),
                ("RateLimit-Policy", answer.headers.contains_key("ratelimit-policy")),
            ]
            .into_iter()
            .filter_map(|(name, present)| (!present).then_some(name))
            .collect();
            outcome = if missing.is_empty() {
                Outcome::Passed(format!(
                    "429 at request {sent}, Retry-After: {}",
                    retry_after.unwrap_or_default()
                ))
            } else {
                Outcome::Failed(format!("429 without {}", missing.join(", ")))
            };
            break;
        }
        self.record("rate_limit", outcome);
    }

    fn envelope(&mut self) {
        let header = &self.battery.request_id_header;
        let mut errors = 0;
        let mut failure = None;
        for seen in &self.seen {
            let Ok(answer) = &seen.outcome else { continue };
            if answer.status.as_u16() < 400 {
                continue;
            }
            errors += 1;
            let problem = envelope_problem(answer, header);
            if let Some(problem) = problem {
                failure = Some(format!("{}: {problem}: {}", seen.check, answer.describe()));
                break;
            }
        }
        let outcome = match (failure, errors) {
            (Some(failure), _) => Outcome::Failed(failure),
            (None, 0) => Outcome::Skipped("no error response to inspect".into()),
            (None, n) => {
                Outcome::Passed(format!("{}, each with its request id", responses(n, "error ")))
            }
        };
        self.record("error_envelope", outcome);
    }

    fn no_server_error(&mut self) {
        let failure = self.seen.iter().find_map(|seen| match &seen.outcome {
            Err(error) => Some(format!("{}: {error}", seen.check)),
            Ok(answer) if answer.status.is_server_error() => {
                Some(format!("{}: {}", seen.check, answer.describe()))
            }
            Ok(_) => None,
        });
        let outcome = match failure {
            Some(failure) => Outcome::Failed(failure),
            None => Outcome::Passed(format!("{}, none 5xx", responses(self.seen.len(), ""))),
        };
        self.record("no_server_error", outcome);
    }
}

/// What is wrong with an error response's envelope, if anything.
fn envelope_problem(answer: &Answer, header: &HeaderName) -> Option<String> {
    let content_type = answer.header(header::CONTENT_TYPE).unwrap_or("");
    if !content_type.starts_with("application/json")
        && !content_type.starts_with("application/problem+json")
    {
        return Some(format!("content type {content_type:?} is not JSON"));
    }
    let Some(Value::Object(body)) = answer.json() else {
        return Some("the body is not a JSON object".into());
    };
    for field in ["code", "message", "request_id"] {
        if !body.get(field).is_some_and(Value::is_string) {
            return Some(format!("no string `{field}`"));
        }
    }
    let Some(id) = answer.header(header) else {
        return Some(format!("no {header} header"));
    };
    if body["request_id"] != id {
        return Some(format!("request_id differs from the {header} header ({id:?})"));
    }
    None
}

async fn call<S, B, ResBody>(mut service: S, request: Request<B>) -> Result<Answer, String>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: Body,
    ResBody::Error: Into<BoxError>,
{
    let failed = |e: S::Error| {
        let e: BoxError = e.into();
        format!("the service returned an error (a server would drop the connection): {e}")
    };
    std::future::poll_fn(|cx| service.poll_ready(cx)).await.map_err(failed)?;
    let response = service.call(request).await.map_err(failed)?;
    let (parts, body) = response.into_parts();
    let body = read_limited(body, &parts.headers, MAX_RESPONSE_BODY)
        .await
        .map_err(|e| format!("reading the response body failed: {e}"))?;
    Ok(Answer { status: parts.status, headers: parts.headers, body })
}

/// `1 error response`, `2 error responses`.
fn responses(n: usize, kind: &str) -> String {
    format!("{n} {kind}response{}", if n == 1 { "" } else { "s" })
}

fn unique() -> String {
    let mut bytes = [0u8; 12];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random source failed");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The outcome of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The check passed; what was seen.
    Passed(String),
    /// The check failed; why.
    Failed(String),
    /// The check does not apply; why.
    Skipped(String),
}

/// One check of a [`Report`].
#[derive(Clone, Debug)]
pub struct CheckResult {
    name: String,
    outcome: Outcome,
}

impl CheckResult {
    /// The check's name, e.g. `expired_token`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Passed, failed or skipped, with the reason.
    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    /// Whether the check passed.
    pub fn passed(&self) -> bool {
        matches!(self.outcome, Outcome::Passed(_))
    }

    /// Whether the check failed.
    pub fn failed(&self) -> bool {
        matches!(self.outcome, Outcome::Failed(_))
    }

    /// Whether the check was skipped.
    pub fn skipped(&self) -> bool {
        matches!(self.outcome, Outcome::Skipped(_))
    }

    /// What was seen, why it failed, or why it was skipped.
    pub fn reason(&self) -> &str {
        match &self.outcome {
            Outcome::Passed(r) | Outcome::Failed(r) | Outcome::Skipped(r) => r,
        }
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.outcome {
            Outcome::Passed(_) => "pass",
            Outcome::Failed(_) => "FAIL",
            Outcome::Skipped(_) => "skip",
        };
        write!(f, "{tag} {}: {}", self.name, self.reason())
    }
}

/// What a [`Battery`] found: every check with its outcome. `Display` lists them.
#[derive(Clone, Debug)]
#[must_use]
pub struct Report {
    route: String,
    checks: Vec<CheckResult>,
}

impl Report {
    /// Every check, in the order run.
    pub fn checks(&self) -> &[CheckResult] {
        &self.checks
    }

    /// The check named `name`.
    pub fn check(&self, name: &str) -> Option<&CheckResult> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// The failed checks.
    pub fn failures(&self) -> impl Iterator<Item = &CheckResult> + '_ {
        self.checks.iter().filter(|c| c.failed())
    }

    /// Whether no check failed.
    pub fn passed(&self) -> bool {
        self.failures().next().is_none()
    }

    /// Panics with the whole report when a check failed.
    ///
    /// # Panics
    ///
    /// A check failed.
    #[track_caller]
    pub fn assert_passed(&self) {
        assert!(self.passed(), "security battery failed:\n{self}");
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = |p: fn(&CheckResult) -> bool| self.checks.iter().filter(|c| p(c)).count();
        writeln!(
            f,
            "battery {}: {} passed, {} failed, {} skipped",
            self.route,
            count(CheckResult::passed),
            count(CheckResult::failed),
            count(CheckResult::skipped)
        )?;
        for check in &self.checks {
            writeln!(f, "  {check}")?;
        }
        Ok(())
    }
}
