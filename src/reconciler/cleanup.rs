//! Deletion: release the backend step by step, then let the finalizer go.

use super::*;
use commit::{normal, publish};

/// A backend released by a cleanup, to be announced once the finalizer is
/// gone too: until then a failed finalizer removal keeps the Workspace, and
/// an event would claim more than is true.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Released {
    pub note: String,
}

/// Deletion: record Deleting, release the backend step by step. `Some` once
/// the backend is released and the finalizer may go; `None` when there was no
/// backend to release.
pub(super) async fn cleanup(
    ws: &Workspace,
    ctx: &Context,
    api: &Api<Workspace>,
) -> Result<Option<Released>, Error> {
    let old = ws.status.clone().unwrap_or_default();
    if old.phase != Some(Phase::Deleting) {
        let outcome = Outcome {
            detail: Some("releasing the backend".into()),
            ..Outcome::quiet(Phase::Deleting, "Teardown")
        };
        commit(ws, ctx, api, &old, outcome).await?;
    }
    let Some(backend) = ctx.backend(ws) else {
        return Ok(None);
    };
    let mut skipped = Vec::new();
    let step = backend.teardown(ws, &mut skipped).await;
    for why in skipped {
        warn!("left alone during deletion: {why}");
        let event = Event {
            type_: EventType::Warning,
            reason: "ForeignResource".into(),
            note: Some(format!("left alone: {why}")),
            action: "Teardown".into(),
            secondary: None,
        };
        publish(ctx, ws, event).await;
    }
    let step = match step {
        // Held by an instance tend does not own: say so where `kubectl get`
        // and `describe` look, and retry with backoff.
        Err(e @ BackendError::VolumeInUse { .. }) => {
            // A reconcile that just wrote Deleting holds a stale version; the
            // next one records the condition.
            if old.phase == Some(Phase::Deleting) {
                let outcome = Outcome {
                    problem: Some(Problem::failure(
                        "VolumeInUse",
                        format!("{e}; it is deleted once it is detached"),
                    )),
                    ..Outcome::quiet(Phase::Deleting, "Teardown")
                };
                commit(ws, ctx, api, &old, outcome).await?;
            }
            return Err(e.into());
        }
        other => other?,
    };
    match step {
        Step::Wait(why) => Err(Error::TeardownInProgress(why)),
        Step::Done | Step::Record(_) => Ok(Some(Released {
            note: backend.released(ws),
        })),
    }
}

/// Announces a release once the finalizer removal is persisted.
pub(super) async fn announce(ws: &Workspace, ctx: &Context, released: Released) {
    publish(ctx, ws, normal("Released", released.note, "Teardown")).await;
    ctx.forget(&ws.uid().unwrap_or_default());
    if let Some(backend) = ctx.backend(ws) {
        backend.forget(ws);
    }
    info!("released");
}
