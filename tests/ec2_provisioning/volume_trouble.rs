//! Data volumes that go wrong are shown, not looped on: one lost behind
//! tend's back stops healing, one held by a stranger is never attached.

use aws_sdk_ec2::types::InstanceStateName;

use super::*;

#[tokio::test]
async fn volume_deleted_behind_tends_back_is_volume_lost_and_healing_stops() {
    let mut rig = Rig::start().await;
    let ws = online(&rig, &rig.ec2_workspace("dev")).await;
    let status = status_of(&ws);
    let (instance, volume) = (status.instance_id.unwrap(), status.volume_id.unwrap());
    rig.crash_controller().await;
    detach(&rig, &volume, &instance).await;
    rig.moto
        .ec2()
        .delete_volume()
        .volume_id(&volume)
        .send()
        .await
        .expect("DeleteVolume");
    rig.moto.terminate(&instance).await;
    let launches = rig.proxy.calls("RunInstances");
    rig.start_controller().await;

    let failed = rig.wait_phase("dev", Phase::Failed).await;
    assert!(
        ready_reason_is(&failed, "VolumeLost"),
        "{:?}",
        failed.status
    );
    let (_, _, message) = rig.ready("dev").unwrap();
    assert!(message.contains(&volume), "{message}");
    rig.wait_event("dev", "VolumeLost").await;
    // Absence was proven by naming the volume.
    assert!(calls(&rig, "DescribeVolumes").iter().any(|c| {
        c.params
            .iter()
            .any(|(k, v)| k.starts_with("VolumeId.") && v == &volume)
    }));

    // Healing stops: several sweeps later nothing was launched or changed.
    rig.wait_sweeps(rig.sweeps() + 3).await;
    assert_eq!(rig.phase("dev"), Some(Phase::Failed));
    assert_eq!(rig.proxy.calls("RunInstances"), launches);
    let lost = rig
        .events("dev")
        .into_iter()
        .filter(|(t, r, _)| t == "Warning" && r == "VolumeLost")
        .count();
    assert_eq!(lost, 1);
}

#[tokio::test]
async fn volume_held_by_a_foreign_instance_is_shown_and_never_attached() {
    let mut rig = Rig::start().await;
    let ws = online(&rig, &rig.ec2_workspace("dev")).await;
    let status = status_of(&ws);
    let (instance, volume) = (status.instance_id.unwrap(), status.volume_id.unwrap());
    // While tend is away its instance dies, and someone attaches the freed
    // data volume to an instance of their own.
    rig.crash_controller().await;
    rig.moto.terminate(&instance).await;
    let foreign = rig.moto.run_tagged("owner", "someone-else").await;
    attach(&rig, &volume, &foreign).await;
    rig.start_controller().await;

    let shown = rig
        .wait_ws("dev", "VolumeInUse", |w| ready_reason_is(w, "VolumeInUse"))
        .await;
    let (_, _, message) = rig.ready("dev").unwrap();
    assert!(message.contains(&foreign), "{message}");
    assert!(message.contains(&volume), "{message}");
    rig.wait_event("dev", "VolumeInUse").await;
    let phase = status_of(&shown).phase;

    // Later looks find the same and say nothing new.
    let looks = rig.proxy.calls("DescribeVolumes");
    rig.proxy.wait_for_calls("DescribeVolumes", looks + 3).await;
    let in_use = rig
        .events("dev")
        .into_iter()
        .filter(|(t, r, _)| t == "Warning" && r == "VolumeInUse")
        .count();
    assert_eq!(in_use, 1);
    assert_eq!(rig.phase("dev"), phase);
    assert_eq!(rig.proxy.calls("AttachVolume"), 1, "only the first attach");

    // Once its owner lets go, tend heals onto the same volume.
    detach(&rig, &volume, &foreign).await;
    let healed = rig
        .wait_ws("dev", "online on a replacement", |w| {
            w.status.as_ref().is_some_and(|s| {
                s.phase == Some(Phase::Online) && s.instance_id.as_deref() != Some(&instance)
            })
        })
        .await;
    assert_eq!(
        status_of(&healed).volume_id.as_deref(),
        Some(volume.as_str())
    );
    let foreign_now = rig.moto.instance(&foreign).await.unwrap();
    assert_eq!(
        foreign_now.state().and_then(|s| s.name()),
        Some(&InstanceStateName::Running)
    );
}
