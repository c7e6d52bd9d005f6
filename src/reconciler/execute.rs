//! Carrying out the plan's action, and turning failures into what the user sees.

use super::*;

/// Turns a failed action into what the user sees.
pub(super) fn fail(
    outcome: &mut Outcome,
    phase: Phase,
    action: Action,
    e: BackendError,
    ctx: &Context,
    name: &str,
    ns: &str,
) {
    let message = e.to_string();
    match &e {
        BackendError::NotOwned { .. } => {
            warn!(workspace = %name, namespace = %ns, "refusing to touch a foreign resource: {message}");
            outcome.phase = phase;
            outcome.problem = Some(Problem::failure("ForeignResource", message));
        }
        BackendError::Aws(aws) => {
            ctx.metrics.aws_error(aws.operation, aws.kind);
            let launching = matches!(action, Action::Provision | Action::Start);
            match aws.kind {
                AwsErrorKind::InvalidParameter if launching => failed(
                    outcome,
                    phase,
                    if action == Action::Start {
                        "StartFailed"
                    } else {
                        "LaunchFailed"
                    },
                    message,
                ),
                AwsErrorKind::Auth => {
                    error!(workspace = %name, namespace = %ns, "AWS rejected tend's credentials: {message}");
                    outcome.problem = Some(Problem::failure("AwsAuthFailed", message));
                    outcome.phase = phase;
                }
                _ => {
                    warn!(workspace = %name, namespace = %ns, "{message}; will retry");
                    outcome.detail = Some(format!("retrying after: {message}"));
                }
            }
        }
        BackendError::Invalid(_) => failed(outcome, phase, "LaunchFailed", message),
        // Healing needs the data; an empty volume in its place would hide the
        // loss. Held until a human's tend.dev/retry (see WAITS_FOR_HUMAN).
        BackendError::VolumeLost { .. } => {
            error!(workspace = %name, namespace = %ns, "{message}");
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
            warn!(workspace = %name, namespace = %ns, "{message}; not attaching it");
            outcome.phase = phase;
            outcome.problem = Some(Problem::failure(
                "VolumeInUse",
                format!("{message}; detach it there to continue"),
            ));
        }
    }
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
/// asked for, because an input tend reads from Kubernetes (the user data) is
/// missing or unreadable: nothing was sent to the backend, and the reconcile
/// is retried with backoff.
pub(super) async fn execute(
    ws: &Workspace,
    ctx: &Context,
    spec: &api::Ec2Spec,
    old: &WorkspaceStatus,
    owner: &Owner<'_>,
    plan: Plan,
) -> Result<Attempt, Error> {
    Ok(match plan.action {
        Action::None | Action::Teardown => Ok(Step::Done),
        Action::Provision => {
            // Only the launch itself needs the user data.
            let user_data = if old.instance_id.is_none() && old.launch_number.is_some() {
                read_user_data(ws, ctx, spec).await?
            } else {
                None
            };
            ctx.ec2.provision(spec, old, owner, user_data).await
        }
        Action::Start => ctx
            .ec2
            .start(spec, old, owner)
            .await
            .map(|_| Step::Wait("starting".into())),
        Action::Stop { hibernate } => ctx
            .ec2
            .stop(spec, old, owner, hibernate)
            .await
            .map(|_| Step::Wait(if hibernate { "hibernating" } else { "stopping" }.into())),
        Action::Replace => Ok(Step::Record(Record::LaunchReserved(
            old.launch_number.unwrap_or(0) + 1,
        ))),
    })
}

/// Reads user data from the referenced Secret, base64-encoded for RunInstances.
/// A Secret or key that does not exist (yet) is `UserDataNotFound`; any other
/// failure to read it is `UserDataUnreadable`, retried. The content is never
/// logged.
pub(super) async fn read_user_data(
    ws: &Workspace,
    ctx: &Context,
    spec: &api::Ec2Spec,
) -> Result<Option<String>, Error> {
    use base64::Engine;
    let Some(r) = &spec.user_data else {
        return Ok(None);
    };
    let key = r.key.as_deref().unwrap_or("userData");
    let secrets: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &ws.namespace().unwrap_or_default());
    let secret = secrets
        .get_opt(&r.name)
        .await
        .map_err(|source| Error::UserDataUnreadable {
            secret: r.name.clone(),
            source,
        })?;
    let Some(secret) = secret else {
        return Err(Error::UserDataNotFound(format!(
            "Secret {} does not exist; spec.ec2.userData wants its key {key}, and the launch waits for it",
            r.name
        )));
    };
    let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(key)) else {
        return Err(Error::UserDataNotFound(format!(
            "Secret {} has no key {key} for spec.ec2.userData; the launch waits for it",
            r.name
        )));
    };
    Ok(Some(
        base64::engine::general_purpose::STANDARD.encode(&bytes.0),
    ))
}

/// Reports user data that is not there (yet) as `Ready=False` with reason
/// `UserDataNotFound`, in the phase the Workspace is in, and hands the error
/// back so the reconcile is retried with backoff: once the Secret has the key,
/// the launch goes on.
pub(super) async fn user_data_not_found(
    ws: &Workspace,
    ctx: &Context,
    api: &Api<Workspace>,
    message: String,
) -> Result<Requeue, Error> {
    let old = ws.status.clone().unwrap_or_default();
    let outcome = Outcome {
        problem: Some(Problem::failure("UserDataNotFound", message.clone())),
        ..Outcome::quiet(
            old.phase.unwrap_or(Phase::Pending),
            action_name(Action::Provision),
        )
    };
    commit(ws, ctx, api, &old, outcome).await?;
    Err(Error::UserDataNotFound(message))
}
