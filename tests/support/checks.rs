//! What integration tests ask of a Workspace: its conditions, its instance,
//! and the few steps many tests take (create and wait for Online, annotate).

use kube::api::{Patch, PatchParams};
use serde_json::json;
use tend::api::{Phase, Workspace};

use super::rig::Rig;

/// A condition as (status, reason, message).
pub fn condition(ws: &Workspace, type_: &str) -> Option<(String, String, String)> {
    ws.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

pub fn has_condition(ws: &Workspace, type_: &str, status: &str, reason: &str) -> bool {
    condition(ws, type_).is_some_and(|(s, r, _)| s == status && r == reason)
}

pub fn instance_of(ws: &Workspace) -> String {
    ws.status.as_ref().unwrap().instance_id.clone().unwrap()
}

/// Creates an ec2 Workspace and waits until it is Online.
pub async fn online(rig: &Rig, name: &str) -> Workspace {
    rig.create(&rig.ec2_workspace(name)).await;
    rig.wait_phase(name, Phase::Online).await
}

/// Waits until `name` is Online again after `restarts` restarts.
pub async fn wait_online_after(rig: &Rig, name: &str, restarts: u32) -> Workspace {
    let what = format!("{name} online after {restarts} restart(s)");
    rig.wait_ws(name, &what, |w| {
        w.status
            .as_ref()
            .is_some_and(|s| s.phase == Some(Phase::Online) && s.restarts == restarts)
    })
    .await
}

pub async fn annotate(rig: &Rig, name: &str, key: &str, value: &str) {
    rig.workspaces()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "annotations": { key: value } } })),
        )
        .await
        .unwrap();
}

/// How many times an event with this reason was published about `name`.
/// kube's Recorder folds repeats into one Event whose `series.count` grows,
/// so counting Event objects would miss them.
pub fn published(rig: &Rig, name: &str, reason: &str) -> u64 {
    rig.kube
        .list_objects(&format!(
            "/apis/events.k8s.io/v1/namespaces/{}/events",
            super::rig::NS
        ))
        .iter()
        .filter(|e| e["regarding"]["name"] == name && e["reason"] == reason)
        .map(|e| e["series"]["count"].as_u64().unwrap_or(1))
        .sum()
}

/// The `UserData` parameter of the first RunInstances call the proxy saw.
pub fn launched_user_data(rig: &Rig) -> Option<String> {
    let run = rig
        .proxy
        .call_log()
        .into_iter()
        .find(|c| c.action == "RunInstances")
        .expect("launched");
    run.params.get("UserData").cloned()
}
