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

pub(super) async fn execute(
    ws: &Workspace,
    ctx: &Context,
    spec: &api::Ec2Spec,
    old: &WorkspaceStatus,
    owner: &Owner<'_>,
    plan: Plan,
) -> Result<Step, BackendError> {
    match plan.action {
        Action::None | Action::Teardown => Ok(Step::Done),
        Action::Provision => {
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
    }
}

/// Reads user data from the referenced Secret, base64-encoded for RunInstances.
/// The content is never logged.
pub(super) async fn read_user_data(
    ws: &Workspace,
    ctx: &Context,
    spec: &api::Ec2Spec,
) -> Result<Option<String>, BackendError> {
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
        .map_err(|e| {
            BackendError::Invalid(format!(
                "reading Secret {} for spec.ec2.userData: {e}",
                r.name
            ))
        })?
        .ok_or_else(|| {
            BackendError::Invalid(format!(
                "Secret {} for spec.ec2.userData does not exist",
                r.name
            ))
        })?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| {
            BackendError::Invalid(format!(
                "Secret {} has no key {key} for spec.ec2.userData",
                r.name
            ))
        })?;
    Ok(Some(
        base64::engine::general_purpose::STANDARD.encode(&bytes.0),
    ))
}
