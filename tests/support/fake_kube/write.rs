//! Writes: create, replace, the patch flavours, delete, and the rules every write obeys.

use serde_json::{Value, json};

use super::apply::{self, Writer};
use super::crd;
use super::events;
use super::field::FieldError;
use super::gc::{Propagation, propagation};
use super::metadata;
use super::patch::{PatchError, json_patch, merge_patch};
use super::resource::{ApiError, Filter, Query, Reply, Target, TypeInfo};
use super::store::{ChangeType, State, finalizers, meta, meta_mut, now_rfc3339};

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

/// A write other than an apply, under the manager the request names.
fn updater(q: &Query) -> Writer {
    Writer {
        manager: q
            .get("fieldManager")
            .cloned()
            .unwrap_or_else(|| "unknown".into()),
        applied: None,
    }
}

fn dry_run(q: &Query) -> bool {
    q.get("dryRun").is_some_and(|v| v == "All")
}

fn is_events(t: &Target) -> bool {
    t.plural == "events" && (t.group.is_empty() || t.group == "events.k8s.io")
}

impl State {
    /// The server's validation of a write, after its defaults: the object's metadata,
    /// a custom resource's schema and rules, an Event's own rules. 422 names every field.
    fn admit(
        &mut self,
        t: &Target,
        info: &TypeInfo,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        let mut errors = metadata::errors(obj);
        errors.extend(crd::admit(obj, old, info, &mut self.unevaluated_rules));
        if is_events(t) {
            let ns = t.namespace.as_deref().unwrap_or_default();
            errors.extend(match old {
                None => events::validate_create(obj, &t.group, ns)?,
                Some(old) => events::validate_update(obj, old, &t.group, ns)?,
            });
        }
        if errors.is_empty() {
            Ok(())
        } else {
            let name = meta(obj, "name").unwrap_or_default();
            Err(ApiError::invalid(t, &info.kind, &name, &errors))
        }
    }

    /// POST to a collection.
    pub(crate) fn create(&mut self, t: &Target, q: &Query, obj: Value) -> Reply {
        self.create_as(t, q, obj, &updater(q))
    }

