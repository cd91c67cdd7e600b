//! Entry points for fuzzing the crate's parsers (feature `fuzzing`). Not a public API: it
//! exists for the `fuzz/` crate (cargo-fuzz) and `tests/fuzz_corpus.rs`, and may change in any
//! release.
//!
//! Each `fn(data: &[u8])` feeds arbitrary bytes to one parser the way a client would reach it
//! (as a header value, a token, a body) and asserts its invariants: a violated invariant
//! panics, which the fuzzer reports as a crash. The byte layout of `data` is documented on
//! each function; [`TARGETS`] lists them by name.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::OnceLock,
    time::UNIX_EPOCH,
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use http::{header, HeaderMap, HeaderName, HeaderValue, Request};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Map, Value};

use crate::{
    auth::{api_key::ApiKeys, jwt::Jwt, AuthRequest, Authenticator, Verdict},
    clock::{Clock, FakeClock},
    envelope::RequestId,
    idempotency::key::{parse_key, IDEMPOTENCY_KEY, MAX_KEY_LEN},
    principal::Principal,
    rate_limit::{ClientIp, ForwardedHeader, PeerAddr},
    validate::json::{self, JsonRules, MAX_DEPTH_LIMIT},
    ErrorKind,
};

/// Every target by name, as `fuzz/fuzz_targets/<name>.rs` and `fuzz/corpus/<name>/` call it.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("authorization", authorization),
    ("jwt", jwt),
    ("client_ip", client_ip),
    ("idempotency_key", idempotency_key),
    ("json", json),
    ("request_id", request_id),
];

/// Lines of `data` (split at `\n`) that are valid header values.
fn header_values(data: &[u8]) -> impl Iterator<Item = HeaderValue> + '_ {
    data.split(|&b| b == b'\n').filter_map(|line| HeaderValue::from_bytes(line).ok())
}

// ---- Authorization / API key headers (src/auth/authenticator.rs, src/auth/api_key.rs) ----

const API_KEY_PREFIX: &str = "sk_fuzz";
const API_KEY_ID: &str = "k1";
const API_KEY: &str = "sk_fuzz_k1_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";

fn api_keys() -> &'static ApiKeys {
    static KEYS: OnceLock<ApiKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        ApiKeys::new(API_KEY_PREFIX)
            .and_then(|keys| {
                keys.header(HeaderName::from_static("x-api-key")).accept_bearer().with_key(
                    API_KEY_ID,
                    &crate::auth::api_key::hash_key(API_KEY),
                    Principal::builder("fuzz"),
                )
            })
            .expect("a valid API key configuration")
    })
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The `Authorization` parser and the API key authenticator.
///
/// `data`: byte 0 picks where the lines go (bit 0: `Authorization`, bit 1: `X-API-Key`); the
/// rest is header values, one per `\n`-separated line.
///
/// Invariants: a parsed header is exactly one `Authorization` value split into a `tchar`
/// scheme and non-empty credentials (a `token68` for `Bearer`); `Debug` never shows the
/// credentials; only the one configured key authenticates.
pub fn authorization(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut headers = HeaderMap::new();
    for value in header_values(rest) {
        if mode & 1 == 0 {
            headers.append(header::AUTHORIZATION, value.clone());
        }
        if mode & 2 != 0 {
            headers.append(HeaderName::from_static("x-api-key"), value);
        }
    }
    let request = match AuthRequest::from_headers(&headers) {
        Ok(request) => request,
        Err(reason) => {
            let values = headers.get_all(header::AUTHORIZATION).iter().count();
            assert!(values >= 1, "no Authorization header, but refused: {reason}");
            return;
        }
    };
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    match (request.authorization(), values.next()) {
        (None, None) => {}
        (Some(authorization), Some(value)) => {
            assert!(values.next().is_none(), "several Authorization headers accepted");
            let (scheme, credentials) = (authorization.scheme(), authorization.credentials());
            assert!(!scheme.is_empty() && scheme.bytes().all(is_tchar), "scheme {scheme:?}");
            assert!(!credentials.is_empty() && !credentials.starts_with(' '));
            assert!(credentials.bytes().all(|b| b == b' ' || b.is_ascii_graphic()));
            let value = value.to_str().expect("accepted values are ASCII");
            let (sent_scheme, sent_credentials) = value.split_once(' ').expect("a space");
            assert_eq!(scheme, sent_scheme);
            assert_eq!(credentials, sent_credentials.trim_start_matches(' '));
            if authorization.is_scheme("Bearer") {
                let body = credentials.trim_end_matches('=');
                assert!(!body.is_empty());
                assert!(body.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)));
                assert_eq!(request.bearer(), Some(credentials));
            } else {
                assert_eq!(request.bearer(), None);
            }
            assert_eq!(
                format!("{authorization:?}"),
                format!("Authorization {{ scheme: {scheme:?}, credentials: \"<redacted>\" }}")
            );
        }
        (parsed, value) => panic!("parsed {:?} for header {value:?}", parsed.is_some()),
    }

    match api_keys().authenticate(&request) {
        Verdict::NotMine | Verdict::Rejected(_) => {}
        Verdict::Authenticated(principal) => {
            assert_eq!(principal.subject(), "fuzz");
            let in_authorization = request.authorization().map(|a| a.credentials());
            let in_header = headers.get("x-api-key").map(HeaderValue::as_bytes);
            assert!(
                in_authorization == Some(API_KEY) || in_header == Some(API_KEY.as_bytes()),
                "a key other than the configured one passed"
            );
        }
        Verdict::Pending(_) => panic!("API keys are synchronous"),
    }
}

