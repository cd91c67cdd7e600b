use std::{
    convert::Infallible,
    net::SocketAddr,
    num::NonZeroU32,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use tower::{service_fn, Layer, ServiceBuilder, ServiceExt};

use super::*;
use crate::{
    auth::{AuthRequest, Authenticator, Verdict},
    clock::FakeClock,
    principal::{AuthMethod, Principal},
    rate_limit::PeerAddr,
    test_helpers::to_json,
    Error, ErrorKind,
};

type Body = Full<Bytes>;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// Accepts `Bearer user-<name>` as principal `<name>`, rejects every other bearer token, and
/// counts how often it was asked.
#[derive(Debug, Default)]
struct Counting {
    calls: Arc<AtomicUsize>,
}

impl Authenticator for Counting {
    fn authenticate(&self, request: &AuthRequest<'_>) -> Verdict {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match request.bearer() {
            Some(token) => match token.strip_prefix("user-") {
                Some(name) => Verdict::Authenticated(Principal::builder(name).build()),
                None => Verdict::Rejected(
                    Error::new(ErrorKind::InvalidToken).with_reason("test: not a user token"),
                ),
            },
            None => Verdict::NotMine,
        }
    }

    fn method(&self) -> AuthMethod {
        AuthMethod::Custom("counting")
    }
}

fn counting() -> (AuthLayer, Arc<AtomicUsize>) {
    let auth = Counting::default();
    let calls = Arc::clone(&auth.calls);
    (AuthLayer::new(auth), calls)
}

fn request(path: &str, peer: [u8; 4], token: Option<&str>) -> Request<Body> {
    let mut builder = Request::get(path);
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let mut request = builder.body(Body::default()).unwrap();
    request.extensions_mut().insert(PeerAddr(SocketAddr::from((peer, 4711))));
    request
}

/// 401 for paths ending in `/fail`, 200 otherwise.
async fn handler(request: Request<Body>) -> Result<Response<Body>, Infallible> {
    let mut response = Response::new(Body::from("ok"));
    if request.uri().path().ends_with("/fail") {
        *response.status_mut() = StatusCode::UNAUTHORIZED;
    }
    Ok(response)
}

fn builder(auth: AuthLayer) -> ShieldBuilder {
    builder_with_clock(auth, &FakeClock::new())
}

fn builder_with_clock(auth: AuthLayer, clock: &FakeClock) -> ShieldBuilder {
    Shield::builder().with_auth(auth).with_store(MemoryStore::new().with_clock(clock.clone()))
}

