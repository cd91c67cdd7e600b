use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use proptest::prelude::*;
use tower::{service_fn, Layer, Service, ServiceExt};

use super::*;
use crate::{clock::FakeClock, principal::Principal, Error, ErrorKind};

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

type Body = Full<Bytes>;

async fn ok(_: Request<Body>) -> Result<Response<Body>, Infallible> {
    Ok(Response::new(Body::from("ok")))
}

fn from_peer(peer: [u8; 4]) -> Request<Body> {
    let mut request = Request::new(Body::default());
    request.extensions_mut().insert(PeerAddr(SocketAddr::from((peer, 1234))));
    request
}

fn parts(request: Request<Body>) -> http::request::Parts {
    request.into_parts().0
}

async fn send<S>(service: &mut S, request: Request<Body>) -> Response<Body>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    service.ready().await.unwrap().call(request).await.unwrap()
}

fn header<'a>(response: &'a Response<Body>, name: &str) -> &'a str {
    response.headers().get(name).unwrap_or_else(|| panic!("no {name}")).to_str().unwrap()
}

// ---- GCRA ----

#[derive(Debug, Clone)]
struct Step {
    advance_ms: u64,
    cost: u32,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (0u64..3_000, 1u32..4).prop_map(|(advance_ms, cost)| Step { advance_ms, cost }),
        1..200,
    )
}

proptest! {
    /// Never more than burst + rate × elapsed, and the same decisions as governor itself.
    #[test]
    fn gcra_is_exact_and_matches_governor(
        per_minute in 1u32..120,
        burst in 1u32..20,
        steps in steps(),
    ) {
        let quota = Quota::per_minute(nz(per_minute)).allow_burst(nz(burst));
        let limits = Limits::new(quota.clone());
        let clock = FakeClock::new();
        let store = MemoryStore::new().with_clock(clock.clone());
        let gclock = governor::clock::FakeRelativeClock::default();
        let governor = governor::RateLimiter::direct_with_clock(quota.as_governor(), gclock.clone());
        let key = RateKey::from("k");
        let mut elapsed = Duration::ZERO;
        let mut passed = 0u64;
        for step in steps {
            let advance = Duration::from_millis(step.advance_ms);
            clock.advance(advance);
            gclock.advance(advance);
            elapsed += advance;
            let ours = store.decide_now(&limits, &key, step.cost, Mode::Acquire).is_allowed();
            let theirs = matches!(governor.check_n(nz(step.cost)), Ok(Ok(())));
            prop_assert_eq!(ours, theirs);
            if ours {
                passed += u64::from(step.cost);
            }
            let bound = u64::from(burst)
                + (elapsed.as_nanos() / quota.replenish_interval().as_nanos()) as u64;
            prop_assert!(passed <= bound, "{} passed, bound {}", passed, bound);
        }
    }
}

#[test]
fn retry_after_and_reset_are_exact() {
    let clock = FakeClock::new();
    let store = MemoryStore::new().with_clock(clock.clone());
    let limits = Limits::new(Quota::per_minute(nz(6))); // one every 10 s, burst 6
    let key = RateKey::from("k");
    for remaining in (0..6).rev() {
        let d = store.decide_now(&limits, &key, 1, Mode::Acquire);
        assert!(d.is_allowed());
        assert_eq!(d.remaining(), remaining);
    }
    let d = store.decide_now(&limits, &key, 1, Mode::Acquire);
    assert!(!d.is_allowed());
    assert_eq!(d.retry_after(), Duration::from_secs(10));
    assert_eq!(d.reset(), Duration::from_secs(60));
    clock.advance(Duration::from_millis(9_999));
    assert!(!store.decide_now(&limits, &key, 1, Mode::Acquire).is_allowed());
    clock.advance(Duration::from_millis(1));
    assert!(store.decide_now(&limits, &key, 1, Mode::Acquire).is_allowed());
}

#[test]
fn several_quotas_must_all_pass_and_rejections_charge_none() {
    let clock = FakeClock::new();
    let store = MemoryStore::new().with_clock(clock.clone());
    let limits = Limits::new(Quota::per_second(nz(2)).named("second"))
        .add_quota(Quota::per_minute(nz(3)).named("minute"));
    let key = RateKey::from("k");
    assert!(store.decide_now(&limits, &key, 1, Mode::Acquire).is_allowed());
    assert!(store.decide_now(&limits, &key, 1, Mode::Acquire).is_allowed());
    let d = store.decide_now(&limits, &key, 1, Mode::Acquire);
    assert!(!d.is_allowed());
    assert_eq!(limits.quotas()[d.quota_index()].name(), "second");
    clock.advance(Duration::from_secs(1));
    let d = store.decide_now(&limits, &key, 1, Mode::Acquire);
    assert!(d.is_allowed());
    assert_eq!(limits.quotas()[d.quota_index()].name(), "minute");
    assert_eq!(d.remaining(), 0);
    clock.advance(Duration::from_secs(1));
    let d = store.decide_now(&limits, &key, 1, Mode::Acquire);
    assert!(!d.is_allowed());
    assert_eq!(limits.quotas()[d.quota_index()].name(), "minute");
    assert_eq!(d.retry_after(), Duration::from_secs(18));
    // The rejected requests did not charge the per-second quota: after the minute quota
    // refills, two pass at once again.
    clock.advance(Duration::from_secs(60));
    assert!(store.decide_now(&limits, &key, 1, Mode::Acquire).is_allowed());
    assert!(store.decide_now(&limits, &key, 1, Mode::Acquire).is_allowed());
}

