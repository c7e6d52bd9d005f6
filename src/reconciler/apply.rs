//! One reconcile of a Workspace that is not being deleted: validate, look,
//! decide, act, then record what is now true.

use super::*;

/// `Ready` reasons of a Failed Workspace that wait for a human's
/// `tend.dev/retry` rather than for a retry with backoff.
pub(super) const WAITS_FOR_HUMAN: &[&str] = &["CrashLoop", "VolumeLost"];

/// What one reconcile concluded, before it is written.
pub(super) struct Outcome {
    pub(super) phase: Phase,
    /// This reconcile's look, if it looked.
    pub(super) observation: Option<Observation>,
    /// When the look's call was sent.
    pub(super) asked_at: Timestamp,
    /// The staleness clock after the look (written only with a look).
    pub(super) uncertain_since: Option<Timestamp>,
    pub(super) problem: Option<Problem>,
    pub(super) detail: Option<String>,
    pub(super) record: Option<Record>,
    pub(super) action: &'static str,
    /// A new `tend.dev/retry` value: clears the restart history.
    pub(super) retry_handled: Option<String>,
    /// A new `tend.dev/refresh` value that this reconcile's look answered.
    pub(super) refresh_handled: Option<String>,
}

impl Outcome {
    /// An outcome that looked at nothing and changes only the phase.
    pub(super) fn quiet(phase: Phase, action: &'static str) -> Self {
        Outcome {
            phase,
            observation: None,
            asked_at: Timestamp::now(),
            uncertain_since: None,
            problem: None,
            detail: None,
            record: None,
            action,
            retry_handled: None,
            refresh_handled: None,
        }
    }

    pub(super) fn problem(phase: Phase, reason: &'static str, message: String) -> Self {
        Outcome {
            problem: Some(Problem::failure(reason, message)),
            ..Outcome::quiet(phase, "Validate")
        }
    }
}

