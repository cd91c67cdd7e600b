//! The `Idempotency-Key` header, the caller scope, record keys and request fingerprints.

use http::{request::Parts, HeaderMap, HeaderName, Method};
use sha2::{Digest, Sha256};

use super::store::{Fingerprint, RecordKey};
use crate::{error::Detail, principal::AuthMethod, principal::Principal, Error, ErrorKind};

/// The header name, lowercase as `http` stores it.
pub(crate) const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The longest key accepted, in characters (after unescaping a structured-field string).
pub(crate) const MAX_KEY_LEN: usize = 255;

/// Reads the `Idempotency-Key` header: `Ok(None)` when absent.
///
/// Accepted forms (IETF `draft-ietf-httpapi-idempotency-key-header`): a structured-field
/// string (`"abc"`, with `\"` and `\\` escapes) or a bare token (`abc`). Either way the key is
/// 1 to 255 characters of visible ASCII (`!` to `~`). Several headers are refused. The value is
/// never echoed: the error carries a [`Detail`] naming the issue only.
pub(crate) fn parse_key(headers: &HeaderMap) -> Result<Option<Vec<u8>>, Error> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(invalid("duplicate", "several Idempotency-Key headers"));
    }
    let raw = value.as_bytes();
    let key = if let Some(quoted) = raw.strip_prefix(b"\"") {
        unescape_sf_string(quoted)?
    } else {
        raw.to_vec()
    };
    if key.is_empty() {
        return Err(invalid("empty", "empty Idempotency-Key"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(invalid("too_long", "Idempotency-Key over 255 characters"));
    }
    if !key.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(invalid("invalid_character", "Idempotency-Key has a non-visible-ASCII byte"));
    }
    Ok(Some(key))
}

/// The content of an RFC 8941 sf-string after its opening quote: escapes `\"` and `\\` only,
/// a closing quote, nothing after it.
fn unescape_sf_string(quoted: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(quoted.len());
    let mut bytes = quoted.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some(&c @ (b'"' | b'\\')) => out.push(c),
                _ => return Err(invalid("malformed", "bad escape in Idempotency-Key string")),
            },
            b'"' => {
                return if bytes.next().is_none() {
                    Ok(out)
                } else {
                    Err(invalid("malformed", "text after the Idempotency-Key string"))
                };
            }
            // sf-string characters are %x20-7E; the visible-ASCII check comes after.
            0x20..=0x7e => out.push(b),
            _ => return Err(invalid("invalid_character", "Idempotency-Key has a non-ASCII byte")),
        }
    }
    Err(invalid("malformed", "unterminated Idempotency-Key string"))
}

/// The field of every key error: lower case, as the crate's other `header:` fields.
const FIELD: &str = "header:idempotency-key";

fn invalid(issue: &'static str, reason: &'static str) -> Error {
    let message = match issue {
        "duplicate" => "must be sent once",
        "empty" => "must not be empty",
        "too_long" => "must be at most 255 characters",
        "invalid_character" => "must be visible ASCII",
        "malformed" => "must be a well-formed quoted string",
        _ => "is invalid",
    };
    Error::new(ErrorKind::InvalidRequest)
        .with_reason(reason)
        .with_detail(Detail::new(FIELD, issue).with_message(message))
}

/// Who a record belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Caller {
    /// An authenticated principal (or its API key).
    Principal {
        kind: &'static str,
        /// How the caller authenticated and who vouched for it: the auth method, then the
        /// token's `iss` and its client id. A subject is only unique within one issuer (OIDC),
        /// and an introspected client without `sub` is named by its `client_id`: without
        /// these, two callers with the same subject string would share records.
        method: &'static str,
        origin: [Option<String>; 2],
        tenant: Option<String>,
        id: String,
    },
    /// An anonymous caller, scoped by the configured hook.
    Anonymous(String),
}

