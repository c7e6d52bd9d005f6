//! The sweeper: asks EC2 about every Workspace that should be running, in
//! batches, and publishes the answers as one immutable snapshot. It never writes
//! status; it wakes the reconciler for the objects whose answer changed.

mod batch;
mod breaker;
mod snapshot;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use batch::{Answer, BatchSettings, CallStats, Describer, Reply, describe_all};
pub use breaker::{Assessment, BreakerSettings, Sample, Trip, assess};
pub use snapshot::{Death, Entry, Hold, Snapshot};

use crate::api::{Phase, RETRY_ANNOTATION, Runtime, Workspace};
use crate::backend::ec2::{classify_instance, classify_missing, region_of};
use crate::core::{Observation, elapsed};
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct SweepSettings {
    pub interval: Duration,
    pub batch: BatchSettings,
    pub max_per_sweep: usize,
    pub stale_after: Duration,
    pub not_found_grace: Duration,
    pub breaker: BreakerSettings,
    pub default_region: String,
}

impl SweepSettings {
    /// The settings `tend run` uses for these flags.
    pub fn from_args(args: &crate::config::RunArgs, default_region: &str) -> Self {
        SweepSettings {
            interval: args.sweep_interval,
            batch: BatchSettings {
                batch_size: args.batch_size as usize,
                probe_timeout: args.probe_timeout,
                max_in_flight: args.max_in_flight,
            },
            max_per_sweep: args.max_per_sweep,
            stale_after: args.stale_after,
            not_found_grace: args.not_found_grace,
            breaker: BreakerSettings {
                max_offline_fraction: args.max_offline_fraction,
                min_fleet: 10,
                hold_sweeps: 3,
                max_restarts_per_sweep: args.max_restarts_per_sweep,
                window_sweeps: 5,
            },
            default_region: default_region.to_owned(),
        }
    }
}

/// A Workspace the sweeper looks at.
#[derive(Debug, Clone)]
pub struct Target {
    pub uid: String,
    pub object: ObjectRef<Workspace>,
    pub region: String,
    pub instance_id: String,
    pub volume_id: Option<String>,
    pub launched_at: Option<Timestamp>,
    /// Status already records the instance as dead: the Workspace is Offline.
    pub known_dead: bool,
    /// The persisted start of the current run of Unknown answers, if any.
    pub uncertain_since: Option<Timestamp>,
    /// The `tend.dev/retry` annotation's value.
    pub retry: Option<String>,
}

/// Whether the sweeper watches this Workspace: ec2, not being deleted, with an
/// instance, and meant to be running (Online, or Offline/Restarting being
/// healed). Stopped, Hibernated, Provisioning, Failed and the rest are left to
/// the reconciler's own looks.
pub fn in_scope(ws: &Workspace) -> bool {
    let status = ws.status.as_ref();
    ws.spec.runtime == Runtime::Ec2
        && ws.metadata.deletion_timestamp.is_none()
        && status.is_some_and(|s| s.instance_id.is_some())
        && matches!(
            status.and_then(|s| s.phase),
            Some(Phase::Online | Phase::Offline | Phase::Restarting)
        )
}

pub fn target(ws: &Workspace, default_region: &str) -> Option<Target> {
    if !in_scope(ws) {
        return None;
    }
    let status = ws.status.as_ref()?;
    Some(Target {
        uid: ws.uid()?,
        object: ObjectRef::from_obj(ws),
        region: region_of(ws.spec.ec2.as_ref(), status, default_region).to_owned(),
        instance_id: status.instance_id.clone()?,
        volume_id: status.volume_id.clone(),
        launched_at: status.launched_at.as_ref().map(|t| t.0),
        known_dead: status.phase == Some(Phase::Offline),
        uncertain_since: status.uncertain_since.as_ref().map(|t| t.0),
        retry: ws.annotations().get(RETRY_ANNOTATION).cloned(),
    })
}

