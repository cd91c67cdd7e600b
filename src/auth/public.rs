use std::collections::HashSet;

use http::Method;

use crate::error::ConfigError;

/// Routes that need no credential, matched exactly on method and path.
#[derive(Clone, Debug, Default)]
pub(crate) struct PublicRoutes {
    routes: HashSet<(Method, Box<str>)>,
}

impl PublicRoutes {
    pub(crate) fn add(&mut self, method: Method, path: &str) -> Result<(), ConfigError> {
        if !path.starts_with('/') || is_ambiguous(path) || path.contains('?') || path.contains('#')
        {
            return Err(ConfigError::new(
                "a public route must be an absolute path without `.`/`..` segments, `//`, \
                 percent-encoded `/`, `.` or `\\`, `;`, a query or a fragment",
            ));
        }
        // HEAD is GET without the body (RFC 9110, section 9.3.2), and axum's `get` answers
        // both: a public GET whose HEAD asked for a credential would turn health probes into
        // 401s, and HEAD can tell nothing that GET does not.
        if method == Method::GET {
            self.routes.insert((Method::HEAD, path.into()));
        }
        self.routes.insert((method, path.into()));
        Ok(())
    }

    /// Whether `(method, path)` is public. A path that could be read as another path by a
    /// router or a proxy (dot segments, doubled slashes, encoded separators) is never public.
    pub(crate) fn contains(&self, method: &Method, path: &str) -> bool {
        if self.routes.is_empty() || is_ambiguous(path) {
            return false;
        }
        // `HashSet<(Method, Box<str>)>` cannot be probed with borrowed parts; the set is small,
        // so a scan comparing method first is as fast as hashing.
        self.routes.iter().any(|(m, p)| m == method && **p == *path)
    }
}

/// Dot segments, empty segments, encoded `/`, `.` and `\`, raw `\` and `;` (path parameters).
fn is_ambiguous(path: &str) -> bool {
    if path.contains("//") || path.contains('\\') || path.contains(';') {
        return true;
    }
    let bytes = path.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3);
            if matches!(hex, Some(b"2f" | b"2F" | b"2e" | b"2E" | b"5c" | b"5C" | b"25" | b"00")) {
                return true;
            }
        }
    }
    path.split('/').any(|segment| segment == "." || segment == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_match_only() {
        let mut routes = PublicRoutes::default();
        routes.add(Method::GET, "/health").unwrap();
        assert!(routes.contains(&Method::GET, "/health"));
        for path in [
            "/health/../orders",
            "/health/./",
            "/healthz",
            "/health/",
            "/health/x",
            "//health",
            "/health%2F..%2Forders",
            "/health%2e",
            "/./health",
            "/health;x",
            "/HEALTH",
            "/health\\..",
        ] {
            assert!(!routes.contains(&Method::GET, path), "{path} must not be public");
        }
        assert!(!routes.contains(&Method::POST, "/health"));
    }

    #[test]
    fn a_public_get_makes_head_public_and_nothing_else() {
        let mut routes = PublicRoutes::default();
        routes.add(Method::GET, "/health").unwrap();
        routes.add(Method::POST, "/login").unwrap();
        assert!(routes.contains(&Method::HEAD, "/health"));
        assert!(!routes.contains(&Method::HEAD, "/health/../orders"));
        assert!(!routes.contains(&Method::HEAD, "/login"));
        assert!(!routes.contains(&Method::GET, "/login"));
        assert!(!routes.contains(&Method::OPTIONS, "/health"));
        let mut head_only = PublicRoutes::default();
        head_only.add(Method::HEAD, "/ping").unwrap();
        assert!(!head_only.contains(&Method::GET, "/ping"));
    }

    #[test]
    fn ambiguous_public_routes_are_config_errors() {
        let mut routes = PublicRoutes::default();
        for path in ["health", "/a/../b", "/a//b", "/a%2Fb", "/a?x=1", "/a/."] {
            assert!(routes.add(Method::GET, path).is_err(), "{path}");
        }
        assert!(routes.routes.is_empty());
    }
}
