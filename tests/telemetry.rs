//! Security telemetry end to end: one stack with every layer, served over HTTP, must never log,
//! answer or `Debug`-print a secret, and must fill the request span and the metrics; the
//! quickstart's JSON logs carry the span of a full request.
#![cfg(feature = "full")]

mod common;

use std::{
    net::SocketAddr,
    num::NonZeroU32,
    sync::mpsc::RecvTimeoutError,
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, Path},
    routing::{get, post},
    Json, Router,
};
use common::{capture_events, Example};
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use serde::Deserialize;
use serde_json::{json, Value};
use tower::ServiceExt;
use tower_shield::{
    auth::{
        api_key::{generate, ApiKeys, GeneratedKey},
        jwt::Jwt,
        AuthLayer,
    },
    envelope::ErrorEnvelopeLayer,
    idempotency::IdempotencyLayer,
    principal::Principal,
    rate_limit::{FailurePolicy, PrincipalKey, Quota, RateLimitLayer, RedisStore},
    scope::{Requirement, ScopeLayer},
    telemetry::PenaltyBoxLayer,
    validate::{Check, ValidateLayer, Validated},
    Error, ErrorKind,
};

const ISSUER: &str = "https://issuer.telemetry.test";
const AUDIENCE: &str = "orders-api";
const JWT_SECRET: &str = "telemetry-test-signing-S3CRET-0123456789";
const PASSWORD: &str = "correct-horse-battery-S3CRET";
const WRONG_PASSWORD: &str = "wrong-horse-S3CRET-guess";
const COOKIE: &str = "session=cookie-S3CRET-0123456789";
/// `user:basic-S3CRET`
const BASIC: &str = "Basic dXNlcjpiYXNpYy1TM0NSRVQ=";
const MARKER: &str = "S3CRET";

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A real HS256 access token with `scope`.
fn token(subject: &str, scope: &str) -> String {
    tower_shield::auth::jwt::install_crypto_provider();
    let claims = json!({
        "sub": subject, "iss": ISSUER, "aud": AUDIENCE, "iat": now(), "exp": now() + 300,
        "scope": scope,
    });
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    username: String,
    password: String,
}

impl Check for Login {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrder {
    item: String,
    quantity: u32,
}

impl Check for NewOrder {}

async fn login(Validated(login): Validated<Login>) -> Result<StatusCode, Error> {
    if login.username == "demo" && login.password == PASSWORD {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Error::new(ErrorKind::InvalidToken).with_reason("login: bad username or password"))
    }
}

async fn create(
    caller: Principal,
    Validated(order): Validated<NewOrder>,
) -> (StatusCode, Json<Value>) {
    let body = json!({"item": order.item, "quantity": order.quantity, "owner": caller.subject()});
    (StatusCode::CREATED, Json(body))
}

async fn show(Path(id): Path<u64>) -> Json<Value> {
    Json(json!({"id": id}))
}

async fn panics() -> &'static str {
    panic!("handler bug")
}

/// A 5xx whose body leaks internals: the envelope must replace it.
async fn fails() -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("db login failed with password {PASSWORD}"))
}

/// Every layer: envelope → penalty box → per-IP limit → auth (JWT, API keys) → scope →
/// validate → idempotency → handlers.
fn stack(keys: ApiKeys) -> (Router, String) {
    let jwt = Jwt::builder()
        .hs256_secret(JWT_SECRET.as_bytes())
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .build()
        .unwrap();
    let auth = AuthLayer::new(jwt).or(keys).add_public(Method::POST, "/login").unwrap();
    let order_schema = ValidateLayer::new()
        .schema(&json!({
            "type": "object",
            "required": ["item", "quantity"],
            "properties": {"item": {"type": "string"}, "quantity": {"type": "integer"}}
        }))
        .unwrap();
    let one_per_minute = Quota::per_minute(NonZeroU32::MIN).named("tight");
    let penalty_box = PenaltyBoxLayer::per_ip()
        .threshold(NonZeroU32::new(1000).unwrap(), Duration::from_secs(60))
        .unwrap();
    let debug = format!("{auth:?} {order_schema:?} {penalty_box:?}");
    let router = Router::new()
        .route("/login", post(login).route_layer(ValidateLayer::new()))
        .route(
            "/orders",
            post(create)
                .route_layer(IdempotencyLayer::new())
                .route_layer(order_schema)
                .route_layer(ScopeLayer::new(Requirement::all(["orders:write"]))),
        )
        .route(
            "/orders/{id}",
            get(show).route_layer(ScopeLayer::new(Requirement::all(["orders:read"]))),
        )
        .route(
            "/limited",
            get(|| async { "ok" }).route_layer(RateLimitLayer::new(PrincipalKey, one_per_minute)),
        )
        .route("/panic", get(panics))
        .route("/fail", get(fails))
        .route_layer(auth)
        .layer(RateLimitLayer::per_ip(
            Quota::per_minute(NonZeroU32::new(1000).unwrap()).named("per-ip"),
        ))
        .layer(penalty_box)
        .layer(ErrorEnvelopeLayer::new());
    (router, debug)
}

