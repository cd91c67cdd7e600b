//! Typed validation with serde: JSON values, query strings and selected headers, with the
//! failing field located by `serde_path_to_error` and messages that never quote the input.

use std::{fmt, sync::Arc};

use http::{HeaderMap, HeaderName};
use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

use super::json::Pointer;
use crate::error::Detail;

/// Semantic rules a DTO checks after it deserialized: cross-field constraints, ranges that
/// depend on each other, business formats.
///
/// [`Validated<T>`](crate::validate::Validated) calls [`Check::check`] after serde succeeds,
/// and rejects with the returned details. The default accepts everything, so a DTO whose
/// serde attributes say it all needs only `impl Check for MyDto {}`.
///
/// ```
/// use tower_shield::{error::Detail, validate::Check};
///
/// #[derive(serde::Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct Range { from: u32, to: u32 }
///
/// impl Check for Range {
///     fn check(&self) -> Result<(), Vec<Detail>> {
///         if self.from > self.to {
///             // Say what is wrong, never echo the values.
///             return Err(vec![Detail::new("/from", "range").with_message("must not exceed /to")]);
///         }
///         Ok(())
///     }
/// }
///
/// assert!(Range { from: 2, to: 1 }.check().is_err());
/// ```
pub trait Check {
    /// The problems found, as [`Detail`]s whose `field` is a JSON pointer into the body.
    /// Messages must not contain the rejected values.
    ///
    /// # Errors
    ///
    /// The details of every rule that fails.
    fn check(&self) -> Result<(), Vec<Detail>> {
        Ok(())
    }
}

/// Where a typed value comes from, for the `field` of its details.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// The JSON body: `field` is a JSON pointer (`/items/0/quantity`).
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    Body,
    /// The query string: `field` is `query:<name>`.
    Query,
    /// A header: `field` is `header:<lowercase name>`.
    Header,
}

/// Turns a serde error (with its path) into one detail. serde messages quote the input
/// (`invalid type: string "…", expected u32`), so only their fixed parts are kept.
pub(crate) fn serde_detail(
    path: &serde_path_to_error::Path,
    message: &str,
    source: Source,
) -> Detail {
    let mut segments: Vec<String> = path
        .iter()
        .filter_map(|s| match s {
            Segment::Seq { index } => Some(index.to_string()),
            Segment::Map { key } => Some(key.clone()),
            Segment::Enum { .. } | Segment::Unknown => None,
        })
        .collect();
    let (issue, text) = if let Some(rest) = message.strip_prefix("unknown field `") {
        // serde's path stops at the struct; the unknown name is in the message. It is client
        // input: escaped and capped as a pointer segment, like a schema's unknown property.
        // serde_path_to_error's path usually ends with the key already.
        let known = segments.last().is_some_and(|last| {
            rest.strip_prefix(last.as_str()).is_some_and(|tail| tail.starts_with('`'))
        });
        if !known {
            let end = rest
                .rfind("`, expected ")
                .or_else(|| rest.rfind("`, there are no fields"))
                .unwrap_or(rest.len());
            segments.push(rest[..end].to_owned());
        }
        ("unknown_field", "unknown field".to_owned())
    } else if let Some(rest) = message.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or("");
        segments.push(name.to_owned());
        ("required", "is required".to_owned())
    } else if message.starts_with("invalid type") {
        ("type", expected(message).unwrap_or_else(|| "has the wrong type".to_owned()))
    } else if message.starts_with("invalid length") {
        ("length", expected(message).unwrap_or_else(|| "has the wrong length".to_owned()))
    } else if message.starts_with("invalid value") || message.starts_with("unknown variant") {
        ("invalid", expected(message).unwrap_or_else(|| "has an invalid value".to_owned()))
    } else {
        ("invalid", "is invalid".to_owned())
    };
    Detail::new(field(source, &segments), issue).with_message(text)
}

/// serde's `..., expected X` tail. The expectation comes from the type, not the input; a
/// message may hold the input before it, so only the text after the last marker is used.
/// Rust's names are said in JSON's terms (`u32` is a non-negative integer, `struct Order` an
/// object), so a client reads what to send and the server's type names stay inside.
fn expected(message: &str) -> Option<String> {
    let tail = message.rsplit_once(", expected ")?.1;
    (tail.len() <= 80 && !tail.contains('"')).then(|| format!("expected {}", in_json_terms(tail)))
}

