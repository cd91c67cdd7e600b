use std::{fmt, future::Future, pin::Pin, sync::Arc};

use http::{header, HeaderMap, HeaderName};

use crate::{principal::Principal, Error};

/// A boxed future resolving to an authentication outcome, for the rare credential that needs
/// I/O (a key refetch, an introspection call, a revocation lookup in Redis).
pub type BoxAuthFuture = Pin<Box<dyn Future<Output = Result<Principal, Error>> + Send + 'static>>;

/// What an [`Authenticator`] says about a request.
///
/// The common cases ([`Authenticated`](Verdict::Authenticated) from a cached or locally
/// verified token, [`Rejected`](Verdict::Rejected), [`NotMine`](Verdict::NotMine)) are
/// synchronous and allocate no future; [`Pending`](Verdict::Pending) is for the credentials
/// that need I/O.
///
/// # Example
///
/// A caller of [`Jwt::verify`](super::jwt::Jwt::verify) drives the verdict to its end:
///
/// ```
/// use tower_shield::auth::{jwt::Jwt, Verdict};
/// use tower_shield::{principal::Principal, Error, ErrorKind};
///
/// /// `None` when the credential is not this authenticator's kind.
/// async fn decide(verdict: Verdict) -> Option<Result<Principal, Error>> {
///     match verdict {
///         Verdict::NotMine => None,
///         Verdict::Authenticated(principal) => Some(Ok(principal)),
///         Verdict::Rejected(error) => Some(Err(error)),
///         Verdict::Pending(future) => Some(future.await),
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let jwt = Jwt::builder()
///     .hs256_secret(b"an example secret of at least 32 bytes!!")
///     .issuer("https://issuer.example")
///     .audience("orders-api")
///     .build()
///     .unwrap();
/// let error = decide(jwt.verify("not.a.jwt")).await.unwrap().unwrap_err();
/// assert_eq!(error.kind(), ErrorKind::InvalidToken);
/// # }
/// ```
pub enum Verdict {
    /// This authenticator does not recognise the request's credential (none of its kind is
    /// present); the next authenticator in the chain is asked.
    NotMine,
    /// The credential is valid.
    Authenticated(Principal),
    /// The credential is this authenticator's kind but is not valid. The [`Error`] is usually
    /// [`ErrorKind::InvalidToken`](crate::ErrorKind::InvalidToken) with an internal reason; the
    /// layer adds the `WWW-Authenticate` challenge.
    Rejected(Error),
    /// The decision needs I/O; the future resolves to the principal or the rejection.
    Pending(BoxAuthFuture),
}

impl fmt::Debug for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotMine => f.write_str("NotMine"),
            Self::Authenticated(p) => f.debug_tuple("Authenticated").field(p).finish(),
            Self::Rejected(e) => f.debug_tuple("Rejected").field(e).finish(),
            Self::Pending(_) => f.write_str("Pending(<future>)"),
        }
    }
}