fn api_keys(key: &GeneratedKey) -> ApiKeys {
    ApiKeys::new("sk_live")
        .unwrap()
        .header(http::HeaderName::from_static("x-api-key"))
        .with_key(
            key.id(),
            key.hash(),
            Principal::builder("partner").scopes(["orders:read", "orders:write"]),
        )
        .unwrap()
}

/// One request the scenario sends: what to send and the status expected.
struct Call {
    id: &'static str,
    method: Method,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Option<String>,
    status: StatusCode,
}

fn call(id: &'static str, method: Method, path: &'static str, status: u16) -> Call {
    Call {
        id,
        method,
        path,
        headers: vec![("cookie", COOKIE.to_owned())],
        body: None,
        status: StatusCode::from_u16(status).unwrap(),
    }
}

impl Call {
    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn json(mut self, body: impl Into<String>) -> Self {
        self.body = Some(body.into());
        self.header("content-type", "application/json")
    }
}

/// The requests: successes and every kind of failure, all carrying secrets.
fn calls(token: &str, api_key: &str) -> Vec<Call> {
    let bearer = format!("Bearer {token}");
    let login = |password: &str| json!({"username": "demo", "password": password}).to_string();
    let order = json!({"item": "book", "quantity": 2}).to_string();
    vec![
        call("login-ok", Method::POST, "/login", 204).json(login(PASSWORD)),
        call("login-bad", Method::POST, "/login", 401).json(login(WRONG_PASSWORD)),
        // Invalid JSON holding the password: rejected without echoing it.
        call("login-invalid", Method::POST, "/login", 400)
            .json(format!(r#"{{"username":"demo","password":"{PASSWORD}""#)),
        call("show", Method::GET, "/orders/7", 200).header("authorization", bearer.clone()),
        // A read-only token on a write route.
        call("bad-scope", Method::POST, "/orders", 403)
            .header("authorization", bearer.clone())
            .json(order.clone()),
        call("create", Method::POST, "/orders", 201)
            .header("x-api-key", api_key)
            .header("idempotency-key", "order-1")
            .json(order.clone()),
        call("replay", Method::POST, "/orders", 201)
            .header("x-api-key", api_key)
            .header("idempotency-key", "order-1")
            .json(order),
        call("reused-key", Method::POST, "/orders", 422)
            .header("x-api-key", api_key)
            .header("idempotency-key", "order-1")
            .json(json!({"item": "pen", "quantity": 1}).to_string()),
        call("invalid-json", Method::POST, "/orders", 400)
            .header("x-api-key", api_key)
            .json(r#"{"item": "book", "quantity": "#),
        call("tampered", Method::GET, "/orders/7", 401)
            .header("authorization", format!("{bearer}x")),
        call("wrong-key", Method::GET, "/orders/7", 401).header("x-api-key", format!("{api_key}x")),
        call("basic", Method::GET, "/orders/7", 401).header("authorization", BASIC),
        call("limited-1", Method::GET, "/limited", 200).header("x-api-key", api_key),
        call("limited-2", Method::GET, "/limited", 429).header("x-api-key", api_key),
        call("panic", Method::GET, "/panic", 500).header("authorization", bearer.clone()),
        call("fail", Method::GET, "/fail", 500).header("authorization", bearer),
    ]
}

/// Serves `router` on 127.0.0.1:0, sends every call with a real client and returns each
/// response's status line, headers and body as text.
async fn run(router: Router, calls: Vec<Call>) -> Vec<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
            .await
            .unwrap();
    });
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut seen = Vec::new();
    for call in calls {
        let mut request = client
            .request(call.method.clone(), format!("http://{addr}{}", call.path))
            .header("x-request-id", call.id);
        for (name, value) in &call.headers {
            request = request.header(*name, value);
        }
        if let Some(body) = call.body {
            request = request.body(body);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), call.status, "{}", call.id);
        let head = format!("{} {:?}", response.status(), response.headers());
        let body = response.text().await.unwrap();
        seen.push(format!("{}: {head} {body}", call.id));
    }
    server.abort();
    seen
}

