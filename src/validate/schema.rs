//! A compiled JSON Schema and its violations as [`Detail`]s that never quote the instance.

use std::{fmt, sync::Arc};

use jsonschema::{
    error::{TypeKind, ValidationErrorKind},
    Draft, ValidationError, Validator,
};
use serde_json::Value;

use super::json::Pointer;
use crate::error::{ConfigError, Detail};

/// A JSON Schema (draft 2020-12), compiled once.
#[derive(Clone)]
pub(crate) struct Schema {
    validator: Arc<Validator>,
}

impl Schema {
    /// Compiles `schema`. `format` is asserted; remote `$ref`s cannot be resolved (the crate
    /// is built without network or file access for jsonschema), so they are a config error.
    pub(crate) fn compile(schema: &Value) -> Result<Self, ConfigError> {
        jsonschema::options()
            .with_draft(Draft::Draft202012)
            .should_validate_formats(true)
            .build(schema)
            .map(|validator| Self { validator: Arc::new(validator) })
            .map_err(|e| ConfigError::new(format!("invalid JSON Schema: {e}")))
    }

    /// At most `cap` details for the violations of `instance`; empty when it is valid.
    pub(crate) fn violations(&self, instance: &Value, cap: usize) -> Vec<Detail> {
        let mut details = Vec::new();
        if self.validator.is_valid(instance) {
            return details;
        }
        for error in self.validator.iter_errors(instance) {
            push_details(&error, instance, &mut details, cap);
            if details.len() >= cap {
                break;
            }
        }
        details
    }
}

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Schema(..)")
    }
}

fn push_details(error: &ValidationError<'_>, root: &Value, details: &mut Vec<Detail>, cap: usize) {
    let path = error.instance_path().as_str();
    let kind = error.kind();
    let keyword = kind.keyword().to_owned();
    match kind {
        ValidationErrorKind::AdditionalProperties { unexpected }
        | ValidationErrorKind::UnevaluatedProperties { unexpected } => {
            for name in unexpected {
                if details.len() >= cap {
                    return;
                }
                let mut pointer = Pointer::from_escaped(path);
                pointer.push_name(name);
                details.push(
                    Detail::new(pointer.finish(), keyword.clone()).with_message("unknown property"),
                );
            }
        }
        // `additionalProperties: false` without `properties`: jsonschema reports the object
        // once, as a false schema; every property of the instance is then unknown.
        ValidationErrorKind::FalseSchema
            if error.schema_path().as_str().ends_with("/additionalProperties")
                && root.pointer(path).is_some_and(Value::is_object) =>
        {
            let names =
                root.pointer(path).and_then(Value::as_object).into_iter().flat_map(|o| o.keys());
            for name in names {
                if details.len() >= cap {
                    return;
                }
                let mut pointer = Pointer::from_escaped(path);
                pointer.push_name(name);
                details.push(
                    Detail::new(pointer.finish(), "additionalProperties")
                        .with_message("unknown property"),
                );
            }
        }
        ValidationErrorKind::Required { property } => {
            let mut pointer = Pointer::from_escaped(path);
            pointer.push_name(property.as_str().unwrap_or(""));
            details.push(Detail::new(pointer.finish(), keyword).with_message("is required"));
        }
        kind => {
            let field = Pointer::from_escaped(path).finish();
            details.push(Detail::new(field, keyword).with_message(message(kind)));
        }
    }
}

/// A short message built from the schema side of the error only.
fn message(kind: &ValidationErrorKind) -> String {
    use ValidationErrorKind as K;
    match kind {
        K::Type { kind: TypeKind::Single(t) } => format!("must be of type {t}"),
        K::Type { kind: TypeKind::Multiple(set) } => {
            let names: Vec<String> = set.iter().map(|t| t.to_string()).collect();
            format!("must be of type {}", names.join(" or "))
        }
        K::Maximum { limit } => format!("must be at most {limit}"),
        K::Minimum { limit } => format!("must be at least {limit}"),
        K::ExclusiveMaximum { limit } => format!("must be less than {limit}"),
        K::ExclusiveMinimum { limit } => format!("must be greater than {limit}"),
        K::MaxLength { limit } => {
            format!("must be at most {} long", count(*limit, "character", "characters"))
        }
        K::MinLength { limit } => {
            format!("must be at least {} long", count(*limit, "character", "characters"))
        }
        K::MaxItems { limit } => format!("must have at most {}", count(*limit, "item", "items")),
        K::MinItems { limit } => format!("must have at least {}", count(*limit, "item", "items")),
        K::MaxProperties { limit } => {
            format!("must have at most {}", count(*limit, "property", "properties"))
        }
        K::MinProperties { limit } => {
            format!("must have at least {}", count(*limit, "property", "properties"))
        }
        K::MultipleOf { multiple_of } => format!("must be a multiple of {multiple_of}"),
        K::Format { format } if format.len() <= 32 => format!("must be a valid {format}"),
        K::Enum { .. } => "must be one of the allowed values".to_owned(),
        K::Constant { .. } => "must equal the allowed value".to_owned(),
        K::Pattern { .. } => "must match the required pattern".to_owned(),
        K::UniqueItems => "must not contain duplicate items".to_owned(),
        K::Contains => "must contain a matching item".to_owned(),
        K::AnyOf { .. } | K::OneOfNotValid { .. } => {
            "must match one of the allowed shapes".to_owned()
        }
        K::OneOfMultipleValid { .. } => "must match exactly one of the allowed shapes".to_owned(),
        K::Not { .. } => "must not match the excluded shape".to_owned(),
        K::FalseSchema => "is not allowed".to_owned(),
        K::PropertyNames { .. } => "has a property name that is not allowed".to_owned(),
        K::AdditionalItems { .. } | K::UnevaluatedItems { .. } => {
            "has items that are not allowed".to_owned()
        }
        _ => "is invalid".to_owned(),
    }
}