fn in_json_terms(expectation: &str) -> &str {
    const UNSIGNED: [&str; 6] = ["u8", "u16", "u32", "u64", "u128", "usize"];
    const SIGNED: [&str; 6] = ["i8", "i16", "i32", "i64", "i128", "isize"];
    let nonzero = expectation.strip_prefix("a nonzero ");
    match expectation {
        e if UNSIGNED.contains(&e) => "a non-negative integer",
        e if SIGNED.contains(&e) => "an integer",
        _ if nonzero.is_some_and(|n| UNSIGNED.contains(&n)) => "a positive integer",
        _ if nonzero.is_some_and(|n| SIGNED.contains(&n)) => "a non-zero integer",
        "f32" | "f64" => "a number",
        "a borrowed string" => "a string",
        "a character" => "a one-character string",
        "a sequence" => "an array",
        "a map" => "an object",
        // serde_json's, for an enum
        "string or map" => "a string or an object",
        "unit" => "null",
        e if e.starts_with("struct ") => "an object",
        e if e.starts_with("enum ") => "one of the allowed values",
        e if e.starts_with("a tuple of size ") => "an array",
        other => other,
    }
}

fn field(source: Source, segments: &[String]) -> String {
    match source {
        Source::Body => {
            let mut pointer = Pointer::default();
            for segment in segments {
                pointer.push_name(segment);
            }
            pointer.finish()
        }
        Source::Query | Source::Header => {
            let prefix = if source == Source::Query { "query:" } else { "header:" };
            let mut name = segments.first().map_or("", String::as_str).to_owned();
            if name.len() > 64 {
                let mut cut = 64;
                while !name.is_char_boundary(cut) {
                    cut -= 1;
                }
                name.truncate(cut);
                name.push_str("...");
            }
            format!("{prefix}{name}")
        }
    }
}

/// Checks a query string or a set of headers against a typed struct.
#[derive(Clone)]
pub(crate) struct TypedCheck {
    check: Arc<dyn Fn(&[u8]) -> Option<Detail> + Send + Sync>,
}

impl TypedCheck {
    /// Deserializes a `application/x-www-form-urlencoded` string (a query string, or the
    /// selected headers encoded as one) into `T`, and runs `T`'s [`Check`].
    pub(crate) fn new<T: DeserializeOwned + Check + 'static>(source: Source) -> Self {
        Self {
            check: Arc::new(move |encoded: &[u8]| {
                let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(encoded));
                match serde_path_to_error::deserialize::<_, T>(de) {
                    Ok(value) => value.check().err().and_then(|d| d.into_iter().next()),
                    Err(e) => Some(serde_detail(e.path(), &e.inner().to_string(), source)),
                }
            }),
        }
    }

    pub(crate) fn run(&self, encoded: &[u8]) -> Option<Detail> {
        (self.check)(encoded)
    }
}

impl fmt::Debug for TypedCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TypedCheck(<fn>)")
    }
}

