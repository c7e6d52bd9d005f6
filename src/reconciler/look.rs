//! Which answer to trust: the sweep's snapshot or a direct look.

use super::*;
use crate::sweep::{describe_all, sighting};

/// One answer about the recorded instance, and what the sweeper adds to it.
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
}

/// Whether the sweep's answer may stand for a look of our own: the
/// Workspace is settled (Online or Offline), no refresh was asked for, the
/// answer is younger than two sweep intervals and was asked after anything
/// status records (the last answer written, the last restart). While tend
/// itself changes the backend (launching, starting, stopping, restarting) an
/// answer from before that change would mislead.
pub(super) fn trust_snapshot(
    entry: &Entry,
    old: &WorkspaceStatus,
    forced: bool,
    now: Timestamp,
    sweep_interval: Duration,
) -> bool {
    let settled = matches!(old.phase, Some(Phase::Online | Phase::Offline));
    let newest_known = [
        old.observation.as_ref().map(|o| o.observed_at.0),
        old.last_restart.as_ref().map(|r| r.at.0),
    ]
    .into_iter()
    .flatten()
    .max();
    !forced
        && settled
        && old.instance_id.as_deref() == Some(entry.instance_id.as_str())
        && elapsed(entry.observed_at, now).unwrap_or(Duration::MAX) < sweep_interval * 2
        && newest_known.is_none_or(|t| entry.observed_at >= t)
}

/// The sweeper's answer where it may be trusted; otherwise, or when
/// `tend.dev/refresh` has a new value, one direct look through the same
/// batched describe the sweep uses, absence proven by id.
pub(super) async fn look(
    ws: &Workspace,
    ctx: &Context,
    spec: &api::Ec2Spec,
    old: &WorkspaceStatus,
    now: Timestamp,
) -> Look {
    let uid = ws.uid().unwrap_or_default();
    let refresh = ws.annotations().get(REFRESH_ANNOTATION);
    let forced = refresh.is_some_and(|v| old.handled_refresh.as_ref() != Some(v));
    let snapshot = ctx.snapshot.borrow().clone();
    let entry = snapshot.get(&uid);
    if let Some(entry) = entry
        && trust_snapshot(entry, old, forced, now, ctx.settings.sweep_interval)
    {
        debug!(workspace = %ws.name_any(), sweep = snapshot.sweep, "using the sweep's answer");
        return Look {
            observation: entry.observation.clone(),
            asked_at: entry.observed_at,
            last_clean_at: Some(entry.last_clean_at),
            hold: entry.hold,
            await_sweep: false,
            refresh_handled: None,
        };
    }
    let instance_id = old.instance_id.clone().unwrap_or_default();
    let region = ctx.ec2.region_of(spec, old).to_owned();
    let ids = HashMap::from([(region, vec![instance_id.clone()])]);
    let batch = ctx.settings.batch;
    // A filtered describe, then at most a confirmation by id.
    let deadline = tokio::time::Instant::now() + batch.probe_timeout * 3;
    let (answers, _) = describe_all(&*ctx.ec2, &ids, batch, deadline).await;
    let seen = sighting(
        &instance_id,
        old.volume_id.as_deref(),
        old.launched_at.as_ref().map(|t| t.0),
        answers.get(&instance_id),
        ctx.settings.not_found_grace,
        Timestamp::now(),
    );
    let observation = seen.observation;
    debug!(workspace = %ws.name_any(), forced, ?observation, "looked directly");
    ctx.metrics.observed(&observation);
    let dead = matches!(observation, Observation::NotRunning(_));
    let alive = matches!(
        observation,
        Observation::Running | Observation::Pending { .. }
    );
    // A direct look that does not contradict a held sweep answer stays held.
    let hold = match entry {
        Some(e)
            if !alive
                && e.instance_id == instance_id
                && matches!(e.hold, Hold::Suspected { .. }) =>
        {
            e.hold
        }
        _ => Hold::None,
    };
    Look {
        observation,
        asked_at: seen.asked_at,
        last_clean_at: None,
        hold,
        // Only the sweep sees the whole fleet, so only the sweep (and its
        // circuit breaker) may take a running Workspace offline; a user's
        // refresh is the one exception.
        await_sweep: dead && !forced && old.phase == Some(Phase::Online),
        refresh_handled: if forced { refresh.cloned() } else { None },
    }
}

