//! The circuit breaker: when too many Workspaces of one region or zone turn
//! NotRunning in the same sweep, the likelier story is a provider outage or a
//! broken answer, not a hundred independent deaths. Hold, and act only if the
//! answers persist. Pure: no clocks, no I/O.

use std::collections::{BTreeMap, HashMap};

use super::snapshot::{Entry, Hold};
use crate::core::Observation;

#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    /// Trip when more than this fraction of a group turns NotRunning at once.
    pub max_offline_fraction: f64,
    /// Groups smaller than this never trip: a fraction of a few means nothing.
    pub min_fleet: usize,
    /// Consecutive sweeps an answer must persist before it is believed.
    pub hold_sweeps: u32,
    /// At most this many held answers are let through per sweep.
    pub max_restarts_per_sweep: usize,
}

/// One Workspace's answer in this sweep, with what was known before.
#[derive(Debug, Clone)]
pub struct Sample<'a> {
    pub uid: &'a str,
    pub region: &'a str,
    pub zone: Option<&'a str>,
    pub now: &'a Observation,
    pub before: Option<&'a Entry>,
}

/// A group (a region, or one zone of it) that tripped in this sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trip {
    pub region: String,
    pub zone: Option<String>,
    pub newly_not_running: usize,
    pub observed: usize,
}

fn is_not_running(obs: &Observation) -> bool {
    matches!(obs, Observation::NotRunning(_))
}

/// A NotRunning answer where the previous answer was something else.
fn newly_not_running(s: &Sample) -> bool {
    is_not_running(s.now) && !s.before.is_some_and(|b| is_not_running(&b.observation))
}

/// Decides the hold of every sample, and which groups tripped.
pub fn assess(
    samples: &[Sample],
    settings: &BreakerSettings,
) -> (HashMap<String, Hold>, Vec<Trip>) {
    // (region, zone) -> (observed, newly not running); zone None = the whole region.
    let mut groups: BTreeMap<(String, Option<String>), (usize, usize)> = BTreeMap::new();
    for s in samples {
        let fresh = usize::from(newly_not_running(s));
        let region = groups.entry((s.region.to_owned(), None)).or_default();
        region.0 += 1;
        region.1 += fresh;
        if let Some(zone) = s.zone {
            let z = groups
                .entry((s.region.to_owned(), Some(zone.to_owned())))
                .or_default();
            z.0 += 1;
            z.1 += fresh;
        }
    }
    let trips: Vec<Trip> = groups
        .into_iter()
        .filter(|(_, (observed, dead))| {
            *observed >= settings.min_fleet
                && (*dead as f64) > settings.max_offline_fraction * (*observed as f64)
        })
        .map(|((region, zone), (observed, dead))| Trip {
            region,
            zone,
            newly_not_running: dead,
            observed,
        })
        .collect();
    let tripped = |s: &Sample| {
        trips
            .iter()
            .any(|t| t.region == s.region && (t.zone.is_none() || t.zone.as_deref() == s.zone))
    };

    let mut holds = HashMap::new();
    let mut eligible: Vec<&str> = Vec::new();
    for s in samples {
        let before = s.before.map(|b| b.hold).unwrap_or(Hold::None);
        let hold = match (before, s.now) {
            (Hold::Suspected { sweeps }, Observation::NotRunning(_)) => {
                Hold::Suspected { sweeps: sweeps + 1 }
            }
            // No news is no evidence either way.
            (Hold::Suspected { sweeps }, Observation::Unknown { .. }) => Hold::Suspected { sweeps },
            // It came back: the scare is over, nothing to do.
            (Hold::Suspected { .. }, _) => Hold::None,
            (Hold::Released, Observation::NotRunning(_)) => Hold::Released,
            _ if newly_not_running(s) && tripped(s) => Hold::Suspected { sweeps: 1 },
            _ => Hold::None,
        };
        if let Hold::Suspected { sweeps } = hold
            && sweeps >= settings.hold_sweeps
        {
            eligible.push(s.uid);
        }
        holds.insert(s.uid.to_owned(), hold);
    }
    // Believed at last, but healed in waves.
    eligible.sort_unstable();
    for uid in eligible.into_iter().take(settings.max_restarts_per_sweep) {
        holds.insert(uid.to_owned(), Hold::Released);
    }
    (holds, trips)
}

#[cfg(test)]
mod tests;
