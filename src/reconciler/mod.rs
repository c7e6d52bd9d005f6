//! The reconciler: the only writer of a Workspace's status. It asks the decision
//! core what to do, has the backend do it, records what is now true, and only
//! then tells the world (events).

mod cleanup;
mod commit;
mod conditions;
mod execute;
mod look;
mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::controller::{self, Action as Requeue, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use cleanup::cleanup;
use commit::commit;
use conditions::Problem;
use execute::{execute, fail, user_data_not_found};
use look::{look, uncertain_since, uncertainty};

use crate::api::{
    self, FINALIZER, ObservationRecord, Phase, REFRESH_ANNOTATION, RETRY_ANNOTATION, RestartPolicy,
    RestartRecord, Runtime, Workspace, WorkspaceStatus, condition,
};
use crate::backend::ec2::{AwsErrorKind, BackendError, Ec2Backend, Owner, Record, Step};
use crate::core::{
    Action, Facts, IllegalTransition, Observation, Plan, RestartGate, decide, elapsed, restart,
    transition,
};
use crate::metrics::Metrics;
use crate::sweep::{BatchSettings, Entry, Hold, Snapshot};

/// How the reconciler paces itself.
#[derive(Debug, Clone)]
pub struct Settings {
    pub cluster_name: String,
    /// How soon to look again while something is under way.
    pub progress_interval: Duration,
    /// How often a settled Workspace is looked at again.
    pub resync_interval: Duration,
    /// First delay after an error; doubles per consecutive error up to 10 min.
    pub error_backoff: Duration,
    /// First delay between restarts of a dying backend; doubles up to 10 min.
    pub restart_backoff: Duration,
    /// The sweeper's interval: a snapshot answer younger than twice this is
    /// fresh enough to act on.
    pub sweep_interval: Duration,
    pub concurrency: u16,
    /// How direct looks describe: the same batched, bounded calls as the sweep.
    pub batch: BatchSettings,
    /// How long after launch a missing instance is not yet proof of death.
    pub not_found_grace: Duration,
    /// Only Unknown answers this long: `Ready=Unknown`/`ObservationStale`.
    pub stale_after: Duration,
}

/// Everything a reconcile needs.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub ec2: Arc<Ec2Backend>,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        ec2: Arc<Ec2Backend>,
        settings: Settings,
        metrics: Arc<Metrics>,
        snapshot: watch::Receiver<Arc<Snapshot>>,
    ) -> Self {
        let recorder = Recorder::new(client.clone(), "tend".into());
        Context {
            client,
            recorder,
            ec2,
            settings,
            metrics,
            snapshot,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Exponential backoff per object: 1x, 2x, 4x ... the base, capped at 10 min.
    fn backoff(&self, uid: &str) -> Duration {
        let mut failures = self.failures.lock().expect("backoff lock");
        let n = failures.entry(uid.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        let factor = 1u32 << (*n - 1).min(16);
        (self.settings.error_backoff * factor).min(Duration::from_secs(600))
    }

    fn succeeded(&self, uid: &str) {
        self.failures.lock().expect("backoff lock").remove(uid);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("teardown in progress: {0}")]
    TeardownInProgress(String),
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    /// The Secret named by `spec.ec2.userData`, or its key, does not exist
    /// (yet). The message names both.
    #[error("{0}")]
    UserDataNotFound(String),
    /// The Secret named by `spec.ec2.userData` could not be read (API error,
    /// timeout, connection).
    #[error("reading Secret {secret} for spec.ec2.userData: {source}")]
    UserDataUnreadable {
        secret: String,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    fn teardown_wait(&self) -> bool {
        match self {
            Error::TeardownInProgress(_) => true,
            Error::Finalizer(f) => matches!(
                &**f,
                finalizer::Error::CleanupFailed(Error::TeardownInProgress(_))
            ),
            _ => false,
        }
    }

    /// Short label for metrics. Every reconcile runs inside the finalizer
    /// helper, so an apply's or cleanup's own error is labelled by its cause.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Backend(_) => "backend",
            Error::TeardownInProgress(_) => "teardown_in_progress",
            Error::Illegal(_) => "illegal_transition",
            Error::Finalizer(f) => match &**f {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => {
                    e.metric_label()
                }
                _ => "finalizer",
            },
            Error::UserDataNotFound(_) => "user_data_not_found",
            Error::UserDataUnreadable { .. } => "user_data_unreadable",
        }
    }
}

/// The Workspace controller; its `store()` is the cache the sweeper reads.
pub fn new_controller(api: Api<Workspace>, concurrency: u16) -> Controller<Workspace> {
    Controller::new(api, watcher::Config::default().any_semantic())
        .with_config(controller::Config::default().concurrency(concurrency))
}

/// Runs the controller until `shutdown` resolves. `wake` carries the objects
/// whose sweep answer changed.
pub async fn run(
    controller: Controller<Workspace>,
    ctx: Arc<Context>,
    wake: impl futures::Stream<Item = ObjectRef<Workspace>> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    controller
        .reconcile_on(wake)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => debug!(workspace = %obj, "reconciled"),
                Err(controller::Error::ReconcilerFailed(e, obj)) if e.teardown_wait() => {
                    debug!(workspace = %obj, "{e}")
                }
                Err(e) => warn!("reconcile failed: {e}"),
            }
        })
        .await;
}

