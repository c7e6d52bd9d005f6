//! Looking at the backend: the sweep's answer where the core says it may be
//! trusted, else one direct look through the backend's own batched observe.

use super::*;
use crate::backend::Sighting;
use crate::core::{SweepAnswer, judge_direct_look, trust_sweep};

/// One answer about the recorded backend, and what the sweeper adds to it.
pub(super) struct Look {
    pub observation: Observation,
    /// When the call that gave this answer was sent.
    pub asked_at: Timestamp,
    /// When the last clean answer was asked, where the sweep knows it.
    pub last_clean_at: Option<Timestamp>,
    pub hold: Hold,
    /// A death seen outside the sweep: wait for the sweep to confirm it.
    pub await_sweep: bool,
    /// The new `tend.dev/refresh` value this look answered.
    pub refresh_handled: Option<String>,
    /// A heartbeat's answer runs out after this long: look again then.
    pub holds_for: Option<Duration>,
    /// The sweep's answer, trusted as it stood: nothing was asked.
    pub from_sweep: bool,
}

/// The sweeper's answer where it may be trusted; otherwise, or when
/// `tend.dev/refresh` has a new value, one direct look through the same
/// batched, bounded observe the sweep uses.
pub(super) async fn look(
    ws: &Workspace,
    ctx: &Context,
    backend: &dyn Backend,
    old: &WorkspaceStatus,
    now: Timestamp,
    snapshot: &Snapshot,
) -> Look {
    let uid = ws.uid().unwrap_or_default();
    let refresh = ws.annotations().get(REFRESH_ANNOTATION);
    let forced = forced(ws, old);
    let entry = snapshot.get(&uid);
    if let Some(entry) = entry
        && trust_sweep(
            SweepAnswer {
                backend_id: &entry.backend_id,
                observed_at: entry.observed_at,
            },
            old,
            forced,
            now,
            ctx.settings.sweep_interval,
        )
    {
        debug!(sweep = snapshot.sweep, "using the sweep's answer");
        return Look {
            observation: entry.observation.clone(),
            asked_at: entry.observed_at,
            last_clean_at: Some(entry.last_clean_at),
            hold: entry.hold,
            await_sweep: false,
            refresh_handled: None,
            holds_for: None,
            from_sweep: true,
        };
    }
    let seen = match backend.probe(ws) {
        Some(probe) => {
            // A listing, then at most a confirmation by id.
            let deadline = tokio::time::Instant::now() + ctx.settings.probe_timeout * 3;
            let observed = backend
                .observe(std::slice::from_ref(&probe), deadline)
                .await;
            observed
                .sightings
                .into_iter()
                .next()
                .unwrap_or_else(|| Sighting::unknown("the backend gave no answer", now))
        }
        None => Sighting::unknown("nothing recorded to look at", now),
    };
    let observation = seen.observation;
    debug!(forced, ?observation, "looked directly");
    ctx.metrics.observed(&observation);
    let held = entry
        .filter(|e| Some(e.backend_id.as_str()) == old.backend_id())
        .map(|e| e.hold);
    let judged = judge_direct_look(&observation, held, forced, old.phase);
    Look {
        observation,
        asked_at: seen.asked_at,
        last_clean_at: None,
        hold: judged.hold,
        // No sweep covers this runtime: there is nothing to wait for.
        await_sweep: judged.await_sweep && backend.swept(),
        refresh_handled: if forced { refresh.cloned() } else { None },
        holds_for: seen.holds_for,
        from_sweep: false,
    }
}

/// Whether `tend.dev/refresh` has a value no look has answered yet.
pub(super) fn forced(ws: &Workspace, old: &WorkspaceStatus) -> bool {
    ws.annotations()
        .get(REFRESH_ANNOTATION)
        .is_some_and(|v| old.handled_refresh.as_ref() != Some(v))
}

/// `Ready=Unknown` when the answer cannot be trusted yet, or is too old. Both
/// stay until a clean answer comes: an Unknown in between changes nothing.
pub(super) fn uncertainty(
    look: Option<&Look>,
    old: &WorkspaceStatus,
    stale: bool,
) -> Option<Problem> {
    const OUTAGE: &str = "SuspectedProviderOutage";
    let look = look?;
    match (&look.observation, look.hold) {
        (Observation::NotRunning(nr), Hold::Suspected { absent, .. }) => Some(Problem::uncertain(
            OUTAGE,
            if absent {
                format!(
                    "{} ({}), but too many Workspaces of its region or zone vanished at once; \
                     tend does not act on a mass absence by itself: set the {RETRY_ANNOTATION} \
                     annotation to a new value to act on it",
                    nr.message, nr.reason
                )
            } else {
                format!(
                    "{} ({}), but too many Workspaces of its region or zone stopped at once; \
                     acting only if the answer persists",
                    nr.message, nr.reason
                )
            },
        )),
        (Observation::Unknown { .. }, Hold::Suspected { .. }) => {
            let message = old
                .conditions
                .iter()
                .find(|c| c.type_ == condition::READY && c.reason == OUTAGE)
                .map(|c| c.message.clone())
                .unwrap_or_else(|| {
                    "too many Workspaces of its region or zone stopped at once; \
                     acting only if the answer persists"
                        .to_owned()
                });
            Some(Problem::uncertain(OUTAGE, message))
        }
        // No error text: it varies from look to look, and each change would
        // be another write and event for every stale Workspace.
        (Observation::Unknown { .. }, _) if stale => Some(Problem::uncertain(
            "ObservationStale",
            "no clean answer from the backend for longer than --stale-after; see BackendRunning"
                .to_owned(),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_000_000 + secs).unwrap()
    }

    fn online() -> WorkspaceStatus {
        WorkspaceStatus {
            phase: Some(Phase::Online),
            instance_id: Some("i-1".into()),
            ..Default::default()
        }
    }

    fn look(observation: Observation, hold: Hold) -> Look {
        Look {
            observation,
            asked_at: at(100),
            last_clean_at: None,
            hold,
            await_sweep: false,
            refresh_handled: None,
            holds_for: None,
            from_sweep: false,
        }
    }

    fn unknown() -> Observation {
        Observation::Unknown {
            error: "throttled".into(),
        }
    }

    #[test]
    fn stale_and_suspected_stay_through_further_unknowns() {
        let stale = uncertainty(Some(&look(unknown(), Hold::None)), &online(), true).unwrap();
        assert_eq!(stale.reason, "ObservationStale");
        assert!(uncertainty(Some(&look(unknown(), Hold::None)), &online(), false).is_none());
        let held = Hold::Suspected {
            sweeps: 1,
            absent: false,
        };
        let dead = Observation::not_running(crate::core::Halt::Gone, "SpotInterrupted", "gone");
        let outage = uncertainty(Some(&look(dead, held)), &online(), false).unwrap();
        assert_eq!(outage.reason, "SuspectedProviderOutage");
        // An Unknown during the hold is no news: the outage stays.
        let after = uncertainty(Some(&look(unknown(), held)), &online(), false).unwrap();
        assert_eq!(after.reason, "SuspectedProviderOutage");
    }

    #[test]
    fn a_held_absence_says_how_to_act_on_it() {
        let held = Hold::Suspected {
            sweeps: 4,
            absent: true,
        };
        let gone = Observation::not_running(crate::core::Halt::Gone, "InstanceNotFound", "gone");
        let problem = uncertainty(Some(&look(gone, held)), &online(), false).unwrap();
        assert!(
            problem.message.contains(RETRY_ANNOTATION),
            "{}",
            problem.message
        );
    }
}