// ---- JWT segments and header before verification (src/auth/jwt.rs) ----

const JWT_SECRET: &[u8] = b"fuzzing secret, at least 32 bytes long";
const JWT_ISSUER: &str = "https://issuer.example";
const JWT_AUDIENCE: &str = "api";
const JWT_LEEWAY: u64 = 60;

fn jwt_verifier() -> &'static Jwt {
    static JWT: OnceLock<Jwt> = OnceLock::new();
    JWT.get_or_init(|| {
        Jwt::builder()
            .hs256_secret(JWT_SECRET)
            .issuer(JWT_ISSUER)
            .audience(JWT_AUDIENCE)
            .leeway(std::time::Duration::from_secs(JWT_LEEWAY))
            .with_clock(FakeClock::new())
            .no_cache()
            .build()
            .expect("a valid JWT configuration")
    })
}

fn hs256(message: &str) -> String {
    jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(JWT_SECRET),
        Algorithm::HS256,
    )
    .expect("HMAC signing cannot fail")
}

/// A NumericDate as the model reads it: a non-negative number below 10^15, truncated.
fn numeric_date(value: &Value) -> Option<u64> {
    let n = value.as_number()?;
    n.as_u64().or_else(|| n.as_f64().filter(|f| (0.0..1e15).contains(f)).map(|f| f as u64))
}

