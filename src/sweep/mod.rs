//! The sweeper: asks the backends about every Workspace that should be
//! running, each backend all at once, and publishes the answers as one
//! immutable snapshot. It never writes status; it wakes the reconciler for the
//! objects whose answer changed.

mod breaker;
mod observe;
mod snapshot;

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc::UnboundedSender;
use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{Instrument, debug, info, info_span, warn};

pub use breaker::{Assessment, BreakerSettings, Sample, Trip, assess};
pub use observe::observe_all;
pub use snapshot::{Death, Entry, Snapshot};

use crate::api::{Phase, RETRY_ANNOTATION, Runtime, Workspace};
use crate::backend::{Backends, CallStats, Change, Probe, Sighting};
use crate::core::{Hold, Observation, elapsed};
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct SweepSettings {
    pub interval: Duration,
    /// The timeout of one backend call; a sweep may run at least this long.
    pub probe_timeout: Duration,
    pub max_per_sweep: usize,
    pub stale_after: Duration,
    pub breaker: BreakerSettings,
}

impl SweepSettings {
    /// The settings `tend run` uses for these flags.
    pub fn from_args(args: &crate::config::RunArgs) -> Self {
        SweepSettings {
            interval: args.sweep_interval,
            probe_timeout: args.probe_timeout,
            max_per_sweep: args.max_per_sweep,
            stale_after: args.stale_after,
            breaker: BreakerSettings {
                max_offline_fraction: args.max_offline_fraction,
                min_fleet: 10,
                hold_sweeps: 3,
                max_restarts_per_sweep: args.max_restarts_per_sweep,
                window_sweeps: 5,
            },
        }
    }

    /// How long one sweep may take: an interval, or one call's timeout if longer.
    pub fn period(&self) -> Duration {
        self.interval.max(self.probe_timeout)
    }
}

/// A Workspace the sweeper looks at.
#[derive(Debug, Clone)]
pub struct Target {
    pub uid: String,
    pub object: ObjectRef<Workspace>,
    pub runtime: Runtime,
    /// What its backend is asked about.
    pub probe: Probe,
    /// Status already records the backend as dead: the Workspace is Offline.
    pub known_dead: bool,
    /// The persisted start of the current run of Unknown answers, if any.
    pub uncertain_since: Option<Timestamp>,
    /// The `tend.dev/retry` annotation's value.
    pub retry: Option<String>,
    /// What status records as the last clean answer: its state and reason.
    pub recorded: Option<(String, Option<String>)>,
}

/// Whether the sweeper watches this Workspace: of a swept runtime, not
/// being deleted, with a backend recorded, and meant to be running (Online,
/// or Offline/Restarting being healed). Stopped, Hibernated, Provisioning,
/// Failed and the rest are left to the reconciler's own looks.
pub fn target(ws: &Workspace, backends: &Backends) -> Option<Target> {
    let backend = backends.of(ws.spec.runtime).filter(|b| b.swept())?;
    let status = ws.status.as_ref()?;
    let meant_to_run = matches!(
        status.phase,
        Some(Phase::Online | Phase::Offline | Phase::Restarting)
    );
    if ws.metadata.deletion_timestamp.is_some() || !meant_to_run {
        return None;
    }
    Some(Target {
        uid: ws.uid()?,
        object: ObjectRef::from_obj(ws),
        runtime: ws.spec.runtime,
        probe: backend.probe(ws)?,
        known_dead: status.phase == Some(Phase::Offline),
        uncertain_since: status.uncertain_since.as_ref().map(|t| t.0),
        retry: ws.annotations().get(RETRY_ANNOTATION).cloned(),
        recorded: status
            .observation
            .as_ref()
            .map(|o| (o.state.clone(), o.reason.clone())),
    })
}

/// Least recently *answered* first (never-seen ones before all), so a fleet
/// larger than the per-sweep cap is covered over several sweeps, and the ones a
/// sweep ran out of time for go first in the next.
pub fn fair_order<T: Borrow<Target>>(targets: &mut Vec<T>, previous: &Snapshot, max: usize) {
    targets.sort_by_key(|t| {
        let t = t.borrow();
        previous
            .get(&t.uid)
            .filter(|e| e.backend_id == t.probe.id)
            .map(|e| e.last_clean_at)
    });
    targets.truncate(max);
}