#[tokio::test]
async fn invalid_token_flood_is_shed_per_ip_before_auth() {
    let (auth, calls) = counting();
    let shield = builder(auth).with_ip_quota(Quota::per_minute(nz(3))).build().unwrap();
    let service = shield.layer(service_fn(handler));

    let mut statuses = Vec::new();
    for _ in 0..10 {
        let response =
            service.clone().oneshot(request("/orders", [203, 0, 113, 7], Some("forged"))).await;
        statuses.push(response.unwrap().status());
    }
    let unauthorized = StatusCode::UNAUTHORIZED;
    let too_many = StatusCode::TOO_MANY_REQUESTS;
    assert_eq!(statuses[..3], [unauthorized; 3]);
    assert_eq!(statuses[3..], [too_many; 7]);
    assert_eq!(calls.load(Ordering::SeqCst), 3, "the authenticator never saw the shed requests");

    // Another address is not affected.
    let response = service.oneshot(request("/orders", [198, 51, 100, 1], Some("forged"))).await;
    assert_eq!(response.unwrap().status(), unauthorized);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn rejections_are_rendered_by_the_envelope() {
    let (auth, _) = counting();
    let shield = builder(auth).with_ip_quota(Quota::per_minute(nz(1))).build().unwrap();
    let service = shield.layer(service_fn(handler));

    let response = service.clone().oneshot(request("/orders", [203, 0, 113, 7], None)).await;
    let response = response.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()[header::WWW_AUTHENTICATE], r#"Bearer realm="api""#);
    let id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body = to_json(response.into_body()).await;
    assert_eq!(body["code"], "unauthenticated");
    assert_eq!(body["request_id"], id.as_str());

    let response = service.oneshot(request("/orders", [203, 0, 113, 7], None)).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key(header::RETRY_AFTER));
    assert_eq!(response.headers()["ratelimit-policy"], r#""per-ip";q=1;w=60"#);
    assert_eq!(to_json(response.into_body()).await["code"], "rate_limited");
}

#[test]
fn no_auth_is_a_config_error_not_an_open_api() {
    let error = Shield::builder().build().unwrap_err();
    assert!(error.to_string().contains("with_auth"), "{error}");
}

#[test]
fn bad_public_routes_and_shared_quota_names_are_config_errors() {
    let (auth, _) = counting();
    assert!(builder(auth.clone()).add_public(Method::GET, "/a/../b").build().is_err());
    assert!(builder(auth.clone()).add_public(Method::GET, "health").build().is_err());
    let same = Quota::per_minute(nz(5)).named("shared");
    let error = builder(auth.clone())
        .with_ip_quota(same.clone())
        .with_principal_quota(same)
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("shared"), "{error}");
    // Unnamed quotas get the layer's name.
    let shield = builder(auth)
        .with_ip_quota(Quota::per_minute(nz(5)))
        .with_principal_quota(Quota::per_minute(nz(5)))
        .build()
        .unwrap();
    assert!(format!("{:?}", shield.ip_limit()).contains("per-ip"));
    assert!(format!("{:?}", shield.principal_limit()).contains("per-principal"));
}

