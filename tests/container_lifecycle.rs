//! A container Workspace's whole life against the fake API server: its claim
//! and Pod are created, owned and labelled; a failed Pod is replaced on the
//! same claim; a lost node or a Pod missing within the grace changes
//! nothing; stop and start keep the claim; deletion keeps or deletes it.
//! The tests play scheduler and kubelet.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::checks::{has_condition, published, wait_online_after};
use support::rig::{NS, Rig};
use tend::api::{Phase, Workspace};

const NODE: &str = "node-a";

fn pod_of(ws: &Workspace) -> String {
    ws.status.as_ref().unwrap().pod_name.clone().unwrap()
}

/// Owned by the Workspace (and by nothing else) and labelled with it.
fn assert_owned_and_labelled(object: &Value, ws: &Workspace) {
    let uid = ws.metadata.uid.as_deref().unwrap();
    let meta = &object["metadata"];
    assert_eq!(meta["labels"]["tend.dev/workspace-uid"], uid, "{meta}");
    assert_eq!(meta["labels"]["tend.dev/workspace"], "dev", "{meta}");
    let refs = meta["ownerReferences"]
        .as_array()
        .expect("owner references");
    assert_eq!(refs.len(), 1, "{meta}");
    assert_eq!(refs[0]["uid"], uid);
    assert_eq!(refs[0]["kind"], "Workspace");
    assert_eq!(refs[0]["controller"], true);
}

/// Creates the container Workspace `dev`, runs its first Pod and waits
/// until it is Online.
async fn online(rig: &Rig) -> Workspace {
    rig.kubelet().node(NODE, "True").await;
    rig.create(&rig.container_workspace("dev")).await;
    rig.wait_pod("dev-1").await;
    rig.kubelet().run("dev-1", NODE).await;
    rig.wait_phase("dev", Phase::Online).await
}

/// Waits until `dev` is in `phase` with `pod` recorded.
async fn wait_on_pod(rig: &Rig, phase: Phase, pod: &str) -> Workspace {
    let what = format!("{phase} on {pod}");
    rig.wait_ws("dev", &what, |w| {
        w.status
            .as_ref()
            .is_some_and(|s| s.phase == Some(phase) && s.pod_name.as_deref() == Some(pod))
    })
    .await
}

/// The claim the Pod mounts.
fn mounted_claim(pod: &Value) -> &str {
    pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
        .as_str()
        .expect("the Pod mounts a claim")
}

#[tokio::test]
async fn a_container_workspace_goes_online_with_an_owned_labelled_claim_and_pod() {
    let rig = Rig::start().await;
    rig.kubelet().node(NODE, "True").await;
    rig.create(&rig.container_workspace("dev")).await;
    let pod = rig.wait_pod("dev-1").await;
    // Not scheduled yet: the Pod is Pending, the Workspace Provisioning.
    let provisioning = wait_on_pod(&rig, Phase::Provisioning, "dev-1").await;
    assert_eq!(
        provisioning.status.as_ref().unwrap().volume_id.as_deref(),
        Some("dev-data")
    );
    rig.kubelet().run("dev-1", NODE).await;
    let ws = rig.wait_phase("dev", Phase::Online).await;
    assert!(has_condition(&ws, "BackendRunning", "True", "Running"));
    assert_eq!(pod_of(&ws), "dev-1");

    let claim = rig
        .core_object("persistentvolumeclaims", "dev-data")
        .unwrap();
    assert_owned_and_labelled(&claim, &ws);
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "1Gi");
    assert_owned_and_labelled(&pod, &ws);
    assert_eq!(pod["metadata"]["labels"]["tend.dev/launch"], "1");
    assert_eq!(pod["spec"]["restartPolicy"], "Never");
    assert_eq!(mounted_claim(&pod), "dev-data");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["image"], "busybox");
    assert_eq!(container["command"][1], "infinity");
    assert_eq!(container["volumeMounts"][0]["mountPath"], "/data");
}

#[tokio::test]
async fn a_failed_pod_goes_offline_and_is_replaced_on_the_same_claim() {
    let rig = Rig::start().await;
    online(&rig).await;
    rig.kubelet().fail("dev-1", 137, "OOMKilled").await;
    let offline = rig.wait_phase("dev", Phase::Offline).await;
    assert!(
        has_condition(&offline, "Ready", "False", "PodFailed"),
        "{:?}",
        offline.status
    );
    rig.wait_event("dev", "PodFailed").await;
    // The replacement comes with a new name; the failed Pod is retired first.
    let replacement = rig.wait_pod("dev-2").await;
    rig.wait_core_gone("pods", "dev-1").await;
    assert_eq!(mounted_claim(&replacement), "dev-data");
    rig.kubelet().run("dev-2", NODE).await;
    let healed = wait_online_after(&rig, "dev", 1).await;
    assert_eq!(pod_of(&healed), "dev-2");
    assert_eq!(
        healed.status.as_ref().unwrap().volume_id.as_deref(),
        Some("dev-data")
    );
    assert_eq!(
        healed.status.unwrap().last_restart.map(|r| r.reason),
        Some("PodFailed".to_owned())
    );
}

