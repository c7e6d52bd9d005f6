//! `deploy/monitoring/`: the alert rules pass their promtool tests, the
//! PrometheusRule carries exactly those rules, the alerts the operator needs are
//! there, and the rules and the dashboard name only metrics tend serves.

mod support;

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;
use support::manifests::{kustomize, of_kind};
use support::paths::project_path;

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(project_path(path)).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn promtool(args: &[&str]) {
    support::tools::ensure("promtool", "prometheus");
    support::tools::run(
        Command::new("promtool")
            .args(args)
            .current_dir(project_path("")),
        &format!("promtool {args:?}"),
    );
}

#[test]
fn the_alert_rules_pass_their_promtool_tests() {
    promtool(&["check", "rules", "deploy/monitoring/rules.yaml"]);
    promtool(&["test", "rules", "deploy/monitoring/rules-test.yaml"]);
}

#[test]
fn the_prometheus_rule_carries_exactly_the_tested_rules() {
    let rule = yaml("deploy/monitoring/prometheusrule.yaml");
    assert_eq!(rule["kind"], "PrometheusRule");
    assert_eq!(
        rule["spec"],
        yaml("deploy/monitoring/rules.yaml"),
        "prometheusrule.yaml's spec must be rules.yaml"
    );
    let rendered = kustomize("deploy/monitoring/");
    assert_eq!(of_kind(&rendered, "PrometheusRule").len(), 1);
    let maps = of_kind(&rendered, "ConfigMap");
    assert_eq!(maps.len(), 1);
    assert_eq!(maps[0]["metadata"]["labels"]["grafana_dashboard"], "1");
    let dashboard: Value =
        serde_json::from_str(maps[0]["data"]["tend.json"].as_str().unwrap()).unwrap();
    assert_eq!(dashboard["uid"], "tend");
}

#[test]
fn the_alerts_an_operator_needs_are_there() {
    let rules = yaml("deploy/monitoring/rules.yaml");
    let alerts: BTreeSet<&str> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["alert"].as_str())
        .collect();
    for needed in [
        "TendCircuitBreakerTripped",
        "TendDescribeCallsFailing",
        "TendSweepsOverdue",
        "TendNoRecentSweep",
        "TendWorkspacesCrashLooping",
        "TendObservationsStale",
        "TendNoLeader",
    ] {
        assert!(alerts.contains(needed), "{needed} is missing: {alerts:?}");
    }
}

/// Every `tend_*` name in `text`, a histogram's series named by its family.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("tend_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(family.to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn rules_and_dashboard_name_only_metrics_tend_serves() {
    let documented =
        metric_names(&std::fs::read_to_string(project_path("docs/metrics.md")).unwrap());
    for file in [
        "deploy/monitoring/rules.yaml",
        "deploy/monitoring/dashboard.json",
    ] {
        let used = metric_names(&std::fs::read_to_string(project_path(file)).unwrap());
        assert!(!used.is_empty(), "{file} names no metric");
        let unknown: Vec<_> = used.difference(&documented).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics tend does not serve: {unknown:?}"
        );
    }
}
