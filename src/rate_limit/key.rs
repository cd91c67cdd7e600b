use std::{borrow::Cow, fmt, sync::Arc};

use http::{request::Parts, HeaderName};

use super::client_ip::ClientIp;
use crate::principal::Principal;

/// Longest key taken from a header or a principal field; longer values count as missing, so a
/// client cannot make the limiter hash or store arbitrarily long keys.
pub(crate) const MAX_KEY_LEN: usize = 256;

/// The identity a quota is counted against: an IP prefix, a subject, a header value...
///
/// Opaque bytes. The in-memory store keeps only a keyed 64-bit hash of them; the Redis store
/// writes them hex-encoded into the key name, so keys derived from secrets should be hashed
/// or replaced by a public id first (see [`ApiKeyId`]).
///
/// # Example
///
/// ```
/// use std::net::IpAddr;
/// use tower_shield::rate_limit::RateKey;
///
/// let key = RateKey::from("alice");
/// assert_eq!(key, RateKey::new(b"alice"));
/// assert_ne!(key, RateKey::from("bob"));
/// assert_eq!(key.as_bytes(), b"alice");
/// // Debug never shows the bytes, which may come from a credential.
/// assert_eq!(format!("{key:?}"), "RateKey(<5 bytes>)");
///
/// let ip = RateKey::from_ip(IpAddr::from([198, 51, 100, 7]));
/// assert_eq!(ip.as_bytes(), [198, 51, 100, 7]);
/// ```
#[derive(Clone)]
pub struct RateKey {
    bytes: Repr,
}

/// Longest key kept inline: IP addresses and typical subjects need no allocation per request.
const INLINE: usize = 30;

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl RateKey {
    /// A key from any bytes.
    pub fn new(bytes: impl AsRef<[u8]>) -> Self {
        let bytes = bytes.as_ref();
        if bytes.len() <= INLINE {
            let mut inline = [0; INLINE];
            inline[..bytes.len()].copy_from_slice(bytes);
            // Fits: `len <= INLINE < 256`.
            Self { bytes: Repr::Inline { len: bytes.len() as u8, bytes: inline } }
        } else {
            Self { bytes: Repr::Heap(bytes.into()) }
        }
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.bytes {
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Heap(bytes) => bytes,
        }
    }

    /// The key of one IP address (its octets), e.g. for a [`RateLimiter`](super::RateLimiter)
    /// keyed by the [`ClientAddr`](super::ClientAddr) a layer resolved. Not the key
    /// [`ClientIp`] makes for the same address: [`ClientIp::key_for`] also marks the address
    /// family and groups by prefix. For a limit per client, prefer `key_for`: one key per
    /// address lets an IPv6 client take a fresh budget from each address of its /64.
    pub fn from_ip(ip: std::net::IpAddr) -> Self {
        match ip {
            std::net::IpAddr::V4(v4) => Self::new(v4.octets()),
            std::net::IpAddr::V6(v6) => Self::new(v6.octets()),
        }
    }
}

impl From<&str> for RateKey {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl From<String> for RateKey {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl PartialEq for RateKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for RateKey {}

impl std::hash::Hash for RateKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

/// Never prints the bytes: a key may be derived from a credential.
impl fmt::Debug for RateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RateKey(<{} bytes>)", self.as_bytes().len())
    }
}

