//! Parsing an untrusted JSON body: UTF-8, nesting depth and integer range checked by an
//! iterative pre-scan, then a parse that rejects duplicate object keys.

use std::{
    cell::{Cell, RefCell},
    fmt,
};

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::error::Detail;

/// The largest nesting depth a layer accepts: the deepest serde_json parses (its recursion
/// limit of 128 refuses the 128th nested array or object).
pub(crate) const MAX_DEPTH_LIMIT: usize = 127;

/// A property name in a `field` is cut to this many bytes (JSON-pointer escaped).
const MAX_SEGMENT: usize = 64;
/// A whole `field` is cut after the last segment that fits in this many bytes.
const MAX_POINTER: usize = 256;

/// How a body is parsed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct JsonRules {
    pub(crate) max_depth: usize,
    pub(crate) lossy_integers: bool,
}

impl Default for JsonRules {
    fn default() -> Self {
        Self { max_depth: 64, lossy_integers: false }
    }
}

/// Why a body is not acceptable JSON: the rule (for logs) and the detail (for the client).
#[derive(Debug)]
pub(crate) struct ShapeError {
    pub(crate) rule: &'static str,
    pub(crate) detail: Detail,
}

impl ShapeError {
    fn new(rule: &'static str, detail: Detail) -> Self {
        Self { rule, detail }
    }
}

/// Parses `bytes` as one JSON document under `rules`.
pub(crate) fn parse(bytes: &[u8], rules: JsonRules) -> Result<Value, ShapeError> {
    if bytes.is_empty() {
        return Err(ShapeError::new(
            "empty_body",
            Detail::new("", "required").with_message("a JSON body is required"),
        ));
    }
    if let Err(e) = std::str::from_utf8(bytes) {
        let (line, column) = line_column(bytes, e.valid_up_to());
        return Err(ShapeError::new(
            "invalid_utf8",
            Detail::new("", "invalid_utf8")
                .with_message(format!("invalid UTF-8 at line {line} column {column}")),
        ));
    }
    let big_integer = prescan(bytes, rules)?;

    let trace = Trace { big_integer, ..Trace::default() };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = ValueSeed { trace: &trace }.deserialize(&mut de).and_then(|value| {
        de.end()?;
        Ok(value)
    });
    let pointer = || {
        let mut pointer = Pointer::default();
        for segment in trace.path.borrow().iter().rev() {
            pointer.push_name(segment);
        }
        pointer.finish()
    };
    match parsed {
        Ok(value) => match big_integer {
            // Unreachable for a document serde_json accepts (the pre-scan and the parser see
            // the same number literals); refused anyway, at the root.
            Some(big) => Err(big.error(String::new())),
            None => Ok(value),
        },
        Err(_) if trace.duplicate.get() => Err(ShapeError::new(
            "duplicate_key",
            Detail::new(pointer(), "duplicate_key").with_message("duplicate object key"),
        )),
        Err(_) if trace.big_integer_hit.get() => {
            Err(big_integer.expect("hit only when flagged").error(pointer()))
        }
        Err(error) => {
            let mut shape = syntax_error(&error);
            if shape.rule == "number_out_of_range" {
                shape.detail = Detail::new(pointer(), "number_out_of_range")
                    .with_message(shape.detail.message().unwrap_or_default().to_owned());
            }
            Err(shape)
        }
    }
}

/// An integer literal the pre-scan found outside the 64-bit range: which number literal of the
/// document it is (0-based, in document order) and where.
#[derive(Clone, Copy, Debug)]
struct BigInteger {
    ordinal: usize,
    line: usize,
    column: usize,
}

impl BigInteger {
    fn error(self, field: String) -> ShapeError {
        let Self { line, column, .. } = self;
        ShapeError::new(
            "number_out_of_range",
            Detail::new(field, "number_out_of_range").with_message(format!(
                "integer out of the 64-bit range at line {line} column {column}"
            )),
        )
    }
}

/// What the parse saw, shared by the nested visitors: the path of a failure (innermost first,
/// collected as the error unwinds), whether it is a duplicate key, and the number literals
/// visited so far (to stop at the one the pre-scan flagged).
#[derive(Default)]
struct Trace {
    path: RefCell<Vec<String>>,
    duplicate: Cell<bool>,
    numbers: Cell<usize>,
    big_integer: Option<BigInteger>,
    big_integer_hit: Cell<bool>,
}

impl Trace {
    /// Counts one number literal; an error when it is the flagged one.
    fn number<E: de::Error>(&self) -> Result<(), E> {
        let ordinal = self.numbers.get();
        self.numbers.set(ordinal + 1);
        if self.big_integer.is_some_and(|big| big.ordinal == ordinal) {
            self.big_integer_hit.set(true);
            return Err(E::custom("number out of range"));
        }
        Ok(())
    }
}

