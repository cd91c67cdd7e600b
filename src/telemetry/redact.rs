//! Redaction helpers: safe forms of client-controlled and secret values for logs.

use std::{fmt, sync::OnceLock};

use sha2::{Digest, Sha256};

/// A client-controlled string made safe for a log line: CR, LF, other control characters,
/// quotes and backslashes are escaped, and the value is cut at 256 characters (marked with `…`).
/// A forged `\n{"level":"INFO",...}` therefore stays on its own line, visibly escaped.
///
/// ```
/// use tower_shield::telemetry::Escaped;
///
/// let forged = "alice\r\n2026-01-01 INFO admin logged in";
/// assert_eq!(Escaped(forged).to_string(), r"alice\r\n2026-01-01 INFO admin logged in");
/// assert_eq!(Escaped("tab\there \u{1b}[31m").to_string(), r"tab\there \u{1b}[31m");
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Escaped<'a>(pub &'a str);

impl Escaped<'_> {
    /// The longest value written; the rest is replaced by `…`.
    pub const MAX_CHARS: usize = 256;
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.0.chars().enumerate() {
            if i == Self::MAX_CHARS {
                return f.write_str("…");
            }
            match c {
                '\r' => f.write_str("\\r")?,
                '\n' => f.write_str("\\n")?,
                '\t' => f.write_str("\\t")?,
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                c if c.is_control() || is_bidi_control(c) => {
                    write!(f, "\\u{{{:x}}}", u32::from(c))?
                }
                c => fmt::Write::write_char(f, c)?,
            }
        }
        Ok(())
    }
}

/// Unicode bidirectional overrides, which can make a log line read differently than it is.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
}

/// A short keyed fingerprint of a secret (a token, an API key, a password attempt), for
/// correlating log lines without logging the secret.
///
/// It is the first 12 hex digits of SHA-256 over a random per-process key and the value: the
/// same value gives the same fingerprint within one process, and the fingerprint cannot be
/// reversed or checked against a guess by someone who only reads the logs.
///
/// ```
/// use tower_shield::telemetry::fingerprint;
///
/// let a = fingerprint(b"eyJhbGciOiJIUzI1NiJ9.secret.token");
/// assert_eq!(a.len(), 12);
/// assert_eq!(a, fingerprint(b"eyJhbGciOiJIUzI1NiJ9.secret.token"));
/// assert_ne!(a, fingerprint(b"another token"));
/// ```
pub fn fingerprint(secret: &[u8]) -> String {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("the operating system's random source is available");
        key
    });
    let digest = Sha256::new().chain_update(key).chain_update(secret).finalize();
    let mut out = String::with_capacity(12);
    for byte in &digest[..6] {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut() {
        let long = "a".repeat(1000);
        let escaped = Escaped(&long).to_string();
        assert_eq!(escaped.chars().count(), Escaped::MAX_CHARS + 1);
        assert!(escaped.ends_with('…'));
    }

    #[test]
    fn bidi_overrides_are_escaped() {
        assert_eq!(Escaped("a\u{202e}b").to_string(), r"a\u{202e}b");
    }

    #[test]
    fn quotes_and_backslashes_are_escaped() {
        assert_eq!(Escaped(r#"a"b\c"#).to_string(), r#"a\"b\\c"#);
    }

    #[test]
    fn fingerprint_never_contains_the_secret() {
        let secret = b"sk_live_abc_0123456789";
        let print = fingerprint(secret);
        assert!(print.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!print.contains("sk_live"));
    }
}
