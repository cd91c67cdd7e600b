//! Property tests against simple models: GCRA decisions for several keys and quotas under
//! random arrival times, the client IP chosen from random trusted/untrusted forwarding chains,
//! and the error envelope never forwarding an inner body. Failures proptest finds are kept in
//! `tests/proptests.proptest-regressions` and replayed first.
#![cfg(all(feature = "rate-limit", feature = "envelope"))]

use std::{
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    num::NonZeroU32,
    time::Duration,
};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use tower::{service_fn, Layer, ServiceExt};
use tower_shield::{
    clock::FakeClock,
    envelope::ErrorEnvelopeLayer,
    rate_limit::{ClientIp, ForwardedHeader, Limits, MemoryStore, Mode, PeerAddr, Quota, RateKey},
    Error, ErrorKind,
};

// ---- GCRA: several keys, several quotas, random arrivals ----

/// The textbook GCRA (virtual scheduling), one theoretical arrival time per key and quota: a
/// request of `cost` fits a quota when the time it would schedule ahead of now,
/// `max(tat, now) + T * cost - now`, is at most `T * burst`. It passes when it fits every
/// quota of the key, and then (only then) every quota is charged.
struct Model {
    /// `(T, burst)` in nanoseconds per quota.
    quotas: Vec<(u64, u64)>,
    /// TATs per key, per quota.
    tats: Vec<Vec<u64>>,
}

impl Model {
    /// `Ok(())` when allowed (and charged), else the wait until it would be.
    fn decide(&mut self, key: usize, now: u64, cost: u64) -> Result<(), u64> {
        let tats = &mut self.tats[key];
        let mut wait = 0;
        for (&(t, burst), &tat) in self.quotas.iter().zip(tats.iter()) {
            let ahead = tat.max(now) + t * cost - now;
            wait = wait.max(ahead.saturating_sub(t * burst));
        }
        if wait > 0 {
            return Err(wait);
        }
        for (&(t, _), tat) in self.quotas.iter().zip(tats.iter_mut()) {
            *tat = (*tat).max(now) + t * cost;
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
struct Arrival {
    after_ms: u64,
    key: usize,
    cost: u32,
}

const KEYS: usize = 4;

fn quotas() -> impl Strategy<Value = Vec<Quota>> {
    let quota =
        (1u32..240, 1u32..12, prop_oneof![Just(1u64), Just(60)]).prop_map(|(n, burst, per)| {
            let n = NonZeroU32::new(n).unwrap();
            let quota = if per == 1 { Quota::per_second(n) } else { Quota::per_minute(n) };
            quota.allow_burst(NonZeroU32::new(burst).unwrap())
        });
    prop::collection::vec(quota, 1..=3)
}

fn arrivals() -> impl Strategy<Value = Vec<Arrival>> {
    let arrival = (
        // Mostly bursts of simultaneous or close requests, sometimes long pauses.
        prop_oneof![3 => 0u64..50, 2 => 0u64..2_000, 1 => 0u64..120_000],
        0..KEYS,
        prop_oneof![4 => Just(1u32), 1 => 1u32..6],
    )
        .prop_map(|(after_ms, key, cost)| Arrival { after_ms, key, cost });
    prop::collection::vec(arrival, 1..300)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every decision (and every wait) is the model's, keys never affect one another, and no
    /// key gets more than burst + elapsed / T through any quota.
    #[test]
    fn gcra_several_keys_and_quotas_under_random_arrivals(
        quotas in quotas(),
        arrivals in arrivals(),
    ) {
        let mut limits = Limits::new(quotas[0].clone());
        for quota in &quotas[1..] {
            limits = limits.add_quota(quota.clone());
        }
        let clock = FakeClock::new();
        let store = MemoryStore::new().with_clock(clock.clone());
        let keys: Vec<RateKey> = (0..KEYS).map(|k| RateKey::from(format!("key-{k}").as_str())).collect();
        let mut model = Model {
            quotas: quotas
                .iter()
                .map(|q| (q.replenish_interval().as_nanos() as u64, u64::from(q.burst().get())))
                .collect(),
            tats: vec![vec![0; quotas.len()]; KEYS],
        };
        let mut now = 0u64;
        let mut passed = [0u64; KEYS];
        for arrival in arrivals {
            clock.advance(Duration::from_millis(arrival.after_ms));
            now += arrival.after_ms * 1_000_000;
            let decision = store.decide_now(&limits, &keys[arrival.key], arrival.cost, Mode::Acquire);
            match model.decide(arrival.key, now, u64::from(arrival.cost)) {
                Ok(()) => {
                    prop_assert!(decision.is_allowed(), "{:?} at {} ns: the model allows it", arrival, now);
                    prop_assert_eq!(decision.retry_after(), Duration::ZERO);
                    passed[arrival.key] += u64::from(arrival.cost);
                }
                Err(wait) => {
                    prop_assert!(!decision.is_allowed(), "{:?} at {} ns: the model refuses it", arrival, now);
                    prop_assert_eq!(decision.retry_after(), Duration::from_nanos(wait));
                }
            }
            for (&(t, burst), quota) in model.quotas.iter().zip(&quotas) {
                let bound = burst + now / t;
                prop_assert!(
                    passed[arrival.key] <= bound,
                    "{} passed for one key, {:?} allows {}", passed[arrival.key], quota, bound
                );
            }
        }
    }
}

// ---- Client IP: random chains of trusted and untrusted hops ----

const TRUSTED: &str = "10.0.0.0/8, 172.16.0.0/12, fd00::/8";

fn is_trusted(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.octets()[0] == 10 || (v4.octets()[0] == 172 && v4.octets()[1] & 0xf0 == 16)
        }
        IpAddr::V6(v6) => v6.segments()[0] >> 8 == 0xfd,
    }
}

#[derive(Clone, Debug)]
enum Hop {
    /// An address, written in one of its forms.
    Ip { ip: IpAddr, port: Option<u16>, mapped: bool },
    /// An entry that names no address (`unknown`, an obfuscated id, garbage).
    Malformed(&'static str),
}

fn address() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 3]>().prop_map(|[a, b, c]| IpAddr::from([10, a, b, c])),
        (0u8..16, any::<[u8; 2]>()).prop_map(|(a, [b, c])| IpAddr::from([172, 16 + a, b, c])),
        any::<u128>().prop_map(|bits| IpAddr::V6(Ipv6Addr::from((0xfd << 120) | (bits >> 8)))),
        any::<u8>().prop_map(|d| IpAddr::from([203, 0, 113, d])),
        any::<[u8; 2]>().prop_map(|[c, d]| IpAddr::from([198, 51, c, d])),
        any::<u64>()
            .prop_map(|low| IpAddr::V6(Ipv6Addr::from((0x2001_0db8_u128 << 96) | u128::from(low)))),
    ]
}

