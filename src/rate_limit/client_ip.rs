use std::{
    borrow::Cow,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use http::{header, request::Parts, HeaderMap};
use ipnet::IpNet;

use super::key::{KeyExtractor, RateKey};
use crate::error::ConfigError;

/// The TCP peer address of a connection, for servers that are not axum: insert it into each
/// request's extensions (hyper's `service_fn` closure knows the peer of its connection).
///
/// With feature `axum`, axum's `ConnectInfo<SocketAddr>` (from
/// `into_make_service_with_connect_info::<SocketAddr>()`) is read as well, and with feature
/// `tonic-server`, the `TcpConnectInfo` that tonic's transport server puts in every request;
/// `PeerAddr` wins when one of those is present too.
///
/// tonic over TLS records `TlsConnectInfo<TcpConnectInfo>` instead, which is not read: insert
/// a `PeerAddr` holding its `get_ref().remote_addr()` in a layer outside the rate limit (a
/// `tower::util::MapRequestLayer`).
///
/// # Example
///
/// ```
/// use std::{convert::Infallible, net::SocketAddr, num::NonZeroU32};
/// use http::{Request, Response, StatusCode};
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_shield::rate_limit::{PeerAddr, Quota, RateLimitLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // The peer of the connection being served (hyper's accept loop knows it).
/// let peer = SocketAddr::from(([203, 0, 113, 7], 4711));
/// let service = ServiceBuilder::new()
///     .map_request(move |mut request: Request<String>| {
///         request.extensions_mut().insert(PeerAddr(peer));
///         request
///     })
///     .layer(RateLimitLayer::per_ip(Quota::per_minute(NonZeroU32::new(1).unwrap())))
///     .service_fn(|_: Request<String>| async {
///         Ok::<_, Infallible>(Response::new(String::new()))
///     });
///
/// let response = service.clone().oneshot(Request::new(String::new())).await.unwrap();
/// assert_eq!(response.status(), StatusCode::OK);
/// let response = service.oneshot(Request::new(String::new())).await.unwrap();
/// assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

/// The client IP address a [`ClientIp`] resolved (the full address, before prefix grouping).
///
/// A rate-limit layer keyed by client IP stores it in the request extensions, so later layers
/// and handlers (idempotency, telemetry, a login limiter) see the same, proxy-aware address.
///
/// # Example
///
/// ```
/// use std::{convert::Infallible, net::SocketAddr, num::NonZeroU32};
/// use http::{Request, Response};
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_shield::rate_limit::{ClientAddr, ClientIp, PeerAddr, Quota, RateLimitLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let client_ip = ClientIp::new().trusted_proxies_from_str("10.0.0.0/8").unwrap();
/// let quota = Quota::per_second(NonZeroU32::new(10).unwrap());
/// let service = ServiceBuilder::new()
///     .layer(RateLimitLayer::new(client_ip, quota))
///     .service_fn(|request: Request<String>| async move {
///         // The address the layer resolved, for the handler and inner layers.
///         let ClientAddr(ip) = *request.extensions().get::<ClientAddr>().unwrap();
///         Ok::<_, Infallible>(Response::new(ip.to_string()))
///     });
///
/// // A request forwarded by the load balancer at 10.0.0.2.
/// let mut request =
///     Request::builder().header("x-forwarded-for", "198.51.100.7").body(String::new()).unwrap();
/// request.extensions_mut().insert(PeerAddr(SocketAddr::from(([10, 0, 0, 2], 40000))));
/// let response = service.oneshot(request).await.unwrap();
/// assert_eq!(response.body(), "198.51.100.7");
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub IpAddr);

/// Which forwarding header the trusted proxies write.
///
/// Only one is read: if both were, a client could send the one the proxy does not touch and
/// choose its own address.
///
/// # Example
///
/// ```
/// use std::net::{IpAddr, SocketAddr};
/// use http::Request;
/// use tower_shield::rate_limit::{ClientIp, ForwardedHeader, PeerAddr};
///
/// let client_ip = ClientIp::new()
///     .trusted_proxies_from_str("10.0.0.0/8")
///     .unwrap()
///     .forwarded_header(ForwardedHeader::Forwarded);
/// let mut request = Request::builder()
///     .header("forwarded", r#"for="[2001:db8::1]:4711";proto=https"#)
///     // Not read: a client could have sent it past the proxy.
///     .header("x-forwarded-for", "192.0.2.1")
///     .body(())
///     .unwrap();
/// request.extensions_mut().insert(PeerAddr(SocketAddr::from(([10, 0, 0, 2], 40000))));
/// let (parts, ()) = request.into_parts();
/// assert_eq!(client_ip.resolve(&parts), Some("2001:db8::1".parse::<IpAddr>().unwrap()));
/// assert_eq!(ForwardedHeader::default(), ForwardedHeader::XForwardedFor);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (the default).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client;proto=https, for="[2001:db8::1]:4711"`.
    Forwarded,
}

/// Keys requests by client IP address: the TCP peer, or, when the peer is a trusted proxy, the
/// address it forwarded.
///
/// * The peer comes from [`PeerAddr`], (feature `axum`) axum's `ConnectInfo<SocketAddr>` or
///   (feature `tonic-server`) tonic's `TcpConnectInfo` in the request extensions. Without any
///   of them the key is missing.
/// * Forwarding headers are read only when the peer is inside a trusted CIDR. The chain is
///   walked from the right past trusted hops; the first untrusted address is the client. A
///   malformed or unreadable entry (or more than 64 hops) makes the peer the client. When every
///   hop is trusted, the leftmost one is.
/// * IPv6 addresses are grouped by prefix (default /64, the size one customer usually gets),
///   IPv4 by /32; IPv4-mapped IPv6 addresses count as IPv4.
///
/// # Security
///
/// Trust only the addresses of your own proxies or load balancer. Trusting a range that
/// clients can connect from lets them choose their key. A warning is logged at construction
/// for configurations that look wrong (a /0 range, for instance).
///
/// ```
/// use tower_shield::rate_limit::ClientIp;
///
/// let ip = ClientIp::new().trusted_proxies_from_str("10.0.0.0/8, 192.168.0.0/16").unwrap();
/// assert!(ClientIp::new().trusted_proxies_from_str("10.0.0.0/33").is_err());
/// # let _ = ip;
/// ```
#[derive(Clone, Debug)]
pub struct ClientIp {
    trusted: Arc<[IpNet]>,
    header: ForwardedHeader,
    ipv6_prefix: u8,
    ipv4_prefix: u8,
    warned_no_peer: Arc<AtomicBool>,
}

/// Entries walked in a forwarding chain before giving up (and using the peer).
const MAX_HOPS: usize = 64;

impl ClientIp {
    /// The TCP peer, no trusted proxies, IPv6 grouped by /64.
    pub fn new() -> Self {
        Self {
            trusted: Arc::from(Vec::new()),
            header: ForwardedHeader::XForwardedFor,
            ipv6_prefix: 64,
            ipv4_prefix: 32,
            warned_no_peer: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Trusts these proxy ranges (replacing earlier ones).
    pub fn trusted_proxies(mut self, ranges: impl IntoIterator<Item = IpNet>) -> Self {
        let ranges: Vec<IpNet> = ranges.into_iter().map(|n| n.trunc()).collect();
        for range in &ranges {
            if range.prefix_len() == 0 {
                tracing::warn!(
                    target: "tower_shield::rate_limit",
                    range = %range,
                    "trusting {range} as proxies lets every client choose its own rate-limit key"
                );
            } else if (range.addr().is_ipv4() && range.prefix_len() < 8)
                || (range.addr().is_ipv6() && range.prefix_len() < 16)
            {
                tracing::warn!(
                    target: "tower_shield::rate_limit",
                    range = %range,
                    "trusted proxy range {range} is very broad; list only your own proxies"
                );
            }
        }
        self.trusted = Arc::from(ranges);
        self
    }

    /// Trusts a comma-separated list of CIDRs (`"10.0.0.0/8, fd00::/8"`); a bare address means
    /// that one host. An empty string trusts nothing.
    ///
    /// # Errors
    ///
    /// When an entry is neither a CIDR nor an address.
    pub fn trusted_proxies_from_str(self, list: &str) -> Result<Self, ConfigError> {
        let mut ranges = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let range = entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    ConfigError::new(format!("`{entry}` is not a CIDR range or an IP address"))
                })?;
            ranges.push(range);
        }
        Ok(self.trusted_proxies(ranges))
    }

    /// Reads this forwarding header from trusted proxies (default `X-Forwarded-For`).
    pub fn forwarded_header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// Groups IPv6 clients by this prefix length (default 64).
    ///
    /// # Errors
    ///
    /// When `prefix` is above 128.
    pub fn ipv6_prefix(mut self, prefix: u8) -> Result<Self, ConfigError> {
        if prefix > 128 {
            return Err(ConfigError::new("an IPv6 prefix length is at most 128"));
        }
        if prefix < 32 {
            tracing::warn!(
                target: "tower_shield::rate_limit",
                prefix,
                "an IPv6 prefix shorter than /32 puts many unrelated clients in one bucket"
            );
        }
        self.ipv6_prefix = prefix;
        Ok(self)
    }

    /// Groups IPv4 clients by this prefix length (default 32: one address).
    ///
    /// # Errors
    ///
    /// When `prefix` is above 32.
    pub fn ipv4_prefix(mut self, prefix: u8) -> Result<Self, ConfigError> {
        if prefix > 32 {
            return Err(ConfigError::new("an IPv4 prefix length is at most 32"));
        }
        self.ipv4_prefix = prefix;
        Ok(self)
    }

    /// The trusted proxy ranges.
    pub fn trusted(&self) -> &[IpNet] {
        &self.trusted
    }

    /// The peer address of the connection, from [`PeerAddr`], axum's `ConnectInfo` (feature
    /// `axum`) or tonic's `TcpConnectInfo` (feature `tonic-server`), in that order.
    pub fn peer(parts: &Parts) -> Option<IpAddr> {
        if let Some(PeerAddr(addr)) = parts.extensions.get::<PeerAddr>() {
            return Some(addr.ip());
        }
        #[cfg(feature = "axum")]
        if let Some(info) = parts.extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
            return Some(info.0.ip());
        }
        #[cfg(feature = "tonic-server")]
        if let Some(addr) = parts
            .extensions
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(tonic::transport::server::TcpConnectInfo::remote_addr)
        {
            return Some(addr.ip());
        }
        None
    }

    /// The client address of this request (full address, no grouping), or `None` without a
    /// peer address.
    pub fn resolve(&self, parts: &Parts) -> Option<IpAddr> {
        let Some(peer) = Self::peer(parts).map(canonical) else {
            if !self.warned_no_peer.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    target: "tower_shield::rate_limit",
                    "no peer address in the request: serve axum with \
                     `into_make_service_with_connect_info::<SocketAddr>()`, enable feature \
                     `tonic-server` under tonic's transport server, or insert `PeerAddr`"
                );
            }
            return None;
        };
        if self.trusted.is_empty() || !self.is_trusted(peer) {
            return Some(peer);
        }
        Some(self.walk(&parts.headers).unwrap_or(peer))
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The rightmost untrusted hop, or `None` to use the peer (no header, malformed entry).
    fn walk(&self, headers: &HeaderMap) -> Option<IpAddr> {
        let name = match self.header {
            ForwardedHeader::XForwardedFor => header::HeaderName::from_static("x-forwarded-for"),
            ForwardedHeader::Forwarded => header::FORWARDED,
        };
        let mut hops = 0;
        let mut leftmost = None;
        for value in headers.get_all(&name).iter().rev() {
            let value = value.to_str().ok()?;
            for entry in value.rsplit(',') {
                hops += 1;
                if hops > MAX_HOPS {
                    return None;
                }
                let ip = match self.header {
                    ForwardedHeader::XForwardedFor => parse_xff(entry.trim())?,
                    ForwardedHeader::Forwarded => parse_forwarded(entry)?,
                };
                let ip = canonical(ip);
                if !self.is_trusted(ip) {
                    return Some(ip);
                }
                leftmost = Some(ip);
            }
        }
        leftmost
    }

    /// The key of `ip`, grouped by the configured prefixes.
    pub fn key_for(&self, ip: IpAddr) -> RateKey {
        match canonical(ip) {
            IpAddr::V4(v4) => {
                let masked = mask(u32::from(v4).into(), 32, self.ipv4_prefix) as u32;
                let mut bytes = [0u8; 5];
                bytes[0] = 4;
                bytes[1..].copy_from_slice(&masked.to_be_bytes());
                RateKey::new(bytes)
            }
            IpAddr::V6(v6) => {
                let masked = mask(u128::from(v6), 128, self.ipv6_prefix);
                let mut bytes = [0u8; 17];
                bytes[0] = 6;
                bytes[1..].copy_from_slice(&masked.to_be_bytes());
                RateKey::new(bytes)
            }
        }
    }
}

