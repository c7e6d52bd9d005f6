//! The API server's own validation of Events. `events.k8s.io/v1` is strict: an event
//! needs its time, reporter, action, reason and type, within length limits, and a
//! series must count at least 2. `core/v1` keeps the lenient legacy rules.
//!
//! Both versions are one internal type on the server, so errors name the internal
//! fields (`message` for `note`, `involvedObject` for `regarding`), as the server does.

use serde_json::Value;

use super::field::FieldError;
use super::metadata;
use super::resource::ApiError;

const REPORTING_INSTANCE_LIMIT: usize = 128;
const ACTION_LIMIT: usize = 128;
const REASON_LIMIT: usize = 128;
/// Bytes, not characters: the server compares the Go string length.
const NOTE_LIMIT: usize = 1024;

/// Where each field lives in the version a request used.
struct Fields {
    strict: bool,
    reporting_controller: &'static str,
    regarding: &'static str,
    note: &'static str,
    deprecated: [(&'static str, &'static str); 4],
}

impl Fields {
    fn of(group: &str) -> Fields {
        if group == "events.k8s.io" {
            Fields {
                strict: true,
                reporting_controller: "reportingController",
                regarding: "regarding",
                note: "note",
                deprecated: [
                    ("deprecatedFirstTimestamp", "firstTimestamp"),
                    ("deprecatedLastTimestamp", "lastTimestamp"),
                    ("deprecatedCount", "count"),
                    ("deprecatedSource", "source"),
                ],
            }
        } else {
            Fields {
                strict: false,
                reporting_controller: "reportingComponent",
                regarding: "involvedObject",
                note: "message",
                deprecated: [
                    ("firstTimestamp", "firstTimestamp"),
                    ("lastTimestamp", "lastTimestamp"),
                    ("count", "count"),
                    ("source", "source"),
                ],
            }
        }
    }
}

fn text<'a>(event: &'a Value, field: &str) -> Result<&'a str, ApiError> {
    match event.get(field) {
        None | Some(Value::Null) => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(ApiError::bad_request(format!(
            "json: cannot unmarshal {other} into Go struct field Event.{field} of type string"
        ))),
    }
}

/// A timestamp field: `None` when unset, an error when it does not parse.
fn time(event: &Value, pointer: &str) -> Result<Option<jiff::Timestamp>, ApiError> {
    match event.pointer(pointer) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|e| ApiError::bad_request(format!("parsing time {s:?} at {pointer}: {e}"))),
        Some(other) => Err(ApiError::bad_request(format!(
            "{pointer}: expected a timestamp string, got {other}"
        ))),
    }
}

fn set(event: &Value, field: &str) -> bool {
    match event.get(field) {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Number(n)) => n.as_i64() != Some(0),
        Some(Value::Object(o)) => o
            .values()
            .any(|v| v.as_str().is_some_and(|s| !s.is_empty())),
        Some(_) => true,
    }
}

fn length_limit(errors: &mut Vec<FieldError>, field: &str, value: &str, limit: usize) {
    if value.len() > limit {
        errors.push(FieldError::invalid(
            field,
            &Value::String(String::new()),
            &format!("can have at most {limit} characters"),
        ));
    }
}

/// The checks every write of an event passes, in either version.
fn legacy(event: &Value, namespace: &str, f: &Fields) -> Result<Vec<FieldError>, ApiError> {
    let mut errors = Vec::new();
    let regarding_ns = event
        .pointer(&format!("/{}/namespace", f.regarding))
        .and_then(Value::as_str)
        .unwrap_or("");
    let mismatch = |errors: &mut Vec<FieldError>| {
        errors.push(FieldError::invalid(
            "involvedObject.namespace",
            &Value::String(regarding_ns.into()),
            "does not match event.namespace",
        ));
    };
    if time(event, "/eventTime")?.is_none() {
        // Events without eventTime are the old kind: only the namespaces must agree.
        let agree = if regarding_ns.is_empty() {
            namespace.is_empty() || namespace == "default"
        } else {
            namespace == regarding_ns
        };
        if !agree {
            mismatch(&mut errors);
        }
        return Ok(errors);
    }
    if regarding_ns.is_empty() && namespace != "default" && namespace != "kube-system" {
        mismatch(&mut errors);
    }
    let controller = text(event, f.reporting_controller)?;
    if controller.is_empty() {
        errors.push(FieldError::required(f.reporting_controller));
    } else if !metadata::qualified_name(controller) {
        errors.push(FieldError::invalid(
            f.reporting_controller,
            &Value::String(controller.into()),
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
        ));
    }
    let instance = text(event, "reportingInstance")?;
    if instance.is_empty() {
        errors.push(FieldError::required("reportingInstance"));
    }
    length_limit(
        &mut errors,
        "reportingInstance",
        instance,
        REPORTING_INSTANCE_LIMIT,
    );
    let action = text(event, "action")?;
    if action.is_empty() {
        errors.push(FieldError::required("action"));
    }
    length_limit(&mut errors, "action", action, ACTION_LIMIT);
    let reason = text(event, "reason")?;
    if reason.is_empty() {
        errors.push(FieldError::required("reason"));
    }
    length_limit(&mut errors, "reason", reason, REASON_LIMIT);
    length_limit(&mut errors, "message", text(event, f.note)?, NOTE_LIMIT);
    Ok(errors)
}