/// Turns a request's credential into a [`Principal`].
///
/// Implemented by [`Jwt`](super::jwt::Jwt) and [`ApiKeys`](super::api_key::ApiKeys); implement it
/// for a credential of your own. [`AuthLayer`](super::AuthLayer) asks its authenticators in order
/// and the first that does not answer [`Verdict::NotMine`] decides.
///
/// `authenticate` runs on every request: keep the common case synchronous and return
/// [`Verdict::Pending`] only when I/O is really needed.
///
/// ```
/// use tower_shield::auth::{AuthRequest, Authenticator, Verdict};
/// use tower_shield::principal::{AuthMethod, Principal};
/// use tower_shield::{Error, ErrorKind};
///
/// /// Accepts `Authorization: Magic please`, for illustration only.
/// #[derive(Debug)]
/// struct Magic;
///
/// impl Authenticator for Magic {
///     fn authenticate(&self, request: &AuthRequest<'_>) -> Verdict {
///         match request.authorization() {
///             Some(a) if a.is_scheme("Magic") && a.credentials() == "please" => {
///                 Verdict::Authenticated(Principal::builder("wizard").build())
///             }
///             Some(a) if a.is_scheme("Magic") => {
///                 Verdict::Rejected(Error::new(ErrorKind::InvalidToken).with_reason("magic: wrong word"))
///             }
///             _ => Verdict::NotMine,
///         }
///     }
///
///     fn method(&self) -> AuthMethod {
///         AuthMethod::Custom("magic")
///     }
/// }
/// ```
pub trait Authenticator: fmt::Debug + Send + Sync + 'static {
    /// Decides about the credential of `request`.
    fn authenticate(&self, request: &AuthRequest<'_>) -> Verdict;

    /// How this authenticator authenticates, for logs (`auth.failure`, `auth.success`).
    fn method(&self) -> crate::principal::AuthMethod;

    /// Headers other than `Authorization` that carry this authenticator's credentials (e.g.
    /// `X-API-Key`). The layer marks them sensitive so they stay out of logs.
    fn credential_headers(&self) -> &[HeaderName] {
        &[]
    }
}

impl<A: Authenticator + ?Sized> Authenticator for Arc<A> {
    fn authenticate(&self, request: &AuthRequest<'_>) -> Verdict {
        (**self).authenticate(request)
    }

    fn method(&self) -> crate::principal::AuthMethod {
        (**self).method()
    }

    fn credential_headers(&self) -> &[HeaderName] {
        (**self).credential_headers()
    }
}

/// The request as an [`Authenticator`] sees it: its headers and its parsed `Authorization`
/// header.
///
/// `Debug` prints header names and the `Authorization` scheme, never a header value.
///
/// # Example
///
/// ```
/// use http::{header, HeaderMap, HeaderValue};
/// use tower_shield::auth::AuthRequest;
///
/// let mut headers = HeaderMap::new();
/// headers.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer abc.def.ghi"));
/// let request = AuthRequest::from_headers(&headers).unwrap();
/// assert_eq!(request.bearer(), Some("abc.def.ghi"));
/// assert_eq!(request.authorization().unwrap().scheme(), "bearer");
/// assert!(!format!("{request:?}").contains("abc.def.ghi"));
///
/// // Two `Authorization` headers are malformed: the layer answers 400.
/// headers.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer other"));
/// assert!(AuthRequest::from_headers(&headers).is_err());
/// ```
pub struct AuthRequest<'a> {
    headers: &'a HeaderMap,
    authorization: Option<Authorization<'a>>,
}

impl<'a> AuthRequest<'a> {
    /// Reads `headers`.
    ///
    /// # Errors
    ///
    /// A malformed `Authorization` header (several of them, a character outside visible ASCII,
    /// no credentials after the scheme, a `Bearer` value that is not a `token68`): the layer
    /// answers 400 `invalid_request`. The reason never contains the header's value.
    pub fn from_headers(headers: &'a HeaderMap) -> Result<Self, &'static str> {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let authorization = match (values.next(), values.next()) {
            (None, _) => None,
            (Some(_), Some(_)) => return Err("several Authorization headers"),
            (Some(value), None) => Some(Authorization::parse(value.as_bytes())?),
        };
        Ok(Self { headers, authorization })
    }

    /// All request headers.
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The `Authorization` header, if present (it is well-formed: the layer rejected it
    /// otherwise).
    pub fn authorization(&self) -> Option<&Authorization<'a>> {
        self.authorization.as_ref()
    }

    /// The token of an `Authorization: Bearer <token>` header (scheme compared
    /// case-insensitively).
    pub fn bearer(&self) -> Option<&'a str> {
        self.authorization.as_ref().filter(|a| a.is_scheme("Bearer")).map(|a| a.credentials)
    }
}

impl fmt::Debug for AuthRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthRequest")
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("authorization", &self.authorization)
            .finish()
    }
}

