use std::{fmt, time::Duration};

use http::{HeaderMap, HeaderName, Uri};

use crate::{clock::Clock, principal::Principal};

/// How far ahead of the clock an `auth_time` may be and still count as a login just now: the
/// clock skew the JWT verifier allows by default.
const MAX_AUTH_TIME_SKEW: Duration = Duration::from_secs(60);

/// What a caller must hold to pass a [`ScopeLayer`](super::ScopeLayer).
///
/// Built from leaves (scopes, roles, step-up conditions, tenant isolation) combined with
/// [`and`](Requirement::and) and [`or`](Requirement::or):
///
/// ```
/// use std::time::Duration;
/// use tower_shield::scope::{Requirement, Tenant};
///
/// // Writers, or admins whatever their scopes.
/// let write = Requirement::all(["orders:write"]).or(Requirement::role("admin"));
///
/// // Deleting needs the admin scope and a login in the last five minutes.
/// let delete = Requirement::all(["orders:admin"]).and(Requirement::max_age(Duration::from_secs(300)));
///
/// // `/tenants/{tenant}/orders`: only the tenant's own members, others see a 404.
/// let tenant = Requirement::any(["orders:read"]).and(Requirement::tenant(Tenant::path_segment(1)));
/// assert_eq!(tenant.to_string(), "any(orders:read) and tenant(path[1], not_found)");
/// ```
///
/// A [`Principal`] keeps its scopes and roles sorted, so checking a leaf is a binary search per
/// name; nothing is allocated for an allowed request.
///
/// Scope names must be RFC 6749 scope-tokens (printable ASCII without space, `"` or `\`). A
/// name outside that grammar can never be granted, so a requirement naming it is never met
/// (fail closed) and the name is left out of the challenge.
///
/// # The answer a denial gets
///
/// Every leaf gives a verdict, from most to least actionable for the client:
/// *allow*; *step-up* (401, RFC 9470: authenticate again, more recently or more strongly);
/// *forbidden* (403, RFC 6750 `insufficient_scope`); *tenant forbidden* (403 without a
/// challenge); *hidden* (404, the caller must not learn that the resource exists).
/// [`and`](Requirement::and) answers the *worst* verdict of its parts, [`or`](Requirement::or)
/// the *best*. So a caller lacking a scope gets a 403 even when the session is also stale (a
/// new login would not help), and with `a.or(b)` a caller who fails `a` only by freshness is
/// asked to step up.
///
/// # The challenge
///
/// The `scope` parameter of a 403 names a set of scopes that would satisfy the requirement,
/// computed once at build time: all the scopes of [`all`](Requirement::all), the *first* scope
/// of [`any`](Requirement::any), the union over [`and`](Requirement::and), and for
/// [`or`](Requirement::or) the first alternative that names any scope. List alternatives
/// least-privileged first, so clients are pointed at the smallest grant. Roles are not OAuth
/// scopes: a denial by roles alone is a 403 with `error="insufficient_scope"` and no `scope`
/// parameter. The step-up challenge names the `max_age` and `acr_values` of the alternative that
/// failed by freshness or strength.
#[derive(Clone, PartialEq, Eq)]
#[must_use]
pub struct Requirement {
    pub(crate) node: Node,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Node {
    Authenticated,
    Scopes { all: bool, names: Box<[Box<str>]> },
    Roles { all: bool, names: Box<[Box<str>]> },
    MaxAge(Duration),
    Acr(Box<[Box<str>]>),
    Tenant(Tenant),
    And(Box<[Node]>),
    Or(Box<[Node]>),
}

/// The outcome of a check, ordered from best to worst: `and` takes the maximum, `or` the
/// minimum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Verdict {
    Allow,
    StepUp,
    Forbidden,
    TenantForbidden,
    Hidden,
}

/// What a check may read.
pub(crate) struct Facts<'a> {
    pub(crate) principal: &'a Principal,
    pub(crate) clock: &'a dyn Clock,
    pub(crate) uri: &'a Uri,
    pub(crate) headers: &'a HeaderMap,
    /// Where axum's `OriginalUri` is, read only by a tenant path segment.
    pub(crate) extensions: &'a http::Extensions,
}

impl Requirement {
    /// Any authenticated caller.
    pub fn authenticated() -> Self {
        Self { node: Node::Authenticated }
    }

    /// Every one of `scopes`. An empty list is met by any authenticated caller.
    pub fn all<I>(scopes: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        Self { node: Node::Scopes { all: true, names: names(scopes) } }
    }

