//! Field ownership (`metadata.managedFields`) and server-side apply.
//!
//! Every write records which manager set which fields, as the API server does: an apply
//! owns exactly the fields it sent, any other write owns the fields it changed, and a
//! field that disappears is owned by no one. An apply that would change a field another
//! manager owns answers 409 `Conflict` unless it is forced. Leader election depends on
//! exactly this: two candidates applying `spec.holderIdentity` cannot both win.
//!
//! Simplifications, listed with the server's other deviations: lists are atomic (a real
//! server tracks the items of `map` and `set` lists apart), entries carry no `time`, and
//! an applied `null` is ignored rather than meaning "owned and absent".

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::resource::{ApiError, Target};

/// A field's place in an object, one key per level.
pub(crate) type Path = Vec<String>;

/// Who writes, and how.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    pub manager: String,
    /// With the fields the apply sent; `None` for every other write.
    pub applied: Option<BTreeSet<Path>>,
}

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    subresource: Option<String>,
    fields: BTreeSet<Path>,
}

impl Entry {
    fn same_owner(&self, manager: &str, operation: &str, subresource: Option<&str>) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource.as_deref() == subresource
    }
}

/// The fields a manager can own: everything but the type and the server's metadata;
/// of metadata, labels and annotations (each key) and finalizers and owner references.
pub(crate) fn leaves(obj: &Value) -> BTreeMap<Path, &Value> {
    let mut out = BTreeMap::new();
    let Some(map) = obj.as_object() else {
        return out;
    };
    for (key, value) in map {
        match key.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => {
                for field in ["labels", "annotations"] {
                    if let Some(Value::Object(m)) = value.get(field) {
                        for (k, v) in m {
                            out.insert(vec!["metadata".into(), field.into(), k.clone()], v);
                        }
                    }
                }
                for field in ["finalizers", "ownerReferences"] {
                    if let Some(v) = value.get(field) {
                        out.insert(vec!["metadata".into(), field.into()], v);
                    }
                }
            }
            _ => collect(vec![key.clone()], value, &mut out),
        }
    }
    out
}

fn collect<'a>(path: Path, value: &'a Value, out: &mut BTreeMap<Path, &'a Value>) {
    match value {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let mut p = path.clone();
                p.push(k.clone());
                collect(p, v, out);
            }
        }
        _ => {
            out.insert(path, value);
        }
    }
}

fn entries(obj: &Value) -> Vec<Entry> {
    let Some(list) = obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    list.iter()
        .map(|e| {
            let text = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            let mut fields = BTreeSet::new();
            if let Some(f) = e.get("fieldsV1") {
                read_fields(Vec::new(), f, &mut fields);
            }
            Entry {
                manager: text("manager"),
                operation: text("operation"),
                api_version: text("apiVersion"),
                subresource: e
                    .get("subresource")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                fields,
            }
        })
        .collect()
}

fn read_fields(path: Path, set: &Value, out: &mut BTreeSet<Path>) {
    let Some(m) = set.as_object().filter(|m| !m.is_empty()) else {
        if !path.is_empty() {
            out.insert(path);
        }
        return;
    };
    for (k, v) in m {
        if let Some(name) = k.strip_prefix("f:") {
            let mut p = path.clone();
            p.push(name.to_string());
            read_fields(p, v, out);
        }
    }
}

fn fields_v1(fields: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for path in fields {
        let mut at = &mut root;
        for key in path {
            let next = at
                .entry(format!("f:{key}"))
                .or_insert_with(|| Value::Object(Map::new()));
            at = next.as_object_mut().expect("fieldsV1 nodes are objects");
        }
    }
    Value::Object(root)
}

fn render(list: &[Entry]) -> Value {
    Value::Array(
        list.iter()
            .map(|e| {
                let mut v = json!({
                    "manager": e.manager,
                    "operation": e.operation,
                    "apiVersion": e.api_version,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": fields_v1(&e.fields),
                });
                if let Some(s) = &e.subresource {
                    v["subresource"] = Value::String(s.clone());
                }
                v
            })
            .collect(),
    )
}