/// A well-formed `Authorization: <scheme> <credentials>` header.
///
/// `Debug` never prints the credentials.
///
/// # Example
///
/// ```
/// use http::{header, HeaderMap, HeaderValue};
/// use tower_shield::auth::AuthRequest;
///
/// let mut headers = HeaderMap::new();
/// headers.insert(header::AUTHORIZATION, HeaderValue::from_static("ApiKey sk_live_abc_s3cr3t"));
/// let request = AuthRequest::from_headers(&headers).unwrap();
/// let authorization = request.authorization().unwrap();
/// assert!(authorization.is_scheme("apikey"));
/// assert_eq!(authorization.credentials(), "sk_live_abc_s3cr3t");
/// assert!(!format!("{authorization:?}").contains("s3cr3t"));
/// ```
#[derive(Clone, Copy)]
pub struct Authorization<'a> {
    scheme: &'a str,
    credentials: &'a str,
}

impl<'a> Authorization<'a> {
    fn parse(value: &'a [u8]) -> Result<Self, &'static str> {
        let space = value.iter().position(|&b| b == b' ');
        let (scheme, credentials) = match space {
            Some(space) => (&value[..space], &value[space + 1..]),
            None if visible(value) => return Err("Authorization header has no credentials"),
            None => return Err("Authorization header has characters outside visible ASCII"),
        };
        let start = credentials.iter().position(|&b| b != b' ').unwrap_or(credentials.len());
        let credentials = &credentials[start..];
        if scheme.is_empty() || credentials.is_empty() {
            return Err("Authorization header has an empty scheme or credentials");
        }
        if !scheme.iter().all(|&b| is_tchar(b)) {
            return Err(if visible(scheme) {
                "Authorization scheme is not a token"
            } else {
                "Authorization header has characters outside visible ASCII"
            });
        }
        // One pass over the credentials, the longest part: a bearer token68 is visible ASCII
        // by its grammar; anything else is only checked to be visible ASCII.
        if scheme.eq_ignore_ascii_case(b"Bearer") {
            if !is_token68(credentials) {
                return Err(if visible(credentials) {
                    "Bearer credentials are not a token68"
                } else {
                    "Authorization header has characters outside visible ASCII"
                });
            }
        } else if !visible(credentials) {
            return Err("Authorization header has characters outside visible ASCII");
        }
        // The whole value is the scheme, spaces and the credentials: visible ASCII, checked
        // above. One UTF-8 check, and both parts are slices of its text at the same offsets.
        let text = std::str::from_utf8(value).map_err(|_| "Authorization header is not ASCII")?;
        let credentials = &text[text.len() - credentials.len()..];
        Ok(Self { scheme: &text[..scheme.len()], credentials })
    }

    /// The scheme as sent, e.g. `Bearer`.
    pub fn scheme(&self) -> &'a str {
        self.scheme
    }

    /// Whether the scheme is `scheme`, compared case-insensitively (RFC 9110 section 11.1).
    pub fn is_scheme(&self, scheme: &str) -> bool {
        self.scheme.eq_ignore_ascii_case(scheme)
    }

    /// The credentials after the scheme. A secret: never log it.
    pub fn credentials(&self) -> &'a str {
        self.credentials
    }
}

impl fmt::Debug for Authorization<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authorization")
            .field("scheme", &self.scheme)
            .field("credentials", &"<redacted>")
            .finish()
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Visible ASCII and spaces (`%x20-7E`), as a header value's text may hold.
fn visible(bytes: &[u8]) -> bool {
    // A fold without early exit, which the compiler turns into SIMD.
    bytes.iter().fold(true, |ok, &b| ok & matches!(b, b' '..=b'~'))
}

/// RFC 9110 `token68`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_token68(bytes: &[u8]) -> bool {
    let end = bytes.iter().rposition(|&b| b != b'=').map_or(0, |last| last + 1);
    let body = &bytes[..end];
    // A fold without early exit, in comparisons the compiler turns into SIMD (a `match` on
    // ranges becomes a per-byte table lookup): tokens are long and checked on every request.
    !body.is_empty() && body.iter().fold(true, |ok, &b| ok & is_token68_char(b))
}

