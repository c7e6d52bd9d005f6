//! The reconciler at its edges: user data that is missing or cannot be read
//! yet, and a finalizer removal that fails after the backend was released.

mod support;

use k8s_openapi::api::core::v1::Secret;
use serde_json::json;
use support::checks::launched_user_data;
use support::fake_kube::Failure;
use support::faults::FaultRule;
use support::rig::{NS, Rig};
use tend::api::{FINALIZER, Phase, SecretKeyRef, Workspace};

fn workspace_path(name: &str) -> String {
    format!("/apis/tend.dev/v1alpha1/namespaces/{NS}/workspaces/{name}")
}

#[tokio::test]
async fn released_is_announced_only_after_the_finalizer_is_gone() {
    let rig = Rig::start().await;
    rig.create(&rig.ec2_workspace("dev")).await;
    rig.wait_phase("dev", Phase::Online).await;
    // The instance cannot be terminated yet: the release waits in Deleting.
    let held = rig
        .proxy
        .inject(FaultRule::on("TerminateInstances").server_error(500));
    rig.delete("dev").await;
    rig.wait_phase("dev", Phase::Deleting).await;

    // Deleting is written; the next write to the Workspace itself is the
    // finalizer helper's JSON patch that removes tend's finalizer. Refuse it,
    // then let the release go on.
    let path = workspace_path("dev");
    rig.kube
        .inject_failure(Failure::new("PATCH", &path, 500, "InternalError", 3));
    held.remove();
    rig.kube
        .wait_for(support::rig::WAIT, "a refused finalizer removal", |k| {
            k.requests().iter().any(|r| {
                r.method == "PATCH"
                    && r.path == path
                    && r.status == 500
                    && r.content_type
                        .as_deref()
                        .is_some_and(|c| c.starts_with("application/json-patch+json"))
            })
        })
        .await;
    let still_there = rig.get("dev").expect("the finalizer keeps the Workspace");
    assert!(
        still_there
            .metadata
            .finalizers
            .unwrap_or_default()
            .iter()
            .any(|f| f == FINALIZER)
    );
    assert!(
        !rig.event_reasons("dev").iter().any(|r| r == "Released"),
        "Released announced while the finalizer is still there: {:?}",
        rig.event_reasons("dev")
    );

    rig.wait_gone("dev").await;
    rig.wait_event("dev", "Released").await;
}

const USER_DATA: &str = "IyEvYmluL3NoCmVjaG8gaGVsbG8K";

/// A Workspace whose user data comes from `secret` (key `key`, or the
/// default `userData`).
fn with_user_data(rig: &Rig, name: &str, secret: &str, key: Option<&str>) -> Workspace {
    let mut ws = rig.ec2_workspace(name);
    ws.spec.ec2.as_mut().unwrap().user_data = Some(SecretKeyRef {
        name: secret.into(),
        key: key.map(str::to_owned),
    });
    ws
}

fn secrets(rig: &Rig) -> kube::Api<Secret> {
    kube::Api::namespaced(rig.kube.client(), NS)
}

async fn create_secret(rig: &Rig, name: &str, key: &str) {
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": name, "namespace": NS },
        "data": { key: USER_DATA }
    }))
    .unwrap();
    secrets(rig)
        .create(&Default::default(), &secret)
        .await
        .expect("create secret");
}

fn ready_reason_is(w: &Workspace, reason: &str) -> bool {
    w.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.reason == reason)
    })
}

/// How many times the controller asked for this Secret.
fn secret_reads(rig: &Rig, name: &str) -> usize {
    rig.kube
        .count_requests("GET", &format!("/api/v1/namespaces/{NS}/secrets/{name}"))
}

/// No Failed phase was ever written, and no launch failure announced.
fn never_failed(rig: &Rig, name: &str) {
    let metrics = rig.metrics.encode();
    assert!(
        !metrics.contains("tend_phase_transitions_total{phase=\"Failed\"}"),
        "{metrics}"
    );
    let reasons = rig.event_reasons(name);
    assert!(
        !reasons.iter().any(|r| r == "LaunchFailed" || r == "Failed"),
        "{reasons:?}"
    );
}

/// Waits until `name` reports its user data as not found, and stays so, in
/// its phase, while the controller keeps looking for the Secret.
async fn waits_for_user_data(rig: &Rig, name: &str, secret: &str) -> String {
    let ws = rig
        .wait_ws(name, "UserDataNotFound", |w| {
            ready_reason_is(w, "UserDataNotFound")
        })
        .await;
    let phase = ws.status.as_ref().and_then(|s| s.phase);
    assert_eq!(phase, Some(Phase::Provisioning));
    let reads = secret_reads(rig, secret);
    rig.kube
        .wait_for(
            support::rig::WAIT,
            "the Secret to be looked for again",
            |_| secret_reads(rig, secret) >= reads + 2,
        )
        .await;
    let ws = rig.get(name).unwrap();
    assert_eq!(ws.status.as_ref().and_then(|s| s.phase), phase);
    assert!(ready_reason_is(&ws, "UserDataNotFound"));
    assert_eq!(
        rig.proxy.calls("RunInstances"),
        0,
        "no launch without its user data"
    );
    let (status, _, message) = rig.ready(name).unwrap();
    assert_eq!(status, "False");
    message
}

#[tokio::test]
async fn a_missing_user_data_secret_waits_in_its_phase_until_it_is_created() {
    let rig = Rig::start().await;
    rig.create(&with_user_data(&rig, "dev", "dev-init", None))
        .await;
    let message = waits_for_user_data(&rig, "dev", "dev-init").await;
    assert!(
        message.contains("dev-init") && message.contains("userData"),
        "names the Secret and the key: {message}"
    );
    assert!(
        rig.event_reasons("dev")
            .iter()
            .any(|r| r == "UserDataNotFound")
    );

    create_secret(&rig, "dev-init", "userData").await;
    rig.wait_phase("dev", Phase::Online).await;
    assert_eq!(launched_user_data(&rig).as_deref(), Some(USER_DATA));
    never_failed(&rig, "dev");
}

#[tokio::test]
async fn a_user_data_secret_without_the_key_waits_in_its_phase() {
    let rig = Rig::start().await;
    create_secret(&rig, "dev-init", "somethingElse").await;
    rig.create(&with_user_data(&rig, "dev", "dev-init", Some("cloudInit")))
        .await;
    let message = waits_for_user_data(&rig, "dev", "dev-init").await;
    assert!(
        message.contains("dev-init") && message.contains("cloudInit"),
        "names the Secret and the key: {message}"
    );
    never_failed(&rig, "dev");
}

#[tokio::test]
async fn a_user_data_secret_that_cannot_be_read_for_a_while_is_retried() {
    let rig = Rig::start().await;
    create_secret(&rig, "dev-init", "userData").await;
    let path = format!("/api/v1/namespaces/{NS}/secrets/dev-init");
    rig.kube
        .inject_failure(Failure::new("GET", &path, 500, "InternalError", 3));
    rig.create(&with_user_data(&rig, "dev", "dev-init", None))
        .await;
    rig.wait_phase("dev", Phase::Online).await;
    let refused = rig
        .kube
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == path && r.status == 500)
        .count();
    assert_eq!(refused, 3, "every injected failure was met");
    never_failed(&rig, "dev");
    assert_eq!(launched_user_data(&rig).as_deref(), Some(USER_DATA));
}
