use std::{convert::Infallible, time::Duration};

use http::{header, request::Parts, HeaderName, Request, Response, StatusCode};
use tower::{service_fn, Layer, ServiceBuilder, ServiceExt};

use super::*;
use crate::{
    clock::{Clock, FakeClock},
    principal::Principal,
    Error, ErrorKind, ServiceBuilderExt,
};

async fn echo(_: Request<String>) -> Result<Response<String>, Infallible> {
    Ok(Response::new("ok".to_owned()))
}

fn principal(scopes: &[&str], roles: &[&str]) -> Principal {
    Principal::builder("user-1")
        .scopes(scopes.iter().copied())
        .roles(roles.iter().copied())
        .tenant("acme")
        .build()
}

async fn send_to(
    layer: &ScopeLayer,
    principal: Option<Principal>,
    request: Request<String>,
) -> Response<String> {
    let mut request = request;
    if let Some(principal) = principal {
        request.extensions_mut().insert(principal);
    }
    layer.layer(service_fn(echo)).oneshot(request).await.unwrap()
}

async fn send(layer: &ScopeLayer, principal: Option<Principal>) -> Response<String> {
    send_to(layer, principal, Request::get("/orders").body(String::new()).unwrap()).await
}

fn challenge(response: &Response<String>) -> Option<&str> {
    response.headers().get(header::WWW_AUTHENTICATE).map(|v| v.to_str().unwrap())
}

fn kind(response: &Response<String>) -> Option<ErrorKind> {
    response.extensions().get::<Error>().map(Error::kind)
}

const FORBIDDEN_ROLE: &str = r#"Bearer realm="api", error="insufficient_scope""#;

