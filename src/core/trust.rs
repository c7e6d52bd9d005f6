//! Which answer to trust: the sweep's, or a direct look of the reconciler's;
//! what a direct look may do on its own; and the staleness clock.

use std::time::Duration;

use jiff::Timestamp;

use super::{Observation, elapsed};
use crate::api::{Phase, WorkspaceStatus};

/// What the circuit breaker says about acting on a NotRunning answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// A sweep's answer about one Workspace, as far as trusting it goes.
#[derive(Debug, Clone, Copy)]
pub struct SweepAnswer<'a> {
    /// The backend it is about.
    pub backend_id: &'a str,
    /// When the call that gave it was sent.
    pub observed_at: Timestamp,
}

/// Whether the sweep's answer may stand for a look of the reconciler's own:
/// the Workspace is settled (Online or Offline), no refresh was asked for
/// (`forced`), the answer is about the backend status records, younger than
/// two sweep intervals, and asked after anything status records (the last
/// answer written, the last restart). While tend itself changes the backend
/// (launching, starting, stopping, restarting) an answer from before that
/// change would mislead.
pub fn trust_sweep(
    answer: SweepAnswer<'_>,
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
        && old.backend_id() == Some(answer.backend_id)
        && elapsed(answer.observed_at, now).unwrap_or(Duration::MAX) < sweep_interval * 2
        && newest_known.is_none_or(|t| answer.observed_at >= t)
}

/// What a direct look may do on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectLook {
    /// The breaker's hold that still applies to this answer.
    pub hold: Hold,
    /// A death seen outside the sweep: wait for the sweep to confirm it.
    pub await_sweep: bool,
}

/// Judges a direct look's answer. `held` is the sweep's hold on this same
/// backend, if any. A look that does not contradict a held answer stays
/// held. Only the sweep sees the whole fleet, so only the sweep (and its
/// circuit breaker) may take a running Workspace offline; a user's refresh
/// (`forced`) is the one exception.
pub fn judge_direct_look(
    observation: &Observation,
    held: Option<Hold>,
    forced: bool,
    phase: Option<Phase>,
) -> DirectLook {
    let alive = matches!(
        observation,
        Observation::Running | Observation::Pending { .. }
    );
    let hold = match held {
        Some(h @ Hold::Suspected { .. }) if !alive => h,
        _ => Hold::None,
    };
    let dead = matches!(observation, Observation::NotRunning(_));
    DirectLook {
        hold,
        await_sweep: dead && !forced && phase == Some(Phase::Online),
    }
}

