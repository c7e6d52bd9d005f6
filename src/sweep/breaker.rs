//! The circuit breaker: when too many Workspaces of one region or zone turn
//! NotRunning within a few sweeps, the likelier story is a provider outage or
//! a broken answer, not a hundred independent deaths. Hold, and act only if
//! the answers persist; a mass absence waits for a human. Pure: no clocks,
//! no I/O.

use std::collections::{BTreeMap, HashMap};

use super::snapshot::{Death, Entry};
use crate::core::{Hold, Observation};

#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    /// Trip when more than this fraction of a group died within the window.
    pub max_offline_fraction: f64,
    /// Groups smaller than this never trip: a fraction of a few means nothing.
    pub min_fleet: usize,
    /// Consecutive sweeps an answer must persist before it is believed.
    pub hold_sweeps: u32,
    /// At most this many held answers are let through per sweep.
    pub max_restarts_per_sweep: usize,
    /// Deaths count towards a trip for this many sweeps, so that a trickle of
    /// wrong answers spread over several sweeps cannot slip under the threshold.
    pub window_sweeps: u64,
}

/// One Workspace's answer in this sweep, with what was known before.
#[derive(Debug, Clone)]
pub struct Sample<'a> {
    pub uid: &'a str,
    pub backend_id: &'a str,
    pub location: &'a str,
    pub zone: Option<&'a str>,
    pub now: &'a Observation,
    pub before: Option<&'a Entry>,
    /// The answer is a proven absence (not found by id), not a listed state.
    pub absent: bool,
    /// Status already records this instance as dead (the Workspace is
    /// Offline), so a NotRunning answer is no news, even with no answer
    /// from before (after a controller restart).
    pub known_dead: bool,
    /// The Workspace's `tend.dev/retry` annotation now.
    pub retry: Option<&'a str>,
}

/// A group (a region, or one zone of it) that tripped in this sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trip {
    pub location: String,
    pub zone: Option<String>,
    /// Deaths within the window.
    pub not_running: usize,
    pub observed: usize,
}

/// What the breaker concluded in one sweep.
#[derive(Debug, Clone, Default)]
pub struct Assessment {
    pub holds: HashMap<String, Hold>,
    pub trips: Vec<Trip>,
    /// Deaths still within the window, for the next sweep.
    pub deaths: Vec<Death>,
}

/// The groups a Workspace counts in: its region, and its zone if known.
fn groups_of<'a>(
    location: &'a str,
    zone: Option<&'a str>,
) -> impl Iterator<Item = (&'a str, Option<&'a str>)> {
    std::iter::once((location, None)).chain(zone.map(|z| (location, Some(z))))
}

fn is_not_running(obs: &Observation) -> bool {
    matches!(obs, Observation::NotRunning(_))
}

/// A NotRunning answer where nothing known before said it was dead.
fn newly_not_running(s: &Sample) -> bool {
    is_not_running(s.now)
        && !s.known_dead
        && !s.before.is_some_and(|b| is_not_running(&b.observation))
}

