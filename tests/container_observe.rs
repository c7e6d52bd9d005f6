//! The container backend's look at many Pods, against the fake API server over
//! real HTTP: what the Pods and their Nodes say becomes Running, Pending,
//! NotRunning or Unknown, and an omission is asked about by name.

mod support;

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;
use support::fake_kube::FakeApiServer;
use support::kubelet::Kubelet;
use tend::backend::container::{ContainerBackend, ContainerSettings, LABEL_UID};
use tend::backend::{Backend, Probe};
use tend::core::Observation;

const GRACE: Duration = Duration::from_secs(300);

fn backend(server: &FakeApiServer) -> ContainerBackend {
    ContainerBackend::new(
        server.client(),
        ContainerSettings {
            cluster: "test".into(),
            not_found_grace: GRACE,
            probe_timeout: Duration::from_secs(5),
            max_in_flight: 4,
            namespace: None,
        },
    )
}

/// A Pod of tend's, scheduled on `node`, in `phase` with the workspace
/// container in `state`.
async fn pod(
    server: &FakeApiServer,
    name: &str,
    node: &str,
    phase: &str,
    state: serde_json::Value,
) {
    let pods: Api<Pod> = Api::namespaced(server.client(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {LABEL_UID: "uid-1"}},
        "spec": {"nodeName": node, "containers": [{"name": "workspace", "image": "busybox"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    kubelet(server).report(name, phase, state).await;
}

fn kubelet(server: &FakeApiServer) -> Kubelet {
    Kubelet::new(server.client(), "default")
}

fn probe(name: &str, launched_ago: Duration) -> Probe {
    Probe {
        id: name.into(),
        location: "default".into(),
        volume_id: None,
        launched_at: Some(Timestamp::now() - jiff::SignedDuration::try_from(launched_ago).unwrap()),
        silence: None,
    }
}

fn reason(obs: &Observation) -> Option<&str> {
    match obs {
        Observation::NotRunning(nr) => Some(&nr.reason),
        _ => None,
    }
}

#[tokio::test]
async fn pods_are_read_with_their_nodes_and_an_omission_is_asked_about_by_name() {
    let server = FakeApiServer::start().await;
    kubelet(&server).node("node-a", "True").await;
    kubelet(&server).node("node-b", "Unknown").await;
    pod(
        &server,
        "running",
        "node-a",
        "Running",
        json!({"running": {}}),
    )
    .await;
    pod(
        &server,
        "failed",
        "node-a",
        "Failed",
        json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}}),
    )
    .await;
    pod(
        &server,
        "on-lost-node",
        "node-b",
        "Running",
        json!({"running": {}}),
    )
    .await;
    let probes = [
        probe("running", GRACE * 2),
        probe("failed", GRACE * 2),
        probe("on-lost-node", GRACE * 2),
        probe("deleted", GRACE * 2),
        probe("just-created", Duration::from_secs(5)),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let observed = backend(&server).observe(&probes, deadline).await;
    let seen: Vec<&Observation> = observed.sightings.iter().map(|s| &s.observation).collect();
    assert_eq!(seen.len(), probes.len());
    assert_eq!(seen[0], &Observation::Running);
    assert_eq!(observed.sightings[0].zone.as_deref(), Some("node-a"));
    assert_eq!(reason(seen[1]), Some("PodFailed"));
    assert!(
        format!("{:?}", seen[1]).contains("OOMKilled"),
        "{:?}",
        seen[1]
    );
    // A lost node proves nothing either way.
    assert!(
        matches!(seen[2], Observation::Unknown { error } if error.contains("node-b")),
        "{:?}",
        seen[2]
    );
    // Left out of the list, then not found by name: gone once old enough.
    assert_eq!(reason(seen[3]), Some("PodDeleted"));
    assert!(observed.sightings[3].absent);
    assert!(
        matches!(seen[4], Observation::Unknown { .. }),
        "{:?}",
        seen[4]
    );
    assert!(!observed.sightings[4].absent);
    assert_eq!(
        observed.calls.confirmations, 2,
        "both omissions asked about by name"
    );
}

#[tokio::test]
async fn a_node_that_recovers_vouches_for_its_pod_again() {
    let server = FakeApiServer::start().await;
    kubelet(&server).node("node-a", "False").await;
    pod(
        &server,
        "dev-1",
        "node-a",
        "Running",
        json!({"running": {}}),
    )
    .await;
    let deadline = || tokio::time::Instant::now() + Duration::from_secs(30);
    let probes = [probe("dev-1", GRACE * 2)];
    let b = backend(&server);
    let before = b.observe(&probes, deadline()).await;
    assert!(matches!(
        before.sightings[0].observation,
        Observation::Unknown { .. }
    ));
    kubelet(&server).set_ready("node-a", "True").await;
    let after = b.observe(&probes, deadline()).await;
    assert_eq!(after.sightings[0].observation, Observation::Running);
}