impl Default for ClientIp {
    fn default() -> Self {
        Self::new()
    }
}

fn mask(bits: u128, width: u8, prefix: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let shift = u32::from(width - prefix.min(width));
    let full = if width == 128 { u128::MAX } else { (1u128 << width) - 1 };
    bits & (full >> shift << shift)
}

/// IPv4-mapped IPv6 (`::ffff:1.2.3.4`) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]:80`.
fn parse_xff(entry: &str) -> Option<IpAddr> {
    entry.parse::<IpAddr>().ok().or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// The `for=` of one RFC 7239 element: `for=192.0.2.60;proto=http`, `for="[2001:db8::1]:4711"`.
/// `unknown` and obfuscated identifiers count as malformed.
fn parse_forwarded(element: &str) -> Option<IpAddr> {
    let value = element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        name.trim().eq_ignore_ascii_case("for").then_some(value.trim())
    })?;
    let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
    if let Some(rest) = value.strip_prefix('[') {
        let (addr, _) = rest.split_once(']')?;
        return addr.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    parse_xff(value).filter(IpAddr::is_ipv4)
}

impl KeyExtractor for ClientIp {
    fn extract(&self, parts: &Parts) -> Option<RateKey> {
        let ip = match parts.extensions.get::<ClientAddr>() {
            Some(ClientAddr(ip)) => *ip,
            None => self.resolve(parts)?,
        };
        Some(self.key_for(ip))
    }