/// Picks the [`RateKey`] a request is counted against.
///
/// Implemented for closures `Fn(&http::request::Parts) -> Option<RateKey>`, for the stock
/// extractors of this module, and for tuples of extractors (the key of a tuple combines every
/// part; it is missing when any part is).
///
/// Returning `None` means the key cannot be determined (no principal, no peer address...); the
/// layer then applies its [`MissingKey`](super::MissingKey) rule.
///
/// # Example
///
/// ```
/// use std::borrow::Cow;
/// use http::{request::Parts, Request};
/// use tower_shield::rate_limit::{KeyExtractor, RateKey};
///
/// /// Keys `/tenants/{id}/...` requests by tenant id.
/// struct PathTenant;
///
/// impl KeyExtractor for PathTenant {
///     fn extract(&self, parts: &Parts) -> Option<RateKey> {
///         let rest = parts.uri.path().strip_prefix("/tenants/")?;
///         rest.split('/').next().filter(|id| !id.is_empty()).map(RateKey::from)
///     }
///     fn kind(&self) -> Cow<'static, str> {
///         Cow::Borrowed("path_tenant")
///     }
/// }
///
/// let parts = |uri: &str| Request::get(uri).body(()).unwrap().into_parts().0;
/// let key = |uri: &str| PathTenant.extract(&parts(uri));
/// assert_eq!(key("/tenants/acme/orders"), key("/tenants/acme/users"));
/// assert_ne!(key("/tenants/acme/orders"), key("/tenants/globex/orders"));
/// assert_eq!(key("/health"), None);
/// // A closure is an extractor too.
/// let by_method = |parts: &Parts| Some(RateKey::from(parts.method.as_str()));
/// assert_eq!(by_method.extract(&parts("/")), Some(RateKey::from("GET")));
/// ```
pub trait KeyExtractor: Send + Sync + 'static {
    /// The key of this request, if it can be determined.
    fn extract(&self, parts: &Parts) -> Option<RateKey>;

    /// A short label for logs and metrics (`ip`, `principal`...). Never the key itself.
    fn kind(&self) -> Cow<'static, str> {
        Cow::Borrowed("custom")
    }

    /// The client-IP resolver inside this extractor, if any: the layer then stores the resolved
    /// address in the request extensions as a [`ClientAddr`](super::ClientAddr).
    fn client_ip(&self) -> Option<&ClientIp> {
        None
    }
}

impl<F> KeyExtractor for F
where
    F: Fn(&Parts) -> Option<RateKey> + Send + Sync + 'static,
{
    fn extract(&self, parts: &Parts) -> Option<RateKey> {
        self(parts)
    }
}

/// One bucket for everybody: a global limit.
///
/// # Example
///
/// ```
/// use std::{convert::Infallible, num::NonZeroU32};
/// use http::{Request, Response, StatusCode};
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_shield::rate_limit::{GlobalKey, Quota, RateLimitLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // One request per second to this (expensive) endpoint, whoever sends it.
/// let quota = Quota::per_second(NonZeroU32::new(1).unwrap()).named("global");
/// let service = ServiceBuilder::new()
///     .layer(RateLimitLayer::new(GlobalKey, quota))
///     .service_fn(|_: Request<String>| async {
///         Ok::<_, Infallible>(Response::new(String::new()))
///     });
///
/// // No peer address needed: every request shares the bucket.
/// let response = service.clone().oneshot(Request::new(String::new())).await.unwrap();
/// assert_eq!(response.status(), StatusCode::OK);
/// let response = service.oneshot(Request::new(String::new())).await.unwrap();
/// assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
/// assert_eq!(response.headers()["retry-after"], "1");
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct GlobalKey;

impl KeyExtractor for GlobalKey {
    fn extract(&self, _: &Parts) -> Option<RateKey> {
        Some(RateKey::new(b""))
    }

    fn kind(&self) -> Cow<'static, str> {
        Cow::Borrowed("global")
    }
}

fn principal(parts: &Parts) -> Option<&Principal> {
    parts.extensions.get::<Principal>()
}

fn bounded(value: &str) -> Option<RateKey> {
    (!value.is_empty() && value.len() <= MAX_KEY_LEN).then(|| RateKey::new(value))
}

/// The authenticated principal's subject. Missing when no [`Principal`] is in the request
/// (put the layer after the authenticating one).
///
/// # Example
///
/// ```
/// use http::{request::Parts, Request};
/// use tower_shield::principal::Principal;
/// use tower_shield::rate_limit::{KeyExtractor, PrincipalKey};
///
/// // What an auth layer leaves in the request: the authenticated principal.
/// let authenticated = |subject: &str| {
///     let mut request = Request::new(());
///     request.extensions_mut().insert(Principal::builder(subject).build());
///     request.into_parts().0
/// };
/// let key = |parts: Parts| PrincipalKey.extract(&parts);
/// assert_eq!(key(authenticated("alice")), key(authenticated("alice")));
/// assert_ne!(key(authenticated("alice")), key(authenticated("bob")));
/// // No principal (the limit placed before authentication): no key.
/// assert_eq!(key(Request::new(()).into_parts().0), None);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct PrincipalKey;