    fn create_as(&mut self, t: &Target, q: &Query, mut obj: Value, writer: &Writer) -> Reply {
        let key = t.key();
        let info = self.info(t)?;
        self.check_scope(t, &info)?;
        if t.subresource.is_some() {
            return Err(ApiError::method_not_allowed("POST"));
        }
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        if let Some(kind) = obj
            .get("kind")
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty() && *k != info.kind)
        {
            return Err(ApiError::bad_request(format!(
                "the kind of the object ({kind}) does not match {}",
                info.kind
            )));
        }
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
        if info.namespaced && !self.namespace_exists(&ns) {
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
                    &[FieldError::required("metadata.name")],
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
        if !metadata::valid_name(&name) {
            return Err(ApiError::invalid(
                t,
                &info.kind,
                &name,
                &[FieldError::invalid(
                    "metadata.name",
                    &Value::String(name.clone()),
                    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'",
                )],
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
        metadata::normalize(&mut obj);
        let managed = apply::record(t, None, &obj, writer);
        meta_mut(&mut obj).insert("managedFields".into(), managed);
        self.admit(t, &info, &mut obj, None)?;
        if dry_run(q) {
            return Ok((201, Self::present(t, &info, &obj)));
        }
        let stored = self.commit(&key, ChangeType::Added, obj, None);
        Ok((201, Self::present(t, &info, &stored)))
    }

    /// PUT of an object or its status.
    pub(crate) fn replace(&mut self, t: &Target, q: &Query, body: Value) -> Reply {
        let key = t.key();
        let info = self.info(t)?;
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
        self.write_existing(t, &info, q, old, body, &updater(q))
    }

    /// PATCH of an object or its status with a merge or JSON patch, or a server-side
    /// apply; built-in kinds also take strategic merge patches.
    pub(crate) fn patch(
        &mut self,
        t: &Target,
        q: &Query,
        body: &[u8],
        content_type: &str,
    ) -> Reply {
        let key = t.key();
        let info = self.info(t)?;
        self.check_scope(t, &info)?;
        let name = t.name.clone().unwrap_or_default();
        let ns = t.namespace.clone().unwrap_or_default();
        let media = content_type.split(';').next().unwrap_or("").trim();
        let custom = info.schema.is_some();
        let accepted = if custom {
            "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
        } else {
            "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json"
        };
        let parse_json = || {
            serde_json::from_slice::<Value>(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))
        };
        let old = self.stored(&key, &ns, &name).cloned();
        match media {
            "application/merge-patch+json" => {
                let patch = parse_json()?;
                let old = old.ok_or_else(|| ApiError::not_found(t, &name))?;
                let mut merged = self.current(t, &info, &old);
                merge_patch(&mut merged, &patch);
                self.write_existing(t, &info, q, old, merged, &updater(q))
            }
            // Built-in kinds only: the server refuses strategic merge on custom resources.
            "application/strategic-merge-patch+json" if !custom => {
                let patch = parse_json()?;
                let old = old.ok_or_else(|| ApiError::not_found(t, &name))?;
                let mut merged = self.current(t, &info, &old);
                merge_patch(&mut merged, &patch);
                self.write_existing(t, &info, q, old, merged, &updater(q))
            }
            "application/json-patch+json" => {
                let patch = parse_json()?;
                let old = old.ok_or_else(|| ApiError::not_found(t, &name))?;
                let mut patched = self.current(t, &info, &old);
                json_patch(&mut patched, &patch).map_err(|e| match e {
                    PatchError::Malformed(m) => ApiError::bad_request(m),
                    PatchError::Failed(m) => ApiError::new(422, "Invalid", m),
                })?;
                self.write_existing(t, &info, q, old, patched, &updater(q))
            }
            "application/apply-patch+yaml" => self.apply(t, &info, q, body, old),
            other => Err(ApiError::unsupported_media_type(format!(
                "the body of the request was in an unknown format - accepted media types include: {accepted}; got {other:?}"
            ))),
        }
    }

    /// A server-side apply: creates the object if it is missing; otherwise merges the
    /// applied fields in, refusing (409) to change fields another manager owns unless
    /// `force=true`.
    fn apply(
        &mut self,
        t: &Target,
        info: &TypeInfo,
        q: &Query,
        body: &[u8],
        old: Option<Value>,
    ) -> Reply {
        let name = t.name.clone().unwrap_or_default();
        let Some(manager) = q.get("fieldManager").filter(|m| !m.is_empty()).cloned() else {
            return Err(ApiError::new(
                422,
                "Invalid",
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            ));
        };
        let applied: Value = serde_json::from_slice(body)
            .or_else(|_| serde_yaml::from_slice(body))
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
        if !applied.is_object() {
            return Err(ApiError::bad_request(
                "the applied configuration must be an object",
            ));
        }
        for (field, want) in [("apiVersion", t.api_version()), ("kind", info.kind.clone())] {
            match applied.get(field).and_then(Value::as_str) {
                Some(got) if got == want => {}
                got => {
                    return Err(ApiError::bad_request(format!(
                        "invalid object type: {field} must be {want:?}, got {got:?}"
                    )));
                }
            }
        }
        if let Some(n) = meta(&applied, "name").filter(|n| !n.is_empty() && *n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        let force = q.get("force").is_some_and(|f| f == "true");
        match old {
            None => {
                if t.subresource.is_some() {
                    return Err(ApiError::not_found(t, &name));
                }
                let mut obj = applied.clone();
                meta_mut(&mut obj).insert("name".into(), Value::String(name));
                let writer = Writer {
                    manager,
                    applied: Some(apply::leaves(&applied).into_keys().collect()),
                };
                let collection = Target {
                    name: None,
                    ..t.clone()
                };
                self.create_as(&collection, q, obj, &writer)
            }
            Some(old) => {
                let current = self.current(t, info, &old);
                let (merged, owned) = apply::merge(t, &name, &current, &applied, &manager, force)?;
                let writer = Writer {
                    manager,
                    applied: Some(owned),
                };
                self.write_existing(t, info, q, old, merged, &writer)
            }
        }
    }

    /// The stored object as a patch sees it: with the defaults a read would show.
    fn current(&self, t: &Target, info: &TypeInfo, stored: &Value) -> Value {
        Self::present(t, info, stored)
    }

    /// The shared tail of every update: status/spec separation, server-owned metadata,
    /// optimistic concurrency, validation, generation, no-op detection and finalization.
    fn write_existing(
        &mut self,
        t: &Target,
        info: &TypeInfo,
        q: &Query,
        old: Value,
        candidate: Value,
        writer: &Writer,
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
        metadata::normalize(&mut new);
        let managed = apply::record(t, Some(&old), &new, writer);
        meta_mut(&mut new).insert("managedFields".into(), managed);
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
                    &[FieldError::forbidden(
                        "metadata.finalizers",
                        &format!(
                            "no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"
                        ),
                    )],
                ));
            }
        }
        let old_seen = self.current(t, info, &old);
        self.admit(t, info, &mut new, Some(&old_seen))?;
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
        if dry_run(q) {
            return Ok((200, Self::present(t, info, &new)));
        }
        if deleting && finalizers(&new).is_empty() {
            // The server deletes instead of storing the update; both the reply and the
            // DELETED event carry the last stored state.
            self.remove(&key, old.clone());
            return Ok((200, Self::present(t, info, &old)));
        }
        let stored = self.commit(&key, ChangeType::Modified, new, Some(old));
        Ok((200, Self::present(t, info, &stored)))
    }

    /// DELETE of one object: finalizers turn it into a deletionTimestamp update; the
    /// propagation policy decides what becomes of its dependents.
    pub(crate) fn delete(&mut self, t: &Target, q: &Query, body: &[u8]) -> Reply {
        let key = t.key();
        let info = self.info(t)?;
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
        let policy = propagation(t, q, &options)?;
        let name = t.name.clone().unwrap_or_default();
        let ns = t.namespace.clone().unwrap_or_default();
        let mut old = self
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
        if policy == Propagation::Orphan && !dry {
            // The real server adds an `orphan` finalizer the collector then acts on; this
            // orphans at once. Re-read: an object may own itself.
            self.orphan_dependents(&old);
            old = self
                .stored(&key, &ns, &name)
                .cloned()
                .ok_or_else(|| ApiError::not_found(t, &name))?;
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
            self.remove(&key, old.clone());
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
        let info = self.info(t)?;
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