/// JWT verification with an HS256 key, issuer and audience, at a fixed time.
///
/// `data`: byte 0 even: the rest is a token, as sent after `Bearer `. Byte 0 odd: the rest is
/// a header and a claims set (JSON text, split at the first NUL byte), which the target signs
/// with the verifier's key, so that the checks after the signature are reached.
///
/// Invariants: only tokens signed with the key authenticate; an authenticated token has
/// `alg: HS256`, no `kid` or `crit`, an unexpired `exp`, the issuer, the audience and a
/// non-empty `sub`, which is the principal's subject.
pub fn jwt(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let jwt = jwt_verifier();
    if mode & 1 == 0 {
        let Ok(token) = std::str::from_utf8(rest) else { return };
        match jwt.verify(token) {
            Verdict::Rejected(error) => assert_eq!(error.kind(), ErrorKind::InvalidToken),
            Verdict::Authenticated(_) => {
                let (message, signature) = token.rsplit_once('.').expect("three segments");
                assert_eq!(signature, hs256(message), "a token not signed with the key passed");
            }
            other => panic!("unexpected verdict {other:?}"),
        }
        return;
    }
    let (header, claims) = match rest.iter().position(|&b| b == 0) {
        Some(nul) => (&rest[..nul], &rest[nul + 1..]),
        None => (rest, &b""[..]),
    };
    let message = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
    let token = format!("{message}.{}", hs256(&message));
    match jwt.verify(&token) {
        Verdict::Rejected(error) => {
            assert!(matches!(error.kind(), ErrorKind::InvalidToken), "{error:?}");
        }
        Verdict::Authenticated(principal) => {
            let header: Map<String, Value> = serde_json::from_slice(header).expect("header");
            assert_eq!(header.get("alg"), Some(&Value::from("HS256")));
            assert!(header.get("kid").is_none_or(Value::is_null), "kid {:?}", header.get("kid"));
            assert!(header.get("crit").is_none_or(Value::is_null));
            let claims: Map<String, Value> = serde_json::from_slice(claims).expect("claims");
            let now =
                FakeClock::new().now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
            let exp = claims.get("exp").and_then(numeric_date).expect("exp");
            assert!(exp.saturating_add(JWT_LEEWAY) > now, "expired at {exp}");
            if let Some(nbf) = claims.get("nbf") {
                assert!(numeric_date(nbf).expect("nbf") <= now + JWT_LEEWAY);
            }
            assert_eq!(claims.get("iss"), Some(&Value::from(JWT_ISSUER)));
            let audience_ok = match claims.get("aud") {
                Some(Value::String(aud)) => aud == JWT_AUDIENCE,
                Some(Value::Array(auds)) => auds.iter().any(|a| a == JWT_AUDIENCE),
                _ => false,
            };
            assert!(audience_ok, "aud {:?}", claims.get("aud"));
            let sub = claims.get("sub").and_then(Value::as_str).expect("sub");
            assert!(!sub.is_empty());
            assert_eq!(principal.subject(), sub);
        }
        other => panic!("unexpected verdict {other:?}"),
    }
}

// ---- Forwarded headers and the client IP (src/rate_limit/client_ip.rs) ----

const TRUSTED: &str = "10.0.0.0/8, 192.168.0.0/16, fd00::/8";

fn client_ips() -> &'static [ClientIp; 2] {
    static IPS: OnceLock<[ClientIp; 2]> = OnceLock::new();
    IPS.get_or_init(|| {
        let ip = ClientIp::new().trusted_proxies_from_str(TRUSTED).expect("valid CIDRs");
        [ip.clone(), ip.forwarded_header(ForwardedHeader::Forwarded)]
    })
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Every address that a lenient reading of one list entry could name.
fn candidates(entry: &str, out: &mut Vec<IpAddr>) {
    let mut push = |text: &str| {
        let text = text.trim().trim_matches('"');
        let text = text.strip_prefix('[').map_or(text, |t| t.split(']').next().unwrap_or(t));
        if let Ok(ip) = text.parse::<IpAddr>() {
            out.push(canonical(ip));
        } else if let Ok(addr) = text.parse::<SocketAddr>() {
            out.push(canonical(addr.ip()));
        }
    };
    push(entry);
    for pair in entry.split(';') {
        if let Some((_, value)) = pair.split_once('=') {
            push(value);
        }
    }
}

