//! Prometheus metrics. Names match the flags and concepts they describe.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::api::Phase;
use crate::backend::ec2::AwsErrorKind;
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
struct AwsLabels {
    operation: &'static str,
    kind: &'static str,
}

/// All of tend's metrics, registered once.
pub struct Metrics {
    pub registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    transitions: Family<PhaseLabels, Counter>,
    observations: Family<AnswerLabels, Counter>,
    aws_errors: Family<AwsLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tend");
        let reconciles = Family::default();
        registry.register("reconciles", "Reconciles by result", reconciles.clone());
        let transitions = Family::default();
        registry.register(
            "phase_transitions",
            "Phase changes written, by new phase",
            transitions.clone(),
        );
        let observations = Family::default();
        registry.register(
            "observations",
            "Backend observations by answer",
            observations.clone(),
        );
        let aws_errors = Family::default();
        registry.register(
            "aws_errors",
            "Failed AWS calls by operation and kind",
            aws_errors.clone(),
        );
        Metrics {
            registry,
            reconciles,
            transitions,
            observations,
            aws_errors,
        }
    }
}

impl Metrics {
    pub fn reconciled(&self, error: Option<&'static str>) {
        let result = error.unwrap_or("ok");
        self.reconciles
            .get_or_create(&ResultLabels { result })
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

    pub fn aws_error(&self, operation: &'static str, kind: AwsErrorKind) {
        self.aws_errors
            .get_or_create(&AwsLabels {
                operation,
                kind: kind.as_str(),
            })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