fn hop() -> impl Strategy<Value = Hop> {
    prop_oneof![
        8 => (address(), prop::option::of(1u16..), any::<bool>())
            .prop_map(|(ip, port, mapped)| Hop::Ip { ip, port, mapped }),
        1 => prop::sample::select(vec!["unknown", "_hidden", "", "1.2.3", "::g", "[::1"])
            .prop_map(Hop::Malformed),
    ]
}

impl Hop {
    fn render(&self, header: ForwardedHeader) -> String {
        let text = match self {
            Hop::Malformed(text) => (*text).to_owned(),
            Hop::Ip { ip, port, mapped } => {
                let ip_text = match ip {
                    IpAddr::V4(v4) if *mapped => format!("::ffff:{v4}"),
                    ip => ip.to_string(),
                };
                let v6 = ip_text.contains(':');
                match (port, v6, header) {
                    (None, false, _) | (None, true, ForwardedHeader::XForwardedFor) => ip_text,
                    (None, true, _) => format!("\"[{ip_text}]\""),
                    (Some(port), false, ForwardedHeader::XForwardedFor) => {
                        format!("{ip_text}:{port}")
                    }
                    (Some(port), false, _) => format!("\"{ip_text}:{port}\""),
                    (Some(port), true, ForwardedHeader::XForwardedFor) => {
                        format!("[{ip_text}]:{port}")
                    }
                    (Some(port), true, _) => format!("\"[{ip_text}]:{port}\""),
                }
            }
        };
        match header {
            ForwardedHeader::XForwardedFor => text,
            _ => format!("for={text};proto=https"),
        }
    }
}

