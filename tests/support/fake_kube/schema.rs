//! A CRD's structural `openAPIV3Schema`, applied as the API server applies it to custom
//! resources: unknown fields pruned, defaults filled in, then OpenAPI v3 validation
//! (which differs from JSON Schema: `nullable`, `x-kubernetes-int-or-string`, list types).

use serde_json::{Map, Value};

use super::field::FieldError;

/// Fields every object (and every embedded resource) keeps whatever its schema says;
/// `metadata` is coerced to `ObjectMeta` separately.
const OBJECT_FIELDS: [&str; 3] = ["apiVersion", "kind", "metadata"];

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key) == Some(&Value::Bool(true))
}

fn properties(schema: &Value) -> Option<&Map<String, Value>> {
    schema.get("properties").and_then(Value::as_object)
}

/// The schema of a map's values; `additionalProperties: true` carries none.
fn map_values(schema: &Value) -> Option<&Value> {
    schema.get("additionalProperties").filter(|v| v.is_object())
}

fn keeps_object_fields(schema: &Value, root: bool) -> bool {
    root || flag(schema, "x-kubernetes-embedded-resource")
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Drops every field the schema does not specify, unless the node preserves unknown fields.
pub(crate) fn prune(value: &mut Value, schema: &Value, root: bool) {
    match value {
        Value::Object(map) => {
            let object_fields = keeps_object_fields(schema, root);
            let props = properties(schema);
            let values = map_values(schema);
            let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields")
                || schema.get("additionalProperties") == Some(&Value::Bool(true));
            map.retain(|k, _| {
                (object_fields && OBJECT_FIELDS.contains(&k.as_str()))
                    || props.is_some_and(|p| p.contains_key(k))
                    || values.is_some()
                    || preserve
            });
            for (k, v) in map.iter_mut() {
                if object_fields && OBJECT_FIELDS.contains(&k.as_str()) {
                    continue;
                }
                if let Some(s) = props.and_then(|p| p.get(k)).or(values) {
                    prune(v, s, false);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                items.iter_mut().for_each(|item| prune(item, s, false));
            }
        }
        _ => {}
    }
}

/// What a missing or `null` field becomes: its default, a kept `null` when the field is
/// nullable, or nothing at all (a `null` of a non-nullable field without default is dropped).
fn settle(slot: Option<&Value>, schema: &Value) -> Option<Option<Value>> {
    match slot {
        None => schema.get("default").cloned().map(Some),
        Some(Value::Null) if !flag(schema, "nullable") => Some(schema.get("default").cloned()),
        _ => None,
    }
}

/// Fills in defaults for missing fields (and `null`s of non-nullable ones), depth first,
/// so defaults inside a defaulted object apply too.
pub(crate) fn default(value: &mut Value, schema: &Value, root: bool) {
    match value {
        Value::Object(map) => {
            let object_fields = keeps_object_fields(schema, root);
            if let Some(props) = properties(schema) {
                for (k, s) in props {
                    if object_fields && OBJECT_FIELDS.contains(&k.as_str()) {
                        continue;
                    }
                    match settle(map.get(k), s) {
                        Some(Some(v)) => {
                            map.insert(k.clone(), v);
                        }
                        Some(None) => {
                            map.remove(k);
                        }
                        None => {}
                    }
                    if let Some(v) = map.get_mut(k) {
                        default(v, s, false);
                    }
                }
            }
            if let Some(s) = map_values(schema) {
                let known = properties(schema);
                let keys: Vec<String> = map
                    .keys()
                    .filter(|k| known.is_none_or(|p| !p.contains_key(*k)))
                    .cloned()
                    .collect();
                for k in keys {
                    match settle(map.get(&k), s) {
                        Some(Some(v)) => {
                            map.insert(k.clone(), v);
                        }
                        Some(None) => {
                            map.remove(&k);
                        }
                        None => {}
                    }
                    if let Some(v) = map.get_mut(&k) {
                        default(v, s, false);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for item in items.iter_mut() {
                    if item.is_null()
                        && !flag(s, "nullable")
                        && let Some(d) = s.get("default")
                    {
                        *item = d.clone();
                    }
                    default(item, s, false);
                }
            }
        }
        _ => {}
    }
}

fn type_matches(value: &Value, expected: &str) -> bool {
    match expected {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "number" => value.is_number(),
        // A float with no fraction decodes as an integer, as the server's JSON decoder does.
        "integer" => value.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => true,
    }
}

/// Validates `value` against `schema`, collecting every failure with its field path.
pub(crate) fn validate(
    value: &Value,
    schema: &Value,
    path: &str,
    root: bool,
    errors: &mut Vec<FieldError>,
) {
    if value.is_null() {
        if !flag(schema, "nullable")
            && let Some(expected) = schema.get("type").and_then(Value::as_str)
        {
            errors.push(FieldError::type_invalid(path, value, expected));
        }
        return;
    }
    if flag(schema, "x-kubernetes-int-or-string") {
        if !(value.is_string() || type_matches(value, "integer")) {
            errors.push(FieldError::type_invalid(path, value, "integer,string"));
            return;
        }
    } else if let Some(expected) = schema.get("type").and_then(Value::as_str)
        && !type_matches(value, expected)
    {
        errors.push(FieldError::type_invalid(path, value, expected));
        return;
    }
    value_checks(value, schema, path, errors);
    match value {
        Value::String(text) => string_checks(text, value, schema, path, errors),
        Value::Number(_) => number_checks(value, schema, path, errors),
        Value::Array(items) => array_checks(items, schema, path, errors),
        Value::Object(map) => object_checks(map, schema, path, root, errors),
        _ => {}
    }
}

/// `enum` and the value-only combinators structural schemas allow.
fn value_checks(value: &Value, schema: &Value, path: &str, errors: &mut Vec<FieldError>) {
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        errors.push(FieldError::not_supported(path, value, allowed));
    }
    let passes = |branch: &Value| {
        let mut found = Vec::new();
        validate(value, branch, path, false, &mut found);
        found
    };
    for branch in schema
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        errors.extend(passes(branch));
    }
    if let Some(branches) = schema.get("anyOf").and_then(Value::as_array)
        && !branches.iter().any(|b| passes(b).is_empty())
    {
        errors.push(FieldError::invalid(
            path,
            value,
            "must validate at least one schema (anyOf)",
        ));
    }
    if let Some(branches) = schema.get("oneOf").and_then(Value::as_array)
        && branches.iter().filter(|b| passes(b).is_empty()).count() != 1
    {
        errors.push(FieldError::invalid(
            path,
            value,
            "must validate one and only one schema (oneOf)",
        ));
    }
    if let Some(branch) = schema.get("not")
        && passes(branch).is_empty()
    {
        errors.push(FieldError::invalid(
            path,
            value,
            "must not validate the schema (not)",
        ));
    }
}

fn limit(schema: &Value, key: &str) -> Option<u64> {
    schema.get(key).and_then(Value::as_u64)
}

fn string_checks(
    text: &str,
    value: &Value,
    schema: &Value,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    let length = text.chars().count() as u64;
    if let Some(max) = limit(schema, "maxLength")
        && length > max
    {
        errors.push(FieldError::too_long(path, max));
    }
    if let Some(min) = limit(schema, "minLength")
        && length < min
    {
        errors.push(FieldError::invalid(
            path,
            value,
            &format!("{path} in body should be at least {min} chars long"),
        ));
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        match regex::Regex::new(pattern) {
            Ok(re) if re.is_match(text) => {}
            _ => errors.push(FieldError::invalid(
                path,
                value,
                &format!("{path} in body should match '{pattern}'"),
            )),
        }
    }
    if let Some(format) = schema.get("format").and_then(Value::as_str)
        && !format_matches(format, text)
    {
        errors.push(FieldError::invalid(
            path,
            value,
            &format!("{path} in body must be of type {format}: {value}"),
        ));
    }
}

/// The string formats the server checks that a custom resource is likely to use;
/// other formats (and number formats such as `int32`) are not checked, as on the server.
fn format_matches(format: &str, text: &str) -> bool {
    match format {
        "date-time" | "datetime" => text.parse::<jiff::Timestamp>().is_ok(),
        "date" => text.parse::<jiff::civil::Date>().is_ok(),
        "byte" => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .is_ok()
        }
        "uuid" => {
            let groups: Vec<&str> = text.split('-').collect();
            groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
                && groups
                    .iter()
                    .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
        }
        _ => true,
    }
}

fn number_checks(value: &Value, schema: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let Some(n) = value.as_f64() else { return };
    let bound = |key| schema.get(key).and_then(Value::as_f64);
    if let Some(min) = bound("minimum") {
        let exclusive = flag(schema, "exclusiveMinimum");
        if n < min || (exclusive && n == min) {
            let relation = if exclusive {
                "greater than"
            } else {
                "greater than or equal to"
            };
            errors.push(FieldError::invalid(
                path,
                value,
                &format!("{path} in body should be {relation} {min}"),
            ));
        }
    }
    if let Some(max) = bound("maximum") {
        let exclusive = flag(schema, "exclusiveMaximum");
        if n > max || (exclusive && n == max) {
            let relation = if exclusive {
                "less than"
            } else {
                "less than or equal to"
            };
            errors.push(FieldError::invalid(
                path,
                value,
                &format!("{path} in body should be {relation} {max}"),
            ));
        }
    }
    if let Some(step) = bound("multipleOf").filter(|s| *s > 0.0)
        && (n / step).fract() != 0.0
    {
        errors.push(FieldError::invalid(
            path,
            value,
            &format!("{path} in body should be a multiple of {step}"),
        ));
    }
}

fn array_checks(items: &[Value], schema: &Value, path: &str, errors: &mut Vec<FieldError>) {
    if let Some(max) = limit(schema, "maxItems")
        && items.len() as u64 > max
    {
        errors.push(FieldError::too_many(path, items.len(), max));
    }
    if let Some(min) = limit(schema, "minItems")
        && (items.len() as u64) < min
    {
        errors.push(FieldError::invalid(
            path,
            &Value::Array(items.to_vec()),
            &format!("{path} in body should have at least {min} items"),
        ));
    }
    let list_type = schema.get("x-kubernetes-list-type").and_then(Value::as_str);
    let keys: Vec<&str> = schema
        .get("x-kubernetes-list-map-keys")
        .and_then(Value::as_array)
        .map(|k| k.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut seen: Vec<Value> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_path = format!("{path}[{i}]");
        if let Some(s) = schema.get("items") {
            validate(item, s, &item_path, false, errors);
        }
        let identity = match list_type {
            Some("set") => Some(item.clone()),
            Some("map") => Some(Value::Array(
                keys.iter()
                    .map(|k| item.get(*k).cloned().unwrap_or(Value::Null))
                    .collect(),
            )),
            _ => None,
        };
        if let Some(identity) = identity {
            if seen.contains(&identity) {
                let shown = if list_type == Some("map") {
                    Value::Object(
                        keys.iter()
                            .zip(identity.as_array().into_iter().flatten())
                            .map(|(k, v)| (k.to_string(), v.clone()))
                            .collect(),
                    )
                } else {
                    identity.clone()
                };
                errors.push(FieldError::duplicate(&item_path, &shown));
            }
            seen.push(identity);
        }
    }
}

fn object_checks(
    map: &Map<String, Value>,
    schema: &Value,
    path: &str,
    root: bool,
    errors: &mut Vec<FieldError>,
) {
    let object_fields = keeps_object_fields(schema, root);
    for required in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(name) = required.as_str()
            && !map.contains_key(name)
        {
            errors.push(FieldError::required(&child(path, name)));
        }
    }
    if let Some(max) = limit(schema, "maxProperties")
        && map.len() as u64 > max
    {
        errors.push(FieldError::too_many(path, map.len(), max));
    }
    if let Some(min) = limit(schema, "minProperties")
        && (map.len() as u64) < min
    {
        errors.push(FieldError::invalid(
            path,
            &Value::Object(map.clone()),
            &format!("{path} in body should have at least {min} properties"),
        ));
    }
    let props = properties(schema);
    for (k, v) in map {
        if object_fields && OBJECT_FIELDS.contains(&k.as_str()) {
            continue;
        }
        if let Some(s) = props.and_then(|p| p.get(k)) {
            validate(v, s, &child(path, k), false, errors);
        } else if let Some(s) = map_values(schema) {
            validate(v, s, &format!("{path}[{k}]"), false, errors);
        }
    }
}
