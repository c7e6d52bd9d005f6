//! Custom resources: their types, learned from the CustomResourceDefinitions stored in
//! the server, and their admission on every write: pruning, defaulting, schema
//! validation and the CRD's CEL rules.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use kube::core::cel::{CompiledSchema, ErrorKind, Validator, compile_schema};
use serde_json::Value;

use super::field::{FieldError, type_name};
use super::resource::TypeInfo;
use super::schema;

/// Where CRDs are stored, as `(group, plural)`.
pub(crate) const CRD_GROUP: &str = "apiextensions.k8s.io";
pub(crate) const CRD_PLURAL: &str = "customresourcedefinitions";

/// The first Kubernetes minor version whose API server enforces CEL rules.
pub(crate) const FIRST_CEL_MINOR: u32 = 25;

/// How a CRD serves one version of its resource, or `None` if it does not serve it.
pub(crate) fn type_info(crd: &Value, version: &str, minor: u32) -> Option<TypeInfo> {
    let spec = crd.get("spec")?;
    let served = spec
        .get("versions")?
        .as_array()?
        .iter()
        .find(|v| v["name"] == version && v["served"] == true)?;
    let schema = served.pointer("/schema/openAPIV3Schema").cloned();
    let metadata = crd.get("metadata")?;
    let schema_id = format!(
        "{}@{}/{version}",
        metadata.get("uid")?.as_str()?,
        metadata.get("resourceVersion")?.as_str()?
    );
    Some(TypeInfo {
        kind: spec.pointer("/names/kind")?.as_str()?.to_string(),
        namespaced: spec.get("scope").and_then(Value::as_str) == Some("Namespaced"),
        status_subresource: served.pointer("/subresources/status").is_some(),
        tracks_generation: true,
        schema: schema.map(Arc::new),
        schema_id,
        cel: minor >= FIRST_CEL_MINOR,
    })
}

/// Brings a custom resource into the shape the server stores, as on every read: unknown
/// fields pruned and defaults filled in.
pub(crate) fn normalize(obj: &mut Value, schema: &Value) {
    schema::prune(obj, schema, true);
    schema::default(obj, schema, true);
}

/// Admits a write of a custom resource: normalizes it, then checks it against the schema
/// and, on servers that enforce them, the CEL rules (transition rules against `old`).
/// Rules the evaluator cannot run are skipped and added to `unevaluated`.
pub(crate) fn admit(
    obj: &mut Value,
    old: Option<&Value>,
    info: &TypeInfo,
    unevaluated: &mut BTreeSet<String>,
) -> Vec<FieldError> {
    let Some(schema) = info.schema.as_deref() else {
        return Vec::new();
    };
    normalize(obj, schema);
    let mut errors = Vec::new();
    schema::validate(obj, schema, "", true, &mut errors);
    // Like the server, no rule runs on an object whose fields have the wrong types.
    let typed = !errors.iter().any(|e| e.reason == "FieldValueTypeInvalid");
    if info.cel && typed {
        errors.extend(rule_failures(obj, old, info, unevaluated));
    }
    errors
}

/// The CRD version's rules, compiled once per thread and CRD revision.
fn compiled(info: &TypeInfo, schema: &Value) -> Rc<CompiledSchema> {
    thread_local! {
        static COMPILED: RefCell<HashMap<String, Rc<CompiledSchema>>> = RefCell::default();
    }
    COMPILED.with(|cache| {
        cache
            .borrow_mut()
            .entry(info.schema_id.clone())
            .or_insert_with(|| Rc::new(compile_schema(schema)))
            .clone()
    })
}

fn rule_failures(
    obj: &Value,
    old: Option<&Value>,
    info: &TypeInfo,
    unevaluated: &mut BTreeSet<String>,
) -> Vec<FieldError> {
    thread_local! {
        // Building a validator registers every CEL function: do it once per thread.
        static VALIDATOR: Validator = Validator::new();
    }
    let Some(schema) = info.schema.as_deref() else {
        return Vec::new();
    };
    let rules = compiled(info, schema);
    let Err(failures) = VALIDATOR.with(|v| v.validate_compiled(&rules, obj, old)) else {
        return Vec::new();
    };
    let mut errors = Vec::new();
    for failure in failures {
        match failure.kind {
            ErrorKind::ValidationFailure
            | ErrorKind::InvalidResult
            | ErrorKind::EvaluationError => {
                let value = lookup(obj, &failure.field_path);
                let shown = Value::String(type_name(value.unwrap_or(&Value::Null)).into());
                errors.push(FieldError::invalid(
                    &failure.field_path,
                    &shown,
                    &failure.message,
                ));
            }
            _ => {
                unevaluated.insert(failure.rule);
            }
        }
    }
    errors
}

/// The value at a dotted field path such as `spec.ec2.region` or `spec.list[2]`.
fn lookup<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .filter(|s| !s.is_empty())
        .try_fold(obj, |node, segment| {
            let (name, index) = match segment.split_once('[') {
                Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
                None => (segment, None),
            };
            let node = node.get(name)?;
            match index {
                Some(i) => node.get(i),
                None => Some(node),
            }
        })
}
