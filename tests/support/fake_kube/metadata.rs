//! Object metadata as the server treats it for every kind: coerced to `ObjectMeta`,
//! names, label and finalizer syntax and owner references checked.

use serde_json::Value;

use super::field::FieldError;
use super::store::{finalizers, meta_mut};

/// The fields of `ObjectMeta`; the server drops anything else under `metadata`.
const OBJECT_META_FIELDS: [&str; 15] = [
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// Coerces `metadata` to `ObjectMeta`: unknown fields, nulls and empty collections go,
/// as they do when the server decodes into its typed `ObjectMeta`.
pub(crate) fn normalize(obj: &mut Value) {
    let m = meta_mut(obj);
    m.retain(|k, v| {
        OBJECT_META_FIELDS.contains(&k.as_str())
            && match v {
                Value::Null => false,
                Value::Array(a) => !a.is_empty(),
                Value::Object(o) => !o.is_empty(),
                _ => true,
            }
    });
}

/// A lowercase RFC 1123 subdomain, as object names must be.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// What the server refuses in any object's metadata: label keys and finalizers that are
/// not qualified names, label values that are not at most 63 characters of the same
/// alphabet.
pub(crate) fn errors(obj: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
    for (key, value) in labels.into_iter().flatten() {
        let field = format!("metadata.labels[{key}]");
        if !qualified_name(key) {
            errors.push(FieldError::invalid(
                "metadata.labels",
                &Value::String(key.clone()),
                "a valid label key must be a qualified name",
            ));
        }
        let text = value.as_str().unwrap_or_default();
        let ok = value.is_string()
            && (text.is_empty()
                || (text.len() <= 63
                    && text
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                    && text.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && text.ends_with(|c: char| c.is_ascii_alphanumeric())));
        if !ok {
            errors.push(FieldError::invalid(
                &field,
                value,
                "a valid label must be an empty string or consist of at most 63 alphanumeric characters, '-', '_' or '.'",
            ));
        }
    }
    errors.extend(owner_reference_errors(obj));
    for (i, finalizer) in finalizers(obj).iter().enumerate() {
        if !qualified_name(finalizer) {
            errors.push(FieldError::invalid(
                &format!("metadata.finalizers[{i}]"),
                &Value::String(finalizer.clone()),
                "name part must consist of alphanumeric characters, '-', '_' or '.'",
            ));
        }
    }
    errors
}

/// What the server refuses in `metadata.ownerReferences`: a reference the garbage
/// collector could not resolve, or more than one controller.
fn owner_reference_errors(obj: &Value) -> Vec<FieldError> {
    let Some(refs) = obj
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    let mut errors = Vec::new();
    let mut controller: Option<String> = None;
    for r in refs {
        let text = |field: &str| r.get(field).and_then(Value::as_str).unwrap_or_default();
        let api_version = text("apiVersion");
        let version = match api_version.split('/').collect::<Vec<_>>()[..] {
            [version] | [_, version] => version,
            _ => "",
        };
        let checks = [
            ("apiVersion", version, "version must not be empty"),
            ("kind", text("kind"), "must not be empty"),
            ("name", text("name"), "must not be empty"),
            ("uid", text("uid"), "must not be empty"),
        ];
        for (field, value, why) in checks {
            if value.is_empty() {
                errors.push(FieldError::invalid(
                    &format!("metadata.ownerReferences.{field}"),
                    &Value::String(text(field).to_string()),
                    why,
                ));
            }
        }
        if r.get("controller").and_then(Value::as_bool) == Some(true) {
            let this = format!("{}/{}", text("kind"), text("name"));
            match &controller {
                Some(first) => errors.push(FieldError::invalid(
                    "metadata.ownerReferences",
                    &Value::Array(refs.clone()),
                    &format!(
                        "Only one reference can have Controller set to true. Found \"true\" in references for {first} and {this}"
                    ),
                )),
                None => controller = Some(this),
            }
        }
    }
    errors
}

/// A Kubernetes qualified name: an optional DNS subdomain prefix and `/`, then a name of
/// at most 63 alphanumerics, `-`, `_` or `.`, starting and ending alphanumeric.
pub(crate) fn qualified_name(value: &str) -> bool {
    let (prefix, name) = match value.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, value),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    name_ok && prefix.is_none_or(valid_name)
}
