//! Settled Workspaces cost nothing on a timer. A reconcile that found
//! nothing to do, wrote nothing and has no timer of its own sooner than the
//! resync leaves a note: the Workspace as it read it (its resourceVersion)
//! and what the sweep said about it. A later reconcile with the same inputs
//! (the safety resync) stops at the note: no validation, no backend call,
//! no write. Any change to the object, or a sweep answer the reconciler
//! would see differently, makes it run in full.
//!
//! And right after the controller starts, a settled Workspace waits for
//! the first sweep's answer rather than look on its own, so that a restart
//! over a settled fleet costs one sweep's calls.

use std::collections::HashSet;
use std::time::Duration;

use kube::runtime::reflector::Store;

use super::*;
use crate::api::DesiredState;

/// What a quiet reconcile saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Quiet {
    resource_version: String,
    /// The sweep's answer, as [`crate::sweep::Entry::fingerprint`].
    answer: Option<u64>,
}

impl Quiet {
    pub(super) fn of(ws: &Workspace, snapshot: &Snapshot) -> Option<Self> {
        Some(Quiet {
            resource_version: ws.resource_version()?,
            answer: ws
                .uid()
                .and_then(|uid| snapshot.get(&uid).map(|e| e.fingerprint())),
        })
    }
}

impl Context {
    /// Whether the last reconcile of this very object, against the same
    /// sweep answer, was quiet: nothing can have changed for it. Only while
    /// the sweep keeps answering: should it stop (a wedged sweeper), the
    /// note lapses after `--stale-after` and the reconciler looks itself.
    pub(super) fn unchanged(&self, ws: &Workspace) -> bool {
        let Some(uid) = ws.uid() else {
            return false;
        };
        let snapshot = self.snapshot.borrow().clone();
        let answering = snapshot.get(&uid).is_some_and(|e| {
            elapsed(e.last_clean_at, Timestamp::now())
                .is_some_and(|age| age < self.settings.stale_after)
        });
        let now = Quiet::of(ws, &snapshot);
        answering
            && now.is_some()
            && self.quiet.lock().expect("quiet lock").get(&uid) == now.as_ref()
    }

    /// Notes a quiet reconcile of `ws`, made against `snapshot`.
    pub(super) fn quiet(&self, ws: &Workspace, snapshot: &Snapshot) {
        if let (Some(uid), Some(quiet)) = (ws.uid(), Quiet::of(ws, snapshot)) {
            self.quiet.lock().expect("quiet lock").insert(uid, quiet);
        }
    }

    /// Forgets everything kept about one Workspace.
    pub(super) fn forget(&self, uid: &str) {
        self.quiet.lock().expect("quiet lock").remove(uid);
        self.failures.lock().expect("backoff lock").remove(uid);
    }

    /// Forgets every Workspace that is no longer in `store`: one deleted
    /// without tend's finalizer leaves no other trace.
    pub(super) fn prune(&self, store: &Store<Workspace>) {
        let live: HashSet<String> = store.state().iter().filter_map(|ws| ws.uid()).collect();
        self.quiet
            .lock()
            .expect("quiet lock")
            .retain(|uid, _| live.contains(uid));
        self.failures
            .lock()
            .expect("backoff lock")
            .retain(|uid, _| live.contains(uid));
    }

    /// How much longer a settled Workspace waits for the first sweep's
    /// answer, if it should: only right after the start, only where a sweep
    /// covers it, and only when nothing new is asked of it (a refresh, a
    /// retry, a spec changed while tend was down, a stop): those act now.
    /// The bound is two sweep periods: by then the first sweep has answered
    /// or run out of time.
    pub(super) fn first_sweep_due(
        &self,
        ws: &Workspace,
        backend: &dyn Backend,
        old: &WorkspaceStatus,
        snapshot: &Snapshot,
    ) -> Option<Duration> {
        let settled = matches!(old.phase, Some(Phase::Online | Phase::Offline));
        let asked = forced(ws, old)
            || ws.spec.desired_state != DesiredState::Running
            || old.observed_generation != ws.metadata.generation
            || ws
                .annotations()
                .get(RETRY_ANNOTATION)
                .is_some_and(|r| old.handled_retry.as_ref() != Some(r));
        // An early sweep before the first full one keeps its number, 0.
        if snapshot.sweep > 0 || asked || !settled || !backend.swept() {
            return None;
        }
        let bound = self
            .settings
            .sweep_interval
            .max(self.settings.probe_timeout)
            * 2;
        bound
            .checked_sub(self.started.elapsed())
            .filter(|left| !left.is_zero())
    }
}
