//! Writing status: only when it changed, guarded by resourceVersion, with
//! explicit nulls for fields that went away.

use kube::api::{Api, Patch, PatchParams};
use serde_json::{Map, Value, json};

use crate::api::{Workspace, WorkspaceStatus};

/// RFC 7386 merge patch that turns `old` into `new` (`null` removes a key).
pub fn merge_diff(old: &Value, new: &Value) -> Value {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut patch = Map::new();
            for (k, v) in n {
                match o.get(k) {
                    Some(ov) if ov == v => {}
                    Some(ov) => {
                        patch.insert(k.clone(), merge_diff(ov, v));
                    }
                    None => {
                        patch.insert(k.clone(), v.clone());
                    }
                }
            }
            for k in o.keys().filter(|k| !n.contains_key(*k)) {
                patch.insert(k.clone(), Value::Null);
            }
            Value::Object(patch)
        }
        _ => new.clone(),
    }
}

/// Patches `.status` from `old` to `new`. The resourceVersion makes a write
/// computed from a stale cache fail with 409 instead of overwriting newer facts.
pub async fn write(
    api: &Api<Workspace>,
    ws: &Workspace,
    old: &WorkspaceStatus,
    new: &WorkspaceStatus,
) -> Result<Workspace, kube::Error> {
    let name = ws.metadata.name.as_deref().unwrap_or_default();
    let old = serde_json::to_value(old).unwrap_or(Value::Null);
    let new = serde_json::to_value(new).unwrap_or(Value::Null);
    let patch = json!({
        "metadata": { "resourceVersion": ws.metadata.resource_version },
        "status": merge_diff(&old, &new),
    });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_keys_become_null_and_nested_changes_are_minimal() {
        let old = json!({"a": 1, "b": {"c": 1, "d": 2}, "gone": "x"});
        let new = json!({"a": 1, "b": {"c": 2, "d": 2}, "added": true});
        assert_eq!(
            merge_diff(&old, &new),
            json!({"b": {"c": 2}, "gone": null, "added": true})
        );
    }
}
