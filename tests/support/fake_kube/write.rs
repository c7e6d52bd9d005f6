//! Writes: create, replace, the patch flavours, delete, and the rules every update obeys.

use serde_json::{Map, Value, json};

use super::patch::{PatchError, json_patch, merge_patch};
use super::resource::{ApiError, Filter, Query, Reply, Target, TypeInfo, builtin};
use super::store::{ChangeType, State, Writer, finalizers, meta, meta_mut, now_rfc3339};

/// Drops what the server's typed `ObjectMeta` would omit: nulls and empty collections.
fn normalize_metadata(obj: &mut Value) {
    let m = meta_mut(obj);
    m.retain(|_, v| match v {
        Value::Null => false,
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    });
}

/// Whether a write changed anything that bumps `metadata.generation`.
fn spec_changed(old: &Value, new: &Value, ignore_status: bool) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Value::Object(m) = &mut v {
            m.remove("metadata");
            if ignore_status {
                m.remove("status");
            }
        }
        v
    };
    strip(old) != strip(new)
}

/// Field set of an applied configuration, in the `FieldsV1` shape.
fn fields_v1(value: &Value, top: bool) -> Value {
    let Value::Object(map) = value else {
        return json!({});
    };
    let mut out = Map::new();
    for (k, v) in map {
        if top && matches!(k.as_str(), "apiVersion" | "kind") {
            continue;
        }
        if top && k == "metadata" {
            let mut m = Map::new();
            if let Value::Object(md) = v {
                for field in ["labels", "annotations", "finalizers", "ownerReferences"] {
                    if let Some(x) = md.get(field) {
                        m.insert(format!("f:{field}"), fields_v1(x, false));
                    }
                }
            }
            if !m.is_empty() {
                out.insert("f:metadata".into(), Value::Object(m));
            }
            continue;
        }
        out.insert(format!("f:{k}"), fields_v1(v, false));
    }
    Value::Object(out)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn dry_run(q: &Query) -> bool {
    q.get("dryRun").is_some_and(|v| v == "All")
}

impl State {
    /// Upserts the managedFields entry for this writer.
    fn record_manager(
        &mut self,
        obj: &mut Value,
        t: &Target,
        writer: &Writer<'_>,
        applied: Option<&Value>,
    ) {
        let subresource = t.subresource.clone().unwrap_or_default();
        let mut entries: Vec<Value> = obj
            .pointer("/metadata/managedFields")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let same = |e: &Value| {
            e.get("manager").and_then(Value::as_str) == Some(writer.manager.as_str())
                && e.get("operation").and_then(Value::as_str) == Some(writer.operation)
                && e.get("subresource").and_then(Value::as_str).unwrap_or("") == subresource
        };
        let previous_fields = entries
            .iter()
            .find(|e| same(e))
            .and_then(|e| e.get("fieldsV1").cloned());
        entries.retain(|e| !same(e));
        let mut entry = json!({
            "manager": writer.manager,
            "operation": writer.operation,
            "apiVersion": t.api_version(),
            "time": now_rfc3339(),
            "fieldsType": "FieldsV1",
            "fieldsV1": applied.map(|a| fields_v1(a, true)).or(previous_fields).unwrap_or_else(|| json!({})),
        });
        if !subresource.is_empty() {
            entry["subresource"] = Value::String(subresource);
        }
        entries.push(entry);
        meta_mut(obj).insert("managedFields".into(), Value::Array(entries));
    }

    /// POST to a collection (or server-side apply of a missing object).
    pub(crate) fn create(
        &mut self,
        t: &Target,
        q: &Query,
        mut obj: Value,
        writer: &Writer<'_>,
    ) -> Reply {
        let key = t.key();
        let info = self.info(&key);
        self.check_scope(t, &info)?;
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        if let Some(kind) = obj
            .get("kind")
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty())
        {
            let known = self
                .types
                .get(&key)
                .and_then(|ts| ts.kind.clone())
                .or_else(|| {
                    self.config
                        .kinds
                        .get(&key.plural)
                        .cloned()
                        .or_else(|| builtin(&key.group, &key.plural).map(|b| b.0.to_string()))
                });
            match known {
                Some(known) if known != kind => {
                    return Err(ApiError::bad_request(format!(
                        "the kind of the object ({kind}) does not match {known}"
                    )));
                }
                Some(_) => {}
                None => self.types.entry(key.clone()).or_default().kind = Some(kind.to_string()),
            }
        }
        let info = self.info(&key);
        if let Some(av) = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
            && av != t.api_version()
        {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                t.api_version()
            )));
        }
        let ns = t.namespace.clone().unwrap_or_default();
        let body_ns = meta(&obj, "namespace").unwrap_or_default();
        if info.namespaced && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        if info.namespaced && self.config.require_namespaces && !self.namespace_exists(&ns) {
            let namespaces = Target::parse("/api/v1/namespaces").unwrap_or_else(|| t.clone());
            return Err(ApiError::not_found(&namespaces, &ns));
        }
        // A real server refuses this with a bare 500: the object was probably copied from a read.
        if meta(&obj, "resourceVersion").is_some_and(|rv| rv.parse::<u64>().is_ok_and(|n| n > 0)) {
            return Err(ApiError::new(
                500,
                "",
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let mut name = meta(&obj, "name").unwrap_or_default();
        if name.is_empty() {
            let Some(prefix) = meta(&obj, "generateName").filter(|g| !g.is_empty()) else {
                return Err(ApiError::invalid(
                    t,
                    &info.kind,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            };
            const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
            loop {
                let suffix: String = (0..5)
                    .map(|_| ALPHABET[(self.random() % ALPHABET.len() as u64) as usize] as char)
                    .collect();
                name = format!("{prefix}{suffix}");
                if self.stored(&key, &ns, &name).is_none() {
                    break;
                }
            }
        }
        if !valid_name(&name) {
            return Err(ApiError::invalid(
                t,
                &info.kind,
                &name,
                "metadata.name: Invalid value: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'",
            ));
        }
        if self.stored(&key, &ns, &name).is_some() {
            return Err(ApiError::already_exists(t, &name));
        }
        obj["apiVersion"] = Value::String(t.api_version());
        obj["kind"] = Value::String(info.kind.clone());
        if info.status_subresource
            && let Value::Object(m) = &mut obj
        {
            m.remove("status");
        }
        let uid = self.uid();
        let m = meta_mut(&mut obj);
        m.insert("name".into(), Value::String(name.clone()));
        if info.namespaced {
            m.insert("namespace".into(), Value::String(ns));
        } else {
            m.remove("namespace");
        }
        for field in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
            "managedFields",
            "generation",
        ] {
            m.remove(field);
        }
        m.insert("uid".into(), Value::String(uid));
        m.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
        if info.tracks_generation {
            m.insert("generation".into(), json!(1));
        }
        normalize_metadata(&mut obj);
        let applied = (writer.operation == "Apply").then(|| obj.clone());
        self.record_manager(&mut obj, t, writer, applied.as_ref());
        if dry_run(q) {
            return Ok((201, Self::present(t, &info, &obj)));
        }
        let stored = self.commit(&key, ChangeType::Added, obj, None);
        Ok((201, Self::present(t, &info, &stored)))
    }

    /// PUT of an object or its status.
    pub(crate) fn replace(
        &mut self,
        t: &Target,
        q: &Query,
        body: Value,
        writer: &Writer<'_>,
    ) -> Reply {
        let key = t.key();
        let info = self.info(&key);
        self.check_scope(t, &info)?;
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        let name = t.name.clone().unwrap_or_default();
        if let Some(body_name) = meta(&body, "name").filter(|n| !n.is_empty() && *n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let ns = t.namespace.clone().unwrap_or_default();
        let old = self
            .stored(&key, &ns, &name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(t, &name))?;
        self.write_existing(t, &info, q, old, body, writer, None)
    }

    /// PATCH of an object or its status, in any of the four patch flavours.
    pub(crate) fn patch(
        &mut self,
        t: &Target,
        q: &Query,
        body: &[u8],
        content_type: &str,
        writer: &mut Writer<'_>,
    ) -> Reply {
        let key = t.key();
        let info = self.info(&key);
        self.check_scope(t, &info)?;
        let name = t.name.clone().unwrap_or_default();
        let ns = t.namespace.clone().unwrap_or_default();
        let media = content_type.split(';').next().unwrap_or("").trim();
        let parse_json = || {
            serde_json::from_slice::<Value>(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))
        };
        let old = self.stored(&key, &ns, &name).cloned();
        match media {
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                let applied: Value = match serde_json::from_slice(body) {
                    Ok(v) => v,
                    Err(_) => serde_yaml::from_slice(body)
                        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?,
                };
                if !q.contains_key("fieldManager") {
                    return Err(ApiError::bad_request(
                        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                    ));
                }
                for field in ["apiVersion", "kind"] {
                    if applied
                        .get(field)
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                    {
                        return Err(ApiError::bad_request(format!(
                            "{field} must be set in an applied configuration"
                        )));
                    }
                }
                writer.operation = "Apply";
                let Some(old) = old else {
                    if t.subresource.is_some() {
                        return Err(ApiError::not_found(t, &name));
                    }
                    let mut obj = applied;
                    meta_mut(&mut obj).insert("name".into(), Value::String(name.clone()));
                    return self.create(t, q, obj, writer);
                };
                let mut merged = old.clone();
                merge_patch(&mut merged, &applied);
                self.write_existing(t, &info, q, old, merged, writer, Some(&applied))
            }
            "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                let patch = parse_json()?;
                let old = old.ok_or_else(|| ApiError::not_found(t, &name))?;
                let mut merged = old.clone();
                merge_patch(&mut merged, &patch);
                self.write_existing(t, &info, q, old, merged, writer, None)
            }
            "application/json-patch+json" => {
                let patch = parse_json()?;
                let old = old.ok_or_else(|| ApiError::not_found(t, &name))?;
                let mut patched = old.clone();
                json_patch(&mut patched, &patch).map_err(|e| match e {
                    PatchError::Malformed(m) => ApiError::bad_request(m),
                    PatchError::Failed(m) => ApiError::new(422, "Invalid", m),
                })?;
                self.write_existing(t, &info, q, old, patched, writer, None)
            }
            other => Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml; got {other:?}"
                ),
            )),
        }
    }

    /// The shared tail of every update: status/spec separation, server-owned metadata,
    /// optimistic concurrency, generation, no-op detection and finalization.
    #[allow(clippy::too_many_arguments)]
    fn write_existing(
        &mut self,
        t: &Target,
        info: &TypeInfo,
        q: &Query,
        old: Value,
        candidate: Value,
        writer: &Writer<'_>,
        applied: Option<&Value>,
    ) -> Reply {
        let key = t.key();
        let name = t.name.clone().unwrap_or_default();
        if !candidate.is_object() {
            return Err(ApiError::bad_request(
                "the patched object must be a JSON object",
            ));
        }
        let old_uid = meta(&old, "uid").unwrap_or_default();
        if let Some(uid) = meta(&candidate, "uid").filter(|u| !u.is_empty() && *u != old_uid) {
            return Err(ApiError::conflict(
                t,
                &name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {old_uid}"
                ),
            ));
        }
        let old_rv = meta(&old, "resourceVersion").unwrap_or_default();
        if let Some(rv) = meta(&candidate, "resourceVersion").filter(|rv| !rv.is_empty())
            && rv != old_rv
        {
            return Err(ApiError::conflict(
                t,
                &name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        if let Some(n) = meta(&candidate, "name").filter(|n| *n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        if info.namespaced
            && let Some(ns) = meta(&candidate, "namespace").filter(|n| !n.is_empty())
            && Some(&ns) != t.namespace.as_ref()
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let status_write = t.subresource.as_deref() == Some("status");
        let mut new = if status_write {
            let mut n = old.clone();
            if let (Value::Object(m), Some(status)) = (&mut n, candidate.get("status")) {
                m.insert("status".into(), status.clone());
            } else if let Value::Object(m) = &mut n {
                m.remove("status");
            }
            n
        } else {
            let mut n = candidate;
            if info.status_subresource
                && let Value::Object(m) = &mut n
            {
                match old.get("status") {
                    Some(s) => m.insert("status".into(), s.clone()),
                    None => m.remove("status"),
                };
            }
            n
        };
        new["apiVersion"] = old
            .get("apiVersion")
            .cloned()
            .unwrap_or(Value::String(t.api_version()));
        new["kind"] = Value::String(info.kind.clone());
        {
            let old_meta = old
                .get("metadata")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let m = meta_mut(&mut new);
            m.insert("name".into(), Value::String(name.clone()));
            if let Some(ns) = &t.namespace {
                m.insert("namespace".into(), Value::String(ns.clone()));
            }
            m.remove("selfLink");
            for field in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "resourceVersion",
                "managedFields",
            ] {
                match old_meta.get(field) {
                    Some(v) => m.insert(field.into(), v.clone()),
                    None => m.remove(field),
                };
            }
        }
        normalize_metadata(&mut new);
        let deleting = old.pointer("/metadata/deletionTimestamp").is_some();
        if deleting {
            let before = finalizers(&old);
            let added: Vec<String> = finalizers(&new)
                .into_iter()
                .filter(|f| !before.contains(f))
                .collect();
            if !added.is_empty() {
                return Err(ApiError::invalid(
                    t,
                    &info.kind,
                    &name,
                    &format!(
                        "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"
                    ),
                ));
            }
        }
        if info.tracks_generation && spec_changed(&old, &new, info.status_subresource) {
            let generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut new).insert("generation".into(), json!(generation + 1));
        }
        if new == old {
            return Ok((200, Self::present(t, info, &old)));
        }
        self.record_manager(&mut new, t, writer, applied);
        if dry_run(q) {
            return Ok((200, Self::present(t, info, &new)));
        }
        if deleting && finalizers(&new).is_empty() {
            // The server deletes instead of storing the update; both the reply and the
            // DELETED event carry the last stored state.
            self.commit(&key, ChangeType::Deleted, old.clone(), None);
            return Ok((200, Self::present(t, info, &old)));
        }
        let stored = self.commit(&key, ChangeType::Modified, new, Some(old));
        Ok((200, Self::present(t, info, &stored)))
    }

    /// DELETE of one object: finalizers turn it into a deletionTimestamp update.
    pub(crate) fn delete(&mut self, t: &Target, q: &Query, body: &[u8]) -> Reply {
        let key = t.key();
        let info = self.info(&key);
        self.check_scope(t, &info)?;
        if t.subresource.is_some() {
            return Err(ApiError::method_not_allowed("DELETE"));
        }
        let options: Value = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
        };
        let dry = dry_run(q)
            || options
                .get("dryRun")
                .and_then(Value::as_array)
                .is_some_and(|d| d.iter().any(|v| v == "All"));
        let name = t.name.clone().unwrap_or_default();
        let ns = t.namespace.clone().unwrap_or_default();
        let old = self
            .stored(&key, &ns, &name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(t, &name))?;
        for (field, label) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
            if let Some(want) = options
                .pointer(&format!("/preconditions/{field}"))
                .and_then(Value::as_str)
            {
                let have = meta(&old, field).unwrap_or_default();
                if want != have {
                    return Err(ApiError::conflict(
                        t,
                        &name,
                        &format!(
                            "Precondition failed: {label} in precondition: {want}, {label} in object meta: {have}"
                        ),
                    ));
                }
            }
        }
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            return Ok((200, Self::present(t, &info, &old)));
        }
        if !finalizers(&old).is_empty() {
            let mut new = old.clone();
            let generation = old.pointer("/metadata/generation").and_then(Value::as_i64);
            let m = meta_mut(&mut new);
            m.insert("deletionTimestamp".into(), Value::String(now_rfc3339()));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            if let Some(g) = generation.filter(|g| *g > 0) {
                m.insert("generation".into(), json!(g + 1));
            }
            if dry {
                return Ok((200, Self::present(t, &info, &new)));
            }
            let stored = self.commit(&key, ChangeType::Modified, new, Some(old));
            return Ok((200, Self::present(t, &info, &stored)));
        }
        if !dry {
            self.commit(&key, ChangeType::Deleted, old.clone(), None);
        }
        Ok((200, Self::present(t, &info, &old)))
    }

    /// DELETE of a collection: deletes every selected object and lists what was deleted.
    pub(crate) fn delete_collection(
        &mut self,
        t: &Target,
        q: &Query,
        body: &[u8],
        filter: &Filter,
    ) -> Reply {
        let info = self.info(&t.key());
        self.check_scope(t, &info)?;
        let names: Vec<(String, String)> = self
            .collection(t)
            .into_iter()
            .filter(|o| filter.matches(o))
            .map(|o| {
                (
                    meta(o, "namespace").unwrap_or_default(),
                    meta(o, "name").unwrap_or_default(),
                )
            })
            .collect();
        let mut items = Vec::new();
        for (ns, name) in names {
            let one = Target {
                namespace: (!ns.is_empty()).then_some(ns),
                name: Some(name),
                subresource: None,
                ..t.clone()
            };
            items.push(self.delete(&one, q, body)?.1);
        }
        Ok((
            200,
            json!({
                "apiVersion": t.api_version(),
                "kind": format!("{}List", info.kind),
                "metadata": {"resourceVersion": self.rv.to_string()},
                "items": items,
            }),
        ))
    }
}
