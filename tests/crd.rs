//! The CRD must be a valid structural apiextensions.k8s.io/v1 schema, with the
//! columns `kubectl get ws` promises, and equal to the committed file.

use kube::CustomResourceExt;
use serde_json::Value;
use tend::api::Workspace;

fn schema() -> Value {
    let crd = serde_json::to_value(Workspace::crd()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// Structural: every node has a type (or is int-or-string), and no
/// $ref/anyOf/oneOf/allOf/not stands in for one.
fn structural_problems(node: &Value, path: &str, out: &mut Vec<String>) {
    let Some(obj) = node.as_object() else { return };
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    for k in ["$ref", "anyOf", "oneOf", "allOf", "not"] {
        if obj.contains_key(k) && !int_or_string {
            out.push(format!("{path}: {k}"));
        }
    }
    if !obj.contains_key("type") && !int_or_string && !preserve {
        out.push(format!("{path}: no type"));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            structural_problems(v, &format!("{path}.{k}"), out);
        }
    }
    if let Some(items) = obj.get("items") {
        structural_problems(items, &format!("{path}[]"), out);
    }
    if let Some(extra) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        structural_problems(extra, &format!("{path}{{}}"), out);
    }
}

#[test]
fn the_schema_is_structural() {
    let mut problems = Vec::new();
    structural_problems(&schema(), "", &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn names_scope_and_subresources() {
    let crd = Workspace::crd();
    assert_eq!(crd.metadata.name.as_deref(), Some("workspaces.tend.dev"));
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.short_names, Some(vec!["ws".to_owned()]));
    assert_eq!(crd.spec.names.categories, Some(vec!["tend".to_owned()]));
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.subresources.as_ref().unwrap().status.is_some());
}

#[test]
fn printer_columns_tell_the_truth_at_a_glance() {
    let crd = Workspace::crd();
    let columns = crd.spec.versions[0]
        .additional_printer_columns
        .clone()
        .unwrap();
    let summary: Vec<(String, String, i32)> = columns
        .iter()
        .map(|c| (c.name.clone(), c.json_path.clone(), c.priority.unwrap_or(0)))
        .collect();
    let expect = [
        ("Runtime", ".spec.runtime", 0),
        ("Phase", ".status.phase", 0),
        (
            "Ready",
            ".status.conditions[?(@.type==\"Ready\")].status",
            0,
        ),
        ("Instance", ".status.instanceId", 0),
        ("Restarts", ".status.restarts", 0),
        ("Age", ".metadata.creationTimestamp", 0),
        (
            "Reason",
            ".status.conditions[?(@.type==\"Ready\")].reason",
            1,
        ),
        ("Last Observed", ".status.observation.observedAt", 1),
    ];
    let expect: Vec<(String, String, i32)> = expect
        .iter()
        .map(|(n, p, w)| (n.to_string(), p.to_string(), *w))
        .collect();
    assert_eq!(summary, expect);
}

#[test]
fn conditions_are_a_list_map_keyed_by_type() {
    let conditions = &schema()["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"][0], "type");
}

#[test]
fn the_committed_crd_is_current() {
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/workspace.yaml"))
            .unwrap();
    assert!(
        committed == tend::crd_yaml(),
        "crds/workspace.yaml is stale: run `make crd`"
    );
}