#[tokio::test]
async fn a_node_gone_not_ready_changes_nothing() {
    let rig = Rig::start().await;
    online(&rig).await;
    rig.kubelet().set_ready(NODE, "Unknown").await;
    let unknown = rig
        .wait_ws("dev", "BackendRunning=Unknown", |w| {
            has_condition(w, "BackendRunning", "Unknown", "ObservationFailed")
        })
        .await;
    assert_eq!(unknown.status.as_ref().unwrap().phase, Some(Phase::Online));
    // Well past the not-found grace and the stale threshold.
    rig.wait_sweeps(rig.sweeps() + 8).await;
    let ws = rig.get("dev").unwrap();
    assert_eq!(ws.status.as_ref().unwrap().phase, Some(Phase::Online));
    assert_eq!(pod_of(&ws), "dev-1");
    assert!(
        rig.core_object("pods", "dev-1").is_some(),
        "nothing deleted"
    );
    assert!(
        rig.core_object("pods", "dev-2").is_none(),
        "nothing replaced"
    );
    // The node reports again: Running again, with nothing done meanwhile.
    rig.kubelet().set_ready(NODE, "True").await;
    rig.wait_ws("dev", "BackendRunning=True", |w| {
        has_condition(w, "BackendRunning", "True", "Running")
    })
    .await;
    assert_eq!(rig.phase("dev"), Some(Phase::Online));
}

#[tokio::test]
async fn a_pod_missing_within_the_not_found_grace_changes_nothing() {
    let mut rig = Rig::new().await;
    rig.args.not_found_grace = Duration::from_secs(3600);
    rig.start_controller().await;
    online(&rig).await;
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(rig.kube.client(), NS);
    pods.delete("dev-1", &Default::default()).await.unwrap();
    rig.wait_ws("dev", "BackendRunning=Unknown", |w| {
        has_condition(w, "BackendRunning", "Unknown", "ObservationFailed")
    })
    .await;
    rig.wait_sweeps(rig.sweeps() + 6).await;
    let ws = rig.get("dev").unwrap();
    assert_eq!(ws.status.as_ref().unwrap().phase, Some(Phase::Online));
    assert_eq!(pod_of(&ws), "dev-1");
    assert!(
        rig.core_object("pods", "dev-2").is_none(),
        "nothing replaced"
    );
    assert_eq!(published(&rig, "dev", "PodDeleted"), 0);
}

#[tokio::test]
async fn a_pod_deleted_after_the_grace_is_healed() {
    let rig = Rig::start().await;
    online(&rig).await;
    // The rig's grace is 3 s after the launch.
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(rig.kube.client(), NS);
    pods.delete("dev-1", &Default::default()).await.unwrap();
    rig.wait_event("dev", "PodDeleted").await;
    rig.wait_pod("dev-2").await;
    rig.kubelet().run("dev-2", NODE).await;
    let healed = wait_online_after(&rig, "dev", 1).await;
    assert_eq!(pod_of(&healed), "dev-2");
}

#[tokio::test]
async fn stop_and_start_keep_the_claim() {
    let rig = Rig::start().await;
    let ws = online(&rig).await;
    let claim_uid = rig
        .core_object("persistentvolumeclaims", "dev-data")
        .unwrap()["metadata"]["uid"]
        .clone();
    rig.patch_spec("dev", serde_json::json!({"desiredState": "Stopped"}))
        .await;
    rig.wait_core_gone("pods", "dev-1").await;
    rig.wait_phase("dev", Phase::Stopped).await;
    let claim = rig
        .core_object("persistentvolumeclaims", "dev-data")
        .expect("the claim stays while stopped");
    assert_eq!(claim["metadata"]["uid"], claim_uid);

    rig.patch_spec("dev", serde_json::json!({"desiredState": "Running"}))
        .await;
    let pod = rig.wait_pod("dev-2").await;
    assert_eq!(mounted_claim(&pod), "dev-data");
    rig.kubelet().run("dev-2", NODE).await;
    let back = wait_on_pod(&rig, Phase::Online, "dev-2").await;
    assert_eq!(
        back.status.as_ref().unwrap().restarts,
        0,
        "a stop is no death"
    );
    let claim = rig
        .core_object("persistentvolumeclaims", "dev-data")
        .unwrap();
    assert_eq!(claim["metadata"]["uid"], claim_uid, "the same claim");
    assert_eq!(ws.metadata.uid, back.metadata.uid);
}

