//! One round of looks over every backend: each backend is asked about all of
//! its targets at once, the backends side by side.

use std::collections::HashMap;

use futures::future::join_all;
use tokio::time::Instant;

use super::Target;
use crate::backend::{Backends, CallStats, Probe, Sighting};

/// Asks each registered backend about its targets, bounded by `deadline`.
/// The answers are keyed by Workspace uid; a target whose backend gave no
/// answer for it has none here, which the snapshot reads as Unknown.
pub async fn observe_all(
    backends: &Backends,
    targets: &[&Target],
    deadline: Instant,
) -> (HashMap<String, Sighting>, CallStats) {
    let rounds = backends.iter().filter_map(|backend| {
        let mine: Vec<&Target> = targets
            .iter()
            .copied()
            .filter(|t| t.runtime == backend.runtime())
            .collect();
        if mine.is_empty() {
            return None;
        }
        let probes: Vec<Probe> = mine.iter().map(|t| t.probe.clone()).collect();
        Some(async move {
            let observed = backend.observe(&probes, deadline).await;
            (mine, observed)
        })
    });
    let mut answers: HashMap<String, Sighting> = HashMap::with_capacity(targets.len());
    let mut calls = CallStats::default();
    for (mine, observed) in join_all(rounds).await {
        calls.add(&observed.calls);
        for (t, seen) in mine.into_iter().zip(observed.sightings) {
            answers.insert(t.uid.clone(), seen);
        }
    }
    (answers, calls)
}