/// The secrets the scenario sends; none may appear anywhere.
fn secrets<'a>(token: &'a str, key: &'a GeneratedKey) -> Vec<&'a str> {
    // The key's secret part: everything after `sk_live_<id>_`. (Its id may be logged.)
    let key_secret = &key.key()[format!("sk_live_{}_", key.id()).len()..];
    assert!(key_secret.len() >= 16, "{key_secret}");
    vec![
        token,
        token.rsplit('.').next().unwrap(),
        key.key(),
        key_secret,
        key.hash(),
        PASSWORD,
        WRONG_PASSWORD,
        COOKIE,
        BASIC,
        &BASIC["Basic ".len()..],
        JWT_SECRET,
        MARKER,
    ]
}

fn assert_no_secret(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!text.contains(secret), "{what} holds the secret {secret:?}: {text}");
    }
}

/// The `request` span of the `request completed` event of request `id`.
fn span_of<'a>(events: &'a [Value], id: &str) -> &'a Value {
    events
        .iter()
        .filter(|e| e["fields"]["message"] == "request completed")
        .map(|e| &e["span"])
        .find(|span| span["request_id"] == id)
        .unwrap_or_else(|| panic!("no `request completed` event for {id}"))
}

/// The sum of the counters `name` whose labels include `labels`.
fn counter(
    snapshot: &[(
        metrics_util::CompositeKey,
        Option<metrics::Unit>,
        Option<metrics::SharedString>,
        DebugValue,
    )],
    name: &str,
    labels: &[(&str, &str)],
) -> u64 {
    snapshot
        .iter()
        .filter(|(key, ..)| key.key().name() == name)
        .filter(|(key, ..)| {
            labels.iter().all(|(k, v)| key.key().labels().any(|l| l.key() == *k && l.value() == *v))
        })
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => *n,
            other => panic!("{name} is not a counter: {other:?}"),
        })
        .sum()
}

fn snapshot(
    snapshotter: &Snapshotter,
) -> Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)> {
    snapshotter.snapshot().into_vec()
}

