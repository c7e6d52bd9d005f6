//! The reconciler: the only writer of a Workspace's status. It asks the decision
//! core what to do, has the backend do it, records what is now true, and only
//! then tells the world (events).

mod apply;
mod cleanup;
mod commit;
mod conditions;
mod execute;
mod look;
mod quiet;
mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::controller::{self, Action as Requeue, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;
use tracing::{Instrument, debug, error, info, info_span, warn};

use apply::{Outcome, action_name, apply, ready_reason, restart_policy};
use cleanup::cleanup;
use commit::commit;
use conditions::Problem;
use execute::{execute, fail, input_missing};
use look::{forced, look, uncertainty};
use quiet::Quiet;

use crate::api::{
    self, FINALIZER, ObservationRecord, Phase, REFRESH_ANNOTATION, RETRY_ANNOTATION, RestartPolicy,
    RestartRecord, Workspace, WorkspaceStatus, condition,
};
use crate::backend::{Backend, BackendError, Backends, ErrorKind, Record, Step};
use crate::core::{
    Action, Facts, Hold, IllegalTransition, Observation, Plan, RestartGate, decide, elapsed,
    restart, transition,
};
use crate::metrics::Metrics;
use crate::sweep::Snapshot;

/// How the reconciler paces itself.
#[derive(Debug, Clone)]
pub struct Settings {
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
    /// The timeout of one backend call; a direct look may make a few.
    pub probe_timeout: Duration,
    /// Only Unknown answers this long: `Ready=Unknown`/`ObservationStale`.
    pub stale_after: Duration,
}

/// Everything a reconcile needs.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub backends: Backends,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    failures: Mutex<HashMap<String, u32>>,
    /// The last quiet reconcile of each Workspace; see `quiet.rs`.
    quiet: Mutex<HashMap<String, Quiet>>,
    started: std::time::Instant,
}

impl Context {
    pub fn new(
        client: Client,
        backends: Backends,
        settings: Settings,
        metrics: Arc<Metrics>,
        snapshot: watch::Receiver<Arc<Snapshot>>,
    ) -> Self {
        let recorder = Recorder::new(client.clone(), "tend".into());
        Context {
            client,
            recorder,
            backends,
            settings,
            metrics,
            snapshot,
            failures: Mutex::new(HashMap::new()),
            quiet: Mutex::new(HashMap::new()),
            started: std::time::Instant::now(),
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

    /// The backend of the Workspace's runtime, if one is registered.
    fn backend(&self, ws: &Workspace) -> Option<&dyn Backend> {
        self.backends.of(ws.spec.runtime).map(|b| &**b)
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

    /// Short label for metrics. Every reconcile runs inside the finalizer
    /// helper, so an apply's or cleanup's own error is labelled by its cause.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            // Inputs the spec names that are missing or unreadable: nothing
            // was asked of the backend.
            Error::Backend(BackendError::InputMissing { .. }) => "input_missing",
            Error::Backend(BackendError::InputUnreadable(_)) => "input_unreadable",
            Error::Backend(_) => "backend",
            Error::TeardownInProgress(_) => "teardown_in_progress",
            Error::Illegal(_) => "illegal_transition",
            Error::Finalizer(f) => match &**f {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => {
                    e.metric_label()
                }
                _ => "finalizer",
            },
        }
    }
}

/// The Workspace controller; its `store()` is the cache the sweeper reads.
/// The cache keeps no `managedFields`: they are often the bulk of a stored
/// object, tend never reads them, and at 100,000 Workspaces they would be
/// hundreds of megabytes.
pub fn new_controller(
    api: Api<Workspace>,
    label_selector: Option<&str>,
    concurrency: u16,
) -> Controller<Workspace> {
    let (reader, writer) = reflector::store();
    let mut config = watcher::Config::default().any_semantic();
    if let Some(selector) = label_selector {
        config = config.labels(selector);
    }
    let objects = watcher(api, config)
        .modify(|ws| ws.managed_fields_mut().clear())
        .reflect(writer)
        .applied_objects();
    Controller::for_stream(objects, reader)
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
    let store = controller.store();
    // Aborted when this future ends or is dropped (a replica that stops leading).
    let _pruning = {
        let ctx = ctx.clone();
        AbortOnDropHandle::new(tokio::spawn(async move {
            let mut every = tokio::time::interval(ctx.settings.resync_interval);
            loop {
                every.tick().await;
                ctx.prune(&store);
            }
        }))
    };
    controller
        .reconcile_on(wake)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => debug!(object = %obj, "reconciled"),
                Err(controller::Error::ReconcilerFailed(e, obj)) if e.teardown_wait() => {
                    debug!(object = %obj, "{e}")
                }
                Err(e) => warn!("reconcile failed: {e}"),
            }
        })
        .await;
}

/// One reconcile, in a span naming the Workspace, its backend and its phase
/// (updated when the reconcile writes a new one).
async fn reconcile(ws: Arc<Workspace>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let status = ws.status.as_ref();
    let span = info_span!(
        "reconcile",
        namespace = %ws.namespace().unwrap_or_default(),
        workspace = %ws.name_any(),
        instance = status.and_then(|s| s.backend.as_deref()),
        phase = status.and_then(|s| s.phase).map(Phase::as_str),
    );
    reconcile_in_span(ws, ctx).instrument(span).await
}

async fn reconcile_in_span(ws: Arc<Workspace>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    // The safety resync of a settled Workspace whose inputs did not change.
    if ctx.unchanged(&ws) {
        ctx.metrics.unchanged();
        return Ok(Requeue::requeue(ctx.settings.resync_interval));
    }
    let ns = ws.namespace().unwrap_or_default();
    let api: Api<Workspace> = Api::namespaced(ctx.client.clone(), &ns);
    let released = OnceLock::new();
    let result = finalizer(&api, FINALIZER, ws.clone(), |event| async {
        match event {
            finalizer::Event::Apply(ws) => match apply(&ws, &ctx, &api).await {
                Err(Error::Backend(BackendError::InputMissing { reason, message })) => {
                    input_missing(&ws, &ctx, &api, reason, message).await
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
    warn!(namespace = %ws.namespace().unwrap_or_default(), workspace = %ws.name_any(), retry_in = ?delay, "{err}");
    Requeue::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_inside_the_finalizer_helper_are_labelled_by_their_cause() {
        let apply = Error::Finalizer(Box::new(finalizer::Error::ApplyFailed(Error::Backend(
            BackendError::InputMissing {
                reason: "UserDataNotFound",
                message: "Secret dev-init has no key userData".into(),
            },
        ))));
        assert_eq!(apply.metric_label(), "input_missing");
        let cleanup = Error::Finalizer(Box::new(finalizer::Error::CleanupFailed(
            Error::TeardownInProgress("terminating i-1".into()),
        )));
        assert_eq!(cleanup.metric_label(), "teardown_in_progress");
        let helper = Error::Finalizer(Box::new(finalizer::Error::UnnamedObject));
        assert_eq!(helper.metric_label(), "finalizer");
    }
}