/// Decides the hold of every sample, and which groups tripped. `sweep` is
/// this sweep's number; `recent` the deaths the previous sweep kept. An
/// `early` sweep (woken by a watched change, between two of the interval's)
/// may hold new deaths, but neither counts towards a hold's persistence nor
/// releases a wave: those keep the interval's pace, however busy the
/// watches are.
pub fn assess(
    samples: &[Sample],
    recent: &[Death],
    sweep: u64,
    early: bool,
    settings: &BreakerSettings,
) -> Assessment {
    // Deaths within the window, one per uid. A death whose instance answers
    // alive again was a scare, not a death; a replacement that runs does not
    // undo its predecessor's death. Neither does leaving the sweep: healing
    // takes a Workspace out of it (a replacement being provisioned, or one
    // that failed to launch), and forgetting its death there would shrink
    // the group under the threshold while the rest of it dies.
    let current: HashMap<&str, &Sample> = samples.iter().map(|s| (s.uid, s)).collect();
    let still_dead = |d: &Death| {
        current.get(d.uid.as_str()).is_none_or(|s| {
            s.backend_id != d.backend_id
                || !matches!(s.now, Observation::Running | Observation::Pending { .. })
        })
    };
    let mut deaths: BTreeMap<String, Death> = recent
        .iter()
        .filter(|d| d.sweep + settings.window_sweeps > sweep && still_dead(d))
        .map(|d| (d.uid.clone(), d.clone()))
        .collect();
    for s in samples.iter().filter(|s| newly_not_running(s)) {
        deaths.insert(
            s.uid.to_owned(),
            Death {
                uid: s.uid.to_owned(),
                backend_id: s.backend_id.to_owned(),
                location: s.location.to_owned(),
                zone: s.zone.map(str::to_owned),
                sweep,
            },
        );
    }

    // (region, zone) -> (observed, died); zone None = the whole region.
    let mut groups: BTreeMap<(&str, Option<&str>), (usize, usize)> = BTreeMap::new();
    for s in samples {
        for key in groups_of(s.location, s.zone) {
            groups.entry(key).or_default().0 += 1;
        }
    }
    // A death out of the sweep still belongs to its group's fleet. Only
    // groups this sweep looked at are judged: an early sweep of one place
    // says nothing about the others, nor does a group left with no member
    // in the sweep.
    for d in deaths.values() {
        let swept = current.contains_key(d.uid.as_str());
        for key in groups_of(&d.location, d.zone.as_deref()) {
            if let Some(group) = groups.get_mut(&key) {
                group.0 += usize::from(!swept);
                group.1 += 1;
            }
        }
    }
    let trips: Vec<Trip> = groups
        .into_iter()
        .filter(|(_, (observed, dead))| {
            *observed >= settings.min_fleet
                && (*dead as f64) > settings.max_offline_fraction * (*observed as f64)
        })
        .map(|((location, zone), (observed, dead))| Trip {
            location: location.to_owned(),
            zone: zone.map(str::to_owned),
            not_running: dead,
            observed,
        })
        .collect();
    let tripped = |s: &Sample| {
        trips
            .iter()
            .any(|t| t.location == s.location && (t.zone.is_none() || t.zone.as_deref() == s.zone))
    };

    let mut holds = HashMap::new();
    let mut eligible: Vec<&str> = Vec::new();
    for s in samples {
        let before = s.before.map(|b| b.hold).unwrap_or(Hold::None);
        let hold = match (before, s.now) {
            (Hold::Suspected { sweeps, absent }, Observation::NotRunning(_)) => Hold::Suspected {
                sweeps: sweeps + u32::from(!early),
                absent,
            },
            // No news is no evidence either way.
            (held @ Hold::Suspected { .. }, Observation::Unknown { .. }) => held,
            // It came back: the scare is over, nothing to do.
            (Hold::Suspected { .. }, _) => Hold::None,
            (Hold::Released, Observation::NotRunning(_)) => Hold::Released,
            _ if newly_not_running(s) && tripped(s) => Hold::Suspected {
                sweeps: 1,
                absent: s.absent,
            },
            _ => Hold::None,
        };
        let believed = match hold {
            // A mass absence is never believed on its own: only a human's
            // new tend.dev/retry lets it through.
            Hold::Suspected { absent: true, .. } => {
                s.before.is_some_and(|b| b.held_retry.as_deref() != s.retry)
            }
            Hold::Suspected { sweeps, .. } => sweeps >= settings.hold_sweeps,
            _ => false,
        };
        if believed && !early {
            eligible.push(s.uid);
        }
        holds.insert(s.uid.to_owned(), hold);
    }
    // Believed at last, but healed in waves.
    eligible.sort_unstable();
    for uid in eligible.into_iter().take(settings.max_restarts_per_sweep) {
        holds.insert(uid.to_owned(), Hold::Released);
    }
    Assessment {
        holds,
        trips,
        deaths: deaths.into_values().collect(),
    }
}

#[cfg(test)]
mod tests;