#[tokio::test]
async fn public_routes_need_no_credential_and_get_the_stricter_limit() {
    let (auth, calls) = counting();
    let shield = builder(auth)
        .add_public(Method::GET, "/health")
        .with_public_quota(Quota::per_minute(nz(2)))
        .build()
        .unwrap();
    let service = ServiceBuilder::new().layer(shield.clone()).layer(shield.public());
    let service = service.service_fn(handler);

    for _ in 0..2 {
        let response = service.clone().oneshot(request("/health", [203, 0, 113, 7], None)).await;
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["ratelimit-policy"], r#""public";q=2;w=60"#);
        // The shield's own per-IP limit is listed after the route's.
        let policies: Vec<_> = response.headers().get_all("ratelimit-policy").iter().collect();
        assert_eq!(policies, [r#""public";q=2;w=60"#, r#""per-ip";q=600;w=60"#]);
        assert_eq!(response.headers().get_all("ratelimit").iter().count(), 2);
    }
    let response = service.clone().oneshot(request("/health", [203, 0, 113, 7], None)).await;
    assert_eq!(response.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(calls.load(Ordering::SeqCst), 0, "public requests without credentials");

    // Not a path trick: another path still needs a credential.
    let response = service.oneshot(request("/health/../orders", [198, 51, 100, 1], None)).await;
    assert_eq!(response.unwrap().status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn per_principal_quota_follows_the_caller_across_addresses() {
    let (auth, _) = counting();
    let clock = FakeClock::new();
    let shield = builder_with_clock(auth, &clock)
        .with_principal_quota(Quota::per_minute(nz(2)))
        .build()
        .unwrap();
    let service = shield.layer(service_fn(handler));

    for peer in [[203, 0, 113, 1], [203, 0, 113, 2]] {
        let response = service.clone().oneshot(request("/orders", peer, Some("user-alice"))).await;
        assert_eq!(response.unwrap().status(), StatusCode::OK);
    }
    let response =
        service.clone().oneshot(request("/orders", [203, 0, 113, 3], Some("user-alice"))).await;
    let response = response.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["ratelimit-policy"], r#""per-principal";q=2;w=60"#);

    // Someone else from the same address is not affected, and alice recovers with time.
    let response =
        service.clone().oneshot(request("/orders", [203, 0, 113, 3], Some("user-bob"))).await;
    assert_eq!(response.unwrap().status(), StatusCode::OK);
    clock.advance(Duration::from_secs(30));
    let response = service.oneshot(request("/orders", [203, 0, 113, 3], Some("user-alice"))).await;
    assert_eq!(response.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn sensitive_routes_count_only_failures() {
    let (auth, _) = counting();
    let shield = builder(auth)
        .add_public(Method::GET, "/login")
        .add_public(Method::GET, "/fail")
        .with_sensitive_quota(Quota::per_minute(nz(2)))
        .build()
        .unwrap();
    let service = ServiceBuilder::new().layer(shield.clone()).layer(shield.sensitive());
    let service = service.service_fn(handler);
    let peer = [203, 0, 113, 7];

    // Successes are never counted.
    for _ in 0..5 {
        let response = service.clone().oneshot(request("/login", peer, None)).await;
        assert_eq!(response.unwrap().status(), StatusCode::OK);
    }
    // Two failures spend the budget; then even a correct attempt is refused without running.
    for _ in 0..2 {
        let response = service.clone().oneshot(request("/fail", peer, None)).await;
        assert_eq!(response.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    let response = service.clone().oneshot(request("/login", peer, None)).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["ratelimit-policy"], r#""sensitive";q=2;w=60"#);

    // Authenticated callers (on a route that is not public: public routes attach no principal)
    // are also limited per principal, wherever they come from.
    for peer in [[198, 51, 100, 1], [198, 51, 100, 2]] {
        let response = service.clone().oneshot(request("/pay/fail", peer, Some("user-eve"))).await;
        assert_eq!(response.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    let response = service.oneshot(request("/pay", [198, 51, 100, 3], Some("user-eve"))).await;
    let response = response.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["ratelimit-policy"], r#""sensitive-principal";q=2;w=60"#);
}

#[cfg(feature = "scope")]
#[tokio::test]
async fn sensitive_with_step_up_demands_a_strong_login() {
    let (auth, _) = counting();
    let shield = builder(auth).build().unwrap();
    let service = ServiceBuilder::new()
        .layer(shield.clone())
        .layer(shield.sensitive_with_step_up(crate::scope::Requirement::acr(["mfa"])))
        .service_fn(handler);

    let response = service.oneshot(request("/payments", [203, 0, 113, 7], Some("user-alice")));
    let response = response.await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let challenge = response.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
    assert!(challenge.contains(r#"error="insufficient_user_authentication""#), "{challenge}");
}

#[cfg(feature = "scope")]
#[tokio::test]
async fn standard_routes_check_scopes() {
    let (auth, _) = counting();
    let shield = builder(auth).build().unwrap();
    let service = ServiceBuilder::new()
        .layer(shield.clone())
        .layer(shield.standard(crate::scope::Requirement::scope("orders:read")))
        .service_fn(handler);
    let response = service.oneshot(request("/orders", [203, 0, 113, 7], Some("user-alice")));
    let response = response.await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(to_json(response.into_body()).await["code"], "forbidden");
}

/// A shield with a route table inside an axum router: each route's requirement by its
/// template, public routes without one, everything else denied.
#[cfg(feature = "axum")]
#[tokio::test]
async fn the_shield_checks_a_route_table_by_template() {
    use axum::{routing::get, Router};

    use crate::scope::{Requirement, RouteRequirements, ScopeLayer};

    let (auth, _) = counting();
    let table = RouteRequirements::new()
        .route(Method::GET, "/orders/{id}", Requirement::authenticated())
        .unwrap()
        .route(Method::DELETE, "/orders/{id}", Requirement::role("admin"))
        .unwrap();
    let shield = builder(auth)
        .add_public(Method::GET, "/health")
        .with_scopes(ScopeLayer::per_route(table))
        .build()
        .unwrap();
    let app: Router = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/orders/{id}", get(|| async { "one" }).delete(|| async { "gone" }))
        .layer(shield);
    let send = |method: Method, path: &str, token: Option<&str>| {
        let mut request = request(path, [203, 0, 113, 7], token).map(axum::body::Body::new);
        *request.method_mut() = method;
        app.clone().oneshot(request)
    };

    let cases = [
        (Method::GET, "/health", None, 200),
        (Method::GET, "/orders/7", Some("user-alice"), 200),
        (Method::HEAD, "/orders/7", Some("user-alice"), 200),
        (Method::DELETE, "/orders/7", Some("user-alice"), 403),
        (Method::GET, "/nope", Some("user-alice"), 403),
        (Method::GET, "/nope", None, 401),
        (Method::PUT, "/health", None, 401),
    ];
    for (method, path, token, status) in cases {
        let response = send(method.clone(), path, token).await.unwrap();
        assert_eq!(response.status(), status, "{method} {path} {token:?}");
        if status == 403 {
            let policy = response.headers()["ratelimit-policy"].to_str().unwrap();
            assert_eq!(policy, r#""per-principal";q=600;w=60, "per-ip";q=600;w=60"#);
        }
    }
}

/// The shield on an axum router, over a real socket with a real HTTP client.
#[cfg(feature = "axum")]
#[tokio::test]
async fn axum_router_smoke_test() {
    use axum::{routing::get, Router};

    let (auth, _) = counting();
    let shield = Shield::builder()
        .with_auth(auth)
        .add_public(Method::GET, "/health")
        .with_ip_quota(Quota::per_minute(nz(5)))
        .build()
        .unwrap();
    let app: Router = Router::new()
        .route("/health", get(|| async { "ok" }).route_layer(shield.public()))
        .route("/me", get(|p: Principal| async move { p.subject().to_owned() }))
        .layer(shield);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
    });
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = |path: &str| format!("http://{addr}{path}");

    let response = client.get(url("/health")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("x-request-id"));
    let response = client.get(url("/me")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = client.get(url("/me")).bearer_auth("user-alice").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "alice");
    // The unknown route is not revealed to anonymous callers.
    let response = client.get(url("/nope")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // 5 per minute per IP, every route together.
    let response = client.get(url("/me")).bearer_auth("user-alice").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = client.get(url("/me")).bearer_auth("user-alice").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    server.abort();
}

// ===== the guard against the layers it replaces =====

/// What a response says, as a client sees it: the status, the error code, the protocol
/// headers, and the rate-limit list items whatever their split across lines.
#[derive(Debug, PartialEq)]
struct Seen {
    status: StatusCode,
    code: Option<String>,
    challenge: Option<String>,
    retry_after: Option<String>,
    policies: Vec<String>,
    limits: Vec<String>,
}

async fn seen<B>(response: Response<B>) -> Seen
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let header = |name: header::HeaderName| {
        response.headers().get(name).map(|v| v.to_str().unwrap().to_owned())
    };
    let items = |name: &str| -> Vec<String> {
        let lines = response.headers().get_all(name).iter();
        let lines: Vec<_> = lines.map(|line| line.to_str().unwrap().to_owned()).collect();
        lines.join(", ").split(", ").filter(|i| !i.is_empty()).map(str::to_owned).collect()
    };
    let (challenge, retry_after) = (header(header::WWW_AUTHENTICATE), header(header::RETRY_AFTER));
    let (policies, limits) = (items("ratelimit-policy"), items("ratelimit"));
    let status = response.status();
    let body = crate::test_helpers::to_bytes(response.into_body()).await;
    let code = match status.is_success() {
        true => None,
        false => serde_json::from_slice::<serde_json::Value>(&body).unwrap()["code"]
            .as_str()
            .map(str::to_owned),
    };
    Seen { status, code, challenge, retry_after, policies, limits }
}

/// An authenticator that answers later: [`Counting`]'s verdicts behind a yield.
#[derive(Debug, Default)]
struct Later(Counting);

impl Authenticator for Later {
    fn authenticate(&self, request: &AuthRequest<'_>) -> Verdict {
        match self.0.authenticate(request) {
            Verdict::Authenticated(principal) => Verdict::Pending(Box::pin(async move {
                tokio::task::yield_now().await;
                Ok(principal)
            })),
            Verdict::Rejected(error) => Verdict::Pending(Box::pin(async move {
                tokio::task::yield_now().await;
                Err(error)
            })),
            other => other,
        }
    }

    fn method(&self) -> AuthMethod {
        AuthMethod::Custom("later")
    }
}

/// A memory store that answers through its future only, after a yield (as Redis does).
#[derive(Clone, Debug)]
struct Deferred(MemoryStore);

impl crate::rate_limit::Store for Deferred {
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<crate::rate_limit::Decision, Error>> + Send>,
    >;

    fn decide(
        &self,
        limits: &crate::rate_limit::Limits,
        key: &crate::rate_limit::RateKey,
        cost: u32,
        mode: crate::rate_limit::Mode,
    ) -> Self::Future {
        let (store, limits, key) = (self.0.clone(), limits.clone(), key.clone());
        Box::pin(async move {
            tokio::task::yield_now().await;
            Ok(store.decide_now(&limits, &key, cost, mode))
        })
    }
}

/// A request of a comparison: path, peer, credential, and seconds to wait before it.
type Step<'a> = (&'a str, [u8; 4], Option<&'a str>, u64);

/// The requests of [`the_guard_answers_as_the_stacked_layers_do`], in order.
const SCRIPT: [Step<'static>; 12] = [
    ("/orders", [203, 0, 113, 7], Some("user-alice"), 0),
    ("/health", [203, 0, 113, 7], None, 0),
    ("/orders", [203, 0, 113, 7], Some("user-alice"), 0),
    // The per-principal quota is spent: a 429 with both limits' items.
    ("/orders", [203, 0, 113, 7], Some("user-alice"), 0),
    ("/orders", [198, 51, 100, 1], Some("forged"), 0),
    ("/orders", [198, 51, 100, 1], None, 0),
    ("/orders", [198, 51, 100, 1], Some("user-bob"), 0),
    // The per-IP quota of the first address is spent before any credential is read.
    ("/orders", [203, 0, 113, 7], Some("user-carol"), 0),
    ("/health", [203, 0, 113, 7], None, 0),
    // With scopes: a role nobody has, and a route not in the table.
    ("/admin", [192, 0, 2, 9], Some("user-dave"), 0),
    ("/other", [192, 0, 2, 9], Some("user-dave"), 0),
    ("/other", [192, 0, 2, 9], None, 0),
];

/// The answers of `service` to `steps`, `clock` advanced before each.
async fn answers<S, B>(service: S, clock: &FakeClock, steps: &[Step<'_>]) -> Vec<Seen>
where
    S: tower::Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let mut answers = Vec::new();
    for &(path, peer, token, wait) in steps {
        clock.advance(Duration::from_secs(wait));
        let response = service.clone().oneshot(request(path, peer, token)).await.unwrap();
        answers.push(seen(response).await);
    }
    answers
}

/// The route table of the comparisons: `/orders` for any principal, `/admin` for a role nobody
/// has; the stacked layers also open the public `/health`, which the shield skips by itself.
fn routes(open_health: bool) -> crate::scope::ScopeLayer {
    use crate::scope::{Requirement, RouteRequirements, ScopeLayer};
    let table = RouteRequirements::new()
        .route(Method::GET, "/orders", Requirement::authenticated())
        .unwrap()
        .route(Method::GET, "/admin", Requirement::role("admin"))
        .unwrap();
    let table = if open_health { table.open(Method::GET, "/health").unwrap() } else { table };
    ScopeLayer::per_route(table)
}

/// `steps` through a [`Shield`] and through the layers it stands for, stacked by hand, each on
/// its own store from `store` and its own clock: the answers of both, in order. The
/// authenticator answers later when `later`; a route table of scopes applies when `scopes`.
async fn guarded_and_stacked<St>(
    steps: &[Step<'_>],
    later: bool,
    scopes: bool,
    store: impl Fn(&FakeClock) -> St,
) -> (Vec<Seen>, Vec<Seen>)
where
    St: crate::rate_limit::Store + Clone + std::fmt::Debug,
{
    let auth = || {
        let auth = if later {
            AuthLayer::new(Later::default())
        } else {
            AuthLayer::new(Counting::default())
        };
        auth.add_public(Method::GET, "/health").unwrap()
    };
    let (ip_quota, principal_quota) = (Quota::per_minute(nz(4)), Quota::per_minute(nz(2)));
    let (a, b) = (FakeClock::new(), FakeClock::new());
    let shield = Shield::builder()
        .with_auth(auth())
        .with_ip_quota(ip_quota.clone())
        .with_principal_quota(principal_quota.clone())
        .with_store(store(&a));
    let shield = if scopes { shield.with_scopes(routes(false)) } else { shield };
    let shield = shield.build().unwrap();
    let stacked = store(&b);
    let by_hand = ServiceBuilder::new()
        .layer(ErrorEnvelopeLayer::new())
        .layer(
            RateLimitLayer::new(ClientIp::new(), ip_quota.named("per-ip"))
                .with_store(stacked.clone()),
        )
        .layer(auth())
        .layer(
            RateLimitLayer::new(PrincipalKey, principal_quota.named("per-principal"))
                .on_missing_key(MissingKey::Skip)
                .with_store(stacked),
        )
        .option_layer(scopes.then(|| routes(true)));
    let guarded = answers(shield.layer(service_fn(handler)), &a, steps).await;
    let stacked = answers(by_hand.service(service_fn(handler)), &b, steps).await;
    (guarded, stacked)
}

/// The same requests through a [`Shield`] and through the layers it stands for: a client sees
/// the same answers, with the same rate-limit items, whether the store and the authenticator
/// answer at once or later (as Redis and a JWKS fetch do), with or without a scope table.
#[tokio::test]
async fn the_guard_answers_as_the_stacked_layers_do() {
    for (later, scopes, deferred) in
        (0..8).map(|i| (i & 1 != 0, i & 2 != 0, i & 4 != 0)).collect::<Vec<_>>()
    {
        let memory = |clock: &FakeClock| MemoryStore::new().with_clock(clock.clone());
        let (guarded, stacked) = if deferred {
            guarded_and_stacked(&SCRIPT, later, scopes, |c| Deferred(memory(c))).await
        } else {
            guarded_and_stacked(&SCRIPT, later, scopes, memory).await
        };
        assert_eq!(guarded, stacked, "later {later}, scopes {scopes}, deferred {deferred}");
        // The script reaches every answer.
        let statuses: Vec<_> = guarded.iter().map(|seen| seen.status.as_u16()).collect();
        let tail: &[u16] = if scopes { &[403, 403, 401] } else { &[200, 200, 401] };
        assert_eq!(statuses[..9], [200, 200, 200, 429, 401, 401, 200, 429, 429]);
        assert_eq!(statuses[9..], *tail);
        assert_eq!(guarded[3].policies, [r#""per-principal";q=2;w=60"#, r#""per-ip";q=4;w=60"#]);
        assert!(guarded[3].limits[0].starts_with(r#""per-principal";r=0;t="#));
        assert!(guarded[4].challenge.as_deref().is_some_and(|c| c.contains("invalid_token")));
        if scopes {
            assert_eq!(guarded[9].code.as_deref(), Some("forbidden"));
            assert_eq!(guarded[9].policies.len(), 2, "a 403 carries both limits' items");
        }
    }
}

/// An accepted request through the shield carries one `RateLimit-Policy` and one `RateLimit`
/// line, listing the per-principal limit then the per-IP one; a public route only the latter.
#[tokio::test]
async fn both_limits_share_one_line_per_header() {
    let (auth, _) = counting();
    let auth = auth.add_public(Method::GET, "/health").unwrap();
    let shield = builder(auth).build().unwrap();
    let service = shield.layer(service_fn(handler));

    let response = service.clone().oneshot(request("/orders", [203, 0, 113, 7], Some("user-a")));
    let response = response.await.unwrap();
    let lines = |name| response.headers().get_all(name).iter().collect::<Vec<_>>();
    assert_eq!(lines("ratelimit-policy"), [r#""per-principal";q=600;w=60, "per-ip";q=600;w=60"#]);
    assert_eq!(lines("ratelimit"), [r#""per-principal";r=599;t=1, "per-ip";r=599;t=1"#]);

    let response = service.oneshot(request("/health", [203, 0, 113, 7], None)).await.unwrap();
    let lines = |name| response.headers().get_all(name).iter().collect::<Vec<_>>();
    assert_eq!(lines("ratelimit-policy"), [r#""per-ip";q=600;w=60"#]);
    assert_eq!(lines("ratelimit"), [r#""per-ip";r=598;t=1"#]);
}

/// Random request sequences through a [`Shield`] and through the stacked layers it stands for,
/// with the clocks advanced between requests: every answer is the same.
mod equivalence {
    use proptest::prelude::*;

    use super::*;

    /// Steps from a peer, a credential (none, forged, one of two callers), a path (a route for
    /// any caller, a public one, one for a role nobody has) and seconds to wait before each.
    fn steps() -> impl Strategy<Value = Vec<Step<'static>>> {
        let peer = prop::sample::select(vec![[203, 0, 113, 7], [198, 51, 100, 1], [192, 0, 2, 9]]);
        let token =
            prop::sample::select(vec![None, Some("forged"), Some("user-alice"), Some("user-bob")]);
        let path = prop::sample::select(vec!["/orders", "/health", "/admin"]);
        let step = (path, peer, token, 0..25u64);
        prop::collection::vec(step, 1..40)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn the_guard_matches_the_stacked_layers(
            steps in steps(),
            later in any::<bool>(),
            scopes in any::<bool>(),
            deferred in any::<bool>(),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let memory = |clock: &FakeClock| MemoryStore::new().with_clock(clock.clone());
            let (guarded, stacked) = runtime.block_on(async {
                if deferred {
                    guarded_and_stacked(&steps, later, scopes, |c| Deferred(memory(c))).await
                } else {
                    guarded_and_stacked(&steps, later, scopes, memory).await
                }
            });
            prop_assert_eq!(guarded, stacked);
        }
    }
}

/// Without a pair of standard headers to share (a limit without headers, or with the legacy
/// ones), each limit writes its own lines, as the stacked layers do.
#[tokio::test]
async fn limits_that_cannot_share_a_line_write_their_own() {
    let (auth, _) = counting();
    let ip = RateLimitLayer::new(ClientIp::new(), Quota::per_minute(nz(5)).named("per-ip"))
        .legacy_headers();
    let principal =
        RateLimitLayer::new(PrincipalKey, Quota::per_minute(nz(3)).named("per-principal"))
            .on_missing_key(MissingKey::Skip)
            .no_headers();
    let config = GuardConfig::new(
        ip,
        auth,
        principal,
        #[cfg(feature = "scope")]
        None,
    );
    let service = Guard::new(service_fn(handler), Arc::new(config));
    let response = service.oneshot(request("/orders", [203, 0, 113, 7], Some("user-a"))).await;
    let response = response.unwrap();
    let lines = |name| response.headers().get_all(name).iter().collect::<Vec<_>>();
    assert_eq!(lines("ratelimit-policy"), [r#""per-ip";q=5;w=60"#]);
    assert_eq!(lines("ratelimit"), [r#""per-ip";r=4;t=12"#]);
    assert_eq!(lines("x-ratelimit-remaining"), ["4"]);
}
