//! The rules that keep tend trustworthy when things go wrong: idempotent launches,
//! ownership, bad input, failing writes, missing credentials.

mod support;

use aws_sdk_ec2::types::InstanceStateName;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::checks::{launched_user_data, published};
use support::faults::FaultRule;
use support::rig::{NS, Rig};
use tend::api::{Phase, Workspace};
use tend::backend::ec2::{TAG_UID, TAG_VOLUME, VOLUME_DATA};

async fn alive_instances(rig: &Rig, ws: &Workspace) -> Vec<String> {
    rig.instances_of(ws)
        .await
        .into_iter()
        .filter(|i| {
            !matches!(
                i.state().and_then(|s| s.name()),
                Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
            )
        })
        .filter_map(|i| i.instance_id().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn crash_after_launch_number_is_written_but_before_the_launch_gives_one_instance() {
    let mut rig = Rig::start().await;
    // RunInstances never reaches EC2 and never answers: the controller is stuck
    // right after writing the launch number, where we kill it.
    let hang = rig.proxy.inject(FaultRule::on("RunInstances").hang());
    let ws = rig.create(&rig.ec2_workspace("dev")).await;
    rig.wait_ws("dev", "launch number recorded", |w| {
        w.status.as_ref().and_then(|s| s.launch_number) == Some(1)
    })
    .await;
    rig.proxy.wait_for_calls("RunInstances", 1).await;
    rig.crash_controller().await;
    hang.remove();
    assert!(alive_instances(&rig, &ws).await.is_empty());

    rig.start_controller().await;
    let online = rig.wait_phase("dev", Phase::Online).await;
    let alive = alive_instances(&rig, &ws).await;
    assert_eq!(alive.len(), 1, "{alive:?}");
    assert_eq!(online.status.unwrap().instance_id.as_ref(), alive.first());
}

#[tokio::test]
async fn crash_after_the_launch_but_before_recording_it_adopts_the_same_instance() {
    let mut rig = Rig::start().await;
    // The instance is really started, but the answer is lost: as if the
    // controller died right after the call.
    rig.proxy
        .inject(FaultRule::on("RunInstances").times(1).forward_then_reset());
    let ws = rig.create(&rig.ec2_workspace("dev")).await;
    rig.proxy
        .wait_for("the lost RunInstances answer", |calls| {
            calls.iter().any(|c| {
                c.action == "RunInstances"
                    && matches!(c.outcome, support::faults::Outcome::Dropped { .. })
            })
        })
        .await;
    rig.crash_controller().await;
    assert_eq!(alive_instances(&rig, &ws).await.len(), 1);
    assert!(
        rig.get("dev")
            .unwrap()
            .status
            .unwrap()
            .instance_id
            .is_none()
    );

    rig.start_controller().await;
    let online = rig.wait_phase("dev", Phase::Online).await;
    let alive = alive_instances(&rig, &ws).await;
    assert_eq!(alive.len(), 1, "never a second instance: {alive:?}");
    assert_eq!(online.status.unwrap().instance_id.as_ref(), alive.first());
    assert_eq!(
        rig.proxy.calls("RunInstances"),
        1,
        "the lost launch was found by tag, not repeated"
    );
}

#[tokio::test]
async fn lost_launch_answer_without_a_crash_is_also_found_by_tag() {
    let rig = Rig::start().await;
    rig.proxy
        .inject(FaultRule::on("RunInstances").times(1).forward_then_reset());
    let ws = rig.create(&rig.ec2_workspace("dev")).await;
    rig.wait_phase("dev", Phase::Online).await;
    assert_eq!(alive_instances(&rig, &ws).await.len(), 1);
    assert_eq!(
        rig.instances_of(&ws).await.len(),
        1,
        "no second instance, alive or not"
    );
    assert_eq!(rig.proxy.calls("RunInstances"), 1);
}

#[tokio::test]
async fn lost_create_volume_answer_without_a_crash_is_found_by_tag() {
    let rig = Rig::start().await;
    // The first create follows this controller's own reservation, so no
    // search precedes it; once it was sent, a retry must search.
    rig.proxy
        .inject(FaultRule::on("CreateVolume").times(1).forward_then_reset());
    let ws = rig.create(&rig.ec2_workspace("dev")).await;
    let online = rig.wait_phase("dev", Phase::Online).await;
    let uid = ws.metadata.uid.clone().unwrap();
    let data: Vec<String> = rig
        .moto
        .volumes_tagged(TAG_UID, &uid)
        .await
        .iter()
        .filter(|v| {
            v.tags()
                .iter()
                .any(|t| t.key() == Some(TAG_VOLUME) && t.value() == Some(VOLUME_DATA))
        })
        .filter_map(|v| v.volume_id().map(str::to_owned))
        .collect();
    assert_eq!(data.len(), 1, "never a second data volume: {data:?}");
    assert_eq!(online.status.unwrap().volume_id.as_ref(), data.first());
    assert_eq!(
        rig.proxy.calls("CreateVolume"),
        1,
        "found by tag, not repeated"
    );
}

#[tokio::test]
async fn foreign_untagged_instance_named_in_status_is_never_mutated() {
    let mut rig = Rig::new().await;
    let foreign = rig.moto.run_tagged("owner", "someone-else").await;
    let ws = rig.ec2_workspace("dev");
    rig.create(&ws).await;
    // Point the Workspace at an instance tend did not create, as a stale or
    // hand-edited status would.
    rig.workspaces()
        .patch_status(
            "dev",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": {
                "phase": "Online",
                "instanceId": foreign,
                "launchedAt": "2026-01-01T00:00:00Z",
            }})),
        )
        .await
        .unwrap();
    rig.patch_spec("dev", json!({ "desiredState": "Stopped" }))
        .await;
    rig.start_controller().await;

    rig.wait_ws("dev", "ForeignResource condition", |w| {
        w.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.reason == "ForeignResource")
        })
    })
    .await;
    rig.wait_event("dev", "ForeignResource").await;
    let (_, _, message) = rig.ready("dev").unwrap();
    assert!(message.contains(&foreign), "{message}");

    // Deleting the Workspace must not terminate it either.
    rig.delete("dev").await;
    rig.wait_gone("dev").await;
    let instance = rig.moto.instance(&foreign).await.unwrap();
    assert_eq!(
        instance.state().and_then(|s| s.name()),
        Some(&InstanceStateName::Running)
    );
    for action in ["StopInstances", "TerminateInstances", "AttachVolume"] {
        let touched = rig
            .proxy
            .call_log()
            .into_iter()
            .any(|c| c.action == action && c.instance_ids.contains(&foreign));
        assert!(!touched, "{action} was called on the foreign instance");
    }
    let warnings = rig
        .events("dev")
        .into_iter()
        .filter(|(t, r, _)| t == "Warning" && r == "ForeignResource")
        .count();
    assert!(warnings >= 1);
    rig.crash_controller().await;
}

