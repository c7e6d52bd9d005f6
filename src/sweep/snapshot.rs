//! The sweeper's published results: one immutable snapshot per sweep, swapped
//! whole, so a reader never sees half a sweep.

use std::collections::HashMap;

use jiff::Timestamp;

use crate::core::{Hold, Observation};

/// The latest answer about one Workspace's backend.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub backend_id: String,
    pub observation: Observation,
    /// When the call that gave this answer was sent.
    pub observed_at: Timestamp,
    /// The last time any clean (non-Unknown) answer was obtained; starts when
    /// the sweeper first saw the object.
    pub last_clean_at: Timestamp,
    /// Only Unknown answers for longer than `--stale-after`.
    pub stale: bool,
    pub zone: Option<String>,
    /// Asked about by id, the backend said it does not exist: a settled answer.
    pub absent: bool,
    pub hold: Hold,
    /// The `tend.dev/retry` annotation when the hold began: a new value
    /// releases a held absence.
    pub held_retry: Option<String>,
}

impl Entry {
    /// Whether the reconciler should see a change compared to `old`.
    pub fn differs_for_reconciler(&self, old: &Entry) -> bool {
        self.seen_by_reconciler() != old.seen_by_reconciler()
    }

    /// A digest of what the reconciler sees of this answer: equal digests,
    /// nothing new for it (up to a 64-bit collision).
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.seen_by_reconciler().hash(&mut hasher);
        hasher.finish()
    }

    /// Whether this answer says something else than `recorded`, the state
    /// and reason status records.
    pub fn contradicts(&self, recorded: &(String, Option<String>)) -> bool {
        self.observation.state_name() != Some(recorded.0.as_str())
            || not_running_reason(&self.observation) != recorded.1.as_deref()
    }

    /// What the reconciler acts on. Not the times: an answer asked again,
    /// and the same, is no news.
    fn seen_by_reconciler(&self) -> (&str, Option<&str>, Option<&str>, bool, Hold) {
        (
            &self.backend_id,
            self.observation.state_name(),
            not_running_reason(&self.observation),
            self.stale,
            self.hold,
        )
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
    pub backend_id: String,
    pub location: String,
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