/// The rightmost untrusted hop after skipping trusted ones from the right; the peer when the
/// peer is untrusted, when a malformed entry is reached first, when more than 64 hops would
/// have to be walked, or without a header; the leftmost hop when all are trusted.
fn expected_client(peer: IpAddr, hops: &[Hop]) -> IpAddr {
    if !is_trusted(peer) || hops.is_empty() {
        return peer;
    }
    for (walked, hop) in hops.iter().rev().enumerate() {
        if walked == 64 {
            return peer;
        }
        match hop {
            Hop::Malformed(_) => return peer,
            Hop::Ip { ip, .. } if !is_trusted(*ip) => return *ip,
            Hop::Ip { .. } => {}
        }
    }
    match hops[0] {
        Hop::Ip { ip, .. } => ip,
        Hop::Malformed(_) => peer,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn client_ip_is_the_rightmost_untrusted_hop(
        peer in address(),
        hops in prop::collection::vec(hop(), 0..70),
        forwarded in any::<bool>(),
        lines in 1usize..4,
        low in any::<u64>(),
    ) {
        let header = if forwarded { ForwardedHeader::Forwarded } else { ForwardedHeader::XForwardedFor };
        let ip = ClientIp::new().trusted_proxies_from_str(TRUSTED).unwrap().forwarded_header(header);
        let name = if forwarded { "forwarded" } else { "x-forwarded-for" };
        let mut request = Request::new(());
        // The chain split over up to `lines` header lines, in order.
        let per_line = hops.len().div_ceil(lines).max(1);
        for chunk in hops.chunks(per_line) {
            let value: Vec<String> = chunk.iter().map(|h| h.render(header)).collect();
            request.headers_mut().append(name, value.join(", ").parse().unwrap());
        }
        request.extensions_mut().insert(PeerAddr(SocketAddr::new(peer, 443)));
        let (parts, ()) = request.into_parts();
        let client = ip.resolve(&parts).unwrap();
        prop_assert_eq!(client, expected_client(peer, &hops));

        // Keys group IPv6 clients by /64 and keep IPv4 ones apart.
        match client {
            IpAddr::V6(v6) => {
                let same = Ipv6Addr::from(u128::from(v6) ^ u128::from(low));
                let other = Ipv6Addr::from(u128::from(v6) ^ (1 << 64));
                prop_assert_eq!(ip.key_for(client), ip.key_for(same.into()));
                prop_assert_ne!(ip.key_for(client), ip.key_for(other.into()));
            }
            IpAddr::V4(v4) => {
                let other = Ipv4Addr::from(u32::from(v4) ^ (1 << (low % 32)));
                prop_assert_ne!(ip.key_for(client), ip.key_for(other.into()));
                let mapped = IpAddr::V6(v4.to_ipv6_mapped());
                prop_assert_eq!(ip.key_for(client), ip.key_for(mapped));
            }
        }
    }
}

// ---- The envelope never forwards an inner body ----

const MARKER: &str = "SECRET-7f3a";

#[derive(Clone, Debug)]
enum Protocol {
    Json,
    Problem,
    Grpc,
}

fn kind() -> impl Strategy<Value = ErrorKind> {
    prop::sample::select(vec![
        ErrorKind::Unauthenticated,
        ErrorKind::InvalidToken,
        ErrorKind::Forbidden,
        ErrorKind::RateLimited,
        ErrorKind::InvalidRequest,
        ErrorKind::PayloadTooLarge,
        ErrorKind::NotFound,
        ErrorKind::ServiceUnavailable,
        ErrorKind::Internal,
        ErrorKind::Other,
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random 4xx/5xx inner responses with random bodies (holding a marker), with or without a
    /// shield `Error` (whose internal reason holds it too), as JSON, problem+json or gRPC:
    /// the marker never reaches the client, except a plain 4xx body the user chose to keep.
    #[test]
    fn the_envelope_never_forwards_inner_text(
        status in 400u16..600,
        before in "[ -~]{0,40}",
        after in "\\PC{0,40}",
        content_type in prop::sample::select(vec!["text/plain", "application/json", "text/html", "application/grpc"]),
        error in prop::option::of(kind()),
        protocol in prop::sample::select(vec![Protocol::Json, Protocol::Problem, Protocol::Grpc]),
        keep_client_error_bodies in any::<bool>(),
    ) {
        let body_text = format!("{before}{MARKER}{after}");
        let inner = {
            let body_text = body_text.clone();
            service_fn(move |_request: Request<Full<Bytes>>| {
                let mut response = Response::new(Full::from(body_text.clone()));
                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                response.headers_mut().insert(header::CONTENT_TYPE, content_type.parse().unwrap());
                if let Some(kind) = error {
                    response.extensions_mut().insert(Error::new(kind).with_reason(format!("internal: {MARKER}")));
                }
                async move { Ok::<_, Infallible>(response) }
            })
        };
        let layer = ErrorEnvelopeLayer::new().keep_client_error_bodies(keep_client_error_bodies);
        let service = layer.layer(inner);
        let mut request = Request::post("/orders").version(http::Version::HTTP_2);
        request = match protocol {
            Protocol::Json => request,
            Protocol::Problem => request.header(header::ACCEPT, "application/problem+json"),
            Protocol::Grpc => request.header(header::CONTENT_TYPE, "application/grpc"),
        };
        let request = request.body(Full::default()).unwrap();
        let response = service.oneshot(request).now_or_never().expect("ready").unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().now_or_never().expect("a full body").unwrap().to_bytes();

        let kept = keep_client_error_bodies
            && error.is_none()
            && (400..500).contains(&status)
            && !matches!(protocol, Protocol::Grpc);
        let mut output = String::from_utf8_lossy(&body).into_owned();
        for (name, value) in &parts.headers {
            output.push_str(&format!("\n{name}: {}", String::from_utf8_lossy(value.as_bytes())));
        }
        if kept {
            prop_assert_eq!(parts.status.as_u16(), status);
            prop_assert_eq!(&body[..], body_text.as_bytes());
        } else {
            prop_assert!(!output.contains(MARKER), "leaked: {}", output);
            match protocol {
                Protocol::Grpc => {
                    prop_assert_eq!(parts.status, StatusCode::OK);
                    prop_assert!(parts.headers.contains_key("grpc-status"));
                    prop_assert!(body.is_empty());
                }
                Protocol::Json | Protocol::Problem => {
                    let expected = match protocol {
                        Protocol::Json => "application/json",
                        _ => "application/problem+json",
                    };
                    prop_assert_eq!(&parts.headers[header::CONTENT_TYPE], expected);
                    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    prop_assert!(value.get("code").is_some() || value.get("type").is_some());
                }
            }
        }
    }
}
