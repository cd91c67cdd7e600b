//! Media type matching for `Content-Type`.

use std::sync::Arc;

use http::{header, HeaderMap};

use crate::error::ConfigError;

/// The media types a layer accepts.
#[derive(Clone, Debug)]
pub(crate) struct MediaTypes {
    /// Lowercase `type/subtype` essences.
    pub(crate) allowed: Arc<[Box<str>]>,
    /// Also accept any `application/<x>+json`.
    pub(crate) json_suffix: bool,
}

impl Default for MediaTypes {
    fn default() -> Self {
        Self { allowed: Arc::from([Box::from("application/json")]), json_suffix: false }
    }
}

impl MediaTypes {
    pub(crate) fn add(&mut self, essence: &str) -> Result<(), ConfigError> {
        let essence = essence.trim().to_ascii_lowercase();
        let valid = essence.split_once('/').is_some_and(|(t, s)| is_token(t) && is_token(s));
        if !valid {
            return Err(ConfigError::new(format!(
                "media type {essence:?} must be `type/subtype`, without parameters"
            )));
        }
        if !self.allowed.iter().any(|a| **a == *essence) {
            let mut allowed = self.allowed.to_vec();
            allowed.push(essence.into_boxed_str());
            self.allowed = allowed.into();
        }
        Ok(())
    }

    /// Whether `headers` name an accepted media type. Parameters are allowed, but a
    /// `charset` other than UTF-8 is refused (the body is parsed as UTF-8).
    pub(crate) fn accepts(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(header::CONTENT_TYPE).iter();
        let (Some(value), None) = (values.next(), values.next()) else { return false };
        let Ok(value) = value.to_str() else { return false };
        let mut parts = value.split(';');
        let essence = parts.next().unwrap_or("").trim();
        let type_ok = match essence.split_once('/') {
            Some((t, s)) if is_token(t) && is_token(s) => {
                self.allowed.iter().any(|a| a.eq_ignore_ascii_case(essence))
                    || (self.json_suffix
                        && t.eq_ignore_ascii_case("application")
                        && s.len() > 5
                        && s[s.len() - 5..].eq_ignore_ascii_case("+json"))
            }
            _ => false,
        };
        type_ok
            && parts.all(|param| {
                let Some((name, value)) = param.split_once('=') else {
                    return param.trim().is_empty();
                };
                if !name.trim().eq_ignore_ascii_case("charset") {
                    return true;
                }
                let value = value.trim();
                let value =
                    value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
                value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8")
            })
    }
}

/// An RFC 9110 token.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn accepts(types: &MediaTypes, ct: &str) -> bool {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        types.accepts(&headers)
    }

    #[test]
    fn json_with_parameters() {
        let types = MediaTypes::default();
        assert!(accepts(&types, "application/json"));
        assert!(accepts(&types, "Application/JSON"));
        assert!(accepts(&types, "application/json; charset=utf-8"));
        assert!(accepts(&types, "application/json;charset=\"UTF-8\""));
        assert!(accepts(&types, "application/json; foo=bar"));
        assert!(!accepts(&types, "application/json; charset=iso-8859-1"));
        assert!(!accepts(&types, "application/json; charset=utf-16"));
        assert!(!accepts(&types, "text/plain"));
        assert!(!accepts(&types, "application/jsonx"));
        assert!(!accepts(&types, "application/merge-patch+json"));
        assert!(!accepts(&types, ""));
        assert!(!types.accepts(&HeaderMap::new()));
        let mut two = HeaderMap::new();
        two.append(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        two.append(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(!types.accepts(&two));
    }

    #[test]
    fn suffixes_and_added_types() {
        let mut types = MediaTypes { json_suffix: true, ..MediaTypes::default() };
        assert!(accepts(&types, "application/merge-patch+json"));
        assert!(accepts(&types, "application/vnd.api+JSON; charset=utf-8"));
        assert!(!accepts(&types, "application/+json"));
        assert!(!accepts(&types, "text/x+json"));
        types.add("Text/X-Json").unwrap();
        assert!(accepts(&types, "text/x-json"));
        assert!(types.add("application/json; charset=utf-8").is_err());
        assert!(types.add("json").is_err());
    }
}
