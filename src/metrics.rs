//! Prometheus metrics. Names match the flags and concepts they describe.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::{Phase, Runtime};
use crate::backend::{CallStats, ErrorKind};
use crate::core::Observation;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnswerLabels {
    answer: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendErrorLabels {
    runtime: &'static str,
    operation: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    phase: &'static str,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeaseLabels {
    lease: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ZoneLabels {
    region: String,
    zone: String,
}

fn seconds_histogram(start: f64) -> Histogram {
    Histogram::new(exponential_buckets(start, 2.0, 14))
}

/// All of tend's metrics, registered once.
pub struct Metrics {
    pub registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    transitions: Family<PhaseLabels, Counter>,
    observations: Family<AnswerLabels, Counter>,
    backend_errors: Family<BackendErrorLabels, Counter>,
    describe_calls: Family<OutcomeLabels, Counter>,
    offline: Family<ReasonLabels, Counter>,
    restarts: Counter,
    breaker_trips: Family<ZoneLabels, Counter>,
    sweep_duration: Histogram,
    observation_age: Histogram,
    limiter_wait: Histogram,
    objects_observed: Gauge,
    objects_in_scope: Gauge,
    last_sweep_completed: Gauge<f64, AtomicU64>,
    sweep_overdue: Gauge,
    leader: Family<LeaseLabels, Gauge>,
    workspaces: Family<StateLabels, Gauge>,
    hints: Family<OutcomeLabels, Counter>,
    hint_receive_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("tend");
        let m = Metrics {
            reconciles: Family::default(),
            transitions: Family::default(),
            observations: Family::default(),
            backend_errors: Family::default(),
            describe_calls: Family::default(),
            offline: Family::default(),
            restarts: Counter::default(),
            breaker_trips: Family::default(),
            sweep_duration: seconds_histogram(0.01),
            observation_age: seconds_histogram(1.0),
            limiter_wait: seconds_histogram(0.001),
            objects_observed: Gauge::default(),
            objects_in_scope: Gauge::default(),
            last_sweep_completed: Gauge::default(),
            sweep_overdue: Gauge::default(),
            leader: Family::default(),
            workspaces: Family::default(),
            hints: Family::default(),
            hint_receive_errors: Counter::default(),
            registry: Registry::default(),
        };
        r.register("reconciles", "Reconciles by result", m.reconciles.clone());
        r.register(
            "phase_transitions",
            "Phase changes written, by new phase",
            m.transitions.clone(),
        );
        r.register(
            "observations",
            "Backend observations by answer",
            m.observations.clone(),
        );
        r.register(
            "backend_errors",
            "Failed backend calls of actions, by runtime, operation and kind",
            m.backend_errors.clone(),
        );
        r.register(
            "describe_calls",
            "Sweep calls to the backends by outcome",
            m.describe_calls.clone(),
        );
        r.register(
            "offline_transitions",
            "Workspaces taken Offline, by reason",
            m.offline.clone(),
        );
        r.register(
            "restarts",
            "Backends restarted after dying underneath",
            m.restarts.clone(),
        );
        r.register(
            "circuit_breaker_trips",
            "Sweeps in which too many Workspaces of a region or zone turned NotRunning at once",
            m.breaker_trips.clone(),
        );
        r.register(
            "sweep_duration_seconds",
            "Duration of one sweep",
            m.sweep_duration.clone(),
        );
        r.register(
            "observation_age_seconds",
            "Time since each swept Workspace's last clean answer",
            m.observation_age.clone(),
        );
        r.register(
            "rate_limiter_wait_seconds",
            "Time a sweep's describe calls waited for the client-side rate limiter",
            m.limiter_wait.clone(),
        );
        r.register(
            "sweep_objects_observed",
            "Workspaces described in the last sweep",
            m.objects_observed.clone(),
        );
        r.register(
            "sweep_objects_in_scope",
            "Workspaces in the sweep's scope",
            m.objects_in_scope.clone(),
        );
        r.register(
            "last_sweep_completed_timestamp_seconds",
            "Unix time at which the last sweep completed (0 before the first)",
            m.last_sweep_completed.clone(),
        );
        r.register(
            "sweep_overdue",
            "1 while no sweep has completed for 3 sweep periods, or the sweeper stopped; /readyz fails meanwhile",
            m.sweep_overdue.clone(),
        );
        r.register(
            "leader",
            "Under leader election, 1 while this replica holds the Lease and acts, else 0",
            m.leader.clone(),
        );
        r.register(
            "workspaces",
            "Workspaces in the cache at the last full sweep, by phase and Ready reason",
            m.workspaces.clone(),
        );
        r.register(
            "ec2_hints",
            "EC2 event hint messages read from the SQS queue, by what became of them",
            m.hints.clone(),
        );
        r.register(
            "ec2_hint_receive_errors",
            "Failed or timed-out receives from the EC2 event hint queue",
            m.hint_receive_errors.clone(),
        );
        Metrics { registry: r, ..m }
    }
}

impl Metrics {
    pub fn reconciled(&self, error: Option<&'static str>) {
        let result = error.unwrap_or("ok");
        self.reconciles
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// A reconcile that stopped at once: nothing had changed since its last quiet one.
    pub fn unchanged(&self) {
        self.reconciles
            .get_or_create(&ResultLabels {
                result: "unchanged",
            })
            .inc();
    }

    pub fn transition(&self, to: Phase) {
        self.transitions
            .get_or_create(&PhaseLabels { phase: to.as_str() })
            .inc();
    }

    pub fn observed(&self, obs: &Observation) {
        let answer = obs.state_name().unwrap_or("Unknown");
        self.observations
            .get_or_create(&AnswerLabels { answer })
            .inc();
    }

    pub fn backend_error(&self, runtime: Runtime, operation: &'static str, kind: ErrorKind) {
        self.backend_errors
            .get_or_create(&BackendErrorLabels {
                runtime: runtime.as_str(),
                operation,
                kind: kind.as_str(),
            })
            .inc();
    }

    pub fn went_offline(&self, reason: &str) {
        self.offline
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn restarted(&self) {
        self.restarts.inc();
    }

    pub fn breaker_tripped(&self, region: &str, zone: Option<&str>) {
        self.breaker_trips
            .get_or_create(&ZoneLabels {
                region: region.to_owned(),
                zone: zone.unwrap_or("").to_owned(),
            })
            .inc();
    }

    pub fn observation_age(&self, age: Duration) {
        self.observation_age.observe(age.as_secs_f64());
    }

    /// One completed sweep: how many Workspaces were in scope and observed,
    /// its calls and how long it took.
    pub fn swept(&self, in_scope: usize, observed: usize, calls: &CallStats, duration: Duration) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        self.last_sweep_completed.set(now.as_secs_f64());
        self.sweep_duration.observe(duration.as_secs_f64());
        self.limiter_wait.observe(calls.limiter_wait.as_secs_f64());
        self.objects_observed.set(observed as i64);
        self.objects_in_scope.set(in_scope as i64);
        for (outcome, n) in [
            ("ok", calls.ok),
            ("throttled", calls.throttled),
            ("failed", calls.failed),
            ("timed_out", calls.timed_out),
        ] {
            self.describe_calls
                .get_or_create(&OutcomeLabels { outcome })
                .inc_by(n as u64);
        }
    }

    pub fn sweep_overdue(&self, overdue: bool) {
        self.sweep_overdue.set(i64::from(overdue));
    }

    pub fn leading(&self, lease: &str, leads: bool) {
        self.leader
            .get_or_create(&LeaseLabels {
                lease: lease.to_string(),
            })
            .set(i64::from(leads));
    }

    /// Counts the Workspaces by phase and `Ready` reason, replacing the last
    /// count (a state no Workspace is in any more disappears).
    pub fn workspaces<'a>(&self, all: impl Iterator<Item = &'a crate::api::Workspace>) {
        let mut counts: std::collections::HashMap<(&'static str, &str), i64> = Default::default();
        for ws in all {
            let status = ws.status.as_ref();
            let phase = status.and_then(|s| s.phase).map_or("", Phase::as_str);
            let reason = status
                .and_then(|s| {
                    s.conditions
                        .iter()
                        .find(|c| c.type_ == crate::api::condition::READY)
                })
                .map_or("", |c| c.reason.as_str());
            *counts.entry((phase, reason)).or_default() += 1;
        }
        self.workspaces.clear();
        for ((phase, reason), n) in counts {
            let labels = StateLabels {
                phase,
                reason: reason.to_string(),
            };
            self.workspaces.get_or_create(&labels).set(n);
        }
    }

    pub fn hint(&self, outcome: &'static str) {
        self.hints.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub fn hint_receive_failed(&self) {
        self.hint_receive_errors.inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The names a scrape shows (counters with their `_total` suffix), once
    /// each labelled family has a sample.
    fn served() -> BTreeSet<String> {
        let m = Metrics::default();
        m.reconciled(None);
        m.leading("tend", true);
        m.hint("handled");
        let ws: crate::api::Workspace = serde_json::from_value(serde_json::json!({
            "apiVersion": "tend.dev/v1alpha1",
            "kind": "Workspace",
            "metadata": {"name": "dev"},
            "spec": {"runtime": "external", "external": {}},
        }))
        .unwrap();
        m.workspaces(std::iter::once(&ws));
        m.transition(Phase::Online);
        m.observed(&Observation::Running);
        m.backend_error(Runtime::Ec2, "RunInstances", ErrorKind::Throttled);
        m.went_offline("InstanceTerminated");
        m.breaker_tripped("us-east-1", None);
        m.swept(1, 1, &CallStats::default(), Duration::from_secs(1));
        m.encode()
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| {
                let (name, kind) = l.split_once(' ')?;
                Some(if kind == "counter" {
                    format!("{name}_total")
                } else {
                    name.to_owned()
                })
            })
            .collect()
    }

    #[test]
    fn workspaces_are_counted_by_phase_and_ready_reason_afresh_each_time() {
        let ws = |phase: Phase, reason: &str| -> crate::api::Workspace {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "tend.dev/v1alpha1",
                "kind": "Workspace",
                "metadata": {"name": "w"},
                "spec": {"runtime": "external", "external": {}},
                "status": {"phase": phase.as_str(), "conditions": [{
                    "type": "Ready", "status": "False", "reason": reason, "message": "",
                    "lastTransitionTime": "2026-12-02T10:00:00Z",
                }]},
            }))
            .unwrap()
        };
        let m = Metrics::default();
        let failed = ws(Phase::Failed, "CrashLoop");
        let online = ws(Phase::Online, "Online");
        m.workspaces([&failed, &failed, &online].into_iter());
        let text = m.encode();
        assert!(
            text.contains("tend_workspaces{phase=\"Failed\",reason=\"CrashLoop\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("tend_workspaces{phase=\"Online\",reason=\"Online\"} 1"),
            "{text}"
        );
        m.workspaces([&online].into_iter());
        let text = m.encode();
        assert!(
            !text.contains("CrashLoop"),
            "a state no Workspace is in goes: {text}"
        );
    }

    #[test]
    fn docs_list_exactly_the_metrics_tend_serves() {
        let doc = include_str!("../docs/metrics.md");
        let documented: BTreeSet<String> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("| `tend_"))
            .filter_map(|l| l.split_once('`'))
            .map(|(name, _)| format!("tend_{name}"))
            .collect();
        let served = served();
        assert!(served.len() > 10, "too few metrics read: {served:?}");
        let missing: Vec<_> = served.difference(&documented).collect();
        let stale: Vec<_> = documented.difference(&served).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "docs/metrics.md lacks {missing:?} and names {stale:?}, which tend does not serve"
        );
    }
}
