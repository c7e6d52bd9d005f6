//! Looking at many instances at once: probes grouped by region into batched
//! describes, and each answer turned into a sighting.

use super::*;
use crate::backend::Sighting;
use crate::core::elapsed;

/// Describes every probe's instance through [`describe_all`] (batched per
/// region, bisected, absence proven by id, bounded by `deadline`) and says
/// what each answer means: one sighting per probe, in order.
pub async fn observe_instances<D: Describer<Seen>>(
    describer: &D,
    probes: &[Probe],
    batch: BatchSettings,
    not_found_grace: Duration,
    deadline: Instant,
) -> Observed {
    let mut ids_by_region: HashMap<String, Vec<String>> = HashMap::new();
    for p in probes {
        ids_by_region
            .entry(p.location.clone())
            .or_default()
            .push(p.id.clone());
    }
    let (answers, calls) =
        describe_all::<Seen, D>(describer, &ids_by_region, batch, deadline).await;
    let now = Timestamp::now();
    let sightings = probes
        .iter()
        .map(|p| sighting(p, answers.get(&p.id), not_found_grace, now))
        .collect();
    Observed { sightings, calls }
}

/// Turns a describe answer into a sighting: the one place where a listed
/// state, a proven absence (old enough to be believed) and a failure become
/// Running, Pending, NotRunning or Unknown.
pub fn sighting(
    probe: &Probe,
    answer: Option<&Answer>,
    not_found_grace: Duration,
    now: Timestamp,
) -> Sighting {
    let Some(answer) = answer else {
        return Sighting::unknown("not described", now);
    };
    let asked_at = answer.asked_at;
    match &answer.reply {
        Reply::Found(seen) => Sighting {
            observation: classify(seen, probe.volume_id.as_deref()),
            asked_at,
            zone: seen.zone.clone(),
            absent: false,
            holds_for: None,
        },
        Reply::NotFound => {
            // Measured when the question was asked: EC2 is eventually
            // consistent right after RunInstances.
            let age = probe
                .launched_at
                .map(|at| elapsed(at, asked_at).unwrap_or_default());
            let observation = classify_missing(&probe.id, age, not_found_grace);
            let absent = matches!(observation, Observation::NotRunning(_));
            Sighting {
                observation,
                asked_at,
                zone: None,
                absent,
                holds_for: None,
            }
        }
        Reply::Failed(error) => Sighting::unknown(error.to_string(), asked_at),
        Reply::Owned(_) | Reply::Volume(_) | Reply::OwnedVolumes(_) => {
            Sighting::unknown("not an answer about this instance", asked_at)
        }
    }
}