/// What one answer says about one instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Sighting {
    pub observation: Observation,
    /// When the call that answered was sent (`now` when nothing answered).
    pub asked_at: Timestamp,
    pub zone: Option<String>,
    /// A proven absence: EC2 said by id that the instance does not exist.
    pub absent: bool,
}

/// Turns a describe answer into an observation: the one place where a
/// listed state, a proven absence (old enough to be believed) and a failure
/// become Running, Pending, NotRunning or Unknown.
pub fn sighting(
    instance_id: &str,
    volume_id: Option<&str>,
    launched_at: Option<Timestamp>,
    answer: Option<&Answer>,
    not_found_grace: Duration,
    now: Timestamp,
) -> Sighting {
    let Some(answer) = answer else {
        return Sighting {
            observation: Observation::Unknown {
                error: "not described".into(),
            },
            asked_at: now,
            zone: None,
            absent: false,
        };
    };
    let asked_at = answer.asked_at;
    let (observation, zone, absent) = match &answer.reply {
        Reply::Found(instance) => (
            classify_instance(instance, volume_id),
            instance
                .placement()
                .and_then(|p| p.availability_zone())
                .map(str::to_owned),
            false,
        ),
        Reply::NotFound => {
            // Measured when the question was asked: EC2 is eventually
            // consistent right after RunInstances.
            let age = launched_at.map(|at| elapsed(at, asked_at).unwrap_or_default());
            let observation = classify_missing(instance_id, age, not_found_grace);
            let absent = matches!(observation, Observation::NotRunning(_));
            (observation, None, absent)
        }
        Reply::Failed(error) => (
            Observation::Unknown {
                error: error.clone(),
            },
            None,
            false,
        ),
    };
    Sighting {
        observation,
        asked_at,
        zone,
        absent,
    }
}

/// Least recently *answered* first (never-seen ones before all), so a fleet
/// larger than the per-sweep cap is covered over several sweeps, and the ones a
/// sweep ran out of time for go first in the next.
pub fn fair_order(targets: &mut Vec<Target>, previous: &Snapshot, max: usize) {
    targets.sort_by_key(|t| {
        previous
            .get(&t.uid)
            .filter(|e| e.instance_id == t.instance_id)
            .map(|e| e.last_clean_at)
    });
    targets.truncate(max);
}

/// The ids to describe, by region. An instance EC2 already named as not
/// found is not asked about again: instance ids are never reused, so its
/// absence is settled, and `assemble` carries that answer forward.
pub fn ids_to_describe(swept: &[Target], previous: &Snapshot) -> HashMap<String, Vec<String>> {
    let mut by_region: HashMap<String, Vec<String>> = HashMap::new();
    for t in swept {
        if proven_absent(previous, t).is_none() {
            by_region
                .entry(t.region.clone())
                .or_default()
                .push(t.instance_id.clone());
        }
    }
    by_region
}

/// The previous answer about this very instance, if it was a proven absence.
fn proven_absent<'a>(previous: &'a Snapshot, t: &Target) -> Option<&'a Entry> {
    previous
        .get(&t.uid)
        .filter(|e| e.absent && e.instance_id == t.instance_id)
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