/// The serde_json error as a detail. Only serde_json's fixed descriptions are used (they never
/// quote the input); anything else becomes a generic message.
fn syntax_error(error: &serde_json::Error) -> ShapeError {
    const KNOWN: &[&str] = &[
        "EOF while parsing a list",
        "EOF while parsing an object",
        "EOF while parsing a string",
        "EOF while parsing a value",
        "expected `:`",
        "expected `,` or `]`",
        "expected `,` or `}`",
        "expected ident",
        "expected value",
        "expected `\"`",
        "invalid escape",
        "invalid number",
        "number out of range",
        "invalid unicode code point",
        "control character (\\u0000-\\u001F) found while parsing a string",
        "key must be a string",
        "lone leading surrogate in hex escape",
        "trailing comma",
        "trailing characters",
        "unexpected end of hex escape",
        "recursion limit exceeded",
    ];
    let text = error.to_string();
    let description = text.split(" at line ").next().unwrap_or("");
    let description = KNOWN.iter().find(|k| **k == description).copied().unwrap_or("invalid JSON");
    let (line, column) = (error.line(), error.column());
    let message = format!("{description} at line {line} column {column}");
    if description == "number out of range" {
        ShapeError::new(
            "number_out_of_range",
            Detail::new("", "number_out_of_range").with_message(message),
        )
    } else {
        ShapeError::new("syntax", Detail::new("", "syntax").with_message(message))
    }
}

/// One pass over the bytes, without recursion: nesting depth (an error), and the first integer
/// literal that does not fit in an `i64` or `u64` (which serde_json would silently turn into a
/// lossy `f64`; returned, so that the parse refuses it with its path). Malformed documents are
/// left for the parser to report.
fn prescan(bytes: &[u8], rules: JsonRules) -> Result<Option<BigInteger>, ShapeError> {
    let mut depth = 0usize;
    let mut numbers = 0usize;
    let mut big_integer = None;
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > rules.max_depth {
                    let (line, column) = line_column(bytes, i);
                    return Err(ShapeError::new(
                        "depth",
                        Detail::new("", "depth").with_message(format!(
                            "nesting deeper than {} at line {line} column {column}",
                            rules.max_depth
                        )),
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'-' | b'0'..=b'9' => {
                let end = bytes[i..]
                    .iter()
                    .position(|c| !matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                    .map_or(bytes.len(), |n| i + n);
                if big_integer.is_none()
                    && !rules.lossy_integers
                    && integer_out_of_range(&bytes[i..end])
                {
                    let (line, column) = line_column(bytes, i);
                    big_integer = Some(BigInteger { ordinal: numbers, line, column });
                }
                numbers += 1;
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(big_integer)
}

/// Whether `token` is an integer literal (no fraction or exponent) outside
/// `i64::MIN..=u64::MAX`. Malformed tokens are not flagged here.
fn integer_out_of_range(token: &[u8]) -> bool {
    let (negative, digits) = match token.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, token),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let significant = &digits[digits.iter().position(|d| *d != b'0').unwrap_or(digits.len())..];
    if significant.len() > 20 {
        return true;
    }
    let value = significant.iter().fold(0u128, |n, d| n * 10 + u128::from(d - b'0'));
    if negative {
        value > u128::from(i64::MIN.unsigned_abs())
    } else {
        value > u128::from(u64::MAX)
    }
}

/// 1-based line and column (in bytes) of `offset`, as serde_json reports them.
fn line_column(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = offset - before.iter().rposition(|b| *b == b'\n').map_or(0, |n| n + 1) + 1;
    (line, column)
}

/// Builds a `serde_json::Value`, failing on a repeated object key and on the integer the
/// pre-scan flagged. Recursion is safe: the pre-scan has bounded the depth. On any error,
/// `trace` collects the path (innermost first) as the error unwinds.
struct ValueSeed<'a> {
    trace: &'a Trace,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(ValueVisitor { trace: self.trace })
    }
}

struct ValueVisitor<'a> {
    trace: &'a Trace,
}

impl ValueVisitor<'_> {
    fn unwind(&self, segment: String) {
        self.trace.path.borrow_mut().push(segment);
    }
}