#[test]
fn weights_charge_several_units() {
    let store = MemoryStore::new().with_clock(FakeClock::new());
    let limits = Limits::new(Quota::per_minute(nz(5)));
    let key = RateKey::from("k");
    let d = store.decide_now(&limits, &key, 3, Mode::Acquire);
    assert!(d.is_allowed());
    assert_eq!(d.remaining(), 2);
    let d = store.decide_now(&limits, &key, 3, Mode::Acquire);
    assert!(!d.is_allowed());
    assert_eq!(d.remaining(), 2);
    assert_eq!(d.retry_after(), Duration::from_secs(12));
    assert!(store.decide_now(&limits, &key, 2, Mode::Acquire).is_allowed());
}

// ---- the layer ----

#[tokio::test]
async fn headers_follow_the_draft_syntax() {
    let layer = RateLimitLayer::per_ip(Quota::per_minute(nz(10)).named("per-ip"))
        .legacy_headers()
        .with_clock(FakeClock::new());
    let mut service = layer.layer(service_fn(ok));
    let response = send(&mut service, from_peer([192, 0, 2, 1])).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "ratelimit-policy"), r#""per-ip";q=10;w=60"#);
    assert_eq!(header(&response, "ratelimit"), r#""per-ip";r=9;t=6"#);
    assert_eq!(header(&response, "x-ratelimit-limit"), "10");
    assert_eq!(header(&response, "x-ratelimit-remaining"), "9");
    assert_eq!(header(&response, "x-ratelimit-reset"), "6");
    let policy = regex_lite(header(&response, "ratelimit-policy"), r#""[^"]+";q=\d+;w=\d+"#);
    let limit = regex_lite(header(&response, "ratelimit"), r#""[^"]+";r=\d+;t=\d+"#);
    assert!(policy && limit);
}

/// A tiny full-match for the header grammar: quoted name, then `;key=digits` pairs.
fn regex_lite(value: &str, pattern: &str) -> bool {
    let keys: Vec<&str> = pattern.split(";").skip(1).map(|p| &p[..1]).collect();
    let Some(rest) = value.strip_prefix('"') else { return false };
    let Some((name, rest)) = rest.split_once('"') else { return false };
    if name.is_empty() || name.contains('"') {
        return false;
    }
    let params: Vec<&str> = rest.split(';').skip(1).collect();
    rest.starts_with(';')
        && params.len() == keys.len()
        && params.iter().zip(&keys).all(|(p, k)| {
            p.split_once('=').is_some_and(|(pk, v)| {
                pk == *k && !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())
            })
        })
}

#[tokio::test]
async fn rejections_are_429_with_retry_after_headers_and_the_error() {
    let layer =
        RateLimitLayer::per_ip(Quota::per_minute(nz(2)).named("ip")).with_clock(FakeClock::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let mut service = layer.layer(service_fn(move |r| {
        counter.fetch_add(1, Ordering::SeqCst);
        ok(r)
    }));
    send(&mut service, from_peer([192, 0, 2, 1])).await;
    send(&mut service, from_peer([192, 0, 2, 1])).await;
    let response = send(&mut service, from_peer([192, 0, 2, 1])).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&response, "retry-after"), "30");
    assert_eq!(header(&response, "ratelimit"), r#""ip";r=0;t=60"#);
    assert_eq!(header(&response, "ratelimit-policy"), r#""ip";q=2;w=60"#);
    let error = response.extensions().get::<Error>().expect("the Error");
    assert_eq!(error.kind(), ErrorKind::RateLimited);
    assert!(response.body().clone().collect_empty().await);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // Another client is unaffected.
    let response = send(&mut service, from_peer([192, 0, 2, 2])).await;
    assert_eq!(response.status(), StatusCode::OK);
}

trait CollectEmpty {
    async fn collect_empty(self) -> bool;
}

impl CollectEmpty for Body {
    async fn collect_empty(self) -> bool {
        crate::test_helpers::to_bytes(self).await.is_empty()
    }
}

#[tokio::test]
async fn retry_after_rounds_up() {
    let clock = FakeClock::new();
    let layer = RateLimitLayer::per_ip(Quota::per_second(nz(3))).with_clock(clock.clone());
    let mut service = layer.layer(service_fn(ok));
    for _ in 0..3 {
        send(&mut service, from_peer([192, 0, 2, 1])).await;
    }
    let response = send(&mut service, from_peer([192, 0, 2, 1])).await;
    // 333.3 ms to wait: Retry-After 1.
    assert_eq!(header(&response, "retry-after"), "1");
    assert_eq!(
        response.extensions().get::<Error>().unwrap().retry_after(),
        Some(Duration::from_nanos(333_333_333))
    );
}

#[tokio::test]
async fn clones_share_one_budget() {
    let layer = RateLimitLayer::per_ip(Quota::per_minute(nz(1))).with_clock(FakeClock::new());
    let mut a = layer.layer(service_fn(ok));
    let mut b = a.clone();
    assert_eq!(send(&mut a, from_peer([192, 0, 2, 1])).await.status(), StatusCode::OK);
    assert_eq!(
        send(&mut b, from_peer([192, 0, 2, 1])).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn quotas_are_chosen_per_request() {
    let free = Limits::new(Quota::per_minute(nz(1)).named("free"));
    let pro = Limits::new(Quota::per_minute(nz(3)).named("pro"));
    let layer = RateLimitLayer::new(PrincipalKey, free.clone())
        .select_limits(move |parts| {
            match parts.extensions.get::<Principal>().map(|p| p.has_role("pro")) {
                Some(true) => pro.clone(),
                _ => free.clone(),
            }
        })
        .with_clock(FakeClock::new());
    let mut service = layer.layer(service_fn(ok));
    let request = |subject: &str, role: &str| {
        let mut request = Request::new(Body::default());
        request.extensions_mut().insert(Principal::builder(subject).roles([role]).build());
        request
    };
    for _ in 0..3 {
        let response = send(&mut service, request("p", "pro")).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(header(&response, "ratelimit").starts_with(r#""pro""#));
    }
    assert_eq!(
        send(&mut service, request("p", "pro")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(send(&mut service, request("f", "free")).await.status(), StatusCode::OK);
    let response = send(&mut service, request("f", "free")).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&response, "ratelimit-policy"), r#""free";q=1;w=60"#);
}

#[tokio::test]
async fn request_cost_is_applied_and_oversized_costs_never_pass() {
    let layer = RateLimitLayer::new(GlobalKey, Quota::per_minute(nz(10)))
        .cost(|parts| if parts.uri.path() == "/export" { nz(4) } else { nz(1) })
        .with_clock(FakeClock::new());
    let mut service = layer.clone().layer(service_fn(ok));
    let to = |path: &str| Request::get(path).body(Body::default()).unwrap();
    let response = send(&mut service, to("/export")).await;
    assert_eq!(header(&response, "ratelimit"), r#""default";r=6;t=24"#);
    let response = send(&mut service, to("/orders")).await;
    assert_eq!(header(&response, "ratelimit"), r#""default";r=5;t=30"#);

    let layer = RateLimitLayer::new(GlobalKey, Quota::per_minute(nz(2))).cost(|_| nz(3));
    let response = send(&mut layer.layer(service_fn(ok)), to("/")).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().get("retry-after").is_none());
}

#[tokio::test]
async fn no_headers_turns_them_off() {
    let layer = RateLimitLayer::per_ip(Quota::per_minute(nz(1))).no_headers();
    let mut service = layer.layer(service_fn(ok));
    let response = send(&mut service, from_peer([192, 0, 2, 1])).await;
    assert!(response.headers().get("ratelimit").is_none());
    let response = send(&mut service, from_peer([192, 0, 2, 1])).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().get("ratelimit-policy").is_none());
    assert_eq!(header(&response, "retry-after"), "60");
}

#[tokio::test]
async fn missing_keys_follow_the_configured_rule() {
    let quota = Quota::per_minute(nz(1));
    let anonymous = || Request::new(Body::default());

    let mut reject = RateLimitLayer::new(PrincipalKey, quota.clone()).layer(service_fn(ok));
    let response = send(&mut reject, anonymous()).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(response.extensions().get::<Error>().unwrap().kind(), ErrorKind::Internal);

    let mut skip = RateLimitLayer::new(PrincipalKey, quota.clone())
        .on_missing_key(MissingKey::Skip)
        .layer(service_fn(ok));
    for _ in 0..3 {
        let response = send(&mut skip, anonymous()).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get("ratelimit").is_none());
    }

    let mut by_ip = RateLimitLayer::new(PrincipalKey, quota)
        .on_missing_key(MissingKey::ClientIp)
        .layer(service_fn(ok));
    assert_eq!(send(&mut by_ip, from_peer([192, 0, 2, 1])).await.status(), StatusCode::OK);
    let response = send(&mut by_ip, from_peer([192, 0, 2, 1])).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(send(&mut by_ip, from_peer([192, 0, 2, 2])).await.status(), StatusCode::OK);
    assert_eq!(send(&mut by_ip, anonymous()).await.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn only_failures_are_counted() {
    let clock = FakeClock::new();
    let layer = RateLimitLayer::per_ip(Quota::per_minute(nz(2)).named("login"))
        .count_only(|status| status == StatusCode::UNAUTHORIZED)
        .with_clock(clock.clone());
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let mut service = layer.layer(service_fn(move |request: Request<Body>| {
        counter.fetch_add(1, Ordering::SeqCst);
        let status =
            if request.uri().path() == "/good" { StatusCode::OK } else { StatusCode::UNAUTHORIZED };
        async move {
            let mut response = Response::new(Body::default());
            *response.status_mut() = status;
            Ok::<_, Infallible>(response)
        }
    }));
    let login = |path: &str| {
        let mut request = from_peer([192, 0, 2, 1]);
        *request.uri_mut() = path.parse().unwrap();
        request
    };
    for _ in 0..5 {
        let response = send(&mut service, login("/good")).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "ratelimit"), r#""login";r=2;t=0"#);
    }
    let response = send(&mut service, login("/bad")).await;
    assert_eq!(header(&response, "ratelimit"), r#""login";r=1;t=30"#);
    let response = send(&mut service, login("/bad")).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(header(&response, "ratelimit"), r#""login";r=0;t=60"#);
    assert_eq!(calls.load(Ordering::SeqCst), 7);
    // Over the limit: answered without calling the service, even a correct login.
    let response = send(&mut service, login("/good")).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&response, "retry-after"), "30");
    assert_eq!(calls.load(Ordering::SeqCst), 7);
    clock.advance(Duration::from_secs(30));
    assert_eq!(send(&mut service, login("/good")).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_handle_locks_a_username_whatever_the_ip() {
    let clock = FakeClock::new();
    let per_user = RateLimiter::new(Quota::per_minute(nz(5)).named("login-user"))
        .with_store(MemoryStore::new().with_clock(clock.clone()));
    let per_ip = RateLimiter::new(Quota::per_minute(nz(5)).named("login-ip"))
        .with_store(MemoryStore::new().with_clock(clock.clone()));
    let user = RateKey::from("alice");
    for i in 0..5u8 {
        // Each attempt from a different IP.
        let ip = RateKey::from_ip(IpAddr::from([198, 51, 100, i]));
        per_ip.check(&ip).await.unwrap();
        per_user.check(&user).await.unwrap();
        per_ip.record_failure(&ip).await.unwrap();
        per_user.record_failure(&user).await.unwrap();
    }
    let fresh_ip = RateKey::from_ip(IpAddr::from([198, 51, 100, 99]));
    assert!(per_ip.check(&fresh_ip).await.is_ok());
    let error = per_user.check(&user).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::RateLimited);
    assert_eq!(error.retry_after(), Some(Duration::from_secs(12)));
    // Failures beyond the limit keep it locked; they do not pile up without bound.
    for _ in 0..100 {
        per_user.record_failure(&user).await.unwrap();
    }
    clock.advance(Duration::from_secs(72));
    assert!(per_user.check(&user).await.is_ok());
    assert!(per_user.check(&RateKey::from("bob")).await.is_ok());
}

#[tokio::test]
async fn limiter_of_a_layer_shares_its_state() {
    let layer = RateLimitLayer::new(GlobalKey, Quota::per_minute(nz(1)));
    let limiter = layer.limiter().unwrap();
    limiter
        .acquire(&GlobalKey.extract(&parts(Request::new(Body::default()))).unwrap())
        .await
        .unwrap();
    let response = send(&mut layer.layer(service_fn(ok)), Request::new(Body::default())).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
}

// ---- keys ----

#[test]
fn keys_come_from_the_principal_and_tuples_combine() {
    let principal = Principal::builder("user-1").tenant("acme").key_id("key_public_1").build();
    let mut request = Request::new(Body::default());
    request.extensions_mut().insert(principal);
    request.headers_mut().insert("x-client", HeaderValue::from_static("mobile"));
    let parts = parts(request);
    assert_eq!(PrincipalKey.extract(&parts).unwrap().as_bytes(), b"user-1");
    assert_eq!(TenantKey.extract(&parts).unwrap().as_bytes(), b"acme");
    assert_eq!(ApiKeyId.extract(&parts).unwrap().as_bytes(), b"key_public_1");
    let header = HeaderKey::new(http::HeaderName::from_static("x-client"));
    assert_eq!(header.extract(&parts).unwrap().as_bytes(), b"mobile");
    let pair = (TenantKey, PrincipalKey);
    assert_eq!(pair.kind(), "tenant+principal");
    // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
    let a = (
        |_: &http::request::Parts| Some(RateKey::from("ab")),
        |_: &http::request::Parts| Some(RateKey::from("c")),
    );
    let b = (
        |_: &http::request::Parts| Some(RateKey::from("a")),
        |_: &http::request::Parts| Some(RateKey::from("bc")),
    );
    assert_ne!(a.extract(&parts), b.extract(&parts));
    assert!((PrincipalKey, ClientIp::new()).extract(&parts).is_none());
    let long = "x".repeat(300);
    let mut request = Request::new(Body::default());
    request.headers_mut().insert("x-client", HeaderValue::from_str(&long).unwrap());
    assert!(header.extract(&self::parts(request)).is_none());
    assert_eq!(format!("{:?}", RateKey::from("secret-api-key")), "RateKey(<14 bytes>)");
}

fn resolve(client_ip: &ClientIp, peer: IpAddr, headers: &[(&str, &str)]) -> Option<IpAddr> {
    let mut request = Request::new(Body::default());
    request.extensions_mut().insert(PeerAddr(SocketAddr::new(peer, 443)));
    for (name, value) in headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    client_ip.resolve(&parts(request))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn spoofed_forwarded_headers_from_untrusted_peers_are_ignored() {
    let trusted = ClientIp::new().trusted_proxies_from_str("10.0.0.0/8").unwrap();
    let attacker = ip("203.0.113.9");
    for client_ip in [ClientIp::new(), trusted] {
        assert_eq!(
            resolve(&client_ip, attacker, &[("x-forwarded-for", "198.51.100.1")]),
            Some(attacker)
        );
        let key = |headers| {
            let mut request = from_peer([203, 0, 113, 9]);
            for (n, v) in headers {
                request.headers_mut().insert(n, HeaderValue::from_static(v));
            }
            client_ip.extract(&parts(request))
        };
        assert_eq!(key(vec![]), key(vec![("x-forwarded-for", "1.1.1.1")]));
    }
}

#[test]
fn trusted_chains_pick_the_rightmost_untrusted_hop() {
    let client_ip = ClientIp::new().trusted_proxies_from_str("10.0.0.0/8, 192.168.1.1").unwrap();
    let proxy = ip("10.0.0.2");
    // A client-supplied prefix (1.1.1.1) is left of the real client.
    let xff = [("x-forwarded-for", "1.1.1.1, 198.51.100.7, 192.168.1.1, 10.0.0.9")];
    assert_eq!(resolve(&client_ip, proxy, &xff), Some(ip("198.51.100.7")));
    // Several header lines form one list, in order.
    let lines = [("x-forwarded-for", "1.1.1.1, 198.51.100.7"), ("x-forwarded-for", "10.0.0.9")];
    assert_eq!(resolve(&client_ip, proxy, &lines), Some(ip("198.51.100.7")));
    // Every hop trusted: the leftmost.
    assert_eq!(
        resolve(&client_ip, proxy, &[("x-forwarded-for", "10.1.1.1, 10.0.0.9")]),
        Some(ip("10.1.1.1"))
    );
    // No header: the peer.
    assert_eq!(resolve(&client_ip, proxy, &[]), Some(proxy));
    // Malformed: the peer.
    for bad in ["198.51.100.7, garbage", "", "198.51.100.7,,10.0.0.1", "999.1.1.1"] {
        assert_eq!(resolve(&client_ip, proxy, &[("x-forwarded-for", bad)]), Some(proxy), "{bad}");
    }
    // Ports and IPv4-mapped IPv6 are understood.
    assert_eq!(
        resolve(&client_ip, proxy, &[("x-forwarded-for", "198.51.100.7:5555")]),
        Some(ip("198.51.100.7"))
    );
    assert_eq!(
        resolve(&client_ip, proxy, &[("x-forwarded-for", "::ffff:198.51.100.7")]),
        Some(ip("198.51.100.7"))
    );
    // Too long a chain: the peer.
    let long = vec!["10.0.0.1"; 100].join(",");
    assert_eq!(resolve(&client_ip, proxy, &[("x-forwarded-for", &long)]), Some(proxy));
    // The other header is not read.
    assert_eq!(resolve(&client_ip, proxy, &[("forwarded", "for=198.51.100.7")]), Some(proxy));
}

#[test]
fn rfc7239_forwarded_is_parsed() {
    let client_ip = ClientIp::new()
        .trusted_proxies_from_str("10.0.0.0/8")
        .unwrap()
        .forwarded_header(ForwardedHeader::Forwarded);
    let proxy = ip("10.0.0.2");
    let value =
        r#"for=1.1.1.1, for="[2001:db8:cafe::17]:4711";proto=https, for=10.0.0.5;by=10.0.0.2"#;
    assert_eq!(resolve(&client_ip, proxy, &[("forwarded", value)]), Some(ip("2001:db8:cafe::17")));
    assert_eq!(
        resolve(&client_ip, proxy, &[("forwarded", "For=\"198.51.100.1:80\"")]),
        Some(ip("198.51.100.1"))
    );
    for bad in ["for=unknown", "for=_hidden", "proto=https", "for=\"[2001:db8::1\""] {
        assert_eq!(resolve(&client_ip, proxy, &[("forwarded", bad)]), Some(proxy), "{bad}");
    }
    assert_eq!(resolve(&client_ip, proxy, &[("x-forwarded-for", "198.51.100.1")]), Some(proxy));
}

#[test]
fn ipv6_clients_are_grouped_by_prefix() {
    let client_ip = ClientIp::new();
    let a = client_ip.key_for(ip("2001:db8:1:2:aaaa::1"));
    let b = client_ip.key_for(ip("2001:db8:1:2:ffff::9"));
    let c = client_ip.key_for(ip("2001:db8:1:3::1"));
    assert_eq!(a, b);
    assert_ne!(a, c);
    let per_48 = ClientIp::new().ipv6_prefix(48).unwrap();
    assert_eq!(per_48.key_for(ip("2001:db8:1:2::1")), per_48.key_for(ip("2001:db8:1:3::1")));
    let exact = ClientIp::new().ipv6_prefix(128).unwrap();
    assert_ne!(exact.key_for(ip("2001:db8::1")), exact.key_for(ip("2001:db8::2")));
    assert!(ClientIp::new().ipv6_prefix(129).is_err());
    assert!(ClientIp::new().ipv4_prefix(33).is_err());
    let v4 = ClientIp::new();
    assert_ne!(v4.key_for(ip("192.0.2.1")), v4.key_for(ip("192.0.2.2")));
    assert_eq!(v4.key_for(ip("192.0.2.1")), v4.key_for(ip("::ffff:192.0.2.1")));
    let per_24 = ClientIp::new().ipv4_prefix(24).unwrap();
    assert_eq!(per_24.key_for(ip("192.0.2.1")), per_24.key_for(ip("192.0.2.200")));
}

#[tokio::test]
async fn the_layer_puts_the_client_address_in_the_request() {
    let layer = RateLimitLayer::new(
        ClientIp::new().trusted_proxies_from_str("10.0.0.0/8").unwrap(),
        Quota::per_minute(nz(5)),
    );
    let mut service = layer.layer(service_fn(|request: Request<Body>| async move {
        let addr = request.extensions().get::<ClientAddr>().copied();
        Ok::<_, Infallible>(Response::new(Body::from(format!("{addr:?}"))))
    }));
    let mut request = from_peer([10, 0, 0, 2]);
    request.headers_mut().insert("x-forwarded-for", HeaderValue::from_static("198.51.100.7"));
    let response = send(&mut service, request).await;
    let body = crate::test_helpers::to_bytes(response.into_body()).await;
    assert_eq!(body, "Some(ClientAddr(198.51.100.7))");
}

#[test]
fn trusted_proxy_lists_are_validated() {
    assert!(ClientIp::new().trusted_proxies_from_str("10.0.0.0/8,,fd00::/8, 192.168.0.1").is_ok());
    assert_eq!(ClientIp::new().trusted_proxies_from_str("").unwrap().trusted().len(), 0);
    assert!(ClientIp::new().trusted_proxies_from_str("10.0.0.0/8, nope").is_err());
    assert!(ClientIp::new().trusted_proxies_from_str("10.0.0.300/8").is_err());
}

// ---- bounded memory ----

#[test]
fn a_flood_of_distinct_keys_stays_at_the_cap() {
    let clock = FakeClock::new();
    let store = MemoryStore::with_capacity(1_000).unwrap().with_clock(clock.clone());
    let limits = Limits::new(Quota::per_minute(nz(3)));
    let victim = RateKey::from("victim");
    for _ in 0..3 {
        assert!(store.decide_now(&limits, &victim, 1, Mode::Acquire).is_allowed());
    }
    assert!(!store.decide_now(&limits, &victim, 1, Mode::Acquire).is_allowed());
    let mut admitted = 0u32;
    for i in 0..1_000_000u32 {
        if store.decide_now(&limits, &RateKey::new(i.to_le_bytes()), 1, Mode::Acquire).is_allowed()
        {
            admitted += 1;
        }
        if i % 100_000 == 0 {
            clock.advance(Duration::from_millis(1));
        }
        assert!(store.len() <= 1_000);
    }
    assert_eq!(store.len(), 1_000);
    // 999 tracked keys got their burst; every other key shared one overflow bucket (3 units,
    // plus what it refilled during the 10 ms the flood took).
    assert!(admitted <= 999 + 3, "{admitted}");
    // The flood did not evict the victim's debt.
    assert!(!store.decide_now(&limits, &victim, 1, Mode::Acquire).is_allowed());
    // Idle keys are dropped (amortised, in later calls) once their buckets are whole again.
    clock.advance(Duration::from_secs(61));
    for i in 0..2_000u32 {
        store.decide_now(&limits, &RateKey::new(i.to_be_bytes()), 1, Mode::Peek);
    }
    let victim_state = store.decide_now(&limits, &victim, 1, Mode::Acquire);
    assert!(victim_state.is_allowed());
    assert!(store.len() < 100, "{}", store.len());
}

#[test]
fn eviction_prefers_idle_keys_and_never_resets_active_ones() {
    let clock = FakeClock::new();
    let store = MemoryStore::with_capacity(1).unwrap().with_clock(clock.clone());
    let limits = Limits::new(Quota::per_minute(nz(1)));
    let a = RateKey::from("a");
    assert!(store.decide_now(&limits, &a, 1, Mode::Acquire).is_allowed());
    // Full of active keys: "b" goes to the overflow bucket, "a" keeps its state.
    assert!(store.decide_now(&limits, &RateKey::from("b"), 1, Mode::Acquire).is_allowed());
    assert!(!store.decide_now(&limits, &RateKey::from("c"), 1, Mode::Acquire).is_allowed());
    assert!(!store.decide_now(&limits, &a, 1, Mode::Acquire).is_allowed());
    assert_eq!(store.len(), 1);
    // Once "a" is idle it can make room.
    clock.advance(Duration::from_secs(60));
    assert!(store.decide_now(&limits, &RateKey::from("d"), 1, Mode::Acquire).is_allowed());
    assert_eq!(store.len(), 1);
    assert!(!store.decide_now(&limits, &RateKey::from("d"), 1, Mode::Acquire).is_allowed());
    assert!(MemoryStore::with_capacity(0).is_err());
}

#[test]
fn a_flood_cannot_exempt_a_new_key_from_only_failures_counting() {
    let store = MemoryStore::with_capacity(10).unwrap().with_clock(FakeClock::new());
    let limits = Limits::new(Quota::per_minute(nz(3)));
    // An attacker fills the store with active keys (one failure each)...
    for i in 0..10u32 {
        store.decide_now(&limits, &RateKey::new(i.to_le_bytes()), 1, Mode::Charge);
    }
    assert_eq!(store.len(), 10);
    // ...then brute-forces a key that is not tracked: its failures land in the overflow
    // bucket, and its checks look there too.
    let victim = RateKey::from("alice");
    for _ in 0..3 {
        assert!(store.decide_now(&limits, &victim, 1, Mode::Peek).is_allowed());
        store.decide_now(&limits, &victim, 1, Mode::Charge);
    }
    assert!(!store.decide_now(&limits, &victim, 1, Mode::Peek).is_allowed());
}

#[test]
fn quotas_reject_invalid_periods_and_clean_names() {
    assert!(Quota::new(nz(10), Duration::ZERO).is_err());
    let q = Quota::new(nz(1000), Duration::from_secs(86_400)).unwrap().named("dai\"ly\n");
    assert_eq!(q.name(), "daily");
    assert_eq!(q.window(), Duration::from_secs(86_400));
    assert_eq!(Limits::new(q).inner.policy[0], r#""daily";q=1000;w=86400"#);
}

// ---- Redis ----

#[cfg(feature = "redis")]
mod redis_store {
    use std::sync::atomic::AtomicBool;

    use tokio::{
        net::{TcpListener, TcpStream},
        task::JoinHandle,
    };

    use super::*;
    use crate::test_helpers::{redis_url, unique_prefix};

    fn store(url: &str, prefix: &str, policy: FailurePolicy) -> RedisStore {
        RedisStore::new(url, policy).unwrap().prefix(prefix).timeout(Duration::from_secs(2))
    }

    async fn redis_conn(url: &str) -> ::redis::aio::MultiplexedConnection {
        ::redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
    }

    #[tokio::test]
    async fn two_instances_share_one_budget() {
        let Some(url) = redis_url() else { return };
        let prefix = unique_prefix("rl-shared");
        let quota = || Quota::per_minute(nz(3)).named("shared");
        let mut a = RateLimitLayer::per_ip(quota())
            .with_store(store(&url, &prefix, FailurePolicy::FailClosed))
            .layer(service_fn(ok));
        let mut b = RateLimitLayer::per_ip(quota())
            .with_store(store(&url, &prefix, FailurePolicy::FailClosed))
            .layer(service_fn(ok));
        let peer = [192, 0, 2, 10];
        let response = send(&mut a, from_peer(peer)).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "ratelimit"), r#""shared";r=2;t=20"#);
        assert_eq!(send(&mut b, from_peer(peer)).await.status(), StatusCode::OK);
        assert_eq!(send(&mut a, from_peer(peer)).await.status(), StatusCode::OK);
        let response = send(&mut b, from_peer(peer)).await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = header(&response, "retry-after").parse().unwrap();
        assert!((19..=20).contains(&retry), "{retry}");
        assert_eq!(send(&mut a, from_peer(peer)).await.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(send(&mut b, from_peer([192, 0, 2, 11])).await.status(), StatusCode::OK);

        // Keys carry the prefix, a hash tag and a TTL.
        let mut conn = redis_conn(&url).await;
        let key = format!("{prefix}{{04c000020a}}:shared:20000000000:3");
        let ttl: i64 = ::redis::cmd("PTTL").arg(&key).query_async(&mut conn).await.unwrap();
        assert!(ttl > 50_000 && ttl <= 61_000, "{ttl}");
    }

    #[tokio::test]
    async fn several_quotas_and_only_failures_in_redis() {
        let Some(url) = redis_url() else { return };
        let prefix = unique_prefix("rl-multi");
        let limiter = RateLimiter::new(
            Limits::new(Quota::per_second(nz(2)).named("s"))
                .add_quota(Quota::per_minute(nz(3)).named("m")),
        )
        .with_store(store(&url, &prefix, FailurePolicy::FailClosed));
        let key = RateKey::from("user:alice");
        assert!(limiter.acquire(&key).await.is_ok());
        assert!(limiter.acquire(&key).await.is_ok());
        let error = limiter.acquire(&key).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::RateLimited);
        let peek = limiter.check(&RateKey::from("user:bob")).await.unwrap();
        assert_eq!(peek.remaining(), 2);
        let charged = limiter.record_failure(&RateKey::from("user:bob")).await.unwrap();
        assert_eq!(charged.remaining(), 1);
    }

    #[tokio::test]
    async fn the_script_is_reloaded_after_script_flush() {
        let Some(url) = redis_url() else { return };
        let prefix = unique_prefix("rl-flush");
        let limiter = RateLimiter::new(Quota::per_minute(nz(2))).with_store(store(
            &url,
            &prefix,
            FailurePolicy::FailClosed,
        ));
        let key = RateKey::from("k");
        assert_eq!(limiter.acquire(&key).await.unwrap().remaining(), 1);
        let mut conn = redis_conn(&url).await;
        let () = ::redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut conn).await.unwrap();
        // EVALSHA answers NOSCRIPT; the store loads the script again, and the state is kept.
        assert_eq!(limiter.acquire(&key).await.unwrap().remaining(), 0);
        assert!(limiter.acquire(&key).await.is_err());
    }

    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn fail_open_limits_locally_when_redis_is_unreachable() {
        let url = format!("redis://127.0.0.1:{}", closed_port());
        let store = store(&url, "unused:", FailurePolicy::FailOpen);
        assert_eq!(store.failure_policy(), FailurePolicy::FailOpen);
        let mut service = RateLimitLayer::per_ip(Quota::per_minute(nz(1)))
            .with_store(store)
            .layer(service_fn(ok));
        assert_eq!(send(&mut service, from_peer([192, 0, 2, 1])).await.status(), StatusCode::OK);
        let response = send(&mut service, from_peer([192, 0, 2, 1])).await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    }

    #[tokio::test]
    async fn fail_closed_answers_503_when_redis_is_unreachable() {
        let url = format!("redis://127.0.0.1:{}", closed_port());
        let mut service = RateLimitLayer::per_ip(Quota::per_minute(nz(5)))
            .with_store(store(&url, "unused:", FailurePolicy::FailClosed))
            .layer(service_fn(ok));
        let response = send(&mut service, from_peer([192, 0, 2, 1])).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let error = response.extensions().get::<Error>().unwrap();
        assert_eq!(error.kind(), ErrorKind::ServiceUnavailable);
    }

    /// A TCP proxy to the real Redis that can be cut and restored.
    struct Proxy {
        port: u16,
        enabled: Arc<AtomicBool>,
        tasks: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
        accept: JoinHandle<()>,
    }

    impl Proxy {
        async fn start(redis: &str) -> Self {
            let target = redis.trim_start_matches("redis://").split('/').next().unwrap().to_owned();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let enabled = Arc::new(AtomicBool::new(true));
            let tasks = Arc::new(std::sync::Mutex::new(Vec::new()));
            let (on, list) = (Arc::clone(&enabled), Arc::clone(&tasks));
            let accept = tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !on.load(Ordering::SeqCst) {
                        continue; // dropped: connection closed
                    }
                    let target = target.clone();
                    list.lock().unwrap().push(tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(&target).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    }));
                }
            });
            Self { port, enabled, tasks, accept }
        }

        fn cut(&self) {
            self.enabled.store(false, Ordering::SeqCst);
            for task in self.tasks.lock().unwrap().drain(..) {
                task.abort();
            }
        }

        fn restore(&self) {
            self.enabled.store(true, Ordering::SeqCst);
        }
    }

    impl Drop for Proxy {
        fn drop(&mut self) {
            self.cut();
            self.accept.abort();
        }
    }

    #[tokio::test]
    async fn recovers_when_redis_comes_back_and_rejections_are_cached() {
        let Some(url) = redis_url() else { return };
        let proxy = Proxy::start(&url).await;
        let prefix = unique_prefix("rl-recover");
        let store =
            store(&format!("redis://127.0.0.1:{}", proxy.port), &prefix, FailurePolicy::FailClosed)
                .timeout(Duration::from_millis(500));
        let mut service = RateLimitLayer::per_ip(Quota::per_minute(nz(1)))
            .with_store(store)
            .layer(service_fn(ok));
        let (limited, other) = ([192, 0, 2, 1], [192, 0, 2, 2]);
        assert_eq!(send(&mut service, from_peer(limited)).await.status(), StatusCode::OK);
        assert_eq!(
            send(&mut service, from_peer(limited)).await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );

        proxy.cut();
        assert_eq!(
            send(&mut service, from_peer(other)).await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        // The rejected client is answered from the local cache, without Redis.
        let response = send(&mut service, from_peer(limited)).await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(header(&response, "ratelimit").starts_with(r#""default";r=0;t="#));

        proxy.restore();
        let mut status = StatusCode::SERVICE_UNAVAILABLE;
        for _ in 0..200 {
            status = send(&mut service, from_peer(other)).await.status();
            if status != StatusCode::SERVICE_UNAVAILABLE {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(status, StatusCode::OK, "the store reconnected");
        assert_eq!(
            send(&mut service, from_peer(other)).await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
}

// ---- the in-memory path ----

/// Counts its clones: the in-memory path must call the ready service itself, not a clone.
struct CountClones {
    clones: Arc<AtomicUsize>,
}

impl Clone for CountClones {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, Ordering::SeqCst);
        Self { clones: Arc::clone(&self.clones) }
    }
}

impl Service<Request<Body>> for CountClones {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Body>) -> Self::Future {
        std::future::ready(Ok(Response::new(Body::from("ok"))))
    }
}

#[tokio::test]
async fn in_memory_decisions_call_the_ready_service_without_cloning_it() {
    let clones = Arc::new(AtomicUsize::new(0));
    let layer = RateLimitLayer::per_ip(Quota::per_second(nz(2)));
    let mut service = layer.layer(CountClones { clones: Arc::clone(&clones) });
    let statuses = [
        send(&mut service, from_peer([192, 0, 2, 1])).await.status(),
        send(&mut service, from_peer([192, 0, 2, 1])).await.status(),
        send(&mut service, from_peer([192, 0, 2, 1])).await.status(),
    ];
    assert_eq!(statuses, [StatusCode::OK, StatusCode::OK, StatusCode::TOO_MANY_REQUESTS]);
    assert_eq!(clones.load(Ordering::SeqCst), 0, "the inner service was cloned per request");
}
