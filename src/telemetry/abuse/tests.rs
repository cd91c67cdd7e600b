use std::{
    convert::Infallible,
    num::NonZeroU32,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{request::Parts, Request, Response, StatusCode};
use http_body_util::Full;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

use super::*;
use crate::clock::FakeClock;

type Body = Full<Bytes>;

fn header_key(parts: &Parts) -> Option<ClientKey> {
    parts.headers.get("x-client").map(|v| ClientKey::new(v.as_bytes()))
}

type KeyFn = fn(&Parts) -> Option<ClientKey>;

fn layer(clock: &FakeClock, threshold: u32) -> PenaltyBoxLayer<KeyFn> {
    PenaltyBoxLayer::new(header_key as KeyFn)
        .threshold(NonZeroU32::new(threshold).unwrap(), Duration::from_secs(60))
        .unwrap()
        .cool_down(Duration::from_secs(60), Duration::from_secs(200))
        .unwrap()
        .forget_strikes_after(Duration::from_secs(600))
        .with_clock(clock.clone())
}

/// A request from `client` that the handler answers with `status`.
fn request(client: &str, status: u16) -> Request<Body> {
    Request::builder()
        .header("x-client", client)
        .header("x-status", status.to_string())
        .body(Body::default())
        .unwrap()
}

/// A service answering the status in `x-status`, counting its calls.
fn service(
    layer: &PenaltyBoxLayer<KeyFn>,
    calls: &Arc<AtomicUsize>,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone {
    let calls = Arc::clone(calls);
    ServiceBuilder::new().layer(layer.clone()).service(service_fn(move |req: Request<Body>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let status = req.headers()["x-status"].to_str().unwrap().parse::<u16>().unwrap();
        let mut response = Response::new(Body::default());
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        std::future::ready(Ok::<_, Infallible>(response))
    }))
}

fn send<S>(service: &S, request: Request<Body>) -> Response<Body>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
{
    service.clone().oneshot(request).now_or_never().expect("completes without waiting").unwrap()
}

fn retry_after(response: &Response<Body>) -> u64 {
    response.headers()["retry-after"].to_str().unwrap().parse().unwrap()
}

#[test]
fn the_nth_suspicious_response_blocks_and_successes_do_not_count() {
    let clock = FakeClock::new();
    let layer = layer(&clock, 3);
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = service(&layer, &calls);

    for _ in 0..10 {
        assert_eq!(send(&svc, request("a", 200)).status(), StatusCode::OK);
    }
    // Outcomes a little apart (the count drains meanwhile) still add up to the threshold.
    assert_eq!(send(&svc, request("a", 401)).status(), StatusCode::UNAUTHORIZED);
    clock.advance(Duration::from_secs(1));
    assert_eq!(send(&svc, request("a", 404)).status(), StatusCode::NOT_FOUND);
    clock.advance(Duration::from_secs(1));
    assert_eq!(send(&svc, request("a", 200)).status(), StatusCode::OK);
    assert_eq!(layer.blocked_for(&ClientKey::from("a")), None);
    // The third suspicious outcome is answered as usual and starts the block.
    assert_eq!(send(&svc, request("a", 422)).status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(layer.blocked_for(&ClientKey::from("a")), Some(Duration::from_secs(60)));

    let before = calls.load(Ordering::SeqCst);
    let response = send(&svc, request("a", 200));
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&response), 60);
    assert_eq!(response.extensions().get::<Error>().unwrap().kind(), ErrorKind::RateLimited);
    assert_eq!(calls.load(Ordering::SeqCst), before, "the inner service is not called");

    // Another client is unaffected.
    assert_eq!(send(&svc, request("b", 200)).status(), StatusCode::OK);
}

#[test]
fn the_count_drains_over_the_window() {
    let clock = FakeClock::new();
    let layer = layer(&clock, 3);
    let svc = service(&layer, &Arc::new(AtomicUsize::new(0)));
    // Three failures spread over more than a window (one drains every 20 s) never block.
    for _ in 0..10 {
        assert_eq!(send(&svc, request("a", 403)).status(), StatusCode::FORBIDDEN);
        clock.advance(Duration::from_secs(21));
    }
    assert_eq!(layer.blocked_for(&ClientKey::from("a")), None);
}

#[test]
fn cool_down_doubles_per_strike_is_capped_and_strikes_are_forgotten() {
    let clock = FakeClock::new();
    let layer = layer(&clock, 2);
    let svc = service(&layer, &Arc::new(AtomicUsize::new(0)));
    let strike = || {
        send(&svc, request("a", 401));
        send(&svc, request("a", 401));
        let response = send(&svc, request("a", 200));
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        retry_after(&response)
    };

    // 60 s, 120 s, then capped at 200 s (not 240 s).
    for expected in [60, 120, 200, 200] {
        assert_eq!(strike(), expected);
        clock.advance(Duration::from_secs(expected));
        assert_eq!(send(&svc, request("a", 200)).status(), StatusCode::OK);
    }

    // 600 s after the last block ended without a new one, strikes are forgotten.
    clock.advance(Duration::from_secs(599));
    assert_eq!(strike(), 200);
    clock.advance(Duration::from_secs(200 + 600));
    assert_eq!(strike(), 60);
}