impl Caller {
    pub(crate) fn of(principal: &Principal) -> Self {
        let tenant = principal.tenant().map(str::to_owned);
        let auth_method = principal.auth_method();
        let method = auth_method.as_str();
        let issuer = principal.claim("iss").and_then(serde_json::Value::as_str);
        let origin = [issuer.map(str::to_owned), principal.client_id().map(str::to_owned)];
        let (kind, id) = match (auth_method, principal.key_id()) {
            (AuthMethod::ApiKey, Some(key_id)) => ("api_key", key_id),
            _ => ("subject", principal.subject()),
        };
        Self::Principal { kind, method, origin, tenant, id: id.to_owned() }
    }

    /// `subject`, `api_key` or `anonymous`, for logs.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Principal { kind, .. } => kind,
            Self::Anonymous(_) => "anonymous",
        }
    }
}

/// Length-prefixed fields into a hash, so no two different inputs share an encoding.
fn field(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
}

/// SHA-256 over the caller, the method, the path and the client's key.
pub(crate) fn record_key(caller: &Caller, method: &Method, path: &str, key: &[u8]) -> RecordKey {
    let mut hasher = Sha256::new();
    field(&mut hasher, b"tower-shield/idempotency/v2");
    match caller {
        Caller::Principal { kind, method, origin, tenant, id } => {
            field(&mut hasher, kind.as_bytes());
            field(&mut hasher, method.as_bytes());
            for part in origin.iter().chain([tenant]) {
                field(&mut hasher, part.as_deref().unwrap_or("").as_bytes());
                hasher.update([u8::from(part.is_some())]);
            }
            field(&mut hasher, id.as_bytes());
        }
        Caller::Anonymous(scope) => {
            field(&mut hasher, b"anonymous");
            field(&mut hasher, scope.as_bytes());
        }
    }
    field(&mut hasher, method.as_str().as_bytes());
    field(&mut hasher, path.as_bytes());
    field(&mut hasher, key);
    RecordKey::from_bytes(hasher.finalize().into())
}