#[tokio::test]
async fn bad_ami_fails_with_a_clear_reason_and_the_controller_stays_alive() {
    let rig = Rig::start().await;
    let mut bad = rig.ec2_workspace("bad");
    bad.spec.ec2.as_mut().unwrap().image_id = Some("ami-00000000deadbeef0".into());
    rig.create(&bad).await;
    rig.wait_phase("bad", Phase::Failed).await;
    let (ready, reason, message) = rig.ready("bad").unwrap();
    assert_eq!((ready.as_str(), reason.as_str()), ("False", "LaunchFailed"));
    assert!(message.contains("InvalidAMIID"), "{message}");
    rig.wait_event("bad", "LaunchFailed").await;

    // Retries back off: the failure is not hammered in a loop.
    let first = rig.proxy.calls("RunInstances");
    rig.create(&rig.ec2_workspace("good")).await;
    rig.wait_phase("good", Phase::Online).await;
    let retries = rig.proxy.calls("RunInstances") - first - 1;
    assert!(
        retries <= 6,
        "{retries} launch retries while a healthy Workspace came online"
    );

    // Fixing the spec recovers it.
    rig.patch_spec("bad", json!({ "ec2": { "imageId": rig.ami } }))
        .await;
    rig.wait_phase("bad", Phase::Online).await;
}

#[tokio::test]
async fn ec2_runtime_without_ec2_block_is_invalid_spec_and_launches_nothing() {
    // A 1.25+ server refuses this spec by CEL; an older one stores it.
    let rig = Rig::start_on(Rig::before_cel()).await;
    let ws = Rig::workspace("broken", json!({ "runtime": "ec2" }));
    rig.create(&ws).await;
    rig.wait_ws("broken", "InvalidSpec", |w| {
        w.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "False" && c.reason == "InvalidSpec")
        })
    })
    .await;
    let (_, _, message) = rig.ready("broken").unwrap();
    assert!(message.contains("spec.ec2"), "{message}");
    rig.wait_event("broken", "InvalidSpec").await;
    assert_eq!(rig.proxy.calls("RunInstances"), 0);
    assert_eq!(rig.proxy.calls("CreateVolume"), 0);

    // One Warning, not one per reconcile: a healthy Workspace's whole life
    // passes meanwhile.
    rig.create(&rig.ec2_workspace("ok")).await;
    rig.wait_phase("ok", Phase::Online).await;
    assert_eq!(published(&rig, "broken", "InvalidSpec"), 1);

    // Fixing the spec lets it proceed.
    rig.patch_spec(
        "broken",
        json!({ "ec2": { "imageId": rig.ami, "instanceType": "t3.micro", "subnetId": rig.subnet } }),
    )
    .await;
    rig.wait_phase("broken", Phase::Online).await;
}

