//! Field errors: what the server's validation says about one field of an object.

use serde_json::{Value, json};

/// One field that failed validation, shaped like the server's `field.Error`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FieldError {
    /// `spec.ec2.region`, `status.conditions[0]`, `spec.ec2.tags[team]`.
    pub field: String,
    /// The `Status` cause reason, e.g. `FieldValueRequired`.
    pub reason: &'static str,
    /// What the server says after the field name.
    pub detail: String,
}

/// How a value reads inside an error message: JSON, as close to the server's as matters.
pub(crate) fn shown(value: &Value) -> String {
    value.to_string()
}

/// The JSON type name of a value, as type errors name it.
pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

impl FieldError {
    pub(crate) fn required(field: &str) -> Self {
        Self::new(field, "FieldValueRequired", "Required value".into())
    }

    pub(crate) fn invalid(field: &str, value: &Value, why: &str) -> Self {
        Self::new(
            field,
            "FieldValueInvalid",
            format!("Invalid value: {}: {why}", shown(value)),
        )
    }

    pub(crate) fn type_invalid(field: &str, value: &Value, expected: &str) -> Self {
        let actual = type_name(value);
        Self::new(
            field,
            "FieldValueTypeInvalid",
            format!(
                "Invalid value: \"{actual}\": {field} in body must be of type {expected}: \"{actual}\""
            ),
        )
    }

    pub(crate) fn not_supported(field: &str, value: &Value, supported: &[Value]) -> Self {
        let supported: Vec<String> = supported.iter().map(shown).collect();
        Self::new(
            field,
            "FieldValueNotSupported",
            format!(
                "Unsupported value: {}: supported values: {}",
                shown(value),
                supported.join(", ")
            ),
        )
    }

    pub(crate) fn too_long(field: &str, max: u64) -> Self {
        Self::new(
            field,
            "FieldValueTooLong",
            format!("Too long: may not be longer than {max}"),
        )
    }

    pub(crate) fn too_many(field: &str, actual: usize, max: u64) -> Self {
        Self::new(
            field,
            "FieldValueTooMany",
            format!("Too many: {actual}: must have at most {max} items"),
        )
    }

    pub(crate) fn duplicate(field: &str, value: &Value) -> Self {
        Self::new(
            field,
            "FieldValueDuplicate",
            format!("Duplicate value: {}", shown(value)),
        )
    }

    pub(crate) fn forbidden(field: &str, why: &str) -> Self {
        Self::new(field, "FieldValueForbidden", format!("Forbidden: {why}"))
    }

    fn new(field: &str, reason: &'static str, detail: String) -> Self {
        Self {
            field: field.to_string(),
            reason,
            detail,
        }
    }

    pub(crate) fn cause(&self) -> Value {
        json!({"reason": self.reason, "message": self.detail, "field": self.field})
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.detail)
    }
}