#[test]
fn a_client_is_unblocked_exactly_when_the_cool_down_ends() {
    let clock = FakeClock::new();
    let layer = layer(&clock, 1);
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = service(&layer, &calls);
    send(&svc, request("a", 400));

    clock.advance(Duration::from_millis(59_500));
    let response = send(&svc, request("a", 200));
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&response), 1, "rounded up");

    clock.advance(Duration::from_millis(500));
    assert_eq!(send(&svc, request("a", 200)).status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // The count restarted from zero: a new strike needs the threshold again.
    assert_eq!(layer.blocked_for(&ClientKey::from("a")), None);
}

#[test]
fn the_rule_is_configurable_and_sees_the_error() {
    let clock = FakeClock::new();
    let layer = layer(&clock, 1)
        .suspicious(|outcome| outcome.error().is_some_and(|e| e.kind() == ErrorKind::Forbidden));
    let svc =
        ServiceBuilder::new().layer(layer.clone()).service(service_fn(|req: Request<Body>| {
            let response = if req.uri().path() == "/denied" {
                Error::new(ErrorKind::Forbidden).to_response()
            } else {
                let mut response = Response::new(Body::default());
                *response.status_mut() = StatusCode::NOT_FOUND;
                response
            };
            std::future::ready(Ok::<_, Infallible>(response))
        }));
    let req = |path: &str| {
        Request::builder().uri(path).header("x-client", "a").body(Body::default()).unwrap()
    };
    // A bare 404 is not suspicious under this rule; a 403 from a layer is.
    assert_eq!(send(&svc, req("/missing")).status(), StatusCode::NOT_FOUND);
    assert_eq!(layer.blocked_for(&ClientKey::from("a")), None);
    assert_eq!(send(&svc, req("/denied")).status(), StatusCode::FORBIDDEN);
    assert_eq!(send(&svc, req("/missing")).status(), StatusCode::TOO_MANY_REQUESTS);
}

#[test]
fn the_default_rule() {
    let headers = http::HeaderMap::new();
    for (status, expected) in
        [(200, false), (204, false), (400, true), (401, true), (403, true), (404, true)]
            .into_iter()
            .chain([
                (409, false),
                (413, true),
                (415, true),
                (422, true),
                (429, false),
                (500, false),
            ])
    {
        let outcome = Outcome::new(StatusCode::from_u16(status).unwrap(), &headers, None);
        assert_eq!(outcome.default_rule(), expected, "{status}");
    }
    let mut grpc = http::HeaderMap::new();
    grpc.insert("grpc-status", "16".parse().unwrap());
    assert!(Outcome::new(StatusCode::OK, &grpc, None).default_rule());
    grpc.insert("grpc-status", "0".parse().unwrap());
    assert!(!Outcome::new(StatusCode::OK, &grpc, None).default_rule());
}

#[test]
fn requests_without_a_key_pass_uncounted() {
    let clock = FakeClock::new();
    let layer = layer(&clock, 1);
    let svc = service(&layer, &Arc::new(AtomicUsize::new(0)));
    for _ in 0..5 {
        let request = Request::builder().header("x-status", "401").body(Body::default()).unwrap();
        assert_eq!(send(&svc, request).status(), StatusCode::UNAUTHORIZED);
    }
    assert!(layer.is_empty());
}

#[cfg(feature = "envelope")]
#[test]
fn blocked_clients_get_the_429_envelope_with_retry_after() {
    let clock = FakeClock::new();
    let layer = layer(&clock, 1);
    let svc = ServiceBuilder::new()
        .layer(crate::envelope::ErrorEnvelopeLayer::new())
        .layer(layer)
        .service(service_fn(|_: Request<Body>| async {
            Ok::<_, Infallible>(crate::Error::new(ErrorKind::Unauthenticated).to_response::<Body>())
        }));
    let call = || {
        svc.clone()
            .oneshot(request("a", 0))
            .now_or_never()
            .expect("completes without waiting")
            .unwrap()
    };
    assert_eq!(call().status(), StatusCode::UNAUTHORIZED);
    let response = call();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "60");
    let body =
        crate::test_helpers::to_json(response.into_body()).now_or_never().expect("a ready body");
    assert_eq!(body["code"], "rate_limited");
    assert_eq!(body["message"], "Too many requests");
}

