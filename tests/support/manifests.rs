//! The manifests a user applies: what `kubectl kustomize` renders, as JSON values.

use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

/// What `kubectl kustomize DIR` renders, DIR relative to the checkout.
pub fn kustomize(dir: &str) -> Vec<Value> {
    let rendered = super::tools::run(
        Command::new("kubectl")
            .args(["kustomize", dir])
            .current_dir(super::paths::project_path("")),
        &format!("kubectl kustomize {dir}"),
    );
    documents(&rendered)
}

/// Every document of a multi-document YAML text.
pub fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("the YAML parses"))
        .collect()
}

/// The objects of this kind.
pub fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}