/// SHA-256 over the method, the path and query, the selected headers (every value, in order)
/// and a SHA-256 of the body.
pub(crate) fn fingerprint(parts: &Parts, headers: &[HeaderName], body: &[u8]) -> Fingerprint {
    let mut hasher = Sha256::new();
    field(&mut hasher, b"tower-shield/idempotency/fingerprint/v1");
    field(&mut hasher, parts.method.as_str().as_bytes());
    let target = crate::observe::original_uri(&parts.extensions, &parts.uri)
        .path_and_query()
        .map_or("/", |pq| pq.as_str());
    field(&mut hasher, target.as_bytes());
    for name in headers {
        field(&mut hasher, name.as_str().as_bytes());
        let values = parts.headers.get_all(name);
        hasher.update((values.iter().count() as u64).to_be_bytes());
        for value in values {
            field(&mut hasher, value.as_bytes());
        }
    }
    field(&mut hasher, &Sha256::digest(body));
    Fingerprint::from_bytes(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn parse(values: &[&[u8]]) -> Result<Option<Vec<u8>>, Error> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(IDEMPOTENCY_KEY, HeaderValue::from_bytes(v).unwrap());
        }
        parse_key(&headers)
    }

    fn issue(values: &[&[u8]]) -> String {
        let error = parse(values).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidRequest);
        assert_eq!(error.details()[0].field(), "header:idempotency-key");
        assert!(error.details()[0].message().is_some_and(|m| m.starts_with("must ")));
        error.details()[0].issue().to_owned()
    }

    #[test]
    fn bare_and_sf_string_forms_give_the_same_key() {
        assert_eq!(parse(&[b"abc-123"]).unwrap().unwrap(), b"abc-123");
        assert_eq!(parse(&[b"\"abc-123\""]).unwrap().unwrap(), b"abc-123");
        assert_eq!(parse(&[br#""a\"b\\c""#]).unwrap().unwrap(), br#"a"b\c"#);
        assert_eq!(parse(&[]).unwrap(), None);
    }

    #[test]
    fn length_limits() {
        assert_eq!(issue(&[b""]), "empty");
        assert_eq!(issue(&[b"\"\""]), "empty");
        let max = "k".repeat(255);
        assert_eq!(parse(&[max.as_bytes()]).unwrap().unwrap().len(), 255);
        assert_eq!(parse(&[format!("\"{max}\"").as_bytes()]).unwrap().unwrap().len(), 255);
        let over = "k".repeat(256);
        assert_eq!(issue(&[over.as_bytes()]), "too_long");
        // Escapes count as the character they stand for: 255 escaped quotes are fine.
        let escaped = format!("\"{}\"", "\\\"".repeat(255));
        assert_eq!(parse(&[escaped.as_bytes()]).unwrap().unwrap().len(), 255);
    }

    #[test]
    fn only_visible_ascii() {
        assert_eq!(issue(&["clé".as_bytes()]), "invalid_character");
        assert_eq!(issue(&["\"clé\"".as_bytes()]), "invalid_character");
        assert_eq!(issue(&[b"a b"]), "invalid_character");
        assert_eq!(issue(&[b"\"a b\""]), "invalid_character");
        assert_eq!(issue(&[b"a\tb"]), "invalid_character");
    }

    #[test]
    fn malformed_sf_strings() {
        assert_eq!(issue(&[b"\"abc"]), "malformed");
        assert_eq!(issue(&[b"\"a\\nb\""]), "malformed");
        assert_eq!(issue(&[b"\"abc\";p=1"]), "malformed");
        assert_eq!(issue(&[b"\"abc\\"]), "malformed");
    }

    #[test]
    fn several_headers_are_refused() {
        assert_eq!(issue(&[b"a", b"b"]), "duplicate");
        assert_eq!(issue(&[b"a", b"a"]), "duplicate");
    }

    #[test]
    fn the_value_is_never_echoed() {
        let error = parse(&[b"\"secret-key-value"]).unwrap_err();
        assert!(!format!("{error:?} {error}").contains("secret-key-value"));
    }

    #[test]
    fn record_keys_separate_callers_routes_and_keys() {
        let caller = |id: &str, origin: [Option<&str>; 2]| Caller::Principal {
            kind: "subject",
            method: "jwt",
            origin: origin.map(|part| part.map(str::to_owned)),
            tenant: None,
            id: id.into(),
        };
        let alice = caller("alice", [Some("https://idp-a.test"), None]);
        let bob = caller("bob", [Some("https://idp-a.test"), None]);
        let other_issuer = caller("alice", [Some("https://idp-b.test"), None]);
        let no_issuer = caller("alice", [None, None]);
        let empty_issuer = caller("alice", [Some(""), None]);
        let with_client = caller("alice", [Some("https://idp-a.test"), Some("app")]);
        let anon = Caller::Anonymous("alice".into());
        let base = record_key(&alice, &Method::POST, "/orders", b"k");
        assert_eq!(base, record_key(&alice, &Method::POST, "/orders", b"k"));
        for other in [
            record_key(&bob, &Method::POST, "/orders", b"k"),
            record_key(&other_issuer, &Method::POST, "/orders", b"k"),
            record_key(&no_issuer, &Method::POST, "/orders", b"k"),
            record_key(&with_client, &Method::POST, "/orders", b"k"),
            record_key(&anon, &Method::POST, "/orders", b"k"),
            record_key(&alice, &Method::PATCH, "/orders", b"k"),
            record_key(&alice, &Method::POST, "/orders/1", b"k"),
            record_key(&alice, &Method::POST, "/orders", b"k2"),
            // Field boundaries are unambiguous.
            record_key(&alice, &Method::POST, "/ordersk", b""),
        ] {
            assert_ne!(base, other);
        }
        // An absent issuer and an empty one differ.
        assert_ne!(
            record_key(&no_issuer, &Method::POST, "/orders", b"k"),
            record_key(&empty_issuer, &Method::POST, "/orders", b"k")
        );
    }
}
