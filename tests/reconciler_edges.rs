//! The reconciler at its edges: a finalizer removal that fails after the
//! backend was released.

mod support;

use support::fake_kube::Failure;
use support::faults::FaultRule;
use support::rig::{NS, Rig};
use tend::api::{FINALIZER, Phase};

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