impl KeyExtractor for PrincipalKey {
    fn extract(&self, parts: &Parts) -> Option<RateKey> {
        bounded(principal(parts)?.subject())
    }

    fn kind(&self) -> Cow<'static, str> {
        Cow::Borrowed("principal")
    }
}

/// The principal's tenant. Missing without a principal or a tenant.
///
/// # Example
///
/// ```
/// use http::Request;
/// use tower_shield::principal::{Principal, PrincipalBuilder};
/// use tower_shield::rate_limit::{KeyExtractor, TenantKey};
///
/// let key = |principal: PrincipalBuilder| {
///     let mut request = Request::new(());
///     request.extensions_mut().insert(principal.build());
///     TenantKey.extract(&request.into_parts().0)
/// };
/// let user = |subject: &str, tenant: &str| Principal::builder(subject).tenant(tenant);
/// // Every user of a tenant draws on the tenant's budget.
/// assert_eq!(key(user("alice", "acme")), key(user("bob", "acme")));
/// assert_ne!(key(user("alice", "acme")), key(user("carol", "globex")));
/// assert_eq!(key(Principal::builder("dave")), None);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct TenantKey;

impl KeyExtractor for TenantKey {
    fn extract(&self, parts: &Parts) -> Option<RateKey> {
        bounded(principal(parts)?.tenant()?)
    }

    fn kind(&self) -> Cow<'static, str> {
        Cow::Borrowed("tenant")
    }
}

/// The public id of the API key the principal authenticated with
/// ([`Principal::key_id`]), never the key itself. Missing without one.
///
/// # Example
///
/// ```
/// use http::Request;
/// use tower_shield::principal::{AuthMethod, Principal, PrincipalBuilder};
/// use tower_shield::rate_limit::{ApiKeyId, KeyExtractor};
///
/// let key = |principal: PrincipalBuilder| {
///     let mut request = Request::new(());
///     request.extensions_mut().insert(principal.build());
///     ApiKeyId.extract(&request.into_parts().0)
/// };
/// let with_key = |key_id: &str| {
///     Principal::builder("svc-billing").auth_method(AuthMethod::ApiKey).key_id(key_id)
/// };
/// // Each API key has its own budget, even when two keys belong to one principal.
/// assert_eq!(key(with_key("key_01")), key(with_key("key_01")));
/// assert_ne!(key(with_key("key_01")), key(with_key("key_02")));
/// assert_eq!(key(with_key("key_01")).unwrap().as_bytes(), b"key_01");
/// // Authenticated otherwise (a JWT): no key id, no key.
/// assert_eq!(key(Principal::builder("alice").auth_method(AuthMethod::Jwt)), None);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct ApiKeyId;

impl KeyExtractor for ApiKeyId {
    fn extract(&self, parts: &Parts) -> Option<RateKey> {
        bounded(principal(parts)?.key_id()?)
    }

    fn kind(&self) -> Cow<'static, str> {
        Cow::Borrowed("api_key")
    }
}

/// The value of a request header (the first one, at most 256 bytes). Missing when absent,
/// empty or longer.
///
/// # Security
///
/// A client chooses its headers: keying by one lets a client pick its bucket (and dodge the
/// limit by changing the value). Use it for values a trusted component sets, and never for a
/// secret (the Redis store writes keys into key names).
///
/// # Example
///
/// ```
/// use http::{HeaderName, Request};
/// use tower_shield::rate_limit::{HeaderKey, KeyExtractor};
///
/// // A header that the gateway in front of the service sets, replacing the client's.
/// let consumer = HeaderKey::new(HeaderName::from_static("x-consumer-id"));
/// let key = |value: &str| {
///     let request = Request::builder().header("x-consumer-id", value).body(()).unwrap();
///     consumer.extract(&request.into_parts().0)
/// };
/// assert_eq!(key("c-17"), key("c-17"));
/// assert_ne!(key("c-17"), key("c-42"));
/// // Absent, empty or longer than 256 bytes: no key.
/// assert_eq!(consumer.extract(&Request::new(()).into_parts().0), None);
/// assert_eq!(key(""), None);
/// assert_eq!(key(&"x".repeat(257)), None);
/// ```
#[derive(Clone, Debug)]
pub struct HeaderKey {
    name: HeaderName,
}