impl<'de> Visitor<'de> for ValueVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.trace.number()?;
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.trace.number()?;
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.trace.number()?;
        Number::from_f64(v).map(Value::Number).ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            match seq.next_element_seed(ValueSeed { trace: self.trace }) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => return Ok(Value::Array(items)),
                Err(e) => {
                    self.unwind(items.len().to_string());
                    return Err(e);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                self.trace.duplicate.set(true);
                self.unwind(key);
                return Err(de::Error::custom("duplicate key"));
            }
            match map.next_value_seed(ValueSeed { trace: self.trace }) {
                Ok(value) => {
                    object.insert(key, value);
                }
                Err(e) => {
                    self.unwind(key);
                    return Err(e);
                }
            }
        }
        Ok(Value::Object(object))
    }
}

/// A JSON pointer for a `field`, built from client-controlled names: each segment is escaped
/// (`~0`, `~1`) and cut to 64 bytes (ending in `...`), and the whole pointer stops at the last
/// segment that fits in 256 bytes (ending in `/...`).
#[derive(Default)]
pub(crate) struct Pointer {
    buf: String,
    full: bool,
}

impl Pointer {
    /// A pointer starting with `prefix`, an already-escaped pointer (e.g. a jsonschema
    /// instance location), re-capped segment by segment.
    pub(crate) fn from_escaped(prefix: &str) -> Self {
        let mut pointer = Self::default();
        for segment in prefix.split('/').skip(1) {
            pointer.push_segment(segment.to_owned());
        }
        pointer
    }

    /// Appends an unescaped name (a property name or an index).
    pub(crate) fn push_name(&mut self, name: &str) {
        let mut escaped = String::with_capacity(name.len().min(MAX_SEGMENT + 3));
        for c in name.chars() {
            match c {
                '~' => escaped.push_str("~0"),
                '/' => escaped.push_str("~1"),
                c => escaped.push(c),
            }
            if escaped.len() > MAX_SEGMENT {
                break;
            }
        }
        self.push_segment(escaped);
    }

    fn push_segment(&mut self, mut segment: String) {
        if self.full {
            return;
        }
        if segment.len() > MAX_SEGMENT {
            let mut cut = MAX_SEGMENT;
            while !segment.is_char_boundary(cut) {
                cut -= 1;
            }
            // Never leave half an escape (`~` without its digit).
            if segment[..cut].ends_with('~') {
                cut -= 1;
            }
            segment.truncate(cut);
            segment.push_str("...");
        }
        if self.buf.len() + 1 + segment.len() > MAX_POINTER {
            self.buf.push_str("/...");
            self.full = true;
            return;
        }
        self.buf.push('/');
        self.buf.push_str(&segment);
    }

