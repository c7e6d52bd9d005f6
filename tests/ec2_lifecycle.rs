//! An ec2 Workspace's life against moto and the fake API server: provisioning,
//! user stop and start, hibernation, deletion.

mod support;

use aws_sdk_ec2::types::{InstanceStateName, VolumeState};
use serde_json::json;
use support::rig::{CLUSTER, Rig};
use tend::api::Phase;

fn tag<'a>(tags: &'a [aws_sdk_ec2::types::Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

#[tokio::test]
async fn ec2_workspace_goes_online_tagged_with_its_volume_attached() {
    let rig = Rig::start().await;
    let created = rig.create(&rig.ec2_workspace("dev")).await;
    let uid = created.metadata.uid.clone().unwrap();

    let ws = rig.wait_phase("dev", Phase::Online).await;
    let status = ws.status.unwrap();
    let instance_id = status.instance_id.expect("instanceId recorded");
    let volume_id = status.volume_id.expect("volumeId recorded");
    assert!(status.launched_at.is_some());
    assert_eq!(status.launch_number, Some(1));
    assert_eq!(status.availability_zone.as_deref(), Some(rig.zone.as_str()));
    assert_eq!(status.observed_generation, Some(1));

    let instance = rig
        .moto
        .instance(&instance_id)
        .await
        .expect("instance exists");
    for (k, v) in [
        ("tend.dev/workspace-uid", uid.as_str()),
        ("tend.dev/cluster", CLUSTER),
        ("tend.dev/namespace", "default"),
        ("tend.dev/name", "dev"),
        ("team", "platform"),
    ] {
        assert_eq!(tag(instance.tags(), k), Some(v), "instance tag {k}");
    }
    let volume = rig.moto.volume(&volume_id).await.expect("volume exists");
    assert_eq!(
        tag(volume.tags(), "tend.dev/workspace-uid"),
        Some(uid.as_str())
    );
    assert_eq!(tag(volume.tags(), "tend.dev/cluster"), Some(CLUSTER));
    assert_eq!(volume.availability_zone(), Some(rig.zone.as_str()));
    assert_eq!(volume.state(), Some(&VolumeState::InUse));
    assert_eq!(
        volume.attachments().first().and_then(|a| a.instance_id()),
        Some(instance_id.as_str())
    );

    let (ready, reason, _) = rig.ready("dev").unwrap();
    assert_eq!((ready.as_str(), reason.as_str()), ("True", "Online"));
    assert_eq!(rig.instances_of(&created).await.len(), 1);

    rig.wait_event("dev", "Online").await;
    let reasons = rig.event_reasons("dev");
    for expected in ["Provisioning", "VolumeCreated", "Launched", "Online"] {
        assert!(
            reasons.iter().any(|r| r == expected),
            "missing event {expected} in {reasons:?}"
        );
    }
}

#[tokio::test]
async fn stop_and_start_go_through_stopping_and_back_online_on_the_same_instance() {
    let rig = Rig::start().await;
    rig.create(&rig.ec2_workspace("dev")).await;
    let online = rig.wait_phase("dev", Phase::Online).await;
    let instance_id = online.status.unwrap().instance_id.unwrap();

    rig.patch_spec("dev", json!({ "desiredState": "Stopped" }))
        .await;
    rig.wait_phase("dev", Phase::Stopped).await;
    let instance = rig.moto.instance(&instance_id).await.unwrap();
    assert_eq!(
        instance.state().and_then(|s| s.name()),
        Some(&InstanceStateName::Stopped)
    );
    let (ready, reason, _) = rig.ready("dev").unwrap();
    assert_eq!((ready.as_str(), reason.as_str()), ("False", "Stopped"));

    rig.patch_spec("dev", json!({ "desiredState": "Running" }))
        .await;
    let again = rig.wait_phase("dev", Phase::Online).await;
    let status = again.status.unwrap();
    assert_eq!(
        status.instance_id.as_deref(),
        Some(instance_id.as_str()),
        "started in place"
    );
    assert_eq!(
        status.restarts, 0,
        "a user's stop and start is not a restart"
    );

    rig.wait_event("dev", "Stopped").await;
    let reasons = rig.event_reasons("dev");
    let stopping = reasons
        .iter()
        .position(|r| r == "Stopping")
        .expect("Stopping event");
    let stopped = reasons
        .iter()
        .position(|r| r == "Stopped")
        .expect("Stopped event");
    assert!(stopping < stopped, "{reasons:?}");
    assert!(
        !reasons.iter().any(|r| r == "Offline" || r == "Failed"),
        "a user stop is not a failure: {reasons:?}"
    );
}

#[tokio::test]
async fn hibernated_workspace_stops_with_hibernation() {
    let rig = Rig::start().await;
    let mut ws = rig.ec2_workspace("dev");
    ws.spec.ec2.as_mut().unwrap().hibernation = Some(true);
    rig.create(&ws).await;
    let online = rig.wait_phase("dev", Phase::Online).await;
    let instance_id = online.status.unwrap().instance_id.unwrap();
    let launched = rig.moto.instance(&instance_id).await.unwrap();
    assert_eq!(
        launched.hibernation_options().and_then(|h| h.configured()),
        Some(true),
        "launched with hibernation configured"
    );

    rig.patch_spec("dev", json!({ "desiredState": "Hibernated" }))
        .await;
    rig.wait_phase("dev", Phase::Hibernated).await;
    let stop_calls: Vec<_> = rig
        .proxy
        .call_log()
        .into_iter()
        .filter(|c| c.action == "StopInstances")
        .collect();
    assert_eq!(stop_calls.len(), 1, "{stop_calls:?}");
    assert_eq!(
        stop_calls[0].params.get("Hibernate").map(String::as_str),
        Some("true"),
        "{stop_calls:?}"
    );

    rig.patch_spec("dev", json!({ "desiredState": "Running" }))
        .await;
    rig.wait_phase("dev", Phase::Online).await;
}

/// Brings `ws` Online, deletes it, waits until it is gone, checks its instance
/// was terminated, and returns the id of its data volume.
async fn online_then_deleted(rig: &Rig, ws: &tend::api::Workspace) -> String {
    rig.create(ws).await;
    let online = rig.wait_phase("dev", Phase::Online).await;
    let status = online.status.unwrap();
    let (instance_id, volume_id) = (status.instance_id.unwrap(), status.volume_id.unwrap());

    rig.delete("dev").await;
    rig.wait_gone("dev").await;
    let instance = rig.moto.instance(&instance_id).await.unwrap();
    assert_eq!(
        instance.state().and_then(|s| s.name()),
        Some(&InstanceStateName::Terminated)
    );
    volume_id
}

#[tokio::test]
async fn delete_with_retain_terminates_the_instance_and_keeps_the_volume() {
    let rig = Rig::start().await;
    let volume_id = online_then_deleted(&rig, &rig.ec2_workspace("dev")).await;
    let volume = rig.moto.volume(&volume_id).await.expect("volume retained");
    assert_eq!(volume.state(), Some(&VolumeState::Available));
    let reasons = rig.event_reasons("dev");
    assert!(reasons.iter().any(|r| r == "Deleting"), "{reasons:?}");
    assert!(reasons.iter().any(|r| r == "Released"), "{reasons:?}");
}

#[tokio::test]
async fn delete_with_delete_policy_removes_the_volume_too() {
    let rig = Rig::start().await;
    let mut ws = rig.ec2_workspace("dev");
    ws.spec.ec2.as_mut().unwrap().volume.reclaim_policy = tend::api::ReclaimPolicy::Delete;
    let volume_id = online_then_deleted(&rig, &ws).await;
    assert!(
        rig.moto.volume(&volume_id).await.is_none(),
        "volume deleted"
    );
}

#[tokio::test]
async fn steady_online_workspace_causes_no_status_writes() {
    let rig = Rig::start().await;
    rig.create(&rig.ec2_workspace("dev")).await;
    rig.wait_phase("dev", Phase::Online).await;
    let writes = rig.kube.count_requests("PATCH", "/status");
    // Resync is 1s in the rig: wait for several more looks at the instance.
    let looks = rig.proxy.calls("DescribeInstances");
    rig.proxy
        .wait_for_calls("DescribeInstances", looks + 3)
        .await;
    assert_eq!(rig.kube.count_requests("PATCH", "/status"), writes);
    assert_eq!(rig.phase("dev"), Some(Phase::Online));
}
