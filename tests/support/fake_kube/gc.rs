//! Garbage collection of dependents: what the cluster's garbage collector does with
//! objects whose `metadata.ownerReferences` name an owner that is gone, and the
//! propagation policy a DELETE asks for.
//!
//! The real collector is a controller that catches up asynchronously; here it runs
//! inside the write that removed the owner, through the ordinary delete and patch
//! paths, so every dependent change is a normal watch event with its own
//! resourceVersion.

use serde_json::{Value, json};

use super::field::FieldError;
use super::resource::{ApiError, Query, Target, TypeKey};
use super::store::{ChangeType, State, meta};

/// What a DELETE does to the object's dependents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Propagation {
    /// Dependents keep living, without their reference to the deleted owner.
    Orphan,
    /// Dependents are deleted after the owner (`Foreground` is taken to mean this too).
    Background,
}

/// The policy a DELETE asks for: `DeleteOptions` in the body, else query parameters,
/// as the server reads them; the deprecated `orphanDependents` still counts.
pub(crate) fn propagation(t: &Target, q: &Query, options: &Value) -> Result<Propagation, ApiError> {
    let policy = options
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .or_else(|| q.get("propagationPolicy").map(String::as_str))
        .filter(|p| !p.is_empty());
    let orphan_dependents = options
        .get("orphanDependents")
        .and_then(Value::as_bool)
        .or_else(|| q.get("orphanDependents").map(|v| v == "true"));
    let refuse = |error: FieldError| {
        ApiError::new(
            422,
            "Invalid",
            format!("DeleteOptions.meta.k8s.io \"\" is invalid: {error}"),
        )
    };
    match (policy, orphan_dependents) {
        (Some(p), Some(_)) => Err(refuse(FieldError::invalid(
            "propagationPolicy",
            &Value::String(p.to_string()),
            "orphanDependents and deletionPropagation cannot be both set",
        ))),
        (Some("Orphan"), None) | (None, Some(true)) => Ok(Propagation::Orphan),
        (Some("Background" | "Foreground"), None) | (None, Some(false)) => {
            Ok(Propagation::Background)
        }
        (Some(other), None) => Err(refuse(FieldError::not_supported(
            "propagationPolicy",
            &Value::String(other.to_string()),
            &[json!("Foreground"), json!("Background"), json!("Orphan")],
        ))),
        // batch/v1 Jobs orphan their Pods unless asked otherwise, for compatibility.
        (None, None) if t.group == "batch" && t.plural == "jobs" && t.version == "v1" => {
            Ok(Propagation::Orphan)
        }
        (None, None) => Ok(Propagation::Background),
    }
}

/// The uids an object's `metadata.ownerReferences` name.
fn owner_uids(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("uid").and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

impl State {
    /// Takes an object out of the store for good, then collects what it owned.
    pub(crate) fn remove(&mut self, key: &TypeKey, obj: Value) {
        let uid = meta(&obj, "uid");
        let ns = meta(&obj, "namespace").unwrap_or_default();
        self.commit(key, ChangeType::Deleted, obj, None);
        let Some(uid) = uid else { return };
        for (key, ns, name) in self.dependents_of(&uid, &ns) {
            // An earlier step of the cascade may have changed or removed it.
            let Some(dependent) = self.stored(&key, &ns, &name).cloned() else {
                continue;
            };
            let owners = owner_uids(&dependent);
            if !owners.contains(&uid) {
                continue;
            }
            let Some(target) = target_of(&key, &dependent) else {
                continue;
            };
            let (solid, dangling): (Vec<String>, Vec<String>) = owners
                .into_iter()
                .partition(|owner| self.exists(owner, &ns));
            // Refusals cannot be answered to anyone; the real collector would retry.
            if !solid.is_empty() {
                // A live owner keeps it; the collector drops the references that dangle.
                let _ = self.drop_owner_refs(&target, &dependent, &dangling);
            } else {
                let background = br#"{"propagationPolicy":"Background"}"#;
                let _ = self.delete(&target, &Query::new(), background);
            }
        }
    }

    /// Strips the references to `owner` from its dependents, as `Orphan` asks.
    pub(crate) fn orphan_dependents(&mut self, owner: &Value) {
        let Some(uid) = meta(owner, "uid") else {
            return;
        };
        let ns = meta(owner, "namespace").unwrap_or_default();
        for (key, ns, name) in self.dependents_of(&uid, &ns) {
            let Some(dependent) = self.stored(&key, &ns, &name).cloned() else {
                continue;
            };
            if let Some(target) = target_of(&key, &dependent) {
                let _ = self.drop_owner_refs(&target, &dependent, std::slice::from_ref(&uid));
            }
        }
    }

    /// Objects whose ownerReferences name `uid`: a namespaced owner can own only objects
    /// in its namespace, a cluster-scoped one objects anywhere.
    fn dependents_of(&self, uid: &str, owner_ns: &str) -> Vec<(TypeKey, String, String)> {
        let mut found = Vec::new();
        for (key, ts) in &self.types {
            for ((ns, name), obj) in &ts.objects {
                if (owner_ns.is_empty() || ns == owner_ns)
                    && owner_uids(obj).iter().any(|u| u == uid)
                {
                    found.push((key.clone(), ns.clone(), name.clone()));
                }
            }
        }
        found
    }

    /// Whether an object with this uid exists where a dependent in `ns` can refer to it.
    fn exists(&self, uid: &str, ns: &str) -> bool {
        self.types.values().any(|ts| {
            ts.objects.iter().any(|((owner_ns, _), obj)| {
                (owner_ns.is_empty() || owner_ns == ns)
                    && meta(obj, "uid").is_some_and(|u| u == uid)
            })
        })
    }

    /// Patches `uids` out of a dependent's ownerReferences, the way the collector
    /// patches: a merge patch guarded by the dependent's uid.
    fn drop_owner_refs(
        &mut self,
        target: &Target,
        dependent: &Value,
        uids: &[String],
    ) -> Result<(), ApiError> {
        let kept: Vec<Value> = dependent
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|r| {
                r.get("uid")
                    .and_then(Value::as_str)
                    .is_none_or(|u| !uids.iter().any(|gone| gone == u))
            })
            .cloned()
            .collect();
        let patch = json!({"metadata": {
            "uid": meta(dependent, "uid"),
            "ownerReferences": if kept.is_empty() { Value::Null } else { Value::Array(kept) },
        }});
        let body = serde_json::to_vec(&patch).unwrap_or_default();
        self.patch(target, &Query::new(), &body, "application/merge-patch+json")
            .map(|_| ())
    }
}

/// The API path of a stored object, in the version it was written in.
fn target_of(key: &TypeKey, obj: &Value) -> Option<Target> {
    let api_version = obj.get("apiVersion").and_then(Value::as_str)?;
    let version = api_version.rsplit('/').next()?.to_string();
    let ns = meta(obj, "namespace").filter(|ns| !ns.is_empty());
    Some(Target {
        group: key.group.clone(),
        version,
        plural: key.plural.clone(),
        namespace: ns,
        name: meta(obj, "name"),
        subresource: None,
    })
}