#[test]
fn no_secret_reaches_logs_responses_or_debug_and_the_span_is_filled() {
    let key = generate("sk_live").unwrap();
    let token = token("alice", "orders:read");
    let (router, debug) = stack(api_keys(&key));
    let secrets = secrets(&token, &key);
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    let ((responses, errors), events) = capture_events(tracing::Level::TRACE, || {
        metrics::with_local_recorder(&recorder, || {
            runtime.block_on(async {
                let responses = run(router.clone(), calls(&token, key.key())).await;
                // In process, the rejections' `Error`s (Debug and Display) are visible too.
                let mut errors = Vec::new();
                for (path, name, value, body) in [
                    ("/orders/7", "authorization", format!("Bearer {token}x"), None),
                    ("/orders/7", "x-api-key", format!("{}x", key.key()), None),
                    (
                        "/login",
                        "cookie",
                        COOKIE.to_owned(),
                        Some(format!(r#"{{"password":"{PASSWORD}"#)),
                    ),
                ] {
                    let method = if body.is_some() { Method::POST } else { Method::GET };
                    let request = Request::builder()
                        .method(method)
                        .uri(path)
                        .header(name, value)
                        .header("content-type", "application/json")
                        .extension(ConnectInfo(SocketAddr::from(([127, 0, 0, 2], 4000))))
                        .body(axum::body::Body::from(body.unwrap_or_default()))
                        .unwrap();
                    let response = router.clone().oneshot(request).await.unwrap();
                    let error = response.extensions().get::<Error>().expect("a rejection");
                    errors.push(format!("{error:?} {error} {:?}", error.reason()));
                    let body = response.into_body().collect().await.unwrap().to_bytes();
                    errors.push(String::from_utf8_lossy(&body).into_owned());
                }
                (responses, errors)
            })
        })
    });

    let logs: Vec<String> = events.iter().map(Value::to_string).collect();
    assert!(logs.len() > 20, "the scenario is logged: {logs:?}");
    for line in &logs {
        assert_no_secret("a log line", line, &secrets);
    }
    for response in &responses {
        assert_no_secret("a response", response, &secrets);
    }
    for error in &errors {
        assert_no_secret("an error", error, &secrets);
    }
    assert_no_secret("the layers' Debug output", &debug, &secrets);
    assert!(debug.contains("ApiKeys") || debug.contains("AuthLayer"), "{debug}");

    // The request span, as the JSON formatter prints it.
    let create = span_of(&events, "create");
    assert_eq!(create["name"], "request");
    assert_eq!(create["method"], "POST");
    assert_eq!(create["route"], "/orders");
    assert_eq!(create["client_ip"], "127.0.0.1");
    assert_eq!(create["subject"], "partner");
    assert_eq!(create["auth.method"], "api_key");
    assert_eq!(create["auth.outcome"], "success");
    assert_eq!(create["rate_limit.policy"], "per-ip");
    assert_eq!(create["rate_limit.outcome"], "allowed");
    assert_eq!(create["scope.outcome"], "allowed");
    assert_eq!(create["validation.outcome"], "passed");
    assert_eq!(create["idempotency.outcome"], "stored");
    assert_eq!(create["status"], 201);
    assert!(create["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{create}");
    assert!(create.get("error.code").is_none(), "{create}");

    assert_eq!(span_of(&events, "replay")["idempotency.outcome"], "replayed");
    assert_eq!(span_of(&events, "reused-key")["idempotency.outcome"], "mismatch");
    let show = span_of(&events, "show");
    assert_eq!(show["route"], "/orders/{id}", "the template, never /orders/7");
    assert_eq!(show["subject"], "alice");
    assert_eq!(show["auth.method"], "jwt");
    let bad_scope = span_of(&events, "bad-scope");
    assert_eq!(bad_scope["scope.outcome"], "forbidden");
    assert_eq!(bad_scope["error.code"], "forbidden");
    assert_eq!(bad_scope["status"], 403);
    assert!(bad_scope.get("validation.outcome").is_none(), "validation never ran");
    let tampered = span_of(&events, "tampered");
    assert_eq!(tampered["auth.outcome"], "failure");
    assert_eq!(tampered["auth.method"], "jwt");
    assert!(tampered.get("subject").is_none());
    assert_eq!(span_of(&events, "basic")["auth.method"], "none");
    assert_eq!(span_of(&events, "login-ok")["auth.outcome"], "public");
    assert_eq!(span_of(&events, "login-invalid")["validation.outcome"], "rejected");
    let limited = span_of(&events, "limited-2");
    assert_eq!(limited["rate_limit.policy"], "tight");
    assert_eq!(limited["rate_limit.outcome"], "rejected");
    assert_eq!(limited["error.code"], "rate_limited");
    assert_eq!(limited["status"], 429);
    let panicked = span_of(&events, "panic");
    assert_eq!(panicked["status"], 500);
    assert_eq!(panicked["error.code"], "internal");
    assert!(panicked["latency_ms"].is_number());

    // The security events, with their stable fields.
    let security: Vec<&Value> =
        events.iter().filter(|e| e["target"] == "tower_shield::security").collect();
    let event = |name: &str| {
        security
            .iter()
            .find(|e| e["fields"]["event"] == name)
            .unwrap_or_else(|| panic!("no {name} event"))
    };
    assert_eq!(event("auth.failure")["fields"]["auth_method"], "jwt");
    assert!(event("auth.failure")["fields"]["reason"].is_string());
    assert_eq!(event("scope.denied")["fields"]["outcome"], "forbidden");
    assert_eq!(event("rate_limit.rejected")["fields"]["policy"], "tight");
    assert_eq!(event("validate.rejected")["fields"]["route"], "/login");
    assert_eq!(event("idempotency.mismatch")["fields"]["caller"], "api_key");

    // The metrics: outcomes counted, routes as templates only.
    let snapshot = snapshot(&snapshotter);
    let auth = "tower_shield_auth_total";
    assert_eq!(counter(&snapshot, auth, &[("method", "api_key"), ("outcome", "success")]), 6);
    assert_eq!(counter(&snapshot, auth, &[("method", "api_key"), ("outcome", "failure")]), 2);
    assert_eq!(counter(&snapshot, auth, &[("method", "jwt"), ("outcome", "success")]), 4);
    assert_eq!(counter(&snapshot, auth, &[("method", "jwt"), ("outcome", "failure")]), 2);
    assert_eq!(counter(&snapshot, auth, &[("method", "none"), ("outcome", "failure")]), 1);
    let denied = "tower_shield_scope_denied_total";
    assert_eq!(counter(&snapshot, denied, &[("outcome", "forbidden")]), 1);
    let limited = "tower_shield_rate_limit_rejected_total";
    assert_eq!(counter(&snapshot, limited, &[("policy", "tight"), ("key_kind", "principal")]), 1);
    let invalid = "tower_shield_validation_rejected_total";
    assert_eq!(counter(&snapshot, invalid, &[]), 3);
    let idempotency = "tower_shield_idempotency_total";
    assert_eq!(counter(&snapshot, idempotency, &[("outcome", "stored")]), 1);
    assert_eq!(counter(&snapshot, idempotency, &[("outcome", "replayed")]), 1);
    assert_eq!(counter(&snapshot, idempotency, &[("outcome", "mismatch")]), 1);
    let routes: Vec<String> = snapshot
        .iter()
        .filter(|(key, ..)| key.key().name() == "tower_shield_request_duration_seconds")
        .flat_map(|(key, ..)| key.key().labels().filter(|l| l.key() == "route"))
        .map(|l| l.value().to_owned())
        .collect();
    assert!(routes.iter().any(|r| r == "/orders/{id}"), "{routes:?}");
    assert!(routes.iter().all(|r| !r.contains("/7")), "raw paths are never labels: {routes:?}");
    let five_xx = snapshot.iter().find(|(key, ..)| {
        key.key().name() == "tower_shield_request_duration_seconds"
            && key.key().labels().any(|l| l.key() == "route" && l.value() == "/panic")
    });
    let (key, ..) = five_xx.expect("the panic is timed");
    assert!(key.key().labels().any(|l| l.key() == "status" && l.value() == "5xx"));
}

/// A route table's open route lets an anonymous caller through, and is neither a denial in
/// the metrics nor anything but `open` in the span; an unlisted route is counted `unmapped`.
#[test]
fn open_routes_of_a_scope_table_are_not_denials() {
    use tower_shield::scope::RouteRequirements;

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let table = RouteRequirements::new()
        .open(Method::GET, "/health")
        .unwrap()
        .route(Method::GET, "/orders", Requirement::scope("orders:read"))
        .unwrap();
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/other", get(|| async { "other" }))
        .layer(ScopeLayer::per_route(table))
        .layer(ErrorEnvelopeLayer::new());
    let send = |path: &str| {
        let request = Request::get(path).header("x-request-id", path.trim_start_matches('/'));
        let mut request = request.body(axum::body::Body::empty()).unwrap();
        request.extensions_mut().insert(Principal::builder("alice").build());
        runtime.block_on(app.clone().oneshot(request)).unwrap().status()
    };
    let (statuses, events) = capture_events(tracing::Level::TRACE, || {
        metrics::with_local_recorder(&recorder, || (send("/health"), send("/other")))
    });
    assert_eq!(statuses, (StatusCode::OK, StatusCode::FORBIDDEN));
    let snapshot = snapshot(&snapshotter);
    let denied = "tower_shield_scope_denied_total";
    assert_eq!(counter(&snapshot, denied, &[("outcome", "open")]), 0);
    assert_eq!(counter(&snapshot, denied, &[("outcome", "unmapped")]), 1);
    assert_eq!(span_of(&events, "health")["scope.outcome"], "open");
    assert_eq!(span_of(&events, "other")["scope.outcome"], "unmapped");
}

#[test]
fn backend_failures_fail_open_and_abuse_blocks_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            // Nothing listens on port 1: every call fails, and the store limits locally.
            let store = RedisStore::new("redis://127.0.0.1:1", FailurePolicy::FailOpen).unwrap();
            let quota = Quota::per_minute(NonZeroU32::new(100).unwrap()).named("per-ip");
            let penalty_box = PenaltyBoxLayer::per_ip()
                .threshold(NonZeroU32::new(2).unwrap(), Duration::from_secs(60))
                .unwrap();
            let router = Router::new()
                .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
                .layer(RateLimitLayer::per_ip(quota).with_store(store))
                .layer(penalty_box)
                .layer(ErrorEnvelopeLayer::new());
            let peer = ConnectInfo(SocketAddr::from(([127, 0, 0, 3], 4000)));
            let mut statuses = Vec::new();
            for _ in 0..3 {
                let request =
                    Request::get("/missing").extension(peer).body(axum::body::Body::empty());
                let response = router.clone().oneshot(request.unwrap()).await.unwrap();
                statuses.push(response.status().as_u16());
            }
            assert_eq!(statuses, [404, 404, 429], "two 404s block the client");
        })
    });
    let snapshot = snapshot(&snapshotter);
    let errors = counter(&snapshot, "tower_shield_backend_errors_total", &[("backend", "redis")]);
    assert_eq!(errors, 2, "each failure counts, though logged once per second");
    assert_eq!(counter(&snapshot, "tower_shield_fail_open_total", &[("backend", "redis")]), 2);
    assert_eq!(counter(&snapshot, "tower_shield_abuse_blocks_total", &[("key_kind", "ip")]), 1);
    assert_eq!(counter(&snapshot, "tower_shield_abuse_rejected_total", &[("key_kind", "ip")]), 1);
}

