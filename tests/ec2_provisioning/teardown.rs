//! Deletion releases what status and the ownership tags say tend created,
//! whatever the spec says now, and shows what holds it up.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::InstanceStateName;
use support::faults::Fault;
use support::rig::{NS, WAIT};
use tend::api::ReclaimPolicy;

use super::*;

/// "dev" Online with `reclaimPolicy: Delete`: its instance and data volume.
async fn online_deleting_its_volume(rig: &Rig) -> (String, String) {
    let mut ws = rig.ec2_workspace("dev");
    ws.spec.ec2.as_mut().unwrap().volume.reclaim_policy = ReclaimPolicy::Delete;
    let status = status_of(&online(rig, &ws).await);
    (status.instance_id.unwrap(), status.volume_id.unwrap())
}

#[tokio::test]
async fn deletion_releases_a_volume_whose_record_was_lost_despite_a_spec_edit() {
    let rig = Rig::start().await;
    // The volume is created, but the status write that records it fails, and
    // every look for it after that fails too, so it is never recorded.
    rig.kube.inject_failure(
        support::fake_kube::Failure::new(
            "PATCH",
            "/workspaces/dev/status",
            500,
            "InternalError",
            1,
        )
        .when_body_contains("volumeId"),
    );
    let looks = rig
        .proxy
        .inject(FaultRule::on("DescribeVolumes").server_error(500));
    let mut ws = rig.ec2_workspace("dev");
    ws.spec.ec2.as_mut().unwrap().volume.reclaim_policy = ReclaimPolicy::Delete;
    let ws = rig.create(&ws).await;
    rig.proxy.wait_for_calls("CreateVolume", 1).await;
    rig.kube
        .wait_for(WAIT, "the status write recording the volume to fail", |k| {
            k.requests()
                .iter()
                .any(|r| r.method == "PATCH" && r.path.ends_with("/dev/status") && r.status == 500)
        })
        .await;
    rig.proxy
        .wait_for("a later look for the volume to fail", |calls| {
            calls
                .iter()
                .any(|c| c.action == "DescribeVolumes" && c.fault == Some(Fault::ServerError(500)))
        })
        .await;
    let volumes = volumes_tagged(&rig, &uid(&ws)).await;
    assert_eq!(volumes.len(), 1);
    let volume = volumes[0].volume_id().unwrap().to_owned();

    // A spec edit before deletion changes nothing about what is released.
    let (elsewhere, _) = rig.moto.default_subnet(Some("us-east-1c")).await;
    rig.patch_spec("dev", json!({ "ec2": { "subnetId": elsewhere } }))
        .await;
    rig.delete("dev").await;
    let deleting = rig.wait_phase("dev", Phase::Deleting).await;
    assert_eq!(status_of(&deleting).volume_id, None, "never recorded");
    looks.remove();
    rig.wait_gone("dev").await;
    assert!(rig.moto.volume(&volume).await.is_none(), "{volume} leaked");
}

#[tokio::test]
async fn deletion_releases_what_was_created_whatever_spec_and_default_region_say_now() {
    let mut rig = Rig::start().await;
    let (instance, volume) = online_deleting_its_volume(&rig).await;
    // The controller now defaults to another region, and the spec names
    // another subnet, instance type, volume size and tags.
    rig.crash_controller().await;
    rig.args.region = Some("us-west-2".into());
    rig.start_controller().await;
    let (elsewhere, _) = rig.moto.default_subnet(Some("us-east-1c")).await;
    rig.patch_spec(
        "dev",
        json!({ "ec2": {
            "subnetId": elsewhere,
            "instanceType": "t3.large",
            "tags": { "team": "other" },
            "volume": { "sizeGiB": 20 },
        }}),
    )
    .await;
    rig.delete("dev").await;
    rig.wait_gone("dev").await;
    let terminated = rig.moto.instance(&instance).await.unwrap();
    assert_eq!(
        terminated.state().and_then(|s| s.name()),
        Some(&InstanceStateName::Terminated)
    );
    assert!(rig.moto.volume(&volume).await.is_none(), "{volume} leaked");
}

#[tokio::test]
async fn deletion_blocked_by_a_foreign_attachment_is_reported_not_waited_on_silently() {
    let mut rig = Rig::start().await;
    let (instance, volume) = online_deleting_its_volume(&rig).await;
    rig.crash_controller().await;
    detach(&rig, &volume, &instance).await;
    let foreign = rig.moto.run_tagged("owner", "someone-else").await;
    attach(&rig, &volume, &foreign).await;
    rig.delete("dev").await;
    rig.start_controller().await;

    let path = format!("/apis/events.k8s.io/v1/namespaces/{NS}/events");
    rig.kube
        .wait_for(WAIT, "a Warning naming the holder", |k| {
            k.list_objects(&path).iter().any(|e| {
                e["regarding"]["name"] == "dev"
                    && e["type"] == "Warning"
                    && e["note"].as_str().is_some_and(|n| n.contains(&foreign))
            })
        })
        .await;
    assert!(
        rig.get("dev").is_some(),
        "not released while the volume is held"
    );
    let held = rig
        .wait_ws("dev", "Ready=False/VolumeInUse while deleting", |w| {
            w.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "False" && c.reason == "VolumeInUse")
            })
        })
        .await;
    assert_eq!(
        held.status.as_ref().unwrap().phase,
        Some(tend::api::Phase::Deleting)
    );
    let mine = rig.moto.instance(&instance).await.unwrap();
    assert_eq!(
        mine.state().and_then(|s| s.name()),
        Some(&InstanceStateName::Terminated)
    );
    assert_eq!(rig.proxy.calls("DeleteVolume"), 0);
    let touched: BTreeMap<String, usize> = rig
        .proxy
        .call_log()
        .into_iter()
        .filter(|c| c.instance_ids.contains(&foreign) && c.action != "DescribeInstances")
        .fold(BTreeMap::new(), |mut m, c| {
            *m.entry(c.action).or_default() += 1;
            m
        });
    assert!(
        touched.is_empty(),
        "the foreign instance was touched: {touched:?}"
    );

    detach(&rig, &volume, &foreign).await;
    rig.wait_gone("dev").await;
    assert!(rig.moto.volume(&volume).await.is_none());
}