    /// At least one of `scopes`. An empty list is never met.
    pub fn any<I>(scopes: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        Self { node: Node::Scopes { all: false, names: names(scopes) } }
    }

    /// The one scope `scope`; the same as `Requirement::all([scope])`.
    pub fn scope(scope: impl Into<String>) -> Self {
        Self::all([scope.into()])
    }

    /// The role `role` ([`Principal::has_role`]).
    pub fn role(role: impl Into<String>) -> Self {
        Self { node: Node::Roles { all: true, names: names([role.into()]) } }
    }

    /// At least one of `roles`. An empty list is never met.
    pub fn any_role<I>(roles: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        Self { node: Node::Roles { all: false, names: names(roles) } }
    }

    /// Step-up on freshness (RFC 9470): the user authenticated at most `max_age` ago, by the
    /// principal's [`auth_time`](Principal::auth_time) and the layer's clock. A principal
    /// without `auth_time` does not meet it. An `auth_time` up to 60 s in the future (clock
    /// skew) counts as just now; one further ahead does not meet it.
    pub fn max_age(max_age: Duration) -> Self {
        Self { node: Node::MaxAge(max_age) }
    }

    /// Step-up on strength (RFC 9470): the principal's [`acr`](Principal::acr) is one of
    /// `values`. An empty list is never met.
    pub fn acr<I>(values: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        Self { node: Node::Acr(names(values)) }
    }

    /// Tenant isolation: the principal's tenant equals the tenant named by the request.
    pub fn tenant(tenant: Tenant) -> Self {
        Self { node: Node::Tenant(tenant) }
    }

    /// Both `self` and `other`. The denial is the worst of the two (see the type docs).
    pub fn and(self, other: Requirement) -> Self {
        Self { node: combine(self.node, other.node, true) }
    }

    /// `self` or `other`. The denial is the best of the two (see the type docs).
    pub fn or(self, other: Requirement) -> Self {
        Self { node: combine(self.node, other.node, false) }
    }

    /// The top-level alternatives: the parts of an `or`, or the requirement itself.
    pub(crate) fn alternatives(&self) -> &[Node] {
        match &self.node {
            Node::Or(children) => children,
            node => std::slice::from_ref(node),
        }
    }

    /// The verdict, and for a denial by step-up the index of the top-level alternative that
    /// asked for it.
    pub(crate) fn evaluate(&self, facts: &Facts<'_>) -> (Verdict, usize) {
        let mut best = (Verdict::Hidden, 0);
        for (index, alternative) in self.alternatives().iter().enumerate() {
            let verdict = alternative.evaluate(facts);
            if verdict == Verdict::Allow {
                return (Verdict::Allow, index);
            }
            if verdict < best.0 {
                best = (verdict, index);
            }
        }
        best
    }
}

fn names<I>(values: I) -> Box<[Box<str>]>
where
    I: IntoIterator,
    I::Item: Into<String>,
{
    let mut out: Vec<Box<str>> = Vec::new();
    for value in values {
        let value = value.into().into_boxed_str();
        if !out.contains(&value) {
            out.push(value);
        }
    }
    out.into_boxed_slice()
}

fn combine(left: Node, right: Node, and: bool) -> Node {
    let mut children = Vec::new();
    for node in [left, right] {
        match node {
            Node::And(inner) if and => children.extend(inner.into_vec()),
            Node::Or(inner) if !and => children.extend(inner.into_vec()),
            node => children.push(node),
        }
    }
    let children = children.into_boxed_slice();
    if and {
        Node::And(children)
    } else {
        Node::Or(children)
    }
}

/// RFC 6749 section 3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
pub(crate) fn is_scope_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E))
}