#[test]
fn memory_is_bounded_under_a_flood_and_blocked_clients_survive_it() {
    let clock = FakeClock::new();
    let capacity = 10_000;
    let layer = layer(&clock, 5).capacity(capacity).unwrap();
    let state = &*layer.state;
    let victim = ClientKey::from("victim");
    let victim_hash = state.hash(&victim);
    for _ in 0..5 {
        state.record(victim_hash, &victim, state.now());
    }
    assert_eq!(layer.blocked_for(&victim), Some(Duration::from_secs(60)));

    let ((), warnings) = crate::test_helpers::capture_events(tracing::Level::WARN, || {
        for i in 0u32..1_000_000 {
            let key = ClientKey::new(i.to_le_bytes());
            state.record(state.hash(&key), &key, state.now());
            if i % 100_000 == 0 {
                clock.advance(Duration::from_millis(100));
            }
        }
    });
    assert_eq!(layer.len(), capacity);
    let full: Vec<_> =
        warnings.iter().filter(|e| e["target"] == "tower_shield::telemetry").collect();
    assert_eq!(full.len(), 1, "warned once: {full:?}");
    // 1 s of flood time has passed: the victim is still blocked.
    assert_eq!(layer.blocked_for(&victim), Some(Duration::from_secs(59)));

    // Once the flood's counts drain, their entries go and new clients are tracked again.
    clock.advance(Duration::from_secs(30));
    let newcomer = ClientKey::from("newcomer");
    for _ in 0..5 {
        state.record(state.hash(&newcomer), &newcomer, state.now());
    }
    assert!(layer.blocked_for(&newcomer).is_some());
    assert!(layer.blocked_for(&victim).is_some());
    assert!(layer.len() <= capacity);
}

#[test]
fn block_and_unblock_events_carry_a_fingerprint_never_the_key() {
    let clock = FakeClock::new();
    let layer = layer(&clock, 2);
    let svc = service(&layer, &Arc::new(AtomicUsize::new(0)));
    let secret = "SECRET-CLIENT-KEY";
    let ((), events) = crate::test_helpers::capture_events(tracing::Level::INFO, || {
        send(&svc, request(secret, 401));
        send(&svc, request(secret, 401));
        clock.advance(Duration::from_secs(60));
        send(&svc, request(secret, 200));
    });
    let logs = serde_json::to_string(&events).unwrap();
    assert!(!logs.contains(secret), "{logs}");
    let ours: Vec<_> = events.iter().filter(|e| e["target"] == SECURITY_TARGET).collect();
    assert_eq!(ours.len(), 2, "{logs}");

    let blocked = ours[0];
    assert_eq!(blocked["level"], "WARN");
    assert_eq!(blocked["fields"]["event"], "abuse.blocked");
    assert_eq!(blocked["fields"]["key_kind"], "custom");
    assert_eq!(blocked["fields"]["strikes"], 1);
    assert_eq!(blocked["fields"]["cool_down_ms"], 60_000);
    let client = blocked["fields"]["client"].as_str().unwrap();
    assert_eq!(client, fingerprint(secret.as_bytes()));

    let unblocked = ours[1];
    assert_eq!(unblocked["level"], "INFO");
    assert_eq!(unblocked["fields"]["event"], "abuse.unblocked");
    assert_eq!(unblocked["fields"]["client"], client);
    assert_eq!(unblocked["fields"]["strikes"], 1);
}

#[test]
fn bad_configuration_is_refused() {
    let layer = || PenaltyBoxLayer::new(header_key as KeyFn);
    assert!(layer().threshold(NonZeroU32::MIN, Duration::ZERO).is_err());
    assert!(layer().cool_down(Duration::ZERO, Duration::from_secs(1)).is_err());
    assert!(layer().cool_down(Duration::from_secs(2), Duration::from_secs(1)).is_err());
    assert!(layer().capacity(0).is_err());
    let debug = format!("{:?}", layer());
    assert!(debug.contains("<fn>"), "{debug}");
}

#[test]
fn client_keys_never_print_their_bytes() {
    assert_eq!(format!("{:?}", ClientKey::from("token")), "ClientKey(<5 bytes>)");
}

#[cfg(feature = "rate-limit")]
#[test]
fn client_keys_are_equal_by_their_bytes() {
    use std::collections::HashSet;

    use crate::rate_limit::RateKey;

    let from_rate = ClientKey::from(RateKey::from("user-42"));
    let from_str = ClientKey::from("user-42");
    assert_eq!(from_rate, from_str);
    let set: HashSet<ClientKey> = [from_rate, from_str].into_iter().collect();
    assert_eq!(set.len(), 1, "equal keys hash alike");
    assert_ne!(ClientKey::from(RateKey::from("user-43")), ClientKey::from("user-42"));
}
