//! What `deploy/iam-policy.json` demands of create calls, and what a create
//! call (as seen at the fault proxy) tags.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// The policy's stand-in for the cluster name; any value is fine for it.
const PLACEHOLDER: &str = "my-cluster";

/// A tag a create call must carry for one resource type: its key, and its
/// value where the policy fixes one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Required {
    pub key: String,
    pub value: Option<String>,
}

/// The policy as one map: (action, resource type) → the request tags the
/// statements allowing it require, or an empty list where one allows it
/// without conditions on request tags.
pub struct Policy {
    pub allowed: BTreeMap<(String, String), Vec<Vec<Required>>>,
}

impl Policy {
    pub fn load() -> Policy {
        let path = crate::support::paths::project_path("deploy/iam-policy.json");
        let text = std::fs::read_to_string(path).expect("read deploy/iam-policy.json");
        let doc: Value = serde_json::from_str(&text).expect("the IAM policy is JSON");
        let mut allowed: BTreeMap<(String, String), Vec<Vec<Required>>> = BTreeMap::new();
        for statement in doc["Statement"].as_array().expect("Statement list") {
            if statement["Effect"] != "Allow" {
                continue;
            }
            let required = request_tags(&statement["Condition"]);
            for action in strings(&statement["Action"]) {
                for resource in strings(&statement["Resource"]) {
                    allowed
                        .entry((action.clone(), resource_type(&resource)))
                        .or_default()
                        .push(required.clone());
                }
            }
        }
        Policy { allowed }
    }

    /// The request-tag conditions of every statement allowing `action` on
    /// `resource` (named by type, or allowed by `*`).
    pub fn conditions(&self, action: &str, resource: &str) -> Vec<Vec<Required>> {
        [resource, "*"]
            .iter()
            .flat_map(|r| {
                self.allowed
                    .get(&(action.to_owned(), (*r).to_owned()))
                    .cloned()
                    .unwrap_or_default()
            })
            .collect()
    }
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// `arn:aws:ec2:*:*:volume/*` → `volume`; `*` stays `*`.
fn resource_type(arn: &str) -> String {
    if arn == "*" {
        return "*".into();
    }
    let last = arn.splitn(6, ':').nth(5).unwrap_or(arn);
    last.split('/').next().unwrap_or(last).to_owned()
}

/// The `aws:RequestTag/...` keys a statement's condition block requires.
fn request_tags(condition: &Value) -> Vec<Required> {
    let mut required = BTreeSet::new();
    let Some(operators) = condition.as_object() else {
        return Vec::new();
    };
    for (operator, keys) in operators {
        for (key, values) in keys.as_object().into_iter().flatten() {
            let Some(tag) = key.strip_prefix("aws:RequestTag/") else {
                continue;
            };
            let values = strings(values);
            let value = match operator.as_str() {
                // `Null: false` only asks for the key to be there.
                "Null" => {
                    if values.iter().any(|v| v == "true") {
                        continue;
                    }
                    None
                }
                "StringEquals" if values.len() == 1 && values[0] != PLACEHOLDER => {
                    Some(values[0].clone())
                }
                _ => None,
            };
            required.insert(Required {
                key: tag.to_owned(),
                value,
            });
        }
    }
    required.into_iter().collect()
}

/// One `TagSpecification.N`: its resource type, and its tags by index `M`.
type Spec = (Option<String>, BTreeMap<String, (String, String)>);

/// The tags a query-protocol create call puts on each resource type, from its
/// `TagSpecification.N.ResourceType` and `TagSpecification.N.Tag.M.Key/Value`
/// parameters.
pub fn tag_specifications(
    params: &BTreeMap<String, String>,
) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut by_spec: BTreeMap<String, Spec> = BTreeMap::new();
    for (key, value) in params {
        let Some(rest) = key.strip_prefix("TagSpecification.") else {
            continue;
        };
        let mut parts = rest.splitn(2, '.');
        let (Some(n), Some(field)) = (parts.next(), parts.next()) else {
            continue;
        };
        let entry = by_spec.entry(n.to_owned()).or_default();
        if field == "ResourceType" {
            entry.0 = Some(value.clone());
        } else if let Some(tag) = field.strip_prefix("Tag.") {
            let mut tag_parts = tag.splitn(2, '.');
            let (Some(m), Some(which)) = (tag_parts.next(), tag_parts.next()) else {
                continue;
            };
            let pair = entry.1.entry(m.to_owned()).or_default();
            match which {
                "Key" => pair.0 = value.clone(),
                "Value" => pair.1 = value.clone(),
                _ => {}
            }
        }
    }
    let mut tagged: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (resource, tags) in by_spec.into_values() {
        if let Some(resource) = resource {
            tagged
                .entry(resource)
                .or_default()
                .extend(tags.into_values());
        }
    }
    tagged
}
