//! The reconciler: the only writer of a Workspace's status. It asks the decision
//! core what to do, has the backend do it, records what is now true, and only
//! then tells the world (events).

mod conditions;
mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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

use conditions::Problem;

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
use crate::sweep::{Hold, Snapshot};

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
    /// Last `tend.dev/refresh` value acted upon, per Workspace uid.
    refreshes: Mutex<HashMap<String, String>>,
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
            refreshes: Mutex::new(HashMap::new()),
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

    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Backend(_) => "backend",
            Error::TeardownInProgress(_) => "teardown_in_progress",
            Error::Illegal(_) => "illegal_transition",
            Error::Finalizer(_) => "finalizer",
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
    let result = finalizer(&api, FINALIZER, ws, |event| async {
        match event {
            finalizer::Event::Apply(ws) => apply(&ws, &ctx, &api).await,
            finalizer::Event::Cleanup(ws) => cleanup(&ws, &ctx, &api).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
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

/// What one reconcile concluded, before it is written.
struct Outcome {
    phase: Phase,
    observation: Option<Observation>,
    problem: Option<Problem>,
    detail: Option<String>,
    record: Option<Record>,
    action: &'static str,
    /// A new `tend.dev/retry` value: clears the restart history.
    retry_handled: Option<String>,
}

impl Outcome {
    fn problem(phase: Phase, reason: &'static str, message: String) -> Self {
        Outcome {
            phase,
            observation: None,
            problem: Some(Problem::failure(reason, message)),
            detail: None,
            record: None,
            action: "Validate",
            retry_handled: None,
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
    let owner = Owner {
        uid: &uid,
        cluster: &ctx.settings.cluster_name,
        namespace: &ns,
        name: &name,
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
        && ready_reason(&old) == Some("CrashLoop");
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

    let mut outcome = Outcome {
        phase: plan.phase,
        observation: look.as_ref().map(|l| l.observation.clone()),
        problem: uncertainty(look.as_ref()),
        detail: None,
        record: None,
        action: action_name(plan.action),
        retry_handled,
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
    match execute(ws, ctx, spec, &old, &owner, plan).await {
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
            fail(&mut outcome, phase, plan.action, e, ctx, &name, &ns);
        }
    }
    commit(ws, ctx, api, &old, outcome).await?;
    Ok(Requeue::requeue(requeue))
}

/// One answer about the recorded instance, and what the sweeper adds to it.
struct Look {
    observation: Observation,
    hold: Hold,
    stale: bool,
    /// A death seen outside the sweep: wait for the sweep to confirm it.
    await_sweep: bool,
}

/// The sweeper's answer if it is fresh (younger than two sweep intervals),
/// about the same instance, and the Workspace is settled (Online or Offline);
/// otherwise, or when `tend.dev/refresh` has a new value, one direct look.
/// While tend itself is changing the backend (launching, starting, stopping,
/// restarting) an answer from before that change would mislead.
async fn look(
    ws: &Workspace,
    ctx: &Context,
    spec: &api::Ec2Spec,
    old: &WorkspaceStatus,
    now: Timestamp,
) -> Look {
    let uid = ws.uid().unwrap_or_default();
    let refresh = ws.annotations().get(REFRESH_ANNOTATION);
    let forced =
        refresh.is_some_and(|v| ctx.refreshes.lock().expect("refresh lock").get(&uid) != Some(v));
    let settled = matches!(old.phase, Some(Phase::Online | Phase::Offline));
    let snapshot = ctx.snapshot.borrow().clone();
    let entry = snapshot
        .get(&uid)
        .filter(|e| old.instance_id.as_deref() == Some(e.instance_id.as_str()));
    // Nothing tend recorded since may be newer than the sweep's answer: not
    // the last answer written to status, and not the last restart.
    let newest_known = [
        old.observation.as_ref().map(|o| o.observed_at.0),
        old.last_restart.as_ref().map(|r| r.at.0),
    ]
    .into_iter()
    .flatten()
    .max();
    if !forced
        && settled
        && let Some(entry) = entry
        && elapsed(entry.observed_at, now).unwrap_or(Duration::MAX)
            < ctx.settings.sweep_interval * 2
        && newest_known.is_none_or(|t| entry.observed_at >= t)
    {
        debug!(workspace = %ws.name_any(), sweep = snapshot.sweep, "using the sweep's answer");
        return Look {
            observation: entry.observation.clone(),
            hold: entry.hold,
            stale: entry.stale,
            await_sweep: false,
        };
    }
    if let Some(value) = refresh {
        ctx.refreshes
            .lock()
            .expect("refresh lock")
            .insert(uid, value.clone());
    }
    let observation = ctx.ec2.observe(spec, old, now).await;
    debug!(workspace = %ws.name_any(), forced, ?observation, "looked directly");
    ctx.metrics.observed(&observation);
    let dead = matches!(observation, Observation::NotRunning(_));
    // A direct look that agrees with a held sweep answer stays held.
    let hold = match entry {
        Some(e) if dead && matches!(e.hold, Hold::Suspected { .. }) => e.hold,
        _ => Hold::None,
    };
    Look {
        observation,
        hold,
        stale: false,
        // Only the sweep sees the whole fleet, so only the sweep (and its
        // circuit breaker) may take a running Workspace offline; a user's
        // refresh is the one exception.
        await_sweep: dead && !forced && old.phase == Some(Phase::Online),
    }
}

/// `Ready=Unknown` when the answer cannot be trusted yet, or is too old.
fn uncertainty(look: Option<&Look>) -> Option<Problem> {
    let look = look?;
    match (&look.observation, look.hold) {
        (Observation::NotRunning(nr), Hold::Suspected { .. }) => Some(Problem::uncertain(
            "SuspectedProviderOutage",
            format!(
                "{} ({}), but too many Workspaces of its region or zone stopped at once; \
                 acting only if the answer persists",
                nr.message, nr.reason
            ),
        )),
        // No error text: it varies from look to look, and each change would
        // be another write and event for every stale Workspace.
        (Observation::Unknown { .. }, _) if look.stale => Some(Problem::uncertain(
            "ObservationStale",
            "no clean answer from the backend for longer than --stale-after; see BackendRunning"
                .to_owned(),
        )),
        _ => None,
    }
}

/// Turns a failed action into what the user sees.
fn fail(
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
    }
}

fn failed(outcome: &mut Outcome, phase: Phase, reason: &'static str, message: String) {
    outcome.phase = if transition(phase, Phase::Failed).is_ok() {
        Phase::Failed
    } else {
        phase
    };
    outcome.problem = Some(Problem::failure(reason, message));
}

async fn execute(
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
async fn read_user_data(
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

/// Applies a backend record to status.
fn apply_record(status: &mut WorkspaceStatus, record: &Record) {
    match record {
        Record::Volume { id, zone } => {
            status.volume_id = Some(id.clone());
            status.availability_zone = Some(zone.clone());
        }
        Record::LaunchReserved(n) => {
            // A new launch number retires the previous instance, if any.
            status.launch_number = Some(*n);
            status.instance_id = None;
            status.launched_at = None;
        }
        Record::Launched { instance_id, at } => {
            status.instance_id = Some(instance_id.clone());
            status.launched_at = Some(Time(*at));
        }
    }
}

/// Computes the new status, writes it if anything changed, and only after a
/// successful write emits the events that describe it.
async fn commit(
    ws: &Workspace,
    ctx: &Context,
    api: &Api<Workspace>,
    old: &WorkspaceStatus,
    outcome: Outcome,
) -> Result<(), Error> {
    let now = Timestamp::now();
    let from = old.phase.unwrap_or(Phase::Pending);
    let mut new = old.clone();
    new.phase = Some(outcome.phase);
    new.observed_generation = ws.metadata.generation;
    if let Some(r) = &outcome.record {
        apply_record(&mut new, r);
    }
    if let Some(retry) = &outcome.retry_handled {
        new.handled_retry = Some(retry.clone());
        new.recent_restarts.clear();
    }
    if outcome.phase == Phase::Restarting && from != Phase::Restarting {
        new.restarts += 1;
        new.last_restart = Some(RestartRecord {
            at: Time(now),
            reason: ready_reason(old).unwrap_or("Offline").to_owned(),
        });
        let mut history: Vec<Timestamp> = new.recent_restarts.iter().map(|t| t.0).collect();
        history.push(now);
        new.recent_restarts = restart::recent(&history, now)
            .into_iter()
            .map(Time)
            .collect();
    }
    if let Some(obs) = &outcome.observation {
        record_observation(&mut new, obs, now);
    }
    let wanted = conditions::wanted_conditions(&conditions::Inputs {
        phase: outcome.phase,
        observation: outcome.observation.as_ref(),
        problem: outcome.problem.as_ref(),
        heals: ws.spec.restart_policy == RestartPolicy::Always,
        detail: outcome.detail.as_deref(),
        old: &old.conditions,
    });
    new.conditions = conditions::settle(wanted, &old.conditions, ws.metadata.generation, now);
    if &new == old {
        return Ok(());
    }
    status::write(api, ws, old, &new).await?;

    // The recorder folds repeats of the same reason and action into one event
    // series; naming the instance as the related object keeps a new
    // instance's events apart from the old one's.
    let instance = new.instance_id.as_ref().map(|id| ObjectReference {
        kind: Some("EC2Instance".into()),
        name: Some(id.clone()),
        ..Default::default()
    });
    for mut event in events_for(old, &new, &outcome) {
        event.secondary = instance.clone();
        if let Err(e) = ctx.recorder.publish(&event, &ws.object_ref(&())).await {
            warn!(workspace = %ws.name_any(), "could not publish event {}: {e}", event.reason);
        }
    }
    if from != outcome.phase {
        ctx.metrics.transition(outcome.phase);
        match outcome.phase {
            Phase::Offline => ctx
                .metrics
                .went_offline(ready_reason(&new).unwrap_or("Unknown")),
            Phase::Restarting => ctx.metrics.restarted(),
            _ => {}
        }
        info!(workspace = %ws.name_any(), namespace = ?ws.namespace(), from = %from, to = %outcome.phase, "phase changed");
    }
    Ok(())
}

/// `status.observation` holds the last clean answer; its time moves only when
/// the answer changes.
fn record_observation(status: &mut WorkspaceStatus, obs: &Observation, now: Timestamp) {
    let Some(state) = obs.state_name() else {
        return;
    };
    let reason = match obs {
        Observation::NotRunning(nr) => Some(nr.reason.clone()),
        _ => None,
    };
    let same = status
        .observation
        .as_ref()
        .is_some_and(|o| o.state == state && o.reason == reason);
    if !same {
        status.observation = Some(ObservationRecord {
            state: state.to_owned(),
            reason,
            observed_at: Time(now),
            source: "ec2:DescribeInstances".into(),
        });
    }
}

/// The events a persisted change deserves.
fn events_for(old: &WorkspaceStatus, new: &WorkspaceStatus, outcome: &Outcome) -> Vec<Event> {
    let mut events = Vec::new();
    let ready = new.conditions.iter().find(|c| c.type_ == condition::READY);
    let note = ready.map(|c| c.message.clone()).filter(|m| !m.is_empty());
    let from = old.phase.unwrap_or(Phase::Pending);
    if from != outcome.phase {
        let warning = matches!(outcome.phase, Phase::Offline | Phase::Failed);
        let reason = if warning {
            ready
                .map(|c| c.reason.clone())
                .unwrap_or_else(|| outcome.phase.to_string())
        } else {
            outcome.phase.to_string()
        };
        events.push(Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason,
            // No "from" phase in the note: the recorder folds repeats of an
            // event into a series that keeps the first note, so the note must
            // be as true the second time as the first.
            note: Some(match note {
                Some(n) => format!("now {}: {n}", outcome.phase),
                None => format!("now {}", outcome.phase),
            }),
            action: outcome.action.to_owned(),
            secondary: None,
        });
    } else if let Some(problem) = &outcome.problem {
        let old_reason = old
            .conditions
            .iter()
            .find(|c| c.type_ == condition::READY)
            .map(|c| (&c.reason, &c.message));
        if old_reason != Some((&problem.reason.to_owned(), &problem.message)) {
            events.push(Event {
                type_: EventType::Warning,
                reason: problem.reason.to_owned(),
                note: Some(problem.message.clone()),
                action: outcome.action.to_owned(),
                secondary: None,
            });
        }
    }
    match &outcome.record {
        Some(Record::Volume { id, zone }) => events.push(normal(
            "VolumeCreated",
            format!("data volume {id} in {zone}"),
            outcome.action,
        )),
        Some(Record::Launched { instance_id, .. }) => events.push(normal(
            "Launched",
            format!("instance {instance_id}"),
            outcome.action,
        )),
        _ => {}
    }
    events
}

fn normal(reason: &str, note: String, action: &str) -> Event {
    Event {
        type_: EventType::Normal,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: None,
    }
}

/// Deletion: record Deleting, release the backend step by step, then let the
/// finalizer go.
async fn cleanup(ws: &Workspace, ctx: &Context, api: &Api<Workspace>) -> Result<Requeue, Error> {
    let old = ws.status.clone().unwrap_or_default();
    if old.phase != Some(Phase::Deleting) {
        let outcome = Outcome {
            phase: Phase::Deleting,
            observation: None,
            problem: None,
            detail: Some("releasing the backend".into()),
            record: None,
            action: "Teardown",
            retry_handled: None,
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