/// The proxy-aware client IP.
///
/// `data`: byte 0 picks the header (bit 0: `Forwarded`, else `X-Forwarded-For`) and the peer
/// (bits 1-2: trusted 10.0.0.1, untrusted 203.0.113.9, trusted fd00::1, or an untrusted
/// IPv6 address); bytes 1-8 perturb the low 64 bits of an IPv6 result; the rest is header
/// values, one per `\n`-separated line.
///
/// Invariants: an untrusted peer is the client whatever the headers say; otherwise the client
/// is the peer or an address that appears in the headers, untrusted unless every hop was
/// trusted; IPv6 clients are keyed by their /64, IPv4 ones by the full address.
pub fn client_ip(data: &[u8]) {
    if data.len() < 9 {
        return;
    }
    let (mode, noise, rest) = (data[0], &data[1..9], &data[9..]);
    let ip = &client_ips()[usize::from(mode & 1)];
    let peer: IpAddr = match (mode >> 1) & 3 {
        0 => [10, 0, 0, 1].into(),
        1 => [203, 0, 113, 9].into(),
        2 => "fd00::1".parse::<Ipv6Addr>().expect("an address").into(),
        _ => "2001:db8::7".parse::<Ipv6Addr>().expect("an address").into(),
    };
    let name = if mode & 1 == 1 { header::FORWARDED.as_str() } else { "x-forwarded-for" };
    let mut request = Request::new(());
    for value in header_values(rest) {
        request.headers_mut().append(name, value);
    }
    request.extensions_mut().insert(PeerAddr(SocketAddr::new(peer, 443)));
    let (parts, ()) = request.into_parts();
    let client = ip.resolve(&parts).expect("a peer address is present");
    let trusted = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 10 || v4.octets()[..2] == [192, 168],
        IpAddr::V6(v6) => v6.segments()[0] >> 8 == 0xfd,
    };
    assert_eq!(ip.trusted().iter().any(|net| net.contains(&peer)), trusted(peer));
    if !trusted(peer) {
        assert_eq!(client, peer, "an untrusted peer chose its address through the headers");
    } else if client != peer {
        let mut named = Vec::new();
        let readable = parts.headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
        for value in readable {
            for entry in value.split(',') {
                candidates(entry, &mut named);
            }
        }
        assert!(named.contains(&client), "{client} is neither the peer nor in the headers");
        // Every hop was trusted: the leftmost one is the client. (`X-Forwarded-For` only, where
        // each entry names exactly one address.)
        if trusted(client) && mode & 1 == 0 {
            assert!(named.iter().all(|&hop| trusted(hop)), "a trusted hop before an untrusted one");
        }
    }

    match client {
        IpAddr::V6(v6) => {
            let low = u128::from(u64::from_le_bytes(noise.try_into().expect("8 bytes")));
            let neighbour = Ipv6Addr::from(u128::from(v6) ^ low);
            // In ::/64, IPv4-mapped neighbours (`::ffff:a.b.c.d`) count as IPv4 addresses.
            if neighbour.to_ipv4_mapped().is_none() {
                assert_eq!(ip.key_for(client), ip.key_for(IpAddr::V6(neighbour)), "/64 keying");
            }
        }
        IpAddr::V4(v4) => {
            let other = std::net::Ipv4Addr::from(u32::from(v4) ^ 1);
            assert_ne!(ip.key_for(client), ip.key_for(IpAddr::V4(other)));
        }
    }
}

// ---- Idempotency-Key (src/idempotency/key.rs) ----

