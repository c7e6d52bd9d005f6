//! The sweeper's published results: one immutable snapshot per sweep, swapped
//! whole, so a reader never sees half a sweep.

use std::collections::HashMap;

use jiff::Timestamp;

use crate::core::Observation;

/// What the circuit breaker says about acting on a NotRunning answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Act on the answer.
    None,
    /// Too many died at once in this region or zone: do not act yet.
    /// `sweeps` counts consecutive sweeps with the same answer; an `absent`
    /// answer (proven not found, no state listed) waits for `tend.dev/retry`.
    Suspected { sweeps: u32, absent: bool },
    /// Held long enough and let through in this wave: act.
    Released,
}

/// The latest answer about one Workspace's instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub instance_id: String,
    pub observation: Observation,
    /// When the call that gave this answer was sent.
    pub observed_at: Timestamp,
    /// The last time any clean (non-Unknown) answer was obtained; starts when
    /// the sweeper first saw the object.
    pub last_clean_at: Timestamp,
    /// Only Unknown answers for longer than `--stale-after`.
    pub stale: bool,
    pub zone: Option<String>,
    /// EC2 named the instance as not found: a settled answer.
    pub absent: bool,
    pub hold: Hold,
    /// The `tend.dev/retry` annotation when the hold began: a new value
    /// releases a held absence.
    pub held_retry: Option<String>,
}

impl Entry {
    /// Whether the reconciler should see a change compared to `old`.
    pub fn differs_for_reconciler(&self, old: &Entry) -> bool {
        self.instance_id != old.instance_id
            || self.observation.state_name() != old.observation.state_name()
            || not_running_reason(&self.observation) != not_running_reason(&old.observation)
            || self.stale != old.stale
            || self.hold != old.hold
    }
}

fn not_running_reason(obs: &Observation) -> Option<&str> {
    match obs {
        Observation::NotRunning(nr) => Some(&nr.reason),
        _ => None,
    }
}

/// A Workspace that turned NotRunning in some recent sweep, remembered for
/// the circuit breaker's window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Death {
    pub uid: String,
    pub instance_id: String,
    pub region: String,
    pub zone: Option<String>,
    pub sweep: u64,
}

/// All answers of one sweep, keyed by Workspace uid.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub sweep: u64,
    pub finished_at: Option<Timestamp>,
    pub entries: HashMap<String, Entry>,
    /// Recent deaths, for the circuit breaker's window.
    pub deaths: Vec<Death>,
}

impl Snapshot {
    pub fn get(&self, uid: &str) -> Option<&Entry> {
        self.entries.get(uid)
    }
}
