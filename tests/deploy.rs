//! What `deploy/` and its shard overlay render: replicas that elect a leader, a
//! disruption budget that keeps one of them, flags tend accepts, and shards that
//! never share a Workspace or a Lease.

mod support;

use std::collections::BTreeSet;

use serde_json::Value;
use support::manifests::{kustomize, of_kind};
use tend::config::RunArgs;

/// The controller container's flags, parsed as `tend run` parses them.
fn run_args(deployment: &Value) -> RunArgs {
    let args: Vec<String> = serde_json::from_value(
        deployment["spec"]["template"]["spec"]["containers"][0]["args"].clone(),
    )
    .expect("the container has args");
    assert_eq!(args.first().map(String::as_str), Some("run"), "{args:?}");
    RunArgs::from_flags(&args[1..]).unwrap_or_else(|e| panic!("tend refuses {args:?}: {e}"))
}

fn matches(selector: &Value, labels: &Value) -> bool {
    selector["matchLabels"]
        .as_object()
        .is_some_and(|want| want.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// Every Deployment runs two replicas under leader election, rolls without ever
/// having none ready, and has a PodDisruptionBudget keeping one.
fn check_replicas(objects: &[Value]) -> Vec<RunArgs> {
    let budgets = of_kind(objects, "PodDisruptionBudget");
    of_kind(objects, "Deployment")
        .into_iter()
        .map(|d| {
            let name = d["metadata"]["name"].as_str().unwrap();
            assert_eq!(d["spec"]["replicas"], 2, "{name}");
            assert_eq!(
                d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0,
                "{name}"
            );
            let args = run_args(d);
            assert!(args.leader_election, "{name} runs without leader election");
            let grace = d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
                .as_u64()
                .expect("a termination grace period");
            assert!(
                grace > args.shutdown_timeout.as_secs() + args.lease_duration.as_secs() / 3,
                "{name}: the kubelet kills tend before it can finish and give up the Lease"
            );
            let labels = &d["spec"]["template"]["metadata"]["labels"];
            let covering: Vec<_> = budgets
                .iter()
                .filter(|b| matches(&b["spec"]["selector"], labels))
                .collect();
            assert_eq!(
                covering.len(),
                1,
                "{name}: one PodDisruptionBudget covers its Pods"
            );
            assert_eq!(covering[0]["spec"]["minAvailable"], 1, "{name}");
            args
        })
        .collect()
}

/// The Lease names the leader-election Role lets tend patch.
fn patchable_leases(objects: &[Value]) -> BTreeSet<String> {
    of_kind(objects, "Role")
        .into_iter()
        .flat_map(|r| r["rules"].as_array().cloned().unwrap_or_default())
        .filter(|rule| {
            rule["resources"]
                .as_array()
                .is_some_and(|r| r.iter().any(|x| x == "leases"))
                && rule["verbs"]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|x| x == "patch"))
        })
        .flat_map(|rule| {
            rule["resourceNames"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|n| n.as_str().map(str::to_string))
        .collect()
}

#[test]
fn deploy_runs_two_replicas_electing_a_leader() {
    let objects = kustomize("deploy/");
    let args = check_replicas(&objects);
    assert_eq!(args.len(), 1);
    assert_eq!(
        args[0].label_selector, None,
        "the default install owns every Workspace"
    );
    assert_eq!(
        patchable_leases(&objects),
        BTreeSet::from([args[0].lease_name.clone()])
    );
}

#[test]
fn each_shard_owns_its_own_workspaces_under_its_own_lease() {
    let objects = kustomize("deploy/shards/");
    let shards = check_replicas(&objects);
    assert!(shards.len() >= 2, "the overlay runs several shards");
    let selectors: BTreeSet<_> = shards
        .iter()
        .map(|a| {
            a.label_selector
                .clone()
                .expect("every shard has a selector")
        })
        .collect();
    let leases: BTreeSet<_> = shards.iter().map(|a| a.lease_name.clone()).collect();
    assert_eq!(
        selectors.len(),
        shards.len(),
        "two shards share a selector: {selectors:?}"
    );
    assert_eq!(
        leases.len(),
        shards.len(),
        "two shards share a Lease: {leases:?}"
    );
    assert_eq!(
        patchable_leases(&objects),
        leases,
        "the Role lets each shard renew its Lease"
    );
    // The Deployments' own selectors do not overlap either: neither adopts the other's Pods.
    let deployments = of_kind(&objects, "Deployment");
    for d in &deployments {
        let owning = deployments
            .iter()
            .filter(|other| {
                matches(
                    &other["spec"]["selector"],
                    &d["spec"]["template"]["metadata"]["labels"],
                )
            })
            .count();
        assert_eq!(
            owning, 1,
            "{}: its Pods match another Deployment",
            d["metadata"]["name"]
        );
    }
    // The shared objects are there once.
    for kind in ["Namespace", "ServiceAccount", "ClusterRole", "Service"] {
        assert_eq!(of_kind(&objects, kind).len(), 1, "{kind}");
    }
}

/// The image `deploy/` runs is the one the release workflow publishes for this
/// version, and the one `make image` builds.
#[test]
fn deploy_runs_the_image_published_for_this_version() {
    let workflow: Value = serde_yaml::from_str(
        &std::fs::read_to_string(support::paths::project_path(
            ".github/workflows/release.yml",
        ))
        .unwrap(),
    )
    .unwrap();
    let image = workflow["env"]["IMAGE"]
        .as_str()
        .expect("the workflow names its image");
    let published = format!("{image}:{}", env!("CARGO_PKG_VERSION"));
    for dir in ["deploy/", "deploy/shards/"] {
        for d in of_kind(&kustomize(dir), "Deployment") {
            assert_eq!(
                d["spec"]["template"]["spec"]["containers"][0]["image"], published,
                "{dir}: bump the image tag with Cargo.toml's version"
            );
        }
    }
    let script =
        std::fs::read_to_string(support::paths::project_path("scripts/build-image.sh")).unwrap();
    assert!(
        script.contains(&format!("image=\"${{IMAGE:-{image}}}\"")),
        "make image builds another name than the workflow publishes"
    );
}
