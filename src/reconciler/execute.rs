//! Carrying out the plan's action, and turning failures into what the user sees.

use super::*;

/// Turns a failed action into what the user sees.
pub(super) fn fail(
    outcome: &mut Outcome,
    phase: Phase,
    action: Action,
    e: BackendError,
    ctx: &Context,
    backend: &dyn Backend,
) {
    let message = e.to_string();
    match &e {
        BackendError::NotOwned { .. } => {
            warn!("refusing to touch a foreign resource: {message}");
            outcome.phase = phase;
            outcome.problem = Some(Problem::failure("ForeignResource", message));
        }
        BackendError::Call(call) => {
            ctx.metrics
                .backend_error(backend.runtime(), call.operation, call.kind);
            let launching = matches!(action, Action::Provision | Action::Start);
            match call.kind {
                ErrorKind::InvalidParameter if launching => failed(
                    outcome,
                    phase,
                    if action == Action::Start {
                        "StartFailed"
                    } else {
                        "LaunchFailed"
                    },
                    message,
                ),
                ErrorKind::Auth => {
                    error!("the backend rejected tend's credentials: {message}");
                    outcome.problem = Some(Problem::failure(backend.auth_reason(), message));
                    outcome.phase = phase;
                }
                _ => retry_later(outcome, message),
            }
        }
        BackendError::Invalid(_) => failed(outcome, phase, "LaunchFailed", message),
        // Carried out of `execute` as errors of their own before this point.
        BackendError::InputMissing { reason, .. } => {
            outcome.phase = phase;
            outcome.problem = Some(Problem::failure(reason, message));
        }
        BackendError::InputUnreadable(_) => retry_later(outcome, message),
        // Healing needs the data; an empty volume in its place would hide the
        // loss. Held until a human's tend.dev/retry (see WAITS_FOR_HUMAN).
        BackendError::VolumeLost { .. } => {
            error!("{message}");
            failed(
                outcome,
                phase,
                "VolumeLost",
                format!(
                    "{message}; tend will not replace it with an empty one. Set the \
                     {RETRY_ANNOTATION} annotation to a new value to look again"
                ),
            );
        }
        // Someone else's instance holds the data: never attach it elsewhere.
        // The phase stays; retries back off, and the condition (and its one
        // event) changes only with the message.
        BackendError::VolumeInUse { .. } => {
            warn!("{message}; not attaching it");
            outcome.phase = phase;
            outcome.problem = Some(Problem::failure(
                "VolumeInUse",
                format!("{message}; detach it there to continue"),
            ));
        }
    }
}

/// A failure that a later attempt may not have: said, and retried.
fn retry_later(outcome: &mut Outcome, message: String) {
    warn!("{message}; will retry");
    outcome.detail = Some(format!("retrying after: {message}"));
}

pub(super) fn failed(outcome: &mut Outcome, phase: Phase, reason: &'static str, message: String) {
    outcome.phase = if transition(phase, Phase::Failed).is_ok() {
        Phase::Failed
    } else {
        phase
    };
    outcome.problem = Some(Problem::failure(reason, message));
}

/// What the backend made of the action it was asked to carry out.
pub(super) type Attempt = Result<Step, BackendError>;

/// Carries out the plan's action. `Err` when the action could not even be
/// asked for, because an input the spec names (the user data) is missing or
/// unreadable: nothing was sent to the backend, and the reconcile is retried
/// with backoff.
pub(super) async fn execute(
    ws: &Workspace,
    backend: &dyn Backend,
    old: &WorkspaceStatus,
    plan: Plan,
) -> Result<Attempt, Error> {
    let attempt = match plan.action {
        Action::None | Action::Teardown => Ok(Step::Done),
        Action::Provision => backend.provision(ws).await,
        Action::Start => backend
            .start(ws)
            .await
            .map(|_| Step::Wait("starting".into())),
        Action::Stop { hibernate } => backend
            .stop(ws, hibernate)
            .await
            .map(|_| Step::Wait(if hibernate { "hibernating" } else { "stopping" }.into())),
        Action::Replace => Ok(Step::Record(Record::LaunchReserved(
            old.launch_number.unwrap_or(0) + 1,
        ))),
    };
    match attempt {
        Err(e @ (BackendError::InputMissing { .. } | BackendError::InputUnreadable(_))) => {
            Err(e.into())
        }
        other => Ok(other),
    }
}

/// Reports an input that is not there (yet), such as the user data Secret,
/// as `Ready=False` with the backend's reason, in the phase the Workspace is
/// in, and hands the error back so the reconcile is retried with backoff:
/// once the input exists, the action goes on.
pub(super) async fn input_missing(
    ws: &Workspace,
    ctx: &Context,
    api: &Api<Workspace>,
    reason: &'static str,
    message: String,
) -> Result<Requeue, Error> {
    let old = ws.status.clone().unwrap_or_default();
    let outcome = Outcome {
        problem: Some(Problem::failure(reason, message.clone())),
        ..Outcome::quiet(
            old.phase.unwrap_or(Phase::Pending),
            action_name(Action::Provision),
        )
    };
    commit(ws, ctx, api, &old, outcome).await?;
    Err(BackendError::InputMissing { reason, message }.into())
}