fn series(event: &Value) -> Result<Vec<FieldError>, ApiError> {
    let mut errors = Vec::new();
    let Some(series) = event.get("series").filter(|s| !s.is_null()) else {
        return Ok(errors);
    };
    let count = match series.get("count") {
        None | Some(Value::Null) => 0,
        Some(c) => c.as_i64().ok_or_else(|| {
            ApiError::bad_request(format!("series.count: expected an integer, got {c}"))
        })?,
    };
    if count < 2 {
        errors.push(FieldError::invalid(
            "series.count",
            &Value::String(String::new()),
            "should be at least 2",
        ));
    }
    if time(event, "/series/lastObservedTime")?.is_none() {
        errors.push(FieldError::required("series.lastObservedTime"));
    }
    Ok(errors)
}

/// Checks an event on create.
pub(crate) fn validate_create(
    event: &Value,
    group: &str,
    namespace: &str,
) -> Result<Vec<FieldError>, ApiError> {
    let f = Fields::of(group);
    let mut errors = legacy(event, namespace, &f)?;
    if !f.strict {
        return Ok(errors);
    }
    errors.extend(series(event)?);
    if time(event, "/eventTime")?.is_none() {
        errors.push(FieldError::required("eventTime"));
    }
    let kind = text(event, "type")?;
    if kind != "Normal" && kind != "Warning" {
        errors.push(FieldError::invalid(
            "type",
            &Value::String(String::new()),
            &format!("has invalid value: {kind}"),
        ));
    }
    for (field, internal) in f.deprecated {
        if set(event, field) {
            errors.push(FieldError::invalid(
                internal,
                &Value::String(String::new()),
                "needs to be unset",
            ));
        }
    }
    Ok(errors)
}

/// Checks an event on update or patch: a series may grow, but what the event says is
/// immutable.
pub(crate) fn validate_update(
    event: &Value,
    old: &Value,
    group: &str,
    namespace: &str,
) -> Result<Vec<FieldError>, ApiError> {
    let f = Fields::of(group);
    let mut errors = legacy(event, namespace, &f)?;
    if !f.strict {
        return Ok(errors);
    }
    if event.get("series") != old.get("series") {
        errors.extend(series(event)?);
    }
    let immutable = [
        (f.regarding, "involvedObject"),
        ("reason", "reason"),
        (f.note, "message"),
        ("type", "type"),
        ("action", "action"),
        ("related", "related"),
        (f.reporting_controller, "reportingController"),
        ("reportingInstance", "reportingInstance"),
    ]
    .into_iter()
    .chain(f.deprecated);
    for (field, internal) in immutable {
        let (new, before) = (event.get(field), old.get(field));
        if new.filter(|v| !v.is_null()) != before.filter(|v| !v.is_null()) {
            errors.push(FieldError::invalid(
                internal,
                new.unwrap_or(&Value::Null),
                "field is immutable",
            ));
        }
    }
    // The server keeps microseconds, so finer differences are not changes.
    let micros = |t: Option<jiff::Timestamp>| t.map(|t| t.as_microsecond());
    if micros(time(event, "/eventTime")?) != micros(time(old, "/eventTime")?) {
        errors.push(FieldError::invalid(
            "eventTime",
            event.get("eventTime").unwrap_or(&Value::Null),
            "field is immutable",
        ));
    }
    Ok(errors)
}