/// `new`'s `managedFields` after `writer` turned `old` (absent for a create) into `new`.
pub(crate) fn record(t: &Target, old: Option<&Value>, new: &Value, writer: &Writer) -> Value {
    let mut list = old.map(entries).unwrap_or_default();
    let before = old.map(leaves).unwrap_or_default();
    let after = leaves(new);
    let changed: BTreeSet<Path> = after
        .iter()
        .filter(|(p, v)| before.get(*p) != Some(*v))
        .map(|(p, _)| p.clone())
        .collect();
    let (operation, owned) = match &writer.applied {
        Some(applied) => ("Apply", applied.clone()),
        None => ("Update", changed.clone()),
    };
    let subresource = t.subresource.as_deref();
    for entry in &mut list {
        entry.fields.retain(|p| after.contains_key(p));
        if !entry.same_owner(&writer.manager, operation, subresource) {
            entry.fields.retain(|p| !changed.contains(p));
        }
    }
    match list
        .iter_mut()
        .find(|e| e.same_owner(&writer.manager, operation, subresource))
    {
        Some(entry) if writer.applied.is_some() => entry.fields = owned,
        Some(entry) => entry.fields.extend(owned),
        None => list.push(Entry {
            manager: writer.manager.clone(),
            operation: operation.into(),
            api_version: t.api_version(),
            subresource: subresource.map(str::to_string),
            fields: owned,
        }),
    }
    list.retain(|e| !e.fields.is_empty());
    render(&list)
}

/// What an apply does to the current object: the object to write and the fields the
/// apply owns, or 409 naming every field another manager owns with another value.
pub(crate) fn merge(
    t: &Target,
    name: &str,
    current: &Value,
    applied: &Value,
    manager: &str,
    force: bool,
) -> Result<(Value, BTreeSet<Path>), ApiError> {
    let sent = leaves(applied);
    let now = leaves(current);
    let list = entries(current);
    let subresource = t.subresource.as_deref();
    let mine = |e: &Entry| e.same_owner(manager, "Apply", subresource);
    let mut conflicts = Vec::new();
    for (path, value) in &sent {
        if now.get(path).is_some_and(|v| v != value) {
            for e in list.iter().filter(|e| !mine(e) && e.fields.contains(path)) {
                conflicts.push((e.manager.clone(), format!(".{}", path.join("."))));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflict(t, name, &conflicts));
    }
    let mut merged = current.clone();
    // Fields this manager applied before and has now left out are removed, unless
    // someone else owns them too.
    if let Some(previous) = list.iter().find(|e| mine(e)) {
        for path in previous.fields.difference(&sent.keys().cloned().collect()) {
            if !list.iter().any(|e| !mine(e) && e.fields.contains(path)) {
                remove(&mut merged, path);
            }
        }
    }
    deep_merge(&mut merged, applied);
    Ok((merged, sent.into_keys().collect()))
}

fn conflict(t: &Target, name: &str, conflicts: &[(String, String)]) -> ApiError {
    let listed: Vec<String> = conflicts
        .iter()
        .map(|(manager, field)| format!("conflict with \"{manager}\": {field}"))
        .collect();
    let noun = if conflicts.len() == 1 {
        "conflict"
    } else {
        "conflicts"
    };
    let mut err = ApiError::new(
        409,
        "Conflict",
        format!(
            "Apply failed with {} {noun}: {}",
            conflicts.len(),
            listed.join("\n")
        ),
    );
    err.details = Some(json!({
        "name": name,
        "kind": t.plural,
        "group": t.group,
        "causes": conflicts.iter().map(|(manager, field)| json!({
            "reason": "FieldManagerConflict",
            "message": format!("conflict with \"{manager}\""),
            "field": field,
        })).collect::<Vec<_>>(),
    }));
    err
}

fn remove(obj: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = obj;
    for key in parents {
        match at.get_mut(key) {
            Some(next) => at = next,
            None => return,
        }
    }
    if let Value::Object(m) = at {
        m.remove(last);
    }
}

/// Objects merge key by key; anything else the apply sent replaces what is there.
fn deep_merge(target: &mut Value, applied: &Value) {
    match (target, applied) {
        (Value::Object(t), Value::Object(a)) => {
            for (k, v) in a {
                if v.is_null() {
                    continue;
                }
                match t.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        deep_merge(existing, v)
                    }
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (target, applied) => *target = applied.clone(),
    }
}