fn sf_string(key: &[u8]) -> Vec<u8> {
    let mut out = vec![b'"'];
    for &b in key {
        if matches!(b, b'"' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
    out
}

fn parse_one(raw: &[u8]) -> Option<Vec<u8>> {
    let mut headers = HeaderMap::new();
    headers.insert(IDEMPOTENCY_KEY, HeaderValue::from_bytes(raw).ok()?);
    parse_key(&headers).expect("a well-formed key").map(|key| key.to_vec())
}

/// The `Idempotency-Key` header parser.
///
/// `data`: byte 0 bit 0 sends the value twice; the rest is the header value.
///
/// Invariants: an accepted key is 1 to 255 bytes of visible ASCII and round-trips (its
/// structured-field string, and its bare form when that is unambiguous, parse to the same
/// key); a refusal is a 400 `invalid_request` naming the header and a fixed issue.
pub fn idempotency_key(data: &[u8]) {
    let Some((&mode, raw)) = data.split_first() else { return };
    let Ok(value) = HeaderValue::from_bytes(raw) else { return };
    let mut headers = HeaderMap::new();
    headers.append(IDEMPOTENCY_KEY, value.clone());
    if mode & 1 == 1 {
        headers.append(IDEMPOTENCY_KEY, value);
    }
    match parse_key(&headers) {
        Ok(None) => panic!("a present header read as absent"),
        Ok(Some(key)) => {
            assert!(mode & 1 == 0, "several headers accepted");
            assert!((1..=MAX_KEY_LEN).contains(&key.len()), "{} bytes", key.len());
            assert!(key.iter().all(|b| (0x21..=0x7e).contains(b)));
            let quoted = sf_string(&key);
            if raw.first() == Some(&b'"') {
                assert_eq!(raw, &quoted[..], "the sf-string does not round-trip");
            } else {
                assert_eq!(raw, &key[..], "a bare key was changed");
            }
            assert_eq!(parse_one(&quoted).as_deref(), Some(&key[..]));
            if key[0] != b'"' {
                assert_eq!(parse_one(&key).as_deref(), Some(&key[..]));
            }
        }
        Err(error) => {
            assert_eq!(error.kind(), ErrorKind::InvalidRequest);
            let detail = &error.details()[0];
            assert_eq!(detail.field(), "header:idempotency-key");
            let issues = ["duplicate", "empty", "too_long", "invalid_character", "malformed"];
            assert!(issues.contains(&detail.issue()), "issue {:?}", detail.issue());
            assert_eq!(mode & 1 == 1, detail.issue() == "duplicate");
        }
    }
}

// ---- JSON shape checks (src/validate/json.rs) ----

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(members) => 1 + members.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The JSON pre-scan and parse of the validate layer, against serde_json.
///
/// `data`: byte 0 is the depth limit (1 + byte % 127), byte 1 bit 0 allows lossy integers; the
/// rest is the body.
///
/// Invariants: an accepted document is what serde_json parses; a document serde_json accepts
/// is refused for depth exactly when it is nested deeper than the limit, and otherwise only for
/// a duplicate key or an out-of-range number; a document serde_json refuses is refused;
/// details never exceed the pointer cap.
pub fn json(data: &[u8]) {
    let [limit, flags, body @ ..] = data else { return };
    let rules = JsonRules {
        max_depth: 1 + usize::from(*limit) % MAX_DEPTH_LIMIT,
        lossy_integers: flags & 1 == 1,
    };
    let ours = json::parse(body, rules);
    let theirs = serde_json::from_slice::<Value>(body);
    match (&ours, &theirs) {
        (Ok(ours), Ok(theirs)) => {
            assert_eq!(ours, theirs);
            assert!(depth(ours) <= rules.max_depth);
        }
        (Ok(_), Err(error)) => panic!("accepted a document serde_json refuses: {error}"),
        (Err(shape), Ok(value)) => {
            assert_eq!(shape.rule == "depth", depth(value) > rules.max_depth, "{shape:?}");
            assert!(
                matches!(shape.rule, "depth" | "duplicate_key" | "number_out_of_range"),
                "{shape:?}"
            );
            if shape.rule == "number_out_of_range" {
                assert!(!rules.lossy_integers, "a 64-bit overflow refused with lossy integers");
            }
        }
        (Err(shape), Err(_)) => {
            let rules = [
                "empty_body",
                "invalid_utf8",
                "depth",
                "duplicate_key",
                "number_out_of_range",
                "syntax",
            ];
            assert!(rules.contains(&shape.rule), "{shape:?}");
        }
    }
    if let Err(shape) = ours {
        // The pre-scan bounds the depth below serde_json's own recursion limit.
        let message = shape.detail.message().unwrap_or_default();
        assert!(!message.starts_with("recursion limit exceeded"), "{shape:?}");
        assert!(shape.detail.field().len() <= 256 + 4, "field {:?}", shape.detail.field());
        assert!(shape.detail.field().is_empty() || shape.detail.field().starts_with('/'));
    }
}

// ---- Request ids (src/envelope/request_id.rs) ----

/// The request-id check.
///
/// `data`: the `X-Request-Id` header value.
///
/// Invariants: an id is accepted exactly when it is 1 to 64 bytes of `[A-Za-z0-9._-]`, and
/// then unchanged; `parse` and `from_header` agree.
pub fn request_id(data: &[u8]) {
    let expected = (1..=RequestId::MAX_LEN).contains(&data.len())
        && data.iter().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(b));
    let from_header = HeaderValue::from_bytes(data).ok().and_then(|v| RequestId::from_header(&v));
    assert_eq!(from_header.is_some(), expected, "{data:?}");
    if let Some(id) = &from_header {
        assert_eq!(id.as_str().as_bytes(), data);
        assert_eq!(id.header_value().as_bytes(), data);
        assert_eq!(id.to_string().as_bytes(), data);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        assert_eq!(RequestId::parse(text), from_header);
    }
}