/// The selected headers, form-encoded so they deserialize like a query string (numbers and
/// booleans parse from their text). `Err` names a header that is not visible ASCII or repeated.
pub(crate) fn encode_headers(headers: &HeaderMap, names: &[HeaderName]) -> Result<String, Detail> {
    let mut form = form_urlencoded::Serializer::new(String::new());
    for name in names {
        let mut values = headers.get_all(name).iter();
        let Some(value) = values.next() else { continue };
        if values.next().is_some() {
            return Err(Detail::new(format!("header:{name}"), "repeated")
                .with_message("must appear at most once"));
        }
        let Ok(value) = value.to_str() else {
            return Err(Detail::new(format!("header:{name}"), "invalid")
                .with_message("must be visible ASCII"));
        };
        form.append_pair(name.as_str(), value);
    }
    Ok(form.finish())
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Page {
        page: u32,
        #[serde(default)]
        sort: Option<String>,
    }

    impl Check for Page {
        fn check(&self) -> Result<(), Vec<Detail>> {
            if self.page == 0 {
                return Err(vec![
                    Detail::new("query:page", "minimum").with_message("must be at least 1")
                ]);
            }
            Ok(())
        }
    }

    fn run(query: &str) -> Option<(String, String, String)> {
        TypedCheck::new::<Page>(Source::Query).run(query.as_bytes()).map(|d| {
            (d.field().to_owned(), d.issue().to_owned(), d.message().unwrap_or("").to_owned())
        })
    }

    #[test]
    fn query_strings() {
        assert_eq!(run("page=2&sort=name"), None);
        assert_eq!(
            run("page=MARKER"),
            Some(("query:page".into(), "invalid".into(), "is invalid".into()))
        );
        assert_eq!(run("sort=a").unwrap().0, "query:page");
        assert_eq!(run("sort=a").unwrap().1, "required");
        let unknown = run("page=1&admin=MARKER").unwrap();
        assert_eq!((unknown.0.as_str(), unknown.1.as_str()), ("query:admin", "unknown_field"));
        assert_eq!(run("page=0").unwrap().1, "minimum");
        let long = run(&format!("page=1&{}=1", "n".repeat(500))).unwrap();
        assert_eq!(long.0, format!("query:{}...", "n".repeat(64)));
    }

    #[test]
    fn headers_encode() {
        let mut headers = HeaderMap::new();
        headers.insert("x-page", "3".parse().unwrap());
        headers.insert("x-other", "ignored".parse().unwrap());
        let names = [HeaderName::from_static("x-page"), HeaderName::from_static("x-absent")];
        assert_eq!(encode_headers(&headers, &names).unwrap(), "x-page=3");
        headers.append("x-page", "4".parse().unwrap());
        assert_eq!(encode_headers(&headers, &names).unwrap_err().issue(), "repeated");
    }

    #[test]
    fn serde_messages_never_carry_the_input() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Dto {
            quantity: u32,
            tags: Vec<String>,
        }
        let body = serde_json::json!({"quantity": "MARKER", "tags": ["a"]});
        let e = serde_path_to_error::deserialize::<_, Dto>(&body).unwrap_err();
        let d = serde_detail(e.path(), &e.inner().to_string(), Source::Body);
        assert_eq!(
            (d.field(), d.issue(), d.message()),
            ("/quantity", "type", Some("expected a non-negative integer"))
        );
        let body = serde_json::json!({"quantity": 1, "tags": [1]});
        let e = serde_path_to_error::deserialize::<_, Dto>(&body).unwrap_err();
        let d = serde_detail(e.path(), &e.inner().to_string(), Source::Body);
        assert_eq!((d.field(), d.issue()), ("/tags/0", "type"));
        let body = serde_json::json!({"quantity": 1, "tags": [], "role": "admin"});
        let e = serde_path_to_error::deserialize::<_, Dto>(&body).unwrap_err();
        let d = serde_detail(e.path(), &e.inner().to_string(), Source::Body);
        assert_eq!((d.field(), d.issue()), ("/role", "unknown_field"));
    }

    /// What serde expects is said in JSON's terms; no Rust type name reaches the client.
    #[test]
    fn expectations_are_said_in_json_terms() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Line {
            sku: String,
        }
        #[derive(Debug, Deserialize)]
        #[serde(rename_all = "lowercase")]
        enum Kind {
            Retail,
        }
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Dto {
            quantity: Option<u32>,
            delta: Option<i64>,
            count: Option<std::num::NonZeroU32>,
            price: Option<f64>,
            initial: Option<char>,
            lines: Option<Vec<Line>>,
            line: Option<Line>,
            tags: Option<std::collections::HashMap<String, String>>,
            kind: Option<Kind>,
            pair: Option<(u8, u8)>,
            flag: Option<bool>,
        }
        let cases = [
            (serde_json::json!({"quantity": 1.0}), "/quantity", "expected a non-negative integer"),
            (serde_json::json!({"quantity": -1}), "/quantity", "expected a non-negative integer"),
            (serde_json::json!({"delta": "x"}), "/delta", "expected an integer"),
            (serde_json::json!({"count": 0}), "/count", "expected a positive integer"),
            (serde_json::json!({"price": "x"}), "/price", "expected a number"),
            (serde_json::json!({"initial": 1}), "/initial", "expected a one-character string"),
            (serde_json::json!({"initial": "ab"}), "/initial", "expected a one-character string"),
            (serde_json::json!({"lines": {}}), "/lines", "expected an array"),
            (serde_json::json!({"line": 1}), "/line", "expected an object"),
            (serde_json::json!({"tags": []}), "/tags", "expected an object"),
            (serde_json::json!({"kind": 1}), "/kind", "expected a string or an object"),
            (serde_json::json!({"kind": "wholesale"}), "/kind", "expected `retail`"),
            (serde_json::json!({"pair": 1}), "/pair", "expected an array"),
            (serde_json::json!({"flag": 1}), "/flag", "expected a boolean"),
            (serde_json::json!([]), "", "expected an object"),
        ];
        for (body, field, message) in cases {
            let e = serde_path_to_error::deserialize::<_, Dto>(&body).unwrap_err();
            let d = serde_detail(e.path(), &e.inner().to_string(), Source::Body);
            assert_eq!((d.field(), d.message()), (field, Some(message)), "{body}");
        }
    }
}