/// The targets to ask about. A backend already proven absent by its id is
/// not asked about again: ids are never reused, so its absence is settled,
/// and `assemble` carries that answer forward.
pub fn to_ask<'a, T: Borrow<Target>>(swept: &'a [T], previous: &Snapshot) -> Vec<&'a Target> {
    swept
        .iter()
        .map(Borrow::borrow)
        .filter(|t| proven_absent(previous, t).is_none())
        .collect()
}

/// The previous answer about this very backend, if it was a proven absence.
fn proven_absent<'a>(previous: &'a Snapshot, t: &Target) -> Option<&'a Entry> {
    previous
        .get(&t.uid)
        .filter(|e| e.absent && e.backend_id == t.probe.id)
}

/// How long an early sweep waits after the first change, so that the
/// changes of one event (a node's Pods failing together) go in one look.
const EARLY_QUIET: Duration = Duration::from_millis(100);
/// Early sweeps come at most this often, however busy the watches are.
const EARLY_GAP: Duration = Duration::from_secs(1);

/// What a sweep looks at.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Every Workspace the sweeper covers: the sweep of each interval.
    All,
    /// Only the Workspaces of these runtimes and locations, where a watch
    /// saw a change: an early sweep. All of a location's Workspaces are
    /// asked about, so the circuit breaker sees its group whole.
    Changed(HashMap<Runtime, BTreeSet<String>>),
}

impl Scope {
    pub fn covers(&self, t: &Target) -> bool {
        match self {
            Scope::All => true,
            Scope::Changed(places) => places
                .get(&t.runtime)
                .is_some_and(|locations| locations.contains(&t.probe.location)),
        }
    }
}

/// Changes seen since the last sweep, waiting for an early one.
#[derive(Default)]
struct Changed {
    places: HashMap<Runtime, BTreeSet<String>>,
    first: Option<tokio::time::Instant>,
}

impl Changed {
    fn note(&mut self, runtime: Runtime, location: String) {
        self.places.entry(runtime).or_default().insert(location);
        self.first.get_or_insert_with(tokio::time::Instant::now);
    }
}