    fn kind(&self) -> Cow<'static, str> {
        Cow::Borrowed("ip")
    }

    fn client_ip(&self) -> Option<&ClientIp> {
        Some(self)
    }
}

/// The tonic transport server's peer (feature `tonic-server`).
#[cfg(all(test, feature = "tonic-server"))]
mod tests {
    use tonic::transport::server::TcpConnectInfo;

    use super::*;

    fn parts(extensions: impl FnOnce(&mut http::Extensions)) -> Parts {
        let mut request = http::Request::new(());
        extensions(request.extensions_mut());
        request.into_parts().0
    }

    #[test]
    fn reads_tonic_tcp_connect_info() {
        let tonic_peer = SocketAddr::from(([198, 51, 100, 9], 50123));
        let info = move |remote_addr| TcpConnectInfo {
            local_addr: Some(SocketAddr::from(([127, 0, 0, 1], 50051))),
            remote_addr,
        };
        let with_info = parts(|e| {
            e.insert(info(Some(tonic_peer)));
        });
        assert_eq!(ClientIp::peer(&with_info), Some(tonic_peer.ip()));
        let key = ClientIp::new().extract(&with_info).expect("a key from the tonic peer");
        assert_eq!(key, ClientIp::new().key_for(tonic_peer.ip()));

        // An explicit PeerAddr wins; a connection without a remote address gives no key.
        let explicit = SocketAddr::from(([203, 0, 113, 7], 4711));
        let both = parts(|e| {
            e.insert(info(Some(tonic_peer)));
            e.insert(PeerAddr(explicit));
        });
        assert_eq!(ClientIp::peer(&both), Some(explicit.ip()));
        let no_remote = parts(|e| {
            e.insert(info(None));
        });
        assert_eq!(ClientIp::peer(&no_remote), None);
        assert_eq!(ClientIp::new().extract(&no_remote), None);
    }

    #[test]
    fn tonic_peer_is_a_proxy_like_any_other() {
        let proxy = SocketAddr::from(([10, 0, 0, 2], 40000));
        let mut request = http::Request::builder()
            .header("x-forwarded-for", "192.0.2.44, 10.0.0.3")
            .body(())
            .unwrap();
        request
            .extensions_mut()
            .insert(TcpConnectInfo { local_addr: None, remote_addr: Some(proxy) });
        let (parts, ()) = request.into_parts();
        let ip = ClientIp::new().trusted_proxies_from_str("10.0.0.0/8").unwrap();
        assert_eq!(ip.resolve(&parts), Some(IpAddr::from([192, 0, 2, 44])));
        assert_eq!(ClientIp::new().resolve(&parts), Some(proxy.ip()), "untrusted: the peer");
    }
}