/// Lines the example printed to stdout until `until` holds for one (at most 30 s).
fn read_until(app: &Example, until: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match app.stdout.recv_timeout(left) {
            Ok(line) => {
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| panic!("not a JSON log line: {line}"));
                let done = until(&value);
                lines.push(value);
                if done {
                    return lines;
                }
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                panic!("the awaited line never came; got {lines:#?}")
            }
        }
    }
}

#[tokio::test]
async fn quickstart_logs_the_span_of_a_full_request_as_json() {
    const SECRET: &str = "quickstart-telemetry-S3CRET-0123456789ab";
    let password = "demo-password-change-me";
    let app = Example::spawn(
        "quickstart",
        &[("JWT_SECRET", SECRET), ("LOG_FORMAT", "json"), ("RUST_LOG", "tower_shield=debug")],
    );
    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    let response = client
        .post(app.url("/login"))
        .header("x-request-id", "qs-login")
        .json(&json!({"username": "demo", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let token =
        response.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    let response = client
        .post(app.url("/orders"))
        .bearer_auth(&token)
        .header("x-request-id", "qs-order")
        .header("idempotency-key", "qs-order-1")
        .json(&json!({"item": "book", "quantity": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);

    let completed = |id: &'static str| {
        move |line: &Value| {
            line["fields"]["message"] == "request completed" && line["span"]["request_id"] == id
        }
    };
    let mut lines = read_until(&app, completed("qs-login"));
    let login = lines.last().unwrap()["span"].clone();
    assert_eq!(login["route"], "/login");
    assert_eq!(login["auth.outcome"], "public");
    assert_eq!(login["validation.outcome"], "passed");
    assert_eq!(login["status"], 200);

    lines.extend(read_until(&app, completed("qs-order")));
    let order = &lines.last().unwrap()["span"];
    assert_eq!(order["name"], "request");
    assert_eq!(order["method"], "POST");
    assert_eq!(order["route"], "/orders");
    assert_eq!(order["client_ip"], "127.0.0.1");
    assert_eq!(order["subject"], "demo");
    assert_eq!(order["auth.method"], "jwt");
    assert_eq!(order["auth.outcome"], "success");
    assert_eq!(order["rate_limit.policy"], "per-principal");
    assert_eq!(order["rate_limit.outcome"], "allowed");
    assert_eq!(order["scope.outcome"], "allowed");
    assert_eq!(order["validation.outcome"], "passed");
    assert_eq!(order["idempotency.outcome"], "stored");
    assert_eq!(order["status"], 201);
    assert!(order["latency_ms"].is_number(), "{order}");

    // The security events of the order, inside its span.
    let in_order: Vec<&Value> =
        lines.iter().filter(|l| l["span"]["request_id"] == "qs-order").collect();
    let success = in_order
        .iter()
        .find(|l| l["fields"]["event"] == "auth.success")
        .expect("an auth.success event");
    assert_eq!(success["target"], "tower_shield::security");
    assert_eq!(success["fields"]["subject"], "demo");
    assert_eq!(success["fields"]["auth_method"], "jwt");
    assert!(in_order.iter().any(|l| l["fields"]["event"] == "scope.allowed"));

    let text = lines.iter().map(Value::to_string).collect::<String>();
    for secret in [token.as_str(), password, SECRET] {
        assert!(!text.contains(secret), "the logs hold {secret:?}");
    }
}