/// Builds the next snapshot from the previous one and this sweep's answers.
/// Pure: the clock comes in as `now`.
pub fn assemble(
    previous: &Snapshot,
    in_scope: &[Target],
    swept: &[Target],
    answers: &HashMap<String, Answer>,
    now: Timestamp,
    settings: &SweepSettings,
) -> (Snapshot, Vec<ObjectRef<Workspace>>, Vec<Trip>) {
    let sightings: Vec<Sighting> = swept
        .iter()
        .map(
            |t| match (answers.get(&t.instance_id), proven_absent(previous, t)) {
                // Settled: asking again could only say the same.
                (None, Some(gone)) => Sighting {
                    observation: gone.observation.clone(),
                    asked_at: now,
                    zone: gone.zone.clone(),
                    absent: true,
                },
                (answer, _) => sighting(
                    &t.instance_id,
                    t.volume_id.as_deref(),
                    t.launched_at,
                    answer,
                    settings.not_found_grace,
                    now,
                ),
            },
        )
        .collect();
    let before = |t: &Target| {
        previous
            .get(&t.uid)
            .filter(|e| e.instance_id == t.instance_id)
    };
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
            instance_id: &t.instance_id,
            region: &t.region,
            zone: zone.as_deref(),
            now: &seen.observation,
            before: before(t),
            absent: seen.absent,
            known_dead: t.known_dead,
            retry: t.retry.as_deref(),
        })
        .collect();
    let sweep = previous.sweep + 1;
    let assessment = assess(&samples, &previous.deaths, sweep, &settings.breaker);

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
            instance_id: t.instance_id.clone(),
            observation: seen.observation.clone(),
            observed_at: seen.asked_at,
            last_clean_at,
            stale: !clean && unknown_for > settings.stale_after,
            zone: zones[i].clone(),
            absent: seen.absent,
            hold,
            held_retry,
        };
        if before.is_none_or(|old| entry.differs_for_reconciler(old)) {
            changed.push(t.object.clone());
        }
        next.entries.insert(t.uid.clone(), entry);
    }
    (next, changed, assessment.trips)
}

/// The sweeper task.
pub struct Sweeper<D: Describer> {
    describer: Arc<D>,
    settings: SweepSettings,
    store: Store<Workspace>,
    published: watch::Sender<Arc<Snapshot>>,
    wake: UnboundedSender<ObjectRef<Workspace>>,
    metrics: Arc<Metrics>,
}

impl<D: Describer> Sweeper<D> {
    pub fn new(
        describer: Arc<D>,
        settings: SweepSettings,
        store: Store<Workspace>,
        published: watch::Sender<Arc<Snapshot>>,
        wake: UnboundedSender<ObjectRef<Workspace>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Sweeper {
            describer,
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
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = ticker.tick() => {}
            }
            tokio::select! {
                _ = cancel.cancelled() => {
                    info!("sweep cancelled");
                    break;
                }
                report = self.sweep_once() => {
                    debug!(sweep = report.sweep, observed = report.observed, changed = report.changed.len(), duration = ?report.duration, "sweep done");
                }
            }
        }
    }

    /// One sweep: scope, describe, assess, publish, wake.
    pub async fn sweep_once(&self) -> SweepReport {
        let started = tokio::time::Instant::now();
        let previous = self.published.borrow().clone();
        let in_scope: Vec<Target> = self
            .store
            .state()
            .iter()
            .filter_map(|ws| target(ws, &self.settings.default_region))
            .collect();
        let mut swept = in_scope.clone();
        fair_order(&mut swept, &previous, self.settings.max_per_sweep);

        let ids_by_region = ids_to_describe(&swept, &previous);
        let deadline = started
            + self
                .settings
                .interval
                .max(self.settings.batch.probe_timeout);
        let (answers, calls) = describe_all(
            &*self.describer,
            &ids_by_region,
            self.settings.batch,
            deadline,
        )
        .await;
        let now = Timestamp::now();
        let (next, changed, trips) =
            assemble(&previous, &in_scope, &swept, &answers, now, &self.settings);

        for trip in &trips {
            warn!(
                region = %trip.region,
                zone = ?trip.zone,
                not_running = trip.not_running,
                observed = trip.observed,
                "circuit breaker tripped: holding NotRunning answers as a suspected provider outage"
            );
            self.metrics
                .breaker_tripped(&trip.region, trip.zone.as_deref());
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
        self.metrics.swept(&report);
        self.published.send_replace(Arc::new(next));
        for object in changed {
            let _ = self.wake.unbounded_send(object);
        }
        report
    }
}

#[cfg(test)]
mod tests;