impl Node {
    fn evaluate(&self, facts: &Facts<'_>) -> Verdict {
        let principal = facts.principal;
        let pass = |ok: bool, deny: Verdict| if ok { Verdict::Allow } else { deny };
        // A name outside the scope-token grammar can never have been granted.
        let granted = |scope: &str| is_scope_token(scope) && principal.has_scope(scope);
        match self {
            Node::Authenticated => Verdict::Allow,
            Node::Scopes { all: true, names } => {
                pass(names.iter().all(|s| granted(s)), Verdict::Forbidden)
            }
            Node::Scopes { all: false, names } => {
                pass(names.iter().any(|s| granted(s)), Verdict::Forbidden)
            }
            Node::Roles { all: true, names } => {
                pass(names.iter().all(|r| principal.has_role(r)), Verdict::Forbidden)
            }
            Node::Roles { all: false, names } => {
                pass(names.iter().any(|r| principal.has_role(r)), Verdict::Forbidden)
            }
            Node::MaxAge(max_age) => {
                let fresh = principal.auth_time().is_some_and(|at| {
                    match facts.clock.now().duration_since(at) {
                        Ok(age) => age <= *max_age,
                        // Ahead of our clock: fresh within clock skew. Further ahead is no
                        // time a login happened, and must not stay "fresh" for a token's life.
                        Err(ahead) => ahead.duration() <= MAX_AUTH_TIME_SKEW,
                    }
                });
                pass(fresh, Verdict::StepUp)
            }
            Node::Acr(values) => {
                let strong = principal.acr().is_some_and(|acr| values.iter().any(|v| **v == *acr));
                pass(strong, Verdict::StepUp)
            }
            Node::Tenant(tenant) => tenant.evaluate(facts),
            Node::And(children) => {
                let mut worst = Verdict::Allow;
                for child in children.iter() {
                    worst = worst.max(child.evaluate(facts));
                    if worst == Verdict::Hidden {
                        break;
                    }
                }
                worst
            }
            Node::Or(children) => {
                let mut best = Verdict::Hidden;
                for child in children.iter() {
                    best = best.min(child.evaluate(facts));
                    if best == Verdict::Allow {
                        break;
                    }
                }
                best
            }
        }
    }

    /// A sufficient grant, for the challenge (see the docs of [`Requirement`]).
    pub(crate) fn hints(&self) -> Hints {
        match self {
            Node::Scopes { all, names } => Hints {
                scopes: names
                    .iter()
                    .filter(|s| is_scope_token(s))
                    .take(if *all { usize::MAX } else { 1 })
                    .cloned()
                    .collect(),
                ..Hints::default()
            },
            Node::Authenticated | Node::Roles { .. } | Node::Tenant(_) => Hints::default(),
            Node::MaxAge(max_age) => Hints { max_age: Some(*max_age), ..Hints::default() },
            Node::Acr(values) => Hints { acr: Some(values.to_vec()), ..Hints::default() },
            Node::And(children) => {
                let mut hints = Hints::default();
                for child in children.iter() {
                    let child = child.hints();
                    for scope in child.scopes {
                        if !hints.scopes.contains(&scope) {
                            hints.scopes.push(scope);
                        }
                    }
                    hints.max_age = match (hints.max_age, child.max_age) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    hints.acr = match (hints.acr.take(), child.acr) {
                        (Some(a), Some(b)) => {
                            let both: Vec<_> =
                                a.iter().filter(|v| b.contains(v)).cloned().collect();
                            Some(if both.is_empty() { a } else { both })
                        }
                        (a, b) => a.or(b),
                    };
                }
                hints
            }
            Node::Or(children) => {
                let all: Vec<Hints> = children.iter().map(Node::hints).collect();
                let index = all.iter().position(|h| !h.scopes.is_empty()).unwrap_or(0);
                all.into_iter().nth(index).unwrap_or_default()
            }
        }
    }
}

/// A grant that would satisfy a requirement.
#[derive(Debug, Default)]
pub(crate) struct Hints {
    pub(crate) scopes: Vec<Box<str>>,
    pub(crate) max_age: Option<Duration>,
    pub(crate) acr: Option<Vec<Box<str>>>,
}

impl fmt::Debug for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Requirement({self})")
    }
}

/// A compact form for logs, e.g. `all(orders:write) or role(admin)`.
impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.node.fmt_top(f)
    }
}

impl Node {
    fn fmt_top(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::And(children) | Node::Or(children) => {
                let sep = if matches!(self, Node::And(_)) { " and " } else { " or " };
                for (i, child) in children.iter().enumerate() {
                    if i > 0 {
                        f.write_str(sep)?;
                    }
                    child.fmt_nested(f)?;
                }
                Ok(())
            }
            leaf => leaf.fmt_nested(f),
        }
    }

    fn fmt_nested(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list(f: &mut fmt::Formatter<'_>, name: &str, values: &[Box<str>]) -> fmt::Result {
            write!(f, "{name}(")?;
            for (i, value) in values.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                f.write_str(value)?;
            }
            f.write_str(")")
        }
        match self {
            Node::Authenticated => f.write_str("authenticated"),
            Node::Scopes { all, names } => list(f, if *all { "all" } else { "any" }, names),
            Node::Roles { all: true, names } => list(f, "role", names),
            Node::Roles { all: false, names } => list(f, "any_role", names),
            Node::MaxAge(max_age) => write!(f, "max_age({}s)", max_age.as_secs()),
            Node::Acr(values) => list(f, "acr", values),
            Node::Tenant(tenant) => write!(f, "{tenant}"),
            Node::And(_) | Node::Or(_) => {
                f.write_str("(")?;
                self.fmt_top(f)?;
                f.write_str(")")
            }
        }
    }
}