async fn reconcile(ws: Arc<Workspace>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let ns = ws.namespace().unwrap_or_default();
    let api: Api<Workspace> = Api::namespaced(ctx.client.clone(), &ns);
    let released = OnceLock::new();
    let result = finalizer(&api, FINALIZER, ws.clone(), |event| async {
        match event {
            finalizer::Event::Apply(ws) => match apply(&ws, &ctx, &api).await {
                Err(Error::UserDataNotFound(message)) => {
                    user_data_not_found(&ws, &ctx, &api, message).await
                }
                other => other,
            },
            finalizer::Event::Cleanup(ws) => {
                if let Some(r) = cleanup(&ws, &ctx, &api).await? {
                    let _ = released.set(r);
                }
                Ok(Requeue::await_change())
            }
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    // The helper removes the finalizer after a successful cleanup; only once
    // that removal is persisted is the release true.
    if result.is_ok()
        && let Some(r) = released.into_inner()
    {
        cleanup::announce(&ws, &ctx, r).await;
    }
    ctx.metrics
        .reconciled(result.as_ref().err().map(Error::metric_label));
    result
}

fn error_policy(ws: Arc<Workspace>, err: &Error, ctx: Arc<Context>) -> Requeue {
    if err.teardown_wait() {
        return Requeue::requeue(ctx.settings.progress_interval);
    }
    let delay = ctx.backoff(&ws.uid().unwrap_or_default());
    warn!(workspace = %ws.name_any(), namespace = ?ws.namespace(), retry_in = ?delay, "{err}");
    Requeue::requeue(delay)
}

/// `Ready` reasons of a Failed Workspace that wait for a human's
/// `tend.dev/retry` rather than for a retry with backoff.
pub const WAITS_FOR_HUMAN: &[&str] = &["CrashLoop", "VolumeLost"];

/// What one reconcile concluded, before it is written.
struct Outcome {
    phase: Phase,
    /// This reconcile's look, if it looked.
    observation: Option<Observation>,
    /// When the look's call was sent.
    asked_at: Timestamp,
    /// The staleness clock after the look (written only with a look).
    uncertain_since: Option<Timestamp>,
    problem: Option<Problem>,
    detail: Option<String>,
    record: Option<Record>,
    action: &'static str,
    /// A new `tend.dev/retry` value: clears the restart history.
    retry_handled: Option<String>,
    /// A new `tend.dev/refresh` value that this reconcile's look answered.
    refresh_handled: Option<String>,
}

impl Outcome {
    /// An outcome that looked at nothing and changes only the phase.
    fn quiet(phase: Phase, action: &'static str) -> Self {
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

    fn problem(phase: Phase, reason: &'static str, message: String) -> Self {
        Outcome {
            problem: Some(Problem::failure(reason, message)),
            ..Outcome::quiet(phase, "Validate")
        }
    }
}

async fn apply(ws: &Workspace, ctx: &Context, api: &Api<Workspace>) -> Result<Requeue, Error> {
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
    if ws.spec.runtime != Runtime::Ec2 {
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
    }
    let spec = ws
        .spec
        .ec2
        .as_ref()
        .expect("validated: ec2 runtime has an ec2 block");
    let ns = ws.namespace().unwrap_or_default();
    let name = ws.name_any();
    let owner = Owner::of(ws, &ctx.settings.cluster_name);

    let now = Timestamp::now();
    let retry = ws.annotations().get(RETRY_ANNOTATION).cloned();
    let retry_handled = retry.filter(|r| old.handled_retry.as_ref() != Some(r));
    let history: Vec<Timestamp> = if retry_handled.is_some() {
        Vec::new()
    } else {
        old.recent_restarts.iter().map(|t| t.0).collect()
    };
    let gate = restart::gate(&history, now, ctx.settings.restart_backoff);
    let has_backend = old.instance_id.is_some();
    let look = if has_backend {
        Some(look(ws, ctx, spec, &old, now).await)
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
    let plan = decide(&Facts {
        desired: ws.spec.desired_state,
        restart_policy: ws.spec.restart_policy,
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
    if let Err(illegal) = transition(phase, plan.phase) {
        // A bug in the decision table; refuse rather than write a lie.
        error!(workspace = %name, namespace = %ns, "{illegal}");
        return Err(illegal.into());
    }

    let uncertain_since = look.as_ref().and_then(|l| uncertain_since(l, &old));
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
            wait.min(steady_requeue(ctx, plan.phase))
        }
        _ => steady_requeue(ctx, plan.phase),
    };
    // Look again when the answers would turn stale, so the condition says
    // so on time.
    if let Some(left) = stale_in.filter(|left| !left.is_zero()) {
        requeue = requeue.min(left + Duration::from_millis(50));
    }
    match execute(ws, ctx, spec, &old, &owner, plan).await? {
        Ok(Step::Record(r)) => {
            outcome.record = Some(r);
            requeue = Duration::from_millis(50);
            ctx.succeeded(&uid);
        }
        Ok(Step::Wait(why)) => {
            outcome.detail = Some(why);
            requeue = ctx.settings.progress_interval;
            ctx.succeeded(&uid);
        }
        Ok(Step::Done) => ctx.succeeded(&uid),
        Err(e) => {
            requeue = ctx.backoff(&uid);
            // What did not happen is not announced: no phase change, no
            // restart counted, unless the failure itself is the news.
            outcome.phase = phase;
            fail(&mut outcome, phase, plan.action, e, ctx, &name, &ns);
        }
    }
    commit(ws, ctx, api, &old, outcome).await?;
    Ok(Requeue::requeue(requeue))
}

fn action_name(action: Action) -> &'static str {
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

fn steady_requeue(ctx: &Context, phase: Phase) -> Duration {
    match phase {
        Phase::Online | Phase::Stopped | Phase::Hibernated | Phase::Failed => {
            ctx.settings.resync_interval
        }
        _ => ctx.settings.progress_interval,
    }
}

fn ready_reason(status: &WorkspaceStatus) -> Option<&str> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == condition::READY)
        .map(|c| c.reason.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_inside_the_finalizer_helper_are_labelled_by_their_cause() {
        let apply = Error::Finalizer(Box::new(finalizer::Error::ApplyFailed(
            Error::UserDataNotFound("Secret dev-init has no key userData".into()),
        )));
        assert_eq!(apply.metric_label(), "user_data_not_found");
        let cleanup = Error::Finalizer(Box::new(finalizer::Error::CleanupFailed(
            Error::TeardownInProgress("terminating i-1".into()),
        )));
        assert_eq!(cleanup.metric_label(), "teardown_in_progress");
        let helper = Error::Finalizer(Box::new(finalizer::Error::UnnamedObject));
        assert_eq!(helper.metric_label(), "finalizer");
    }
}
