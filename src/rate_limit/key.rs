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

    /// The key of a client IP address, as [`ClientIp`] makes it (without prefix grouping).
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