/// Where the tenant of a request is named, for [`Requirement::tenant`], and what a mismatch
/// answers.
///
/// The principal's [`tenant`](Principal::tenant) must equal the tenant the request names. A
/// principal without a tenant, a request that names none (missing segment or header), or names
/// several (a repeated header) never match. By default a mismatch answers **404**
/// ([`ErrorKind::NotFound`](crate::ErrorKind::NotFound)), so callers cannot probe which tenants
/// exist; [`deny_as_forbidden`](Tenant::deny_as_forbidden) answers 403 instead (without a
/// `WWW-Authenticate` challenge: no scope would help).
///
/// ```
/// use tower_shield::scope::Tenant;
///
/// // `/tenants/{tenant}/orders`: segment 0 is `tenants`, segment 1 the tenant.
/// let by_path = Tenant::path_segment(1);
/// let by_header = Tenant::header(http::HeaderName::from_static("x-tenant-id")).deny_as_forbidden();
/// # let _ = (by_path, by_header);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct Tenant {
    source: TenantSource,
    hide: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum TenantSource {
    PathSegment(usize),
    Header(HeaderName),
}

impl Tenant {
    /// The tenant is path segment `index` (0-based, leading `/` ignored) of the path the
    /// client sent. Under an axum [`nest`](https://docs.rs/axum/latest/axum/struct.Router.html#method.nest)
    /// too: the index counts in the whole path (axum's `OriginalUri`), not in the part the
    /// nested router sees. The segment is percent-decoded before comparing; a malformed escape
    /// never matches.
    pub fn path_segment(index: usize) -> Self {
        Self { source: TenantSource::PathSegment(index), hide: true }
    }

    /// The tenant is the value of header `name`. Exactly one value must be present.
    pub fn header(name: HeaderName) -> Self {
        Self { source: TenantSource::Header(name), hide: true }
    }

    /// A mismatch answers 404 Not Found (the default).
    pub fn deny_as_not_found(mut self) -> Self {
        self.hide = true;
        self
    }

    /// A mismatch answers 403 Forbidden.
    pub fn deny_as_forbidden(mut self) -> Self {
        self.hide = false;
        self
    }

    fn evaluate(&self, facts: &Facts<'_>) -> Verdict {
        let deny = if self.hide { Verdict::Hidden } else { Verdict::TenantForbidden };
        let Some(tenant) = facts.principal.tenant() else { return deny };
        let matches = match &self.source {
            // The path the client sent, also under an axum `nest` (see `original_uri`).
            TenantSource::PathSegment(index) => {
                crate::observe::original_uri(facts.extensions, facts.uri)
                    .path()
                    .trim_start_matches('/')
                    .split('/')
                    .nth(*index)
                    .is_some_and(|segment| percent_decoded_eq(segment, tenant))
            }
            TenantSource::Header(name) => {
                let mut values = facts.headers.get_all(name).iter();
                match (values.next(), values.next()) {
                    (Some(value), None) => value.as_bytes() == tenant.as_bytes(),
                    _ => false,
                }
            }
        };
        if matches {
            Verdict::Allow
        } else {
            deny
        }
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = if self.hide { "not_found" } else { "forbidden" };
        match &self.source {
            TenantSource::PathSegment(index) => write!(f, "tenant(path[{index}], {mode})"),
            TenantSource::Header(name) => write!(f, "tenant(header {name}, {mode})"),
        }
    }
}

