//! Looking at many Pods at once: one list per namespace, an omission asked
//! about by name before it counts as gone, and the Nodes asked whether they
//! can vouch for what their Pods say.

use std::collections::{BTreeSet, HashMap};

use futures::{StreamExt, stream};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use tokio::time::Instant;

use super::ContainerSettings;
use super::objects::LABEL_UID;
use super::state::{classify_pod, node_doubt};
use crate::backend::kubernetes::bounded;
use crate::backend::{CallStats, ErrorKind, Observed, Probe, Sighting};
use crate::core::{Halt, Observation, elapsed};

/// What the API server said about one probe's Pod.
enum Seen {
    Pod(Box<Pod>),
    /// Asked about by name, the API server answered 404.
    Gone,
    Failed(String),
}

struct Answer {
    asked_at: Timestamp,
    seen: Seen,
}

/// What a look at Pods needs: the batcher's rounds each get a copy.
#[derive(Clone)]
pub(super) struct PodReader {
    pub(super) client: kube::Client,
    pub(super) settings: ContainerSettings,
}

impl PodReader {
    /// One sighting per probe, in order, bounded by `deadline`.
    pub(super) async fn observe_pods(&self, probes: &[Probe], deadline: Instant) -> Observed {
        let started = Timestamp::now();
        match tokio::time::timeout_at(deadline, self.answers(probes)).await {
            Ok((answers, node_doubts, calls)) => Observed {
                sightings: probes
                    .iter()
                    .zip(answers)
                    .map(|(p, a)| self.sighting(p, a, &node_doubts))
                    .collect(),
                calls,
            },
            Err(_) => Observed::out_of_time(probes, started),
        }
    }

    async fn answers(&self, probes: &[Probe]) -> (Vec<Answer>, HashMap<String, String>, CallStats) {
        let timeout = self.settings.probe_timeout;
        let mut calls = CallStats::default();
        let namespaces: BTreeSet<String> = probes.iter().map(|p| p.location.clone()).collect();
        // One list per namespace: what exists of tend's Pods there.
        let listing: Vec<_> = namespaces
            .into_iter()
            .map(|ns| {
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
                async move {
                    let asked_at = Timestamp::now();
                    let params = ListParams::default().labels(LABEL_UID);
                    let listed = bounded("ListPods", timeout, api.list(&params))
                        .await
                        .map(|l| l.items)
                        .map_err(|e| e.to_string());
                    (ns, asked_at, listed)
                }
            })
            .collect();
        let lists: Vec<(String, Timestamp, Result<Vec<Pod>, String>)> = stream::iter(listing)
            .buffer_unordered(self.settings.max_in_flight.max(1))
            .collect()
            .await;
        let mut listed: HashMap<(String, String), (Timestamp, Pod)> = HashMap::new();
        let mut failed: HashMap<String, (Timestamp, String)> = HashMap::new();
        for (ns, asked_at, result) in lists {
            match result {
                Ok(pods) => {
                    calls.ok += 1;
                    for pod in pods {
                        let name = pod.metadata.name.clone().unwrap_or_default();
                        listed.insert((ns.clone(), name), (asked_at, pod));
                    }
                }
                Err(e) => {
                    calls.failed += 1;
                    failed.insert(ns, (asked_at, e));
                }
            }
        }
        // An omission proves nothing: ask about the Pod by name.
        let asking: Vec<_> = probes
            .iter()
            .map(|p| {
                let known = listed.remove(&(p.location.clone(), p.id.clone()));
                let failure = failed.get(&p.location).cloned();
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &p.location);
                let name = p.id.clone();
                async move {
                    if let Some((asked_at, pod)) = known {
                        return (
                            false,
                            Answer {
                                asked_at,
                                seen: Seen::Pod(Box::new(pod)),
                            },
                        );
                    }
                    if let Some((asked_at, why)) = failure {
                        return (
                            false,
                            Answer {
                                asked_at,
                                seen: Seen::Failed(why),
                            },
                        );
                    }
                    let asked_at = Timestamp::now();
                    let seen = match bounded("GetPod", timeout, api.get(&name)).await {
                        Ok(pod) => Seen::Pod(Box::new(pod)),
                        Err(e) if e.kind == ErrorKind::NotFound => Seen::Gone,
                        Err(e) => Seen::Failed(e.to_string()),
                    };
                    (true, Answer { asked_at, seen })
                }
            })
            .collect();
        let answers: Vec<Answer> = stream::iter(asking)
            .buffered(self.settings.max_in_flight.max(1))
            .map(|(confirmed, answer)| {
                if confirmed {
                    calls.confirmations += 1;
                }
                answer
            })
            .collect()
            .await;
        // The Nodes of Pods that claim to run, or to be on their way.
        let nodes: BTreeSet<String> = answers
            .iter()
            .filter_map(|a| match &a.seen {
                Seen::Pod(pod) if pod.metadata.deletion_timestamp.is_none() => {
                    pod.spec.as_ref()?.node_name.clone()
                }
                _ => None,
            })
            .collect();
        let api: Api<Node> = Api::all(self.client.clone());
        let asking: Vec<_> = nodes
            .into_iter()
            .map(|name| {
                let api = api.clone();
                async move {
                    let doubt = match bounded("GetNode", timeout, api.get_opt(&name)).await {
                        Ok(Some(node)) => node_doubt(&node),
                        Ok(None) => Some(format!("node {name} does not exist")),
                        Err(e) => Some(format!("could not read node {name}: {e}")),
                    };
                    (name, doubt)
                }
            })
            .collect();
        let doubts: HashMap<String, String> = stream::iter(asking)
            .buffer_unordered(self.settings.max_in_flight.max(1))
            .filter_map(|(name, doubt)| async move { doubt.map(|d| (name, d)) })
            .collect()
            .await;
        (answers, doubts, calls)
    }

    fn sighting(
        &self,
        probe: &Probe,
        answer: Answer,
        node_doubts: &HashMap<String, String>,
    ) -> Sighting {
        let asked_at = answer.asked_at;
        match answer.seen {
            Seen::Pod(pod) => {
                let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
                let observation = classify_pod(&pod);
                let alive = matches!(
                    observation,
                    Observation::Running | Observation::Pending { .. }
                );
                match node.as_ref().and_then(|n| node_doubts.get(n)) {
                    // What the Pod says is only as good as its Node.
                    Some(doubt) if alive => Sighting {
                        zone: node,
                        ..Sighting::unknown(doubt.clone(), asked_at)
                    },
                    _ => Sighting {
                        observation,
                        asked_at,
                        zone: node,
                        absent: false,
                        holds_for: None,
                    },
                }
            }
            Seen::Gone => {
                let age = probe
                    .launched_at
                    .map(|at| elapsed(at, asked_at).unwrap_or_default());
                match age {
                    Some(age) if age < self.settings.not_found_grace => Sighting::unknown(
                        format!(
                            "{} not found {}s after it was created (within the {}s grace period)",
                            probe.id,
                            age.as_secs(),
                            self.settings.not_found_grace.as_secs()
                        ),
                        asked_at,
                    ),
                    _ => Sighting {
                        observation: Observation::not_running(
                            Halt::Gone,
                            "PodDeleted",
                            format!("{} no longer exists", probe.id),
                        ),
                        asked_at,
                        zone: None,
                        absent: true,
                        holds_for: None,
                    },
                }
            }
            Seen::Failed(why) => Sighting::unknown(why, asked_at),
        }
    }
}