fn is_token68_char(b: u8) -> bool {
    // `b | 0x20` folds upper case onto lower case and maps no other byte into `a..=z`.
    let alpha = (b | 0x20).wrapping_sub(b'a') < 26;
    // `-`, `.`, `/` and the digits are one run, `0x2D..=0x39`: one range check.
    let run = b.wrapping_sub(b'-') < 13;
    alpha | run | (b == b'+') | (b == b'_') | (b == b'~')
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn parse(values: &[&[u8]]) -> Result<Option<(String, String)>, &'static str> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(header::AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        }
        let request = AuthRequest::from_headers(&headers)?;
        Ok(request.authorization().map(|a| (a.scheme().to_owned(), a.credentials().to_owned())))
    }

    #[test]
    fn token68_characters_are_exactly_the_rfc_set() {
        for b in 0..=u8::MAX {
            let rfc = b.is_ascii_alphanumeric() || b"-._~+/".contains(&b);
            assert_eq!(is_token68_char(b), rfc, "byte {b:#04x}");
        }
    }

    #[test]
    fn authorization_parsing() {
        assert_eq!(parse(&[]), Ok(None));
        assert_eq!(parse(&[b"Bearer abc.def-_~+/=="]).unwrap().unwrap().1, "abc.def-_~+/==");
        assert_eq!(parse(&[b"bEaReR  abc"]).unwrap().unwrap().1, "abc");
        assert_eq!(parse(&[b"ApiKey sk_live_x_y"]).unwrap().unwrap().0, "ApiKey");
        assert!(parse(&[b"Bearer a", b"Bearer b"]).is_err());
        assert!(parse(&[b"Bearer"]).is_err());
        assert!(parse(&[b"Bearer "]).is_err());
        assert!(parse(&[b"Bearer a b"]).is_err());
        assert!(parse(&[b"Bearer a\tb"]).is_err());
        assert!(parse(&[b"Bearer ab\xc3\xa9"]).is_err());
        assert!(parse(&[b"Bearer ==="]).is_err());
        assert!(parse(&[b"Bearer a=b"]).is_err());
        assert!(parse(&[b"Bea\"rer abc"]).is_err());
        assert!(parse(&[b"ApiKey a\tb"]).is_err());
        assert!(parse(&[b"ApiKey ab\xc3\xa9"]).is_err());
        assert!(parse(&[b"Api\tKey ab"]).is_err());
        assert!(parse(&[b" abc"]).is_err());
        assert_eq!(parse(&[b"ApiKey a b=\"c\""]).unwrap().unwrap().1, "a b=\"c\"");
    }

    /// Each malformed header is refused for the reason the logs should show.
    #[test]
    fn authorization_refusals_say_why() {
        let cases: [(&[u8], &str); 9] = [
            (b"Bearer", "no credentials"),
            (b"Bearer\tabc", "outside visible ASCII"),
            (b"Bearer ", "empty scheme or credentials"),
            (b" abc", "empty scheme or credentials"),
            (b"Bea\"rer abc", "scheme is not a token"),
            (b"Bea\xffrer abc", "outside visible ASCII"),
            (b"Bearer a b", "not a token68"),
            (b"Bearer ab\xc3\xa9", "outside visible ASCII"),
            (b"Basic ab\tc", "outside visible ASCII"),
        ];
        for (value, why) in cases {
            let refusal = parse(&[value]).unwrap_err();
            assert!(refusal.contains(why), "{:?}: {refusal}", String::from_utf8_lossy(value));
        }
    }

    #[test]
    fn bearer_is_case_insensitive_and_debug_hides_credentials() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("BEARER secret-token"));
        let request = AuthRequest::from_headers(&headers).unwrap();
        assert_eq!(request.bearer(), Some("secret-token"));
        assert!(!format!("{request:?}").contains("secret-token"));
    }
}