    pub(crate) fn finish(self) -> String {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> JsonRules {
        JsonRules::default()
    }

    fn issue(body: &[u8]) -> (String, String, String) {
        let e = parse(body, rules()).unwrap_err();
        (
            e.detail.field().to_owned(),
            e.detail.issue().to_owned(),
            e.detail.message().unwrap_or("").to_owned(),
        )
    }

    #[test]
    fn parses_valid_documents() {
        let value = parse(br#"{"a":[1,-2,3.5,"x\"]",{"b":null}],"c":true}"#, rules()).unwrap();
        assert_eq!(value["a"][3], "x\"]");
        assert_eq!(value["a"][4]["b"], Value::Null);
        assert_eq!(parse(b" 42 ", rules()).unwrap(), 42);
    }

    #[test]
    fn depth_is_limited_without_recursion() {
        let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(parse(ok.as_bytes(), rules()).is_ok());
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert_eq!(issue(deep.as_bytes()).1, "depth");
        let bomb = "[".repeat(100_000);
        let (field, kind, message) = issue(bomb.as_bytes());
        assert_eq!((field.as_str(), kind.as_str()), ("", "depth"));
        assert_eq!(message, "nesting deeper than 64 at line 1 column 65");
        // Brackets inside strings, escaped quotes included, do not count.
        let quoted = format!(r#"{{"a":"{}\"{}"}}"#, "[".repeat(200), "{".repeat(200));
        assert!(parse(quoted.as_bytes(), rules()).is_ok());
    }

    #[test]
    fn the_largest_depth_limit_is_one_serde_json_parses() {
        // Regression (found writing the `json` fuzz target): with the limit at 128, a document
        // nested 128 deep passed the pre-scan and failed in serde_json as a syntax error.
        let rules = JsonRules { max_depth: MAX_DEPTH_LIMIT, ..rules() };
        let at = |d: usize| format!("{}{}", "[".repeat(d), "]".repeat(d)).into_bytes();
        assert!(parse(&at(MAX_DEPTH_LIMIT), rules).is_ok());
        assert_eq!(parse(&at(MAX_DEPTH_LIMIT + 1), rules).unwrap_err().rule, "depth");
    }

    #[test]
    fn duplicate_keys_are_rejected_with_their_pointer() {
        assert_eq!(
            issue(br#"{"quantity":1,"quantity":100000}"#),
            ("/quantity".into(), "duplicate_key".into(), "duplicate object key".into())
        );
        let (field, kind, _) = issue(br#"{"a":[{"x":1},{"b/c~":{"k":1,"k":2}}]}"#);
        assert_eq!((field.as_str(), kind.as_str()), ("/a/1/b~1c~0/k", "duplicate_key"));
        // The same key in sibling objects is fine.
        assert!(parse(br#"[{"k":1},{"k":2}]"#, rules()).is_ok());
    }

    #[test]
    fn numbers_out_of_range() {
        let (_, kind, message) = issue(b"{\"n\":1e400}");
        assert_eq!(kind, "number_out_of_range");
        assert_eq!(message, "number out of range at line 1 column 10");
        // 2^64 does not fit in a u64: refused rather than rounded to a float.
        assert_eq!(issue(b"[18446744073709551616]").1, "number_out_of_range");
        assert_eq!(issue(b"-9223372036854775809").1, "number_out_of_range");
        assert_eq!(issue(b"123456789012345678901234567890").1, "number_out_of_range");
        assert_eq!(parse(b"18446744073709551615", rules()).unwrap(), u64::MAX);
        assert_eq!(parse(b"-9223372036854775808", rules()).unwrap(), i64::MIN);
        assert!(parse(b"1.8446744073709552e19", rules()).is_ok());
        let lossy = JsonRules { lossy_integers: true, ..rules() };
        assert_eq!(parse(b"18446744073709551616", lossy).unwrap(), 18446744073709551616.0);
    }

    #[test]
    fn numbers_out_of_range_name_their_field() {
        // Regression: the detail named the document root instead of the field.
        let (field, kind, message) = issue(br#"{"quantity": 1e400}"#);
        assert_eq!((field.as_str(), kind.as_str()), ("/quantity", "number_out_of_range"));
        assert_eq!(message, "number out of range at line 1 column 18");
        let (field, kind, message) = issue(br#"{"a":[1,{"b~/":18446744073709551616}]}"#);
        assert_eq!((field.as_str(), kind.as_str()), ("/a/1/b~0~1", "number_out_of_range"));
        assert_eq!(message, "integer out of the 64-bit range at line 1 column 16");
        assert_eq!(issue(b"[0, -1e999]").0, "/1");
        assert_eq!(issue(b"123456789012345678901234567890").0, "");
        // Only the first out-of-range integer is reported, with the numbers before it counted.
        let (field, ..) =
            issue(br#"{"s":"1e999 99999999999999999999","n":[1.5,-3,99999999999999999999,1e999]}"#);
        assert_eq!(field, "/n/2");
        // A syntax error before the flagged integer is reported as one.
        assert_eq!(issue(b"[1 2, 99999999999999999999]").1, "syntax");
        // The depth limit still holds after an out-of-range integer.
        let deep = format!("[99999999999999999999,{}{}]", "[".repeat(70), "]".repeat(70));
        assert_eq!(issue(deep.as_bytes()).1, "depth");
    }

    #[test]
    fn invalid_utf8_and_syntax() {
        let (_, kind, message) = issue(b"{\"a\":\"\xff\"}");
        assert_eq!(kind, "invalid_utf8");
        assert_eq!(message, "invalid UTF-8 at line 1 column 7");
        let (field, kind, message) = issue(b"{\n  \"a\": SECRET-MARKER\n}");
        assert_eq!((field.as_str(), kind.as_str()), ("", "syntax"));
        assert_eq!(message, "expected value at line 2 column 8");
        assert!(!message.contains("SECRET"));
        assert_eq!(issue(b"{} x").2, "trailing characters at line 1 column 4");
        assert_eq!(issue(b"").1, "required");
    }

    #[test]
    fn pointers_are_escaped_and_capped() {
        let mut p = Pointer::default();
        p.push_name("a/b");
        p.push_name("~");
        assert_eq!(p.finish(), "/a~1b/~0");
        let mut p = Pointer::default();
        p.push_name(&"x".repeat(1000));
        let s = p.finish();
        assert_eq!(s, format!("/{}...", "x".repeat(64)));
        let mut p = Pointer::default();
        for _ in 0..100 {
            p.push_name(&"y".repeat(60));
        }
        let s = p.finish();
        assert!(s.len() <= MAX_POINTER + 4 && s.ends_with("/..."), "{s}");
        assert_eq!(Pointer::from_escaped("/a~1b/0").finish(), "/a~1b/0");
    }
}