/// Hands what the watches see on: a change of a place to the sweeper (an
/// early sweep), a change of one Workspace's backend straight to the
/// reconciler, if that Workspace exists.
async fn forward(
    mut changes: impl futures::Stream<Item = (Runtime, Change)> + Unpin,
    places: UnboundedSender<(Runtime, String)>,
    wake: UnboundedSender<ObjectRef<Workspace>>,
    store: Store<Workspace>,
) {
    while let Some((runtime, change)) = changes.next().await {
        match change {
            Change::At(location) => {
                let _ = places.unbounded_send((runtime, location));
            }
            Change::Of(object) => {
                if store.get(&object).is_some() {
                    let _ = wake.unbounded_send(object);
                }
            }
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => futures::future::pending().await,
    }
}

/// What one sweep concluded.
#[derive(Debug, Clone, Default)]
pub struct SweepReport {
    pub sweep: u64,
    pub in_scope: usize,
    pub observed: usize,
    pub changed: Vec<ObjectRef<Workspace>>,
    pub trips: Vec<Trip>,
    pub calls: CallStats,
    pub duration: Duration,
}

/// Builds the next snapshot from the previous one and this sweep's answers,
/// keyed by Workspace uid. Pure: the clock comes in as `now`. An early sweep
/// (`Scope::Changed`) keeps the previous sweep's number, so the circuit
/// breaker's window and holds count the interval's sweeps only.
pub fn assemble<T: Borrow<Target>>(
    previous: &Snapshot,
    in_scope: &[Target],
    swept: &[T],
    answers: &HashMap<String, Sighting>,
    now: Timestamp,
    scope: &Scope,
    settings: &SweepSettings,
) -> (Snapshot, Vec<ObjectRef<Workspace>>, Vec<Trip>) {
    let swept: Vec<&Target> = swept.iter().map(Borrow::borrow).collect();
    let sightings: Vec<Sighting> = swept
        .iter()
        .map(
            |t| match (answers.get(&t.uid), proven_absent(previous, t)) {
                (Some(seen), _) => seen.clone(),
                // Settled: asking again could only say the same.
                (None, Some(gone)) => Sighting {
                    observation: gone.observation.clone(),
                    asked_at: now,
                    zone: gone.zone.clone(),
                    absent: true,
                    holds_for: None,
                },
                (None, None) => Sighting::unknown("not asked", now),
            },
        )
        .collect();
    let before = |t: &Target| previous.get(&t.uid).filter(|e| e.backend_id == t.probe.id);
    let zones: Vec<Option<String>> = swept
        .iter()
        .zip(&sightings)
        .map(|(t, seen)| {
            seen.zone
                .clone()
                .or_else(|| before(t).and_then(|e| e.zone.clone()))
        })
        .collect();
    let samples: Vec<Sample> = swept
        .iter()
        .zip(&sightings)
        .zip(&zones)
        .map(|((t, seen), zone)| Sample {
            uid: &t.uid,
            backend_id: &t.probe.id,
            location: &t.probe.location,
            zone: zone.as_deref(),
            now: &seen.observation,
            before: before(t),
            absent: seen.absent,
            known_dead: t.known_dead,
            retry: t.retry.as_deref(),
        })
        .collect();
    let early = matches!(scope, Scope::Changed(_));
    let sweep = previous.sweep + u64::from(!early);
    let assessment = assess(&samples, &previous.deaths, sweep, early, &settings.breaker);

    let mut next = Snapshot {
        sweep,
        finished_at: Some(now),
        entries: HashMap::with_capacity(in_scope.len()),
        deaths: assessment.deaths,
    };
    // Objects not swept this time keep their last answer.
    for t in in_scope {
        if let Some(e) = before(t) {
            next.entries.insert(t.uid.clone(), e.clone());
        }
    }
    let mut changed = Vec::new();
    for (i, (t, seen)) in swept.iter().zip(&sightings).enumerate() {
        let before = samples[i].before;
        let clean = !matches!(seen.observation, Observation::Unknown { .. });
        let last_clean_at = if clean {
            seen.asked_at
        } else {
            // The persisted clock survives a controller restart.
            before
                .map(|e| e.last_clean_at)
                .or(t.uncertain_since)
                .unwrap_or(seen.asked_at)
        };
        let unknown_for = elapsed(last_clean_at, now).unwrap_or_default();
        let hold = assessment.holds.get(&t.uid).copied().unwrap_or(Hold::None);
        let held_retry = match (hold, before) {
            (Hold::Suspected { .. }, Some(b)) if matches!(b.hold, Hold::Suspected { .. }) => {
                b.held_retry.clone()
            }
            (Hold::Suspected { .. }, _) => t.retry.clone(),
            _ => None,
        };
        let entry = Entry {
            backend_id: t.probe.id.clone(),
            observation: seen.observation.clone(),
            observed_at: seen.asked_at,
            last_clean_at,
            stale: !clean && unknown_for > settings.stale_after,
            zone: zones[i].clone(),
            absent: seen.absent,
            hold,
            held_retry,
        };
        // A new answer, or a clean one that status does not say yet (an
        // answer the reconciler could not use when it came, because it was
        // asked before a restart, and that still holds).
        let news = before.is_none_or(|old| entry.differs_for_reconciler(old))
            || (clean && t.recorded.as_ref().is_some_and(|r| entry.contradicts(r)));
        if news {
            changed.push(t.object.clone());
        }
        next.entries.insert(t.uid.clone(), entry);
    }
    (next, changed, assessment.trips)
}

/// The sweeper task.
pub struct Sweeper {
    backends: Backends,
    settings: SweepSettings,
    store: Store<Workspace>,
    published: watch::Sender<Arc<Snapshot>>,
    wake: UnboundedSender<ObjectRef<Workspace>>,
    metrics: Arc<Metrics>,
}

impl Sweeper {
    pub fn new(
        backends: Backends,
        settings: SweepSettings,
        store: Store<Workspace>,
        published: watch::Sender<Arc<Snapshot>>,
        wake: UnboundedSender<ObjectRef<Workspace>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Sweeper {
            backends,
            settings,
            store,
            published,
            wake,
            metrics,
        }
    }

    /// Sweeps every interval until cancelled; cancellation also abandons a
    /// sweep in progress.
    pub async fn run(self, cancel: CancellationToken) {
        // Sweeping an empty cache would cover nothing for a whole interval, so
        // wait until the first list is in. The store's readiness signal wakes
        // only the last of several waiters (the controller waits too), so look
        // again every half second rather than trusting one wake-up.
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                ready = tokio::time::timeout(Duration::from_millis(500), self.store.wait_until_ready()) => match ready {
                    Ok(Ok(())) => break,
                    Ok(Err(_)) => {
                        warn!("the Workspace cache was dropped before it was ready; not sweeping");
                        return;
                    }
                    Err(_) => continue,
                },
            }
        }
        debug!("sweeper started");
        let mut ticker = tokio::time::interval(self.settings.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let changes = futures::stream::select_all(self.backends.iter().filter_map(|b| {
            let runtime = b.runtime();
            b.changes()
                .map(|s| s.map(move |change| (runtime, change)).boxed())
        }));
        // The watches are read on a task of their own, so that a sweep in
        // progress delays no look the reconciler should take at once.
        let (places, mut changed_at) = futures::channel::mpsc::unbounded();
        // Aborted when the sweeper ends or is dropped.
        let _watching = AbortOnDropHandle::new(tokio::spawn(forward(
            changes,
            places,
            self.wake.clone(),
            self.store.clone(),
        )));
        let mut changed = Changed::default();
        let mut last_early: Option<tokio::time::Instant> = None;
        loop {
            let early_at = changed.first.map(|first| {
                let quiet = first + EARLY_QUIET;
                last_early.map_or(quiet, |last| quiet.max(last + EARLY_GAP))
            });
            let scope = tokio::select! {
                _ = cancel.cancelled() => break,
                _ = ticker.tick() => {
                    changed = Changed::default();
                    Scope::All
                }
                Some((runtime, location)) = changed_at.next() => {
                    changed.note(runtime, location);
                    continue;
                }
                _ = sleep_until(early_at), if early_at.is_some() => {
                    Scope::Changed(std::mem::take(&mut changed).places)
                }
            };
            let span = info_span!("sweep", early = matches!(scope, Scope::Changed(_)));
            tokio::select! {
                _ = cancel.cancelled() => {
                    info!("sweep cancelled");
                    break;
                }
                report = self.sweep_once(&scope).instrument(span.clone()) => {
                    span.in_scope(|| debug!(sweep = report.sweep, observed = report.observed, changed = report.changed.len(), duration = ?report.duration, "sweep done"));
                }
            }
            // The gap between early sweeps runs from the end of the last one.
            if matches!(scope, Scope::Changed(_)) {
                last_early = Some(tokio::time::Instant::now());
            }
        }
    }

    /// One sweep: scope, observe, assess, publish, wake.
    pub async fn sweep_once(&self, scope: &Scope) -> SweepReport {
        let started = tokio::time::Instant::now();
        let previous = self.published.borrow().clone();
        let workspaces = self.store.state();
        if matches!(scope, Scope::All) {
            self.metrics
                .workspaces(workspaces.iter().map(|ws| ws.as_ref()));
        }
        let in_scope: Vec<Target> = workspaces
            .iter()
            .filter_map(|ws| target(ws, &self.backends))
            .collect();
        drop(workspaces);
        let mut swept: Vec<&Target> = in_scope.iter().filter(|t| scope.covers(t)).collect();
        fair_order(&mut swept, &previous, self.settings.max_per_sweep);

        let deadline = started + self.settings.period();
        let (answers, calls) =
            observe_all(&self.backends, &to_ask(&swept, &previous), deadline).await;
        let now = Timestamp::now();
        let (next, changed, trips) = assemble(
            &previous,
            &in_scope,
            &swept,
            &answers,
            now,
            scope,
            &self.settings,
        );

        for trip in &trips {
            warn!(
                location = %trip.location,
                zone = ?trip.zone,
                not_running = trip.not_running,
                observed = trip.observed,
                "circuit breaker tripped: holding NotRunning answers as a suspected provider outage"
            );
            self.metrics
                .breaker_tripped(&trip.location, trip.zone.as_deref());
        }
        for entry in next.entries.values() {
            if entry.observed_at == now {
                self.metrics.observed(&entry.observation);
            }
            if let Some(age) = elapsed(entry.last_clean_at, now) {
                self.metrics.observation_age(age);
            }
        }
        let report = SweepReport {
            sweep: next.sweep,
            in_scope: in_scope.len(),
            observed: swept.len(),
            changed: changed.clone(),
            trips,
            calls,
            duration: started.elapsed(),
        };
        self.metrics.swept(
            report.in_scope,
            report.observed,
            &report.calls,
            report.duration,
        );
        self.published.send_replace(Arc::new(next));
        for object in changed {
            let _ = self.wake.unbounded_send(object);
        }
        report
    }
}

#[cfg(test)]
mod tests;
