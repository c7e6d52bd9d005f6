//! Deletion: release the backend step by step, then let the finalizer go.

use super::*;
use commit::normal;

/// Deletion: record Deleting, release the backend step by step, then let the
/// finalizer go.
pub(super) async fn cleanup(
    ws: &Workspace,
    ctx: &Context,
    api: &Api<Workspace>,
) -> Result<Requeue, Error> {
    let old = ws.status.clone().unwrap_or_default();
    if old.phase != Some(Phase::Deleting) {
        let outcome = Outcome {
            detail: Some("releasing the backend".into()),
            ..Outcome::quiet(Phase::Deleting, "Teardown")
        };
        commit(ws, ctx, api, &old, outcome).await?;
    }
    if ws.spec.runtime != Runtime::Ec2 {
        return Ok(Requeue::await_change());
    }
    let spec = ws.spec.ec2.clone().unwrap_or_default();
    let uid = ws.uid().unwrap_or_default();
    let ns = ws.namespace().unwrap_or_default();
    let name = ws.name_any();
    let owner = Owner {
        uid: &uid,
        cluster: &ctx.settings.cluster_name,
        namespace: &ns,
        name: &name,
    };
    let mut skipped = Vec::new();
    let step = ctx.ec2.teardown(&spec, &old, &owner, &mut skipped).await;
    for why in skipped {
        warn!(workspace = %name, namespace = %ns, "left alone during deletion: {why}");
        let event = Event {
            type_: EventType::Warning,
            reason: "ForeignResource".into(),
            note: Some(format!("left alone: {why}")),
            action: "Teardown".into(),
            secondary: None,
        };
        let _ = ctx.recorder.publish(&event, &ws.object_ref(&())).await;
    }
    match step? {
        Step::Wait(why) => Err(Error::TeardownInProgress(why)),
        Step::Done | Step::Record(_) => {
            let kept = match spec.volume.reclaim_policy {
                api::ReclaimPolicy::Retain => "retained",
                api::ReclaimPolicy::Delete => "deleted",
            };
            let note = match &old.volume_id {
                Some(v) => format!("instance terminated; data volume {v} {kept}"),
                None => "nothing left to release".to_owned(),
            };
            let _ = ctx
                .recorder
                .publish(&normal("Released", note, "Teardown"), &ws.object_ref(&()))
                .await;
            info!(workspace = %name, namespace = %ns, "released");
            Ok(Requeue::await_change())
        }
    }
}