/// Whether `raw`, percent-decoded, equals `expected`; without allocating.
fn percent_decoded_eq(raw: &str, expected: &str) -> bool {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let raw = raw.as_bytes();
    let mut expected = expected.bytes();
    let mut i = 0;
    while i < raw.len() {
        let byte = if raw[i] == b'%' {
            let (Some(hi), Some(lo)) =
                (raw.get(i + 1).copied().and_then(hex), raw.get(i + 2).copied().and_then(hex))
            else {
                return false;
            };
            i += 3;
            hi << 4 | lo
        } else {
            i += 1;
            raw[i - 1]
        };
        if expected.next() != Some(byte) {
            return false;
        }
    }
    expected.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert!(percent_decoded_eq("acme", "acme"));
        assert!(percent_decoded_eq("%61cme", "acme"));
        assert!(percent_decoded_eq("a%20b", "a b"));
        assert!(!percent_decoded_eq("acm", "acme"));
        assert!(!percent_decoded_eq("acmee", "acme"));
        assert!(!percent_decoded_eq("acm%6", "acme"));
        assert!(!percent_decoded_eq("acm%zz", "acmzz"));
        assert!(!percent_decoded_eq("", "acme"));
    }

    #[test]
    fn scope_tokens() {
        assert!(is_scope_token("orders:read"));
        assert!(!is_scope_token(""));
        assert!(!is_scope_token("a b"));
        assert!(!is_scope_token("a\"b"));
        assert!(!is_scope_token("a\\b"));
        assert!(!is_scope_token("é"));
    }

    #[test]
    fn display_nests_with_parentheses() {
        let r = Requirement::all(["a", "b"])
            .or(Requirement::role("admin").and(Requirement::max_age(Duration::from_secs(60))));
        assert_eq!(r.to_string(), "all(a, b) or (role(admin) and max_age(60s))");
        let flat =
            Requirement::scope("a").and(Requirement::scope("b")).and(Requirement::scope("c"));
        assert_eq!(flat.to_string(), "all(a) and all(b) and all(c)");
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;
    use crate::clock::FakeClock;

    const NAMES: [&str; 4] = ["a", "b", "c", "d"];

    /// Scope-and-role trees over a small alphabet, with non-empty lists.
    fn tree(with_roles: bool) -> impl Strategy<Value = Requirement> {
        let names = proptest::sample::subsequence(NAMES.to_vec(), 1..=3);
        let leaf = prop_oneof![
            names.clone().prop_map(Requirement::all),
            names.clone().prop_map(Requirement::any),
            names.prop_map(move |n| if with_roles {
                Requirement::any_role(n)
            } else {
                Requirement::all(n)
            }),
        ];
        leaf.prop_recursive(4, 24, 3, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(a, b)| a.and(b)),
                (inner.clone(), inner).prop_map(|(a, b)| a.or(b)),
            ]
        })
    }

    /// The plain boolean meaning of a tree.
    fn holds(node: &Node, principal: &Principal) -> bool {
        match node {
            Node::Scopes { all: true, names } => names.iter().all(|s| principal.has_scope(s)),
            Node::Scopes { all: false, names } => names.iter().any(|s| principal.has_scope(s)),
            Node::Roles { all: true, names } => names.iter().all(|r| principal.has_role(r)),
            Node::Roles { all: false, names } => names.iter().any(|r| principal.has_role(r)),
            Node::And(children) => children.iter().all(|c| holds(c, principal)),
            Node::Or(children) => children.iter().any(|c| holds(c, principal)),
            _ => unreachable!("not generated"),
        }
    }

    fn check(requirement: &Requirement, principal: &Principal) -> Verdict {
        let request = http::Request::new(());
        let facts = Facts {
            principal,
            clock: &FakeClock::new(),
            uri: request.uri(),
            headers: request.headers(),
            extensions: request.extensions(),
        };
        requirement.evaluate(&facts).0
    }

    proptest! {
        #[test]
        fn allows_exactly_when_the_formula_holds(
            requirement in tree(true),
            scopes in proptest::sample::subsequence(NAMES.to_vec(), 0..=4),
            roles in proptest::sample::subsequence(NAMES.to_vec(), 0..=4),
        ) {
            let principal = Principal::builder("p").scopes(scopes).roles(roles).build();
            let verdict = check(&requirement, &principal);
            prop_assert_eq!(verdict == Verdict::Allow, holds(&requirement.node, &principal));
            prop_assert!(matches!(verdict, Verdict::Allow | Verdict::Forbidden));
        }

        /// The scopes named in the challenge are enough: granting them (on top of what the
        /// caller has) meets a scopes-only requirement.
        #[test]
        fn challenge_scopes_are_sufficient(
            requirement in tree(false),
            scopes in proptest::sample::subsequence(NAMES.to_vec(), 0..=4),
        ) {
            let mut granted: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
            granted.extend(requirement.node.hints().scopes.iter().map(|s| s.to_string()));
            let principal = Principal::builder("p").scopes(granted).build();
            prop_assert_eq!(check(&requirement, &principal), Verdict::Allow, "{}", requirement);
        }
    }
}