#[tokio::test]
async fn hibernation_is_refused_for_containers() {
    // The CRD's rules refuse it at the door...
    let rig = Rig::start().await;
    let mut ws = rig.container_workspace("dev");
    ws.spec.desired_state = tend::api::DesiredState::Hibernated;
    let refused = rig
        .workspaces()
        .create(&Default::default(), &ws)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("Hibernated"), "{refused}");
    drop(rig);
    // ...and where a server has no CEL, the controller refuses it itself.
    let rig = Rig::start_on(Rig::before_cel()).await;
    online(&rig).await;
    rig.patch_spec("dev", serde_json::json!({"desiredState": "Hibernated"}))
        .await;
    rig.wait_ws("dev", "InvalidSpec", |w| {
        has_condition(w, "Ready", "False", "InvalidSpec")
    })
    .await;
    rig.wait_sweeps(rig.sweeps() + 2).await;
    assert!(
        rig.core_object("pods", "dev-1").is_some(),
        "nothing stopped"
    );
    assert_eq!(rig.phase("dev"), Some(Phase::Online));
}

#[tokio::test]
async fn deletion_with_retain_lets_go_of_the_claim_before_the_workspace_goes() {
    let rig = Rig::start().await;
    let ws = online(&rig).await;
    rig.delete("dev").await;
    rig.wait_gone("dev").await;
    assert!(rig.core_object("pods", "dev-1").is_none());
    // Garbage collection ran when the Workspace went; the claim had no
    // owner reference left to follow.
    let claim = rig
        .core_object("persistentvolumeclaims", "dev-data")
        .expect("a retained claim outlives its Workspace");
    assert!(claim["metadata"]["ownerReferences"].is_null(), "{claim}");
    assert_eq!(
        claim["metadata"]["labels"]["tend.dev/workspace-uid"],
        ws.metadata.uid.as_deref().unwrap(),
        "still labelled, so people can find it"
    );
    rig.wait_event("dev", "Released").await;
}

#[tokio::test]
async fn deletion_with_delete_removes_the_claim() {
    let rig = Rig::start().await;
    rig.kubelet().node(NODE, "True").await;
    let mut ws = rig.container_workspace("dev");
    ws.spec
        .container
        .as_mut()
        .unwrap()
        .volume
        .as_mut()
        .unwrap()
        .reclaim_policy = tend::api::ReclaimPolicy::Delete;
    rig.create(&ws).await;
    rig.wait_pod("dev-1").await;
    rig.kubelet().run("dev-1", NODE).await;
    rig.wait_phase("dev", Phase::Online).await;
    rig.delete("dev").await;
    rig.wait_gone("dev").await;
    assert!(rig.core_object("pods", "dev-1").is_none());
    assert!(
        rig.core_object("persistentvolumeclaims", "dev-data")
            .is_none()
    );
}

#[tokio::test]
async fn a_pod_change_wakes_its_workspace_without_waiting_for_the_sweep() {
    let mut rig = Rig::new().await;
    // Only the first sweep comes from the interval; a look of the
    // reconciler's own that sees a death waits for a sweep to confirm it.
    rig.args.sweep_interval = Duration::from_secs(3600);
    rig.start_controller().await;
    online(&rig).await;
    let interval_sweeps = rig.sweeps();
    rig.kubelet().fail("dev-1", 1, "Error").await;
    rig.wait_phase("dev", Phase::Offline).await;
    assert!(
        rig.sweeps() > interval_sweeps,
        "an early sweep confirmed it"
    );
    rig.wait_pod("dev-2").await;
    rig.kubelet().run("dev-2", NODE).await;
    wait_online_after(&rig, "dev", 1).await;
}

#[tokio::test]
async fn a_burst_of_container_workspaces_shares_its_pod_lists() {
    const BURST: usize = 8;
    let mut rig = Rig::new().await;
    // No sweep in the way, and every Workspace reconciled at once: what is
    // counted is the burst's own looks.
    rig.args.sweep_interval = Duration::from_secs(3600);
    rig.args.concurrency = 32;
    rig.start_controller().await;
    rig.kubelet().node(NODE, "True").await;
    let names: Vec<String> = (0..BURST).map(|i| format!("c{i}")).collect();
    let specs: Vec<Workspace> = names.iter().map(|n| rig.container_workspace(n)).collect();
    futures::future::join_all(specs.iter().map(|ws| rig.create(ws))).await;
    for name in &names {
        rig.wait_pod(&format!("{name}-1")).await;
    }
    for name in &names {
        rig.kubelet().run(&format!("{name}-1"), NODE).await;
    }
    for name in &names {
        rig.wait_phase(name, Phase::Online).await;
    }
    let lists = rig
        .kube
        .requests()
        .into_iter()
        .filter(|r| r.verb == "list" && r.path.ends_with("/pods"))
        .filter(|r| r.user.as_deref() == Some(support::rig::CONTROLLER_USER))
        .count();
    // Each look lists the namespace, and a Workspace is looked at several
    // times on its way up (about four lists each when every look lists on
    // its own); looks that come together share one list.
    assert!(
        lists <= 2 * BURST,
        "{lists} Pod lists for {BURST} Workspaces"
    );
}