/// The staleness clock after this look: cleared by a clean answer; started
/// by the first Unknown at the time of the last clean answer known (or of
/// this look), and kept as it is by further Unknowns.
pub(super) fn uncertain_since(look: &Look, old: &WorkspaceStatus) -> Option<Timestamp> {
    match look.observation {
        Observation::Unknown { .. } => old
            .uncertain_since
            .as_ref()
            .map(|t| t.0)
            .or(look.last_clean_at)
            .or(Some(look.asked_at)),
        _ => None,
    }
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

    fn entry(observed: i64) -> Entry {
        Entry {
            instance_id: "i-1".into(),
            observation: Observation::Running,
            observed_at: at(observed),
            last_clean_at: at(observed),
            stale: false,
            zone: None,
            absent: false,
            hold: Hold::None,
            held_retry: None,
        }
    }

    fn online() -> WorkspaceStatus {
        WorkspaceStatus {
            phase: Some(Phase::Online),
            instance_id: Some("i-1".into()),
            ..Default::default()
        }
    }

    const INTERVAL: Duration = Duration::from_secs(60);

    #[test]
    fn a_fresh_sweep_answer_about_a_settled_workspace_is_trusted() {
        assert!(trust_snapshot(
            &entry(0),
            &online(),
            false,
            at(30),
            INTERVAL
        ));
        // Too old, asked for a refresh, another instance, not settled.
        assert!(!trust_snapshot(
            &entry(0),
            &online(),
            false,
            at(121),
            INTERVAL
        ));
        assert!(!trust_snapshot(
            &entry(0),
            &online(),
            true,
            at(30),
            INTERVAL
        ));
        let replaced = WorkspaceStatus {
            instance_id: Some("i-2".into()),
            ..online()
        };
        assert!(!trust_snapshot(
            &entry(0),
            &replaced,
            false,
            at(30),
            INTERVAL
        ));
        let restarting = WorkspaceStatus {
            phase: Some(Phase::Restarting),
            ..online()
        };
        assert!(!trust_snapshot(
            &entry(0),
            &restarting,
            false,
            at(30),
            INTERVAL
        ));
    }

    #[test]
    fn an_answer_asked_before_a_restart_or_a_newer_answer_never_acts() {
        let restarted_after = WorkspaceStatus {
            last_restart: Some(api::RestartRecord {
                at: Time(at(10)),
                reason: "InstanceStopped".into(),
            }),
            ..online()
        };
        assert!(!trust_snapshot(
            &entry(5),
            &restarted_after,
            false,
            at(30),
            INTERVAL
        ));
        assert!(trust_snapshot(
            &entry(15),
            &restarted_after,
            false,
            at(30),
            INTERVAL
        ));
        let answered_after = WorkspaceStatus {
            observation: Some(api::ObservationRecord {
                state: "Running".into(),
                reason: None,
                observed_at: Time(at(10)),
                source: "ec2:DescribeInstances".into(),
            }),
            ..online()
        };
        assert!(!trust_snapshot(
            &entry(5),
            &answered_after,
            false,
            at(30),
            INTERVAL
        ));
    }

    fn look(observation: Observation, hold: Hold) -> Look {
        Look {
            observation,
            asked_at: at(100),
            last_clean_at: None,
            hold,
            await_sweep: false,
            refresh_handled: None,
        }
    }

    fn unknown() -> Observation {
        Observation::Unknown {
            error: "throttled".into(),
        }
    }

    #[test]
    fn the_staleness_clock_starts_at_the_last_clean_answer_and_a_clean_answer_clears_it() {
        let mut first = look(unknown(), Hold::None);
        first.last_clean_at = Some(at(40));
        assert_eq!(uncertain_since(&first, &online()), Some(at(40)));
        // Without the sweep's memory: the time of this look.
        assert_eq!(
            uncertain_since(&look(unknown(), Hold::None), &online()),
            Some(at(100))
        );
        let running_since = WorkspaceStatus {
            uncertain_since: Some(Time(at(7))),
            ..online()
        };
        // Further Unknowns keep the persisted clock, whatever they say.
        assert_eq!(uncertain_since(&first, &running_since), Some(at(7)));
        let clean = look(Observation::Running, Hold::None);
        assert_eq!(uncertain_since(&clean, &running_since), None);
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