/// The staleness clock after an answer: cleared by a clean answer; started
/// by the first Unknown at the time of the last clean answer known (the
/// persisted clock, else the sweep's memory, else this answer's time), and
/// kept as it is by further Unknowns.
pub fn uncertain_since(
    observation: &Observation,
    persisted: Option<Timestamp>,
    last_clean_at: Option<Timestamp>,
    asked_at: Timestamp,
) -> Option<Timestamp> {
    match observation {
        Observation::Unknown { .. } => persisted.or(last_clean_at).or(Some(asked_at)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::api::{ObservationRecord, RestartRecord};
    use crate::core::Halt;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_000_000 + secs).unwrap()
    }

    fn answer(observed: i64) -> SweepAnswer<'static> {
        SweepAnswer {
            backend_id: "i-1",
            observed_at: at(observed),
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
        assert!(trust_sweep(answer(0), &online(), false, at(30), INTERVAL));
        let offline = WorkspaceStatus {
            phase: Some(Phase::Offline),
            ..online()
        };
        assert!(trust_sweep(answer(0), &offline, false, at(30), INTERVAL));
    }

    #[test]
    fn an_old_refreshed_foreign_or_unsettled_answer_is_not_trusted() {
        assert!(!trust_sweep(answer(0), &online(), false, at(121), INTERVAL));
        assert!(!trust_sweep(answer(0), &online(), true, at(30), INTERVAL));
        let replaced = WorkspaceStatus {
            instance_id: Some("i-2".into()),
            ..online()
        };
        assert!(!trust_sweep(answer(0), &replaced, false, at(30), INTERVAL));
        for phase in [Phase::Restarting, Phase::Provisioning, Phase::Stopping] {
            let moving = WorkspaceStatus {
                phase: Some(phase),
                ..online()
            };
            assert!(
                !trust_sweep(answer(0), &moving, false, at(30), INTERVAL),
                "{phase}"
            );
        }
    }

    #[test]
    fn a_pod_answer_is_matched_against_the_recorded_pod() {
        let pod = WorkspaceStatus {
            phase: Some(Phase::Online),
            pod_name: Some("dev-1".into()),
            ..Default::default()
        };
        let about = |id| SweepAnswer {
            backend_id: id,
            observed_at: at(0),
        };
        assert!(trust_sweep(about("dev-1"), &pod, false, at(30), INTERVAL));
        assert!(!trust_sweep(about("dev-2"), &pod, false, at(30), INTERVAL));
    }

    #[test]
    fn an_answer_asked_before_a_restart_or_a_newer_answer_never_acts() {
        let restarted_after = WorkspaceStatus {
            last_restart: Some(RestartRecord {
                at: Time(at(10)),
                reason: "InstanceStopped".into(),
            }),
            ..online()
        };
        assert!(!trust_sweep(
            answer(5),
            &restarted_after,
            false,
            at(30),
            INTERVAL
        ));
        assert!(trust_sweep(
            answer(15),
            &restarted_after,
            false,
            at(30),
            INTERVAL
        ));
        let answered_after = WorkspaceStatus {
            observation: Some(ObservationRecord {
                state: "Running".into(),
                reason: None,
                observed_at: Time(at(10)),
                source: "ec2:DescribeInstances".into(),
            }),
            ..online()
        };
        assert!(!trust_sweep(
            answer(5),
            &answered_after,
            false,
            at(30),
            INTERVAL
        ));
    }

    fn dead() -> Observation {
        Observation::not_running(Halt::Gone, "InstanceTerminated", "gone")
    }

    fn unknown() -> Observation {
        Observation::Unknown {
            error: "throttled".into(),
        }
    }

    const SUSPECTED: Hold = Hold::Suspected {
        sweeps: 1,
        absent: false,
    };

    #[test]
    fn a_death_seen_by_a_direct_look_waits_for_the_sweep_unless_refreshed() {
        let online = Some(Phase::Online);
        assert!(judge_direct_look(&dead(), None, false, online).await_sweep);
        assert!(!judge_direct_look(&dead(), None, true, online).await_sweep);
        // Healing an Offline Workspace needs no second opinion.
        assert!(!judge_direct_look(&dead(), None, false, Some(Phase::Offline)).await_sweep);
        assert!(!judge_direct_look(&Observation::Running, None, false, online).await_sweep);
        assert!(!judge_direct_look(&unknown(), None, false, online).await_sweep);
    }

    #[test]
    fn a_direct_look_stays_held_unless_it_contradicts_the_hold() {
        let online = Some(Phase::Online);
        assert_eq!(
            judge_direct_look(&dead(), Some(SUSPECTED), false, online).hold,
            SUSPECTED
        );
        assert_eq!(
            judge_direct_look(&unknown(), Some(SUSPECTED), false, online).hold,
            SUSPECTED
        );
        assert_eq!(
            judge_direct_look(&Observation::Running, Some(SUSPECTED), false, online).hold,
            Hold::None
        );
        // A released wave is the sweep's to act on, not a hold.
        assert_eq!(
            judge_direct_look(&dead(), Some(Hold::Released), false, online).hold,
            Hold::None
        );
    }

    #[test]
    fn the_staleness_clock_starts_at_the_last_clean_answer_and_a_clean_answer_clears_it() {
        assert_eq!(
            uncertain_since(&unknown(), None, Some(at(40)), at(100)),
            Some(at(40))
        );
        // Without the sweep's memory: the time of this answer.
        assert_eq!(
            uncertain_since(&unknown(), None, None, at(100)),
            Some(at(100))
        );
        // Further Unknowns keep the persisted clock, whatever they say.
        assert_eq!(
            uncertain_since(&unknown(), Some(at(7)), Some(at(40)), at(100)),
            Some(at(7))
        );
        assert_eq!(
            uncertain_since(&Observation::Running, Some(at(7)), None, at(100)),
            None
        );
    }
}