#[tokio::test]
async fn failed_status_writes_are_retried_and_events_follow_the_write() {
    let rig = Rig::start().await;
    rig.kube.inject_failure(support::fake_kube::Failure {
        method: Some("PATCH".into()),
        path_contains: "/workspaces/dev/status".into(),
        status: 500,
        reason: "InternalError".into(),
        times: 3,
        body_contains: None,
    });
    rig.create(&rig.ec2_workspace("dev")).await;
    rig.wait_phase("dev", Phase::Online).await;
    rig.wait_event("dev", "Online").await;
    let failed = rig
        .kube
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/dev/status") && r.status == 500)
        .count();
    assert_eq!(failed, 3, "the injected failures were hit");
    // Each phase was announced exactly once: none for a write that failed.
    for phase in ["Provisioning", "Online"] {
        assert_eq!(published(&rig, "dev", phase), 1, "{phase}");
    }
}

#[tokio::test]
async fn missing_aws_credentials_are_reported_and_the_controller_keeps_serving() {
    // Before 1.25 the invalid spec below reaches the controller.
    let mut rig = Rig::new_on(Rig::before_cel()).await;
    let no_credentials = tend::tune(
        aws_sdk_ec2::Config::builder()
            .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
            .region(aws_sdk_ec2::config::Region::new("us-east-1"))
            .endpoint_url(rig.proxy.url()),
        &rig.args,
    )
    .build();
    rig.start_controller_with(no_credentials).await;
    rig.create(&rig.ec2_workspace("dev")).await;
    rig.wait_ws("dev", "AwsAuthFailed condition", |w| {
        w.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.reason == "AwsAuthFailed")
        })
    })
    .await;
    let (_, _, message) = rig.ready("dev").unwrap();
    assert!(message.to_lowercase().contains("credentials"), "{message}");
    // Still serving: a spec problem on another object is still reported.
    let ws = Rig::workspace("other", json!({ "runtime": "ec2" }));
    rig.create(&ws).await;
    rig.wait_event("other", "InvalidSpec").await;
}

#[tokio::test]
async fn user_data_comes_from_the_secret_and_a_missing_secret_is_reported() {
    use k8s_openapi::api::core::v1::Secret;
    let rig = Rig::start().await;
    let mut ws = rig.ec2_workspace("dev");
    ws.spec.ec2.as_mut().unwrap().user_data = Some(tend::api::SecretKeyRef {
        name: "dev-init".into(),
        key: None,
    });
    rig.create(&ws).await;
    let waiting = rig
        .wait_ws("dev", "missing Secret reported", |w| {
            w.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "Ready"
                        && c.reason == "UserDataNotFound"
                        && c.message.contains("Secret dev-init")
                })
            })
        })
        .await;
    assert_ne!(
        waiting.status.and_then(|s| s.phase),
        Some(Phase::Failed),
        "a missing Secret is waited for, not a failure"
    );
    assert_eq!(
        rig.proxy.calls("RunInstances"),
        0,
        "no launch without its user data"
    );

    let secrets: kube::Api<Secret> = kube::Api::namespaced(rig.kube.client(), NS);
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": "dev-init", "namespace": NS },
        "stringData": {},
        "data": { "userData": "IyEvYmluL3NoCmVjaG8gc2VjcmV0LXRva2Vu" }
    }))
    .unwrap();
    secrets.create(&Default::default(), &secret).await.unwrap();
    rig.patch_spec("dev", json!({ "restartPolicy": "Always" }))
        .await;
    rig.wait_phase("dev", Phase::Online).await;
    // RunInstances carries the Secret's bytes, base64-encoded once.
    assert_eq!(
        launched_user_data(&rig).as_deref(),
        Some("IyEvYmluL3NoCmVjaG8gc2VjcmV0LXRva2Vu")
    );
    // And the content appears in no status or event.
    let stored = serde_json::to_string(&rig.get("dev").unwrap()).unwrap();
    assert!(!stored.contains("secret-token") && !stored.contains("IyEvYmluL3No"));
    for (_, _, note) in rig.events("dev") {
        assert!(!note.contains("IyEvYmluL3No"), "{note}");
    }
}
