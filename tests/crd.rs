//! The CRD must be a valid structural apiextensions.k8s.io/v1 schema that real API
//! servers accept (1.21 refuses `null` inside an `enum`; 1.25+ refuses CEL rules whose
//! worst-case cost is unbounded), with the columns `kubectl get ws` promises, and equal
//! to the committed file.

mod support;

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

/// Calls `visit` on every schema node under `node`, with its path.
fn walk<'a>(node: &'a Value, path: &str, visit: &mut impl FnMut(&'a Value, &str)) {
    visit(node, path);
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            walk(v, &format!("{path}.{k}"), visit);
        }
    }
    if let Some(items) = node.get("items") {
        walk(items, &format!("{path}[]"), visit);
    }
    if let Some(extra) = node.get("additionalProperties").filter(|v| v.is_object()) {
        walk(extra, &format!("{path}{{}}"), visit);
    }
}

#[test]
fn no_enum_lists_null() {
    let schema = schema();
    let mut with_null = Vec::new();
    walk(&schema, "", &mut |node, path| {
        let values = node.get("enum").and_then(Value::as_array);
        if values.is_some_and(|v| v.iter().any(Value::is_null)) {
            with_null.push(path.to_owned());
        }
    });
    assert!(
        with_null.is_empty(),
        "a 1.21 API server refuses the CRD: `null` in the enum of {with_null:?} (keep `nullable: true` instead)"
    );
}

/// A `self` or `oldSelf` reference in a CEL rule: the field path after the variable,
/// and whether the rule only asks `has()` of it.
#[derive(Debug)]
struct Reference {
    path: Vec<String>,
    presence_only: bool,
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The references a rule makes to its node, found in its text. A method call ends a
/// path (`self.all(...)` uses `self` itself); string literals are skipped.
fn references(rule: &str) -> Vec<Reference> {
    let chars: Vec<char> = rule.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' || c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        if !is_ident(c) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let member = chars[..start].iter().rev().find(|c| !c.is_whitespace()) == Some(&'.');
        if member || (word != "self" && word != "oldSelf") {
            continue;
        }
        let mut path = Vec::new();
        while i < chars.len() && chars[i] == '.' {
            let segment_start = i + 1;
            let mut end = segment_start;
            while end < chars.len() && is_ident(chars[end]) {
                end += 1;
            }
            if end == segment_start || chars.get(end) == Some(&'(') {
                break;
            }
            path.push(chars[segment_start..end].iter().collect());
            i = end;
        }
        let before: String = chars[..start].iter().collect();
        let after: String = chars[i..].iter().collect();
        let presence_only = !path.is_empty()
            && before.trim_end().ends_with("has(")
            && after.trim_start().starts_with(')');
        found.push(Reference {
            path,
            presence_only,
        });
    }
    found
}

/// The bound a real server's cost estimator needs on this node, if it lacks it.
fn missing_bound(node: &Value) -> Option<&'static str> {
    let has = |k: &str| node.get(k).is_some();
    let is = |k: &str| node.get(k) == Some(&Value::Bool(true));
    let map = node
        .get("additionalProperties")
        .is_some_and(Value::is_object)
        || (is("x-kubernetes-preserve-unknown-fields") && !has("properties"));
    match node.get("type").and_then(Value::as_str) {
        Some("array") if !has("maxItems") => Some("maxItems"),
        Some("object") if map && !has("maxProperties") => Some("maxProperties"),
        Some("string") if !has("maxLength") => Some("maxLength"),
        None if is("x-kubernetes-int-or-string") && !has("maxLength") => Some("maxLength"),
        _ => None,
    }
}

/// Follows a field path from a schema node, through properties and map values.
fn resolve<'a>(node: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(node, |node, segment| {
        node.pointer(&format!("/properties/{segment}"))
            .or_else(|| node.get("additionalProperties").filter(|v| v.is_object()))
    })
}

/// Everything a 1.25+ server's cost estimate needs bounded for the rules on one node:
/// the lists and maps it sits in (a rule runs once per element), each field a rule
/// tests with `has()`, and each value a rule reads, with everything under it.
fn unbounded_for_rules(node: &Value, path: &str, containers: &[(String, &Value)]) -> Vec<String> {
    let mut problems = Vec::new();
    let rules = node
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for rule in rules.iter().filter_map(|r| r["rule"].as_str()) {
        for (container_path, container) in containers {
            if let Some(bound) = missing_bound(container) {
                problems.push(format!(
                    "{path}: `{rule}` runs per element of {container_path}, which has no {bound}"
                ));
            }
        }
        for reference in references(rule) {
            let target = std::iter::once(path.to_owned())
                .chain(reference.path.iter().cloned())
                .collect::<Vec<_>>()
                .join(".");
            let Some(resolved) = resolve(node, &reference.path) else {
                problems.push(format!(
                    "{path}: `{rule}` names {target}, which the schema does not have"
                ));
                continue;
            };
            if reference.presence_only {
                if let Some(bound) = missing_bound(resolved) {
                    problems.push(format!(
                        "{path}: `{rule}` touches {target}, which has no {bound}"
                    ));
                }
                continue;
            }
            walk(resolved, &target, &mut |inner, inner_path| {
                if let Some(bound) = missing_bound(inner) {
                    problems.push(format!(
                        "{path}: `{rule}` reads {inner_path}, which has no {bound}"
                    ));
                }
            });
        }
    }
    problems
}

fn cost_problems<'a>(
    node: &'a Value,
    path: &str,
    containers: &mut Vec<(String, &'a Value)>,
    out: &mut Vec<String>,
) {
    out.extend(unbounded_for_rules(node, path, containers));
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            cost_problems(v, &format!("{path}.{k}"), containers, out);
        }
    }
    if let Some(items) = node.get("items") {
        containers.push((path.to_owned(), node));
        cost_problems(items, &format!("{path}[]"), containers, out);
        containers.pop();
    }
    if let Some(extra) = node.get("additionalProperties").filter(|v| v.is_object()) {
        containers.push((path.to_owned(), node));
        cost_problems(extra, &format!("{path}{{}}"), containers, out);
        containers.pop();
    }
}

#[test]
fn everything_a_cel_rule_touches_is_bounded() {
    let schema = schema();
    let mut problems = Vec::new();
    cost_problems(&schema, "", &mut Vec::new(), &mut problems);
    problems.dedup();
    assert!(
        problems.is_empty(),
        "a 1.25+ API server may refuse the CRD as too costly to validate:\n{}",
        problems.join("\n")
    );
}

#[test]
fn rule_references_are_read_as_intended() {
    let paths = |rule: &str| -> Vec<(String, bool)> {
        references(rule)
            .into_iter()
            .map(|r| (r.path.join("."), r.presence_only))
            .collect()
    };
    assert_eq!(
        paths("self == oldSelf"),
        [("".into(), false), ("".into(), false)]
    );
    assert_eq!(
        paths("has(self.ec2) == (self.runtime == 'ec2')"),
        [("ec2".into(), true), ("runtime".into(), false)]
    );
    assert_eq!(
        paths("self.all(k, !k.startsWith('tend.dev/'))"),
        [("".into(), false)]
    );
    assert_eq!(
        paths("self.a.b.size() < 3 && 'self.x' != oldSelf.c"),
        [("a.b".into(), false), ("c".into(), false)]
    );
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
        ("Instance", ".status.backend", 0),
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
        std::fs::read_to_string(support::paths::project_path("crds/workspace.yaml")).unwrap();
    assert!(
        committed == tend::crd_yaml(),
        "crds/workspace.yaml is stale: run `make crd`"
    );
}