/// `1 character`, `2 characters`.
fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn invalid_schema_is_a_config_error() {
        assert!(Schema::compile(&json!({"type": "no-such-type"})).is_err());
        assert!(Schema::compile(&json!({"$ref": "https://example.com/remote.json"})).is_err());
        assert!(Schema::compile(&json!({"type": "object"})).is_ok());
    }

    #[test]
    fn violations_name_pointer_and_keyword_never_the_value() {
        let schema = Schema::compile(&json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["item", "quantity"],
            "properties": {
                "item": {"type": "integer"},
                "quantity": {"type": "integer", "maximum": 1000},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}},
                "email": {"type": "string", "format": "email"},
                "kind": {"enum": ["a", "b"]}
            }
        }))
        .unwrap();
        let instance = json!({
            "quantity": 99999,
            "tags": ["ok", "MARKER-TOO-LONG"],
            "email": "MARKER-not-an-email",
            "kind": "MARKER-kind",
            "role/admin": "MARKER-role",
        });
        let details = schema.violations(&instance, 20);
        let pairs: Vec<(&str, &str)> = details.iter().map(|d| (d.field(), d.issue())).collect();
        for expected in [
            ("/item", "required"),
            ("/quantity", "maximum"),
            ("/tags/1", "maxLength"),
            ("/email", "format"),
            ("/kind", "enum"),
            ("/role~1admin", "additionalProperties"),
        ] {
            assert!(pairs.contains(&expected), "{expected:?} missing from {pairs:?}");
        }
        let quantity = details.iter().find(|d| d.field() == "/quantity").unwrap();
        assert_eq!(quantity.message(), Some("must be at most 1000"));
        let rendered = serde_json::to_string(&details).unwrap();
        assert!(!rendered.contains("MARKER"), "{rendered}");
        assert!(!rendered.contains("99999"), "{rendered}");
        assert!(schema.violations(&json!({"item": 1, "quantity": 1}), 20).is_empty());
    }

    #[test]
    fn counted_limits_read_as_english() {
        let schema = Schema::compile(&json!({
            "type": "object",
            "properties": {
                "one": {"type": "string", "minLength": 1},
                "two": {"type": "string", "maxLength": 2},
                "list": {"type": "array", "minItems": 1},
                "map": {"type": "object", "maxProperties": 1},
                "none": {"type": "object", "minProperties": 3}
            }
        }))
        .unwrap();
        let instance =
            json!({"one": "", "two": "abc", "list": [], "map": {"a": 1, "b": 2}, "none": {}});
        let details = schema.violations(&instance, 20);
        let message = |field: &str| {
            details.iter().find(|d| d.field() == field).and_then(|d| d.message()).unwrap()
        };
        assert_eq!(message("/one"), "must be at least 1 character long");
        assert_eq!(message("/two"), "must be at most 2 characters long");
        assert_eq!(message("/list"), "must have at least 1 item");
        assert_eq!(message("/map"), "must have at most 1 property");
        assert_eq!(message("/none"), "must have at least 3 properties");
    }

    #[test]
    fn closed_empty_object_names_each_property() {
        let schema =
            Schema::compile(&json!({"type": "object", "additionalProperties": false})).unwrap();
        let details = schema.violations(&json!({"a": 1, "b/": "MARKER"}), 20);
        let fields: Vec<(&str, &str)> = details.iter().map(|d| (d.field(), d.issue())).collect();
        assert_eq!(fields, [("/a", "additionalProperties"), ("/b~1", "additionalProperties")]);
        assert_eq!(schema.violations(&json!({"a": 1, "b": 2, "c": 3}), 2).len(), 2);
        assert!(schema.violations(&json!({}), 20).is_empty());
    }

    #[test]
    fn details_are_capped() {
        let schema = Schema::compile(&json!({
            "type": "array",
            "items": {"type": "integer"}
        }))
        .unwrap();
        let instance = Value::Array(vec![json!("x"); 10_000]);
        assert_eq!(schema.violations(&instance, 20).len(), 20);
        let schema = Schema::compile(&json!({
            "type": "object",
            "properties": {"a": {"type": "integer"}},
            "additionalProperties": false
        }))
        .unwrap();
        let many: serde_json::Map<String, Value> =
            (0..500).map(|i| (format!("k{i}"), json!(1))).collect();
        let details = schema.violations(&Value::Object(many), 5);
        assert_eq!(details.len(), 5, "{details:?}");
    }
}