pub(super) async fn apply(
    ws: &Workspace,
    ctx: &Context,
    api: &Api<Workspace>,
) -> Result<Requeue, Error> {
    let old = ws.status.clone().unwrap_or_default();
    let phase = old.phase.unwrap_or(Phase::Pending);
    let uid = ws.uid().unwrap_or_default();

    if let Err(violation) = api::validate(ws) {
        commit(
            ws,
            ctx,
            api,
            &old,
            Outcome::problem(phase, "InvalidSpec", violation.message),
        )
        .await?;
        return Ok(Requeue::await_change());
    }
    let Some(backend) = ctx.backend(ws) else {
        let message = format!("runtime {} is not supported yet", ws.spec.runtime.as_str());
        commit(
            ws,
            ctx,
            api,
            &old,
            Outcome::problem(phase, "RuntimeNotSupported", message),
        )
        .await?;
        return Ok(Requeue::await_change());
    };
    let now = Timestamp::now();
    let retry = ws.annotations().get(RETRY_ANNOTATION).cloned();
    let retry_handled = retry.filter(|r| old.handled_retry.as_ref() != Some(r));
    let history: Vec<Timestamp> = if retry_handled.is_some() {
        Vec::new()
    } else {
        old.recent_restarts.iter().map(|t| t.0).collect()
    };
    let gate = restart::gate(&history, now, ctx.settings.restart_backoff);
    let has_backend = old.backend_id().is_some();
    // One snapshot for the whole reconcile: the quiet note below must name
    // the answer this reconcile acted on, not a newer one.
    let snapshot = ctx.snapshot.borrow().clone();
    if has_backend && let Some(left) = ctx.first_sweep_due(ws, backend, &old, &snapshot) {
        debug!("waiting for the first sweep's answer");
        return Ok(Requeue::requeue(left));
    }
    let look = if has_backend {
        Some(look(ws, ctx, backend, &old, now, &snapshot).await)
    } else {
        None
    };
    let unlaunched = Observation::Pending {
        detail: "nothing launched yet".into(),
    };
    let observation = look.as_ref().map(|l| &l.observation).unwrap_or(&unlaunched);
    let suspected = look
        .as_ref()
        .is_some_and(|l| l.await_sweep || matches!(l.hold, Hold::Suspected { .. }));
    let held = retry_handled.is_none()
        && phase == Phase::Failed
        && ready_reason(&old).is_some_and(|r| WAITS_FOR_HUMAN.contains(&r));
    let mut plan = decide(&Facts {
        desired: ws.spec.desired_state,
        restart_policy: restart_policy(ws, backend),
        phase,
        deleting: false,
        has_backend,
        observation,
        held,
        suspected_outage: suspected,
        restart_gate: gate,
        restart_settled: old
            .last_restart
            .as_ref()
            .is_none_or(|r| elapsed(r.at.0, now).unwrap_or_default() >= restart::SETTLE),
    });
    // What tend would provision, a backend that comes up by itself is
    // awaited for.
    if !backend.launches() && plan.phase == Phase::Provisioning {
        plan.phase = Phase::AwaitingAgent;
    }
    if let Err(illegal) = transition(phase, plan.phase) {
        // A bug in the decision table; refuse rather than write a lie.
        error!("{illegal}");
        return Err(illegal.into());
    }

    let uncertain_since = look.as_ref().and_then(|l| {
        crate::core::uncertain_since(
            &l.observation,
            old.uncertain_since.as_ref().map(|t| t.0),
            l.last_clean_at,
            l.asked_at,
        )
    });
    let stale_in = uncertain_since.map(|since| {
        let unknown_for = elapsed(since, now).unwrap_or_default();
        ctx.settings.stale_after.saturating_sub(unknown_for)
    });
    let stale = stale_in.is_some_and(|left| left.is_zero());
    let mut outcome = Outcome {
        phase: plan.phase,
        observation: look.as_ref().map(|l| l.observation.clone()),
        asked_at: look.as_ref().map_or(now, |l| l.asked_at),
        uncertain_since,
        problem: uncertainty(look.as_ref(), &old, stale),
        detail: None,
        record: None,
        action: action_name(plan.action),
        retry_handled,
        refresh_handled: look.as_ref().and_then(|l| l.refresh_handled.clone()),
    };
    if plan.phase == Phase::Failed && phase != Phase::Failed && gate == RestartGate::CrashLoop {
        outcome.problem = Some(Problem::failure(
            "CrashLoop",
            format!(
                "restarted {} times within {} minutes; set the {RETRY_ANNOTATION} annotation to a new value to try again",
                restart::CRASH_LOOP_RESTARTS,
                restart::CRASH_LOOP_WINDOW.as_secs() / 60
            ),
        ));
    }
    let mut requeue = match gate {
        RestartGate::Wait(wait) if plan.phase == Phase::Offline => {
            wait.min(steady_requeue(ctx, plan.phase, backend))
        }
        _ => steady_requeue(ctx, plan.phase, backend),
    };
    // Look again when the answers would turn stale, so the condition says
    // so on time.
    if let Some(left) = stale_in.filter(|left| !left.is_zero()) {
        requeue = requeue.min(left + Duration::from_millis(50));
    }
    // And when a heartbeat's answer runs out.
    if let Some(left) = look.as_ref().and_then(|l| l.holds_for) {
        requeue = requeue.min(left + Duration::from_millis(50));
    }
    // No sweep asks again about a backend it does not cover: after a failed
    // look, this reconcile is the one that must.
    let failed_look = look
        .as_ref()
        .is_some_and(|l| matches!(l.observation, Observation::Unknown { .. }));
    if failed_look && !backend.swept() {
        requeue = requeue.min(ctx.settings.progress_interval);
    }
    let idle = plan.action == Action::None;
    match execute(ws, backend, &old, plan).await? {
        Ok(Step::Record(r)) => {
            outcome.record = Some(r);
            requeue = Duration::from_millis(50);
            ctx.succeeded(&uid);
        }
        Ok(Step::Wait(why)) => {
            outcome.detail = Some(why);
            requeue = progress(ctx, backend);
            ctx.succeeded(&uid);
        }
        Ok(Step::Done) => ctx.succeeded(&uid),
        Err(e) => {
            requeue = ctx.backoff(&uid);
            // What did not happen is not announced: no phase change, no
            // restart counted, unless the failure itself is the news.
            outcome.phase = phase;
            fail(&mut outcome, phase, plan.action, e, ctx, backend);
        }
    }
    let wrote = commit(ws, ctx, api, &old, outcome).await?;
    // Nothing done, nothing written, no timer of its own, and acting on the
    // sweep's answer as it stood: until the Workspace or that answer
    // changes, the resync has nothing to do here. What the sweep does not
    // cover (Stopped, Failed), and whatever a look of its own answered, is
    // looked at again on the resync, through the same batcher.
    let from_sweep = look.as_ref().is_some_and(|l| l.from_sweep);
    if idle && !wrote && from_sweep && requeue >= ctx.settings.resync_interval {
        ctx.quiet(ws, &snapshot);
    }
    Ok(Requeue::requeue(requeue))
}

/// The restart policy that applies: tend cannot bring back a backend it
/// does not launch, whatever the spec says.
pub(super) fn restart_policy(ws: &Workspace, backend: &dyn Backend) -> RestartPolicy {
    if backend.launches() {
        ws.spec.restart_policy
    } else {
        RestartPolicy::Never
    }
}

pub(super) fn action_name(action: Action) -> &'static str {
    match action {
        Action::None => "Observe",
        Action::Provision => "Provision",
        Action::Start => "Start",
        Action::Stop { hibernate: false } => "Stop",
        Action::Stop { hibernate: true } => "Hibernate",
        Action::Replace => "Replace",
        Action::Teardown => "Teardown",
    }
}

fn steady_requeue(ctx: &Context, phase: Phase, backend: &dyn Backend) -> Duration {
    match phase {
        Phase::Online | Phase::Stopped | Phase::Hibernated | Phase::Failed => {
            ctx.settings.resync_interval
        }
        _ => progress(ctx, backend),
    }
}

/// How soon to look again while something is under way. Nothing of tend's
/// is under way for a backend that comes up by itself: its watch says when
/// to look.
fn progress(ctx: &Context, backend: &dyn Backend) -> Duration {
    if backend.launches() {
        ctx.settings.progress_interval
    } else {
        ctx.settings.resync_interval
    }
}

pub(super) fn ready_reason(status: &WorkspaceStatus) -> Option<&str> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == condition::READY)
        .map(|c| c.reason.as_str())
}