#[tokio::test]
async fn matrix_of_requirements_and_principals() {
    let w = || Requirement::all(["orders:write"]);
    let cases: Vec<(Requirement, &[&str], &[&str], u16, Option<&str>)> = vec![
        // all
        (Requirement::all(["a", "b"]), &["a", "b"], &[], 200, None),
        (Requirement::all(["a", "b"]), &["a", "b", "c"], &[], 200, None),
        (
            Requirement::all(["a", "b"]),
            &["a"],
            &[],
            403,
            Some(r#"Bearer realm="api", error="insufficient_scope", scope="a b""#),
        ),
        (
            Requirement::all(["a", "b"]),
            &[],
            &[],
            403,
            Some(r#"Bearer realm="api", error="insufficient_scope", scope="a b""#),
        ),
        // all is exact: no prefix or case folding
        (
            Requirement::all(["orders:write"]),
            &["orders", "orders:writer", "ORDERS:WRITE"],
            &[],
            403,
            Some(r#"Bearer realm="api", error="insufficient_scope", scope="orders:write""#),
        ),
        // any: the challenge names the first (least-privileged) scope
        (Requirement::any(["a", "b"]), &["b"], &[], 200, None),
        (Requirement::any(["a", "b"]), &["a"], &[], 200, None),
        (
            Requirement::any(["a", "b"]),
            &["c"],
            &[],
            403,
            Some(r#"Bearer realm="api", error="insufficient_scope", scope="a""#),
        ),
        // roles are not scopes: no scope parameter
        (Requirement::role("admin"), &[], &["admin"], 200, None),
        (Requirement::role("admin"), &["admin"], &["user"], 403, Some(FORBIDDEN_ROLE)),
        (Requirement::any_role(["admin", "ops"]), &[], &["ops"], 200, None),
        (Requirement::any_role(["admin", "ops"]), &[], &["dev"], 403, Some(FORBIDDEN_ROLE)),
        // or: scope or role
        (w().or(Requirement::role("admin")), &["orders:write"], &[], 200, None),
        (w().or(Requirement::role("admin")), &[], &["admin"], 200, None),
        (
            w().or(Requirement::role("admin")),
            &["orders:read"],
            &["user"],
            403,
            Some(r#"Bearer realm="api", error="insufficient_scope", scope="orders:write""#),
        ),
        // or: the first alternative that names scopes is the one in the challenge
        (
            Requirement::role("admin").or(Requirement::all(["x", "y"])).or(Requirement::scope("z")),
            &[],
            &[],
            403,
            Some(r#"Bearer realm="api", error="insufficient_scope", scope="x y""#),
        ),
        // and: union of the scopes
        (Requirement::scope("a").and(Requirement::any(["b", "c"])), &["a", "c"], &[], 200, None),
        (
            Requirement::scope("a").and(Requirement::any(["b", "c"])),
            &["a"],
            &[],
            403,
            Some(r#"Bearer realm="api", error="insufficient_scope", scope="a b""#),
        ),
        (Requirement::scope("a").and(Requirement::role("admin")), &["a"], &["admin"], 200, None),
        (
            Requirement::scope("a").and(Requirement::role("admin")),
            &["a"],
            &[],
            403,
            Some(r#"Bearer realm="api", error="insufficient_scope", scope="a""#),
        ),
        // nested
        (
            Requirement::scope("a").and(Requirement::scope("b").or(Requirement::role("r"))),
            &["a"],
            &["r"],
            200,
            None,
        ),
        (
            Requirement::scope("a").and(Requirement::scope("b").or(Requirement::role("r"))),
            &["b"],
            &["r"],
            403,
            Some(r#"Bearer realm="api", error="insufficient_scope", scope="a b""#),
        ),
        // authenticated, empty lists
        (Requirement::authenticated(), &[], &[], 200, None),
        (Requirement::all(Vec::<String>::new()), &[], &[], 200, None),
        (Requirement::any(Vec::<String>::new()), &["a"], &[], 403, Some(FORBIDDEN_ROLE)),
        // a name that is not a scope-token is never met, and not echoed
        (Requirement::all(["a b"]), &["a", "b", "a b"], &[], 403, Some(FORBIDDEN_ROLE)),
    ];
    for (requirement, scopes, roles, status, www) in cases {
        let label = requirement.to_string();
        let layer = ScopeLayer::new(requirement);
        let response = send(&layer, Some(principal(scopes, roles))).await;
        assert_eq!(response.status().as_u16(), status, "{label} with {scopes:?} {roles:?}");
        assert_eq!(challenge(&response), www, "{label} with {scopes:?} {roles:?}");
        if status == 200 {
            assert_eq!(response.body(), "ok");
        } else {
            assert_eq!(kind(&response), Some(ErrorKind::Forbidden), "{label}");
            assert!(response.body().is_empty(), "rejections have an empty body");
        }
    }
}

#[tokio::test]
async fn no_principal_is_401_with_a_bare_bearer_challenge() {
    for requirement in [
        Requirement::authenticated(),
        Requirement::all(Vec::<String>::new()),
        Requirement::scope("a"),
        Requirement::role("admin"),
        Requirement::max_age(Duration::from_secs(1)),
    ] {
        let response = send(&ScopeLayer::new(requirement), None).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(challenge(&response), Some(r#"Bearer realm="api""#));
        assert_eq!(kind(&response), Some(ErrorKind::Unauthenticated));
    }
}

#[tokio::test]
async fn realm_is_configurable_and_in_every_challenge() {
    let layer = ScopeLayer::new(
        Requirement::scope("a").or(Requirement::scope("b").and(Requirement::acr(["mfa"]))),
    )
    .realm("orders");
    let response = send(&layer, None).await;
    assert_eq!(challenge(&response), Some(r#"Bearer realm="orders""#));
    let response = send(&layer, Some(principal(&[], &[]))).await;
    assert_eq!(
        challenge(&response),
        Some(r#"Bearer realm="orders", error="insufficient_scope", scope="a""#)
    );
    let response = send(&layer, Some(principal(&["b"], &[]))).await;
    assert_eq!(
        challenge(&response),
        Some(
            r#"Bearer realm="orders", error="insufficient_user_authentication", acr_values="mfa""#
        )
    );
}

fn stepped(clock: &FakeClock, ago: Duration, acr: Option<&str>, scopes: &[&str]) -> Principal {
    let mut builder =
        Principal::builder("user-1").scopes(scopes.iter().copied()).auth_time(clock.now() - ago);
    if let Some(acr) = acr {
        builder = builder.acr(acr);
    }
    builder.build()
}

#[tokio::test]
async fn step_up_on_max_age_follows_the_fake_clock() {
    let clock = FakeClock::new();
    let layer =
        ScopeLayer::new(Requirement::max_age(Duration::from_secs(300))).with_clock(clock.clone());
    let login = stepped(&clock, Duration::ZERO, None, &[]);

    assert_eq!(send(&layer, Some(login.clone())).await.status(), StatusCode::OK);
    clock.advance(Duration::from_secs(300));
    assert_eq!(send(&layer, Some(login.clone())).await.status(), StatusCode::OK, "exactly max_age");
    clock.advance(Duration::from_secs(1));
    let response = send(&layer, Some(login)).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(kind(&response), Some(ErrorKind::StepUpRequired));
    assert_eq!(
        challenge(&response),
        Some(r#"Bearer realm="api", error="insufficient_user_authentication", max_age="300""#)
    );

    // No auth_time: cannot prove freshness.
    let response = send(&layer, Some(principal(&[], &[]))).await;
    assert_eq!(kind(&response), Some(ErrorKind::StepUpRequired));

    // auth_time ahead of the clock by clock skew (up to 60 s) counts as fresh.
    let ahead = |secs| Principal::builder("u").auth_time(clock.now() + Duration::from_secs(secs));
    assert_eq!(send(&layer, Some(ahead(30).build())).await.status(), StatusCode::OK);
    assert_eq!(send(&layer, Some(ahead(60).build())).await.status(), StatusCode::OK);
    // Further ahead is no login time: it must not stay fresh for the token's whole life.
    for secs in [61, 10 * 365 * 24 * 3600] {
        let response = send(&layer, Some(ahead(secs).build())).await;
        assert_eq!(kind(&response), Some(ErrorKind::StepUpRequired), "{secs} s ahead");
    }
}

#[tokio::test]
async fn step_up_on_acr_and_combined() {
    let clock = FakeClock::new();
    let layer = ScopeLayer::new(
        Requirement::scope("orders:admin")
            .and(Requirement::acr(["urn:mfa", "urn:hwk"]))
            .and(Requirement::max_age(Duration::from_secs(60))),
    )
    .with_clock(clock.clone());
    let expected = r#"Bearer realm="api", error="insufficient_user_authentication", acr_values="urn:mfa urn:hwk", max_age="60""#;

    let ok = stepped(&clock, Duration::from_secs(10), Some("urn:hwk"), &["orders:admin"]);
    assert_eq!(send(&layer, Some(ok)).await.status(), StatusCode::OK);

    let weak = stepped(&clock, Duration::from_secs(10), Some("urn:pwd"), &["orders:admin"]);
    let response = send(&layer, Some(weak)).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&response), Some(expected));

    let stale = stepped(&clock, Duration::from_secs(61), Some("urn:mfa"), &["orders:admin"]);
    assert_eq!(challenge(&send(&layer, Some(stale)).await), Some(expected));

    let no_acr = stepped(&clock, Duration::from_secs(1), None, &["orders:admin"]);
    assert_eq!(challenge(&send(&layer, Some(no_acr)).await), Some(expected));

    // Missing scope and stale: the 403 wins, a new login would not help.
    let both = stepped(&clock, Duration::from_secs(600), None, &["orders:read"]);
    let response = send(&layer, Some(both)).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        challenge(&response),
        Some(r#"Bearer realm="api", error="insufficient_scope", scope="orders:admin""#)
    );
}

#[tokio::test]
async fn or_asks_to_step_up_for_the_alternative_that_failed_by_freshness() {
    let clock = FakeClock::new();
    let layer = ScopeLayer::new(
        Requirement::scope("payments:small")
            .and(Requirement::max_age(Duration::from_secs(900)))
            .or(Requirement::scope("payments:large").and(Requirement::acr(["mfa"]))),
    )
    .with_clock(clock.clone());

    let large = stepped(&clock, Duration::from_secs(5), Some("pwd"), &["payments:large"]);
    let response = send(&layer, Some(large)).await;
    assert_eq!(
        challenge(&response),
        Some(r#"Bearer realm="api", error="insufficient_user_authentication", acr_values="mfa""#)
    );

    let small = stepped(&clock, Duration::from_secs(1000), None, &["payments:small"]);
    let response = send(&layer, Some(small)).await;
    assert_eq!(
        challenge(&response),
        Some(r#"Bearer realm="api", error="insufficient_user_authentication", max_age="900""#)
    );

    let neither = stepped(&clock, Duration::from_secs(1), Some("mfa"), &["payments:read"]);
    let response = send(&layer, Some(neither)).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        challenge(&response),
        Some(r#"Bearer realm="api", error="insufficient_scope", scope="payments:small""#)
    );
}

fn get(uri: &str) -> Request<String> {
    Request::get(uri).body(String::new()).unwrap()
}

#[tokio::test]
async fn tenant_in_path_hides_other_tenants_as_404() {
    let layer = ScopeLayer::new(Requirement::tenant(Tenant::path_segment(1)));
    let acme = principal(&[], &[]);
    let ok = send_to(&layer, Some(acme.clone()), get("/tenants/acme/orders")).await;
    assert_eq!(ok.status(), StatusCode::OK);
    let encoded = send_to(&layer, Some(acme.clone()), get("/tenants/%61cme/orders?x=1")).await;
    assert_eq!(encoded.status(), StatusCode::OK);

    for uri in [
        "/tenants/globex/orders",
        "/tenants/acmex",
        "/tenants/ACME",
        "/tenants",
        "/",
        "/tenants/ac%zzme",
    ] {
        let response = send_to(&layer, Some(acme.clone()), get(uri)).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{uri}");
        assert_eq!(kind(&response), Some(ErrorKind::NotFound));
        assert_eq!(challenge(&response), None, "a 404 says nothing about credentials");
    }
    // A principal without a tenant never matches.
    let nobody = Principal::builder("u").build();
    let response = send_to(&layer, Some(nobody), get("/tenants/acme/orders")).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn tenant_in_header_answers_403_when_configured() {
    let name = HeaderName::from_static("x-tenant-id");
    let layer = ScopeLayer::new(
        Requirement::scope("orders:read")
            .and(Requirement::tenant(Tenant::header(name.clone()).deny_as_forbidden())),
    );
    let acme = principal(&["orders:read"], &[]);
    let with = |values: &[&str]| {
        let mut request = get("/orders");
        for value in values {
            request.headers_mut().append(name.clone(), value.parse().unwrap());
        }
        request
    };
    assert_eq!(send_to(&layer, Some(acme.clone()), with(&["acme"])).await.status(), StatusCode::OK);
    for values in [&["globex"][..], &[], &["acme", "acme"], &["acme", "globex"]] {
        let response = send_to(&layer, Some(acme.clone()), with(values)).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{values:?}");
        assert_eq!(kind(&response), Some(ErrorKind::Forbidden));
        assert_eq!(challenge(&response), None, "no scope would help");
    }
    // Missing scope and another tenant: the tenant denial is the worse one.
    let reader = Principal::builder("u").tenant("acme").build();
    let response = send_to(&layer, Some(reader), with(&["globex"])).await;
    assert_eq!((response.status(), challenge(&response)), (StatusCode::FORBIDDEN, None));

    let hidden = ScopeLayer::new(Requirement::scope("orders:read").and(Requirement::tenant(
        Tenant::header(name.clone()).deny_as_forbidden().deny_as_not_found(),
    )));
    let response = send_to(&hidden, Some(acme), with(&["globex"])).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn tenant_or_support_role() {
    let layer = ScopeLayer::new(
        Requirement::tenant(Tenant::path_segment(1)).or(Requirement::role("support")),
    );
    let support = Principal::builder("s").tenant("internal").roles(["support"]).build();
    assert_eq!(send_to(&layer, Some(support), get("/tenants/acme")).await.status(), StatusCode::OK);
    // The best denial of the two: the missing role (403), not the hidden tenant.
    let other = Principal::builder("o").tenant("globex").build();
    let response = send_to(&layer, Some(other), get("/tenants/acme")).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(challenge(&response), Some(FORBIDDEN_ROLE));
}

fn grpc(path: &str) -> Request<String> {
    Request::post(path)
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .body(String::new())
        .unwrap()
}

#[tokio::test]
async fn per_method_table_with_deny_by_default() {
    let layer = ScopeLayer::per_method(
        MethodRequirements::new()
            .method("/shop.Orders/Get", Requirement::scope("orders:read"))
            .unwrap()
            .method("/shop.Orders/Delete", Requirement::scope("orders:admin"))
            .unwrap()
            .service("shop.Orders", Requirement::scope("orders:write"))
            .unwrap(),
    );
    let reader = principal(&["orders:read"], &[]);
    let status = |r: Response<String>| r.status();
    assert_eq!(status(send_to(&layer, Some(reader.clone()), grpc("/shop.Orders/Get")).await), 200);
    let response = send_to(&layer, Some(reader.clone()), grpc("/shop.Orders/Delete")).await;
    assert_eq!(response.status(), 403);
    assert_eq!(
        challenge(&response),
        Some(r#"Bearer realm="api", error="insufficient_scope", scope="orders:admin""#)
    );
    // The service entry covers the other methods.
    let response = send_to(&layer, Some(reader.clone()), grpc("/shop.Orders/Create")).await;
    assert_eq!(
        challenge(&response),
        Some(r#"Bearer realm="api", error="insufficient_scope", scope="orders:write""#)
    );
    // Unmapped: denied, even for a principal with every scope; anonymous still gets 401.
    let all = principal(&["orders:read", "orders:write", "orders:admin"], &["admin"]);
    for path in ["/shop.Payments/Pay", "/shop.Orders", "/", "/shop.OrdersX/Get", "/shop.Order/Get"]
    {
        let response = send_to(&layer, Some(all.clone()), grpc(path)).await;
        assert_eq!(response.status(), 403, "{path}");
        assert_eq!(kind(&response), Some(ErrorKind::Forbidden));
        assert_eq!(challenge(&response), None);
        assert_eq!(status(send_to(&layer, None, grpc(path)).await), 401, "{path}");
    }
    assert_eq!(status(send_to(&layer, None, grpc("/shop.Orders/Get")).await), 401);

    let open =
        ScopeLayer::per_method(MethodRequirements::new().unmapped(Requirement::authenticated()));
    assert_eq!(status(send_to(&open, Some(reader), grpc("/x.Y/Z")).await), 200);
    assert_eq!(status(send_to(&open, None, grpc("/x.Y/Z")).await), 401);
}

#[test]
fn method_table_rejects_bad_paths() {
    let r = Requirement::authenticated;
    for path in ["", "/", "shop.Orders/Get", "/shop.Orders", "/shop.Orders/", "//Get", "/a/b/c"] {
        assert!(MethodRequirements::new().method(path, r()).is_err(), "{path}");
    }
    for service in ["", "shop/Orders"] {
        assert!(MethodRequirements::new().service(service, r()).is_err(), "{service}");
    }
    let twice = MethodRequirements::new().method("/a.B/C", r()).unwrap().method("/a.B/C", r());
    assert!(twice.unwrap_err().message().contains("twice"));
    let twice = MethodRequirements::new().service("a.B", r()).unwrap().service("a.B", r());
    assert!(twice.is_err());
}

fn orders_table() -> ScopeLayer {
    let r = |scope| Requirement::scope(scope);
    ScopeLayer::per_route(
        RouteRequirements::new()
            .open(http::Method::GET, "/health")
            .unwrap()
            .route(http::Method::GET, "/orders", r("orders:read"))
            .unwrap()
            .route(http::Method::GET, "/orders/{id}", r("orders:read"))
            .unwrap()
            .route(http::Method::DELETE, "/orders/{id}", r("orders:admin"))
            .unwrap(),
    )
}

/// An axum router behind the route table, inside it (`Router::layer`), with a principal
/// holding `scopes` when given.
#[cfg(feature = "axum")]
async fn through_router(method: &str, uri: &str, scopes: Option<&[&str]>) -> (u16, Option<String>) {
    use axum::routing::get;
    let router = axum::Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/orders", get(|| async { "[]" }).post(|| async { "made" }))
        .route("/orders/{id}", get(|| async { "one" }).delete(|| async { "gone" }))
        .layer(orders_table());
    let request = Request::builder().method(method).uri(uri).body(axum::body::Body::empty());
    let mut request = request.unwrap();
    if let Some(scopes) = scopes {
        request.extensions_mut().insert(principal(scopes, &[]));
    }
    let response = router.oneshot(request).await.unwrap();
    let challenge = response.headers().get(header::WWW_AUTHENTICATE);
    (response.status().as_u16(), challenge.map(|c| c.to_str().unwrap().to_owned()))
}

/// Every route of the table, by axum's route template, deny by default.
#[cfg(feature = "axum")]
#[tokio::test]
async fn per_route_table_by_template_with_deny_by_default() {
    let read: &[&str] = &["orders:read"];
    let cases: [(&str, &str, Option<&[&str]>, u16); 14] = [
        ("GET", "/health", None, 200),
        ("GET", "/orders", Some(read), 200),
        ("GET", "/orders", Some(&[]), 403),
        ("GET", "/orders", None, 401),
        // The template matches every id; HEAD uses GET's entry.
        ("GET", "/orders/7", Some(read), 200),
        ("HEAD", "/orders/7", Some(read), 200),
        ("DELETE", "/orders/7", Some(read), 403),
        ("DELETE", "/orders/7", Some(&["orders:admin"]), 200),
        // Not listed: a method of a listed route, a path no route matches.
        ("POST", "/orders", Some(&["orders:read", "orders:write"]), 403),
        ("POST", "/orders", None, 401),
        ("GET", "/nope", Some(read), 403),
        ("GET", "/nope", None, 401),
        // A path spelled like the template is routed, and checked, as any other id.
        ("GET", "/orders/{id}", Some(read), 200),
        ("PUT", "/health", None, 401),
    ];
    for (method, uri, scopes, status) in cases {
        let (got, challenge) = through_router(method, uri, scopes).await;
        assert_eq!(got, status, "{method} {uri} {scopes:?}");
        if status == 403 && uri == "/orders" && method == "GET" {
            let want = r#"Bearer realm="api", error="insufficient_scope", scope="orders:read""#;
            assert_eq!(challenge.as_deref(), Some(want));
        }
    }
}

/// Without axum's route template (the layer outside a router), a request is matched by its
/// path, exactly: a template route never matches, so it is denied, never let through.
#[tokio::test]
async fn per_route_table_outside_a_router_fails_closed() {
    let layer = orders_table();
    let reader = || Some(principal(&["orders:read"], &[]));
    assert_eq!(send_to(&layer, reader(), get("/orders")).await.status(), 200);
    assert_eq!(send_to(&layer, None, get("/health")).await.status(), 200);
    let response = send_to(&layer, reader(), get("/orders/7")).await;
    assert_eq!(response.status(), 403);
    assert_eq!(
        response.extensions().get::<Error>().unwrap().reason(),
        Some("no requirement is configured for this route (deny by default)")
    );
}

#[test]
fn route_table_rejects_bad_routes() {
    let r = Requirement::authenticated;
    for route in ["", "orders", "/orders?x=1", "/orders#top"] {
        assert!(RouteRequirements::new().route(http::Method::GET, route, r()).is_err(), "{route}");
        assert!(RouteRequirements::new().open(http::Method::GET, route).is_err(), "{route}");
    }
    let twice = RouteRequirements::new().route(http::Method::GET, "/a", r()).unwrap();
    let twice = twice.open(http::Method::GET, "/a").unwrap_err();
    assert!(twice.message().contains("twice"));
    // Another method of the same route is another entry.
    let ok = RouteRequirements::new().route(http::Method::GET, "/a", r()).unwrap();
    assert!(ok.route(http::Method::POST, "/a", r()).is_ok());
}

#[tokio::test]
async fn service_builder_require_scope() {
    let service = ServiceBuilder::new().require_scope(Requirement::scope("a")).service_fn(echo);
    let mut request = get("/");
    request.extensions_mut().insert(principal(&["b"], &[]));
    assert_eq!(service.clone().oneshot(request).await.unwrap().status(), 403);
    let mut request = get("/");
    request.extensions_mut().insert(principal(&["a"], &[]));
    assert_eq!(service.oneshot(request).await.unwrap().status(), 200);
}

#[test]
fn debug_and_display() {
    let layer = ScopeLayer::new(Requirement::scope("a").or(Requirement::role("b")));
    let debug = format!("{layer:?}");
    assert!(debug.contains("ScopeLayer"), "{debug}");
    assert_eq!(
        format!("{:?}", Requirement::any(["a", "b"]).and(Requirement::acr(["mfa"]))),
        "Requirement(any(a, b) and acr(mfa))"
    );
    assert_eq!(
        Requirement::tenant(Tenant::header(HeaderName::from_static("x-t")).deny_as_forbidden())
            .to_string(),
        "tenant(header x-t, forbidden)"
    );
}

// --- logging -------------------------------------------------------------------------------

/// Runs `f` with a JSON subscriber at `level` and returns the captured events.
fn capture(level: tracing::Level, f: impl FnOnce()) -> Vec<serde_json::Value> {
    crate::test_helpers::capture_events(level, f).1
}

fn call_sync(layer: &ScopeLayer, principal: Option<Principal>, request: Request<String>) {
    use tower::Service;
    let mut request = request;
    if let Some(principal) = principal {
        request.extensions_mut().insert(principal);
    }
    // The decision (and its event) happens in `call`.
    drop(layer.layer(service_fn(echo)).call(request));
}

#[test]
fn denials_are_logged_with_stable_fields_and_no_token() {
    let layer = ScopeLayer::new(Requirement::scope("orders:write"));
    let events = capture(tracing::Level::INFO, || {
        let mut request = get("/orders?access_token=secret-token");
        request.headers_mut().insert(header::AUTHORIZATION, "Bearer secret-token".parse().unwrap());
        call_sync(&layer, Some(principal(&["orders:read"], &[])), request);
        call_sync(&layer, None, get("/orders"));
        call_sync(&layer, Some(principal(&["orders:write"], &[])), get("/orders"));
    });
    assert_eq!(events.len(), 2, "allowed requests are not logged at info: {events:?}");
    let forbidden = &events[0];
    assert_eq!(forbidden["target"], "tower_shield::security");
    assert_eq!(forbidden["level"], "INFO");
    let fields = &forbidden["fields"];
    assert_eq!(fields["event"], "scope.denied");
    assert_eq!(fields["outcome"], "forbidden");
    assert_eq!(fields["subject"], "user-1");
    assert_eq!(fields["tenant"], "acme");
    assert_eq!(fields["route"], "/orders");
    assert_eq!(fields["requirement"], "all(orders:write)");
    assert_eq!(events[1]["fields"]["outcome"], "unauthenticated");
    assert!(events[1]["fields"].get("subject").is_none());
    let all = serde_json::to_string(&events).unwrap();
    assert!(!all.contains("secret-token"), "{all}");
}

#[test]
fn step_up_and_allow_events() {
    let clock = FakeClock::new();
    let layer =
        ScopeLayer::new(Requirement::max_age(Duration::from_secs(5))).with_clock(clock.clone());
    let stale = stepped(&clock, Duration::from_secs(10), None, &[]);
    let fresh = stepped(&clock, Duration::from_secs(1), None, &[]);
    let events = capture(tracing::Level::DEBUG, || {
        call_sync(&layer, Some(stale), get("/pay"));
        call_sync(&layer, Some(fresh), get("/pay"));
    });
    let ours: Vec<_> = events.iter().filter(|e| e["target"] == "tower_shield::security").collect();
    assert_eq!(ours.len(), 2, "{events:?}");
    assert_eq!(ours[0]["fields"]["event"], "step_up.required");
    assert_eq!(ours[0]["fields"]["outcome"], "step_up");
    assert_eq!(ours[1]["level"], "DEBUG");
    assert_eq!(ours[1]["fields"]["event"], "scope.allowed");
}

#[test]
fn unmapped_method_is_logged_at_warn() {
    let layer = ScopeLayer::per_method(MethodRequirements::new());
    let events = capture(tracing::Level::WARN, || {
        call_sync(&layer, Some(principal(&[], &[])), grpc("/a.B/C"));
    });
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["fields"]["outcome"], "unmapped");
    assert_eq!(events[0]["fields"]["route"], "/a.B/C");
}

// --- policies ------------------------------------------------------------------------------

struct Order {
    owner: &'static str,
    tenant: &'static str,
}

/// Owners may act; colleagues in the same tenant learn it exists but are denied; everyone else
/// gets a 404.
struct OrderPolicy;

impl Policy<Order> for OrderPolicy {
    async fn decide(&self, principal: &Principal, _: &Parts, order: &Order) -> Decision {
        if principal.subject() == order.owner {
            Decision::Allow
        } else if principal.tenant() == Some(order.tenant) {
            Decision::Deny
        } else {
            Decision::NotFound
        }
    }

    fn name(&self) -> &str {
        "order_owner"
    }
}

fn parts() -> Parts {
    Request::get("/orders/1").body(()).unwrap().into_parts().0
}

#[tokio::test]
async fn authorize_maps_decisions_to_errors() {
    let order = Order { owner: "alice", tenant: "acme" };
    let alice = Principal::builder("alice").tenant("acme").build();
    let bob = Principal::builder("bob").tenant("acme").build();
    let eve = Principal::builder("eve").tenant("evil").build();
    assert!(authorize(&OrderPolicy, &alice, &parts(), &order).await.is_ok());
    let denied = authorize(&OrderPolicy, &bob, &parts(), &order).await.unwrap_err();
    assert_eq!((denied.kind(), denied.status()), (ErrorKind::Forbidden, StatusCode::FORBIDDEN));
    let hidden = authorize(&OrderPolicy, &eve, &parts(), &order).await.unwrap_err();
    assert_eq!((hidden.kind(), hidden.status()), (ErrorKind::NotFound, StatusCode::NOT_FOUND));
    // Indistinguishable from a missing order.
    let missing = Error::new(ErrorKind::NotFound);
    assert_eq!((hidden.code(), hidden.message()), (missing.code(), missing.message()));

    // A closure is a policy too.
    let closure = |p: &Principal, _: &Parts, o: &Order| {
        if p.subject() == o.owner {
            Decision::Allow
        } else {
            Decision::NotFound
        }
    };
    assert!(authorize(&closure, &alice, &parts(), &order).await.is_ok());
    assert!(authorize(&closure, &bob, &parts(), &order).await.is_err());
}

#[test]
fn policy_denials_are_logged_with_the_policy_name() {
    let order = Order { owner: "alice", tenant: "acme" };
    let eve = Principal::builder("eve").tenant("evil").build();
    let events = capture(tracing::Level::INFO, || {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let _ = rt.block_on(authorize(&OrderPolicy, &eve, &parts(), &order));
    });
    assert_eq!(events.len(), 1);
    let fields = &events[0]["fields"];
    assert_eq!(fields["event"], "scope.denied");
    assert_eq!(fields["policy"], "order_owner");
    assert_eq!(fields["outcome"], "not_found");
    assert_eq!(fields["subject"], "eve");
    assert_eq!(fields["route"], "/orders/1");
}

fn order_layer() -> PolicyLayer<OrderPolicy, impl Fn(&Parts) -> Option<Order> + Send + Sync> {
    PolicyLayer::new(OrderPolicy, |parts: &Parts| match parts.uri.path() {
        "/orders/1" => Some(Order { owner: "alice", tenant: "acme" }),
        _ => None,
    })
}

#[tokio::test]
async fn policy_layer_allow_deny_not_found() {
    let service = order_layer().layer(service_fn(echo));
    let call = |principal: Option<Principal>, uri: &str| {
        let mut request = get(uri);
        if let Some(p) = principal {
            request.extensions_mut().insert(p);
        }
        service.clone().oneshot(request)
    };
    let alice = Principal::builder("alice").tenant("acme").build();
    let bob = Principal::builder("bob").tenant("acme").build();
    let eve = Principal::builder("eve").tenant("evil").build();

    let ok = call(Some(alice.clone()), "/orders/1").await.unwrap();
    assert_eq!((ok.status(), ok.body().as_str()), (StatusCode::OK, "ok"));
    let response = call(Some(bob), "/orders/1").await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(kind(&response), Some(ErrorKind::Forbidden));
    let response = call(Some(eve), "/orders/1").await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    // No resource can be derived: the same 404.
    let response = call(Some(alice), "/orders/2").await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(kind(&response), Some(ErrorKind::NotFound));
    let response = call(None, "/orders/1").await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&response), Some(r#"Bearer realm="api""#));
    let realm = order_layer().realm("shop").layer(service_fn(echo));
    let response = realm.oneshot(get("/orders/1")).await.unwrap();
    assert_eq!(challenge(&response), Some(r#"Bearer realm="shop""#));
}

/// Any route table finds each entry by method and route, `HEAD` by `GET` when it has no entry
/// of its own, and nothing else.
mod route_table {
    use proptest::prelude::*;

    use super::*;
    use crate::scope::layer::Lookup;

    const METHODS: [http::Method; 5] = [
        http::Method::GET,
        http::Method::HEAD,
        http::Method::POST,
        http::Method::DELETE,
        http::Method::PATCH,
    ];
    const ROUTES: [&str; 6] = ["/", "/a", "/a/{id}", "/a/{id}/b", "/b", "/b/{*rest}"];

    proptest! {
        #[test]
        fn lookups_find_exactly_the_listed_routes(
            entries in prop::collection::btree_map((0..5usize, 0..6usize), any::<bool>(), 0..20),
        ) {
            let mut table = RouteRequirements::new();
            for (&(m, r), &open) in &entries {
                table = if open {
                    table.open(METHODS[m].clone(), ROUTES[r]).unwrap()
                } else {
                    table.route(METHODS[m].clone(), ROUTES[r], Requirement::authenticated()).unwrap()
                };
            }
            let layer = ScopeLayer::per_route(table);
            for (m, method) in METHODS.iter().enumerate() {
                for (r, route) in ROUTES.iter().enumerate() {
                    let own = entries.get(&(m, r));
                    let get = (*method == http::Method::HEAD).then(|| entries.get(&(0, r))).flatten();
                    let found = layer.config.lookup(method, route, route);
                    match (own.or(get), found) {
                        (Some(true), Lookup::Open) | (Some(false), Lookup::Guarded(_)) | (None, Lookup::Unmapped) => {}
                        (want, _) => prop_assert!(false, "{method} {route}: wanted {want:?}"),
                    }
                }
            }
        }
    }
}

/// Under `Router::nest` the tenant's segment counts in the whole path the client sent: the
/// nested router's view (`/orders/acme`) would let the caller name its own tenant in a
/// segment it controls.
#[cfg(feature = "axum")]
#[tokio::test]
async fn tenant_segment_counts_in_the_whole_path_under_nest() {
    use axum::{extract::Path, routing::get, Router};

    let orders =
        Router::new()
            .route(
                "/orders/{id}",
                get(|Path((tenant, id)): Path<(String, String)>| async move {
                    format!("{tenant}:{id}")
                }),
            )
            .route_layer(ScopeLayer::new(Requirement::tenant(Tenant::path_segment(1))));
    let app = Router::new().nest("/tenants/{tenant}", orders);
    let call = |uri: &str| {
        let mut request = Request::get(uri).body(axum::body::Body::empty()).unwrap();
        request.extensions_mut().insert(Principal::builder("mallory").tenant("acme").build());
        app.clone().oneshot(request)
    };
    assert_eq!(call("/tenants/acme/orders/7").await.unwrap().status(), StatusCode::OK);
    for uri in ["/tenants/victim/orders/acme", "/tenants/victim/orders/7"] {
        assert_eq!(call(uri).await.unwrap().status(), StatusCode::NOT_FOUND, "{uri}");
    }
}