impl HeaderKey {
    /// Keys by header `name`.
    pub fn new(name: HeaderName) -> Self {
        Self { name }
    }
}

impl KeyExtractor for HeaderKey {
    fn extract(&self, parts: &Parts) -> Option<RateKey> {
        let value = parts.headers.get(&self.name)?.as_bytes();
        (!value.is_empty() && value.len() <= MAX_KEY_LEN).then(|| RateKey::new(value))
    }

    fn kind(&self) -> Cow<'static, str> {
        Cow::Borrowed("header")
    }
}

/// The route template axum matched (`/orders/{id}`), from axum's `MatchedPath`. Missing
/// outside an axum router (and for requests no route matched). Usually combined with
/// another key in a tuple: `(ClientIp::new(), RouteKey)`.
///
/// # Example
///
/// ```
/// use std::num::NonZeroU32;
/// use axum::{body::Body, routing::get, Router};
/// use http::{Request, StatusCode};
/// use tower::ServiceExt;
/// use tower_shield::rate_limit::{ClientIp, PeerAddr, Quota, RateLimitLayer, RouteKey};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // One request per minute per client and route template.
/// let quota = Quota::per_minute(NonZeroU32::new(1).unwrap()).named("per-route");
/// let app = Router::new()
///     .route("/orders/{id}", get(|| async { "order" }))
///     .route("/users/{id}", get(|| async { "user" }))
///     .route_layer(RateLimitLayer::new((ClientIp::new(), RouteKey), quota));
///
/// let send = |uri: &str| {
///     let mut request = Request::get(uri).body(Body::empty()).unwrap();
///     request.extensions_mut().insert(PeerAddr(([203, 0, 113, 7], 4711).into()));
///     app.clone().oneshot(request)
/// };
/// assert_eq!(send("/orders/1").await.unwrap().status(), StatusCode::OK);
/// // Another id, same template: the same bucket.
/// assert_eq!(send("/orders/2").await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
/// // Another route: a bucket of its own.
/// assert_eq!(send("/users/1").await.unwrap().status(), StatusCode::OK);
/// # }
/// ```
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
#[derive(Clone, Copy, Debug, Default)]
pub struct RouteKey;

#[cfg(feature = "axum")]
impl KeyExtractor for RouteKey {
    fn extract(&self, parts: &Parts) -> Option<RateKey> {
        let path = parts.extensions.get::<axum::extract::MatchedPath>()?;
        Some(RateKey::new(path.as_str()))
    }

    fn kind(&self) -> Cow<'static, str> {
        Cow::Borrowed("route")
    }
}

impl<K: KeyExtractor + ?Sized> KeyExtractor for Arc<K> {
    fn extract(&self, parts: &Parts) -> Option<RateKey> {
        (**self).extract(parts)
    }

    fn kind(&self) -> Cow<'static, str> {
        (**self).kind()
    }

    fn client_ip(&self) -> Option<&ClientIp> {
        (**self).client_ip()
    }
}

macro_rules! tuple_key {
    ($($name:ident),+) => {
        #[allow(non_snake_case)]
        impl<$($name: KeyExtractor),+> KeyExtractor for ($($name,)+) {
            fn extract(&self, parts: &Parts) -> Option<RateKey> {
                let ($($name,)+) = self;
                let mut bytes = Vec::with_capacity(64);
                $(
                    let part = $name.extract(parts)?;
                    let part = part.as_bytes();
                    let len = u32::try_from(part.len()).ok()?;
                    bytes.extend_from_slice(&len.to_le_bytes());
                    bytes.extend_from_slice(part);
                )+
                Some(RateKey::new(bytes))
            }

            fn kind(&self) -> Cow<'static, str> {
                let ($($name,)+) = self;
                let kinds: Vec<Cow<'static, str>> = vec![$($name.kind()),+];
                Cow::Owned(kinds.join("+"))
            }

            fn client_ip(&self) -> Option<&ClientIp> {
                let ($($name,)+) = self;
                None$(.or_else(|| $name.client_ip()))+
            }
        }
    };
}

tuple_key!(A, B);
tuple_key!(A, B, C);
tuple_key!(A, B, C, D);
