//! Conditions in the `metav1.Condition` shape, derived from phase, observation
//! and any problem, never set ad hoc.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{Phase, condition};
use crate::core::{Halt, Observation};

/// Something that keeps a Workspace from being served (`Ready=False`), or
/// makes its readiness uncertain (`Ready=Unknown`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    pub fn failure(reason: &'static str, message: String) -> Self {
        Problem {
            status: "False",
            reason,
            message,
        }
    }

    pub fn uncertain(reason: &'static str, message: String) -> Self {
        Problem {
            status: "Unknown",
            reason,
            message,
        }
    }
}

/// A condition before times are settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub type_: &'static str,
    pub status: &'static str,
    pub reason: String,
    pub message: String,
}

fn wanted(
    type_: &'static str,
    status: &'static str,
    reason: impl Into<String>,
    message: impl Into<String>,
) -> Wanted {
    Wanted {
        type_,
        status,
        reason: reason.into(),
        message: message.into(),
    }
}

/// What each condition should say now.
pub struct Inputs<'a> {
    pub phase: Phase,
    pub observation: Option<&'a Observation>,
    pub problem: Option<&'a Problem>,
    pub heals: bool,
    pub detail: Option<&'a str>,
    pub old: &'a [Condition],
}

pub fn wanted_conditions(i: &Inputs) -> Vec<Wanted> {
    vec![ready(i), backend_running(i), healing(i)]
}

fn old<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

fn ready(i: &Inputs) -> Wanted {
    use Phase::*;
    if let Some(p) = i.problem {
        return wanted(condition::READY, p.status, p.reason, &p.message);
    }
    let detail = i.detail.unwrap_or_default();
    match i.phase {
        Online => wanted(condition::READY, "True", "Online", "the backend is running"),
        Offline => match i.observation {
            Some(Observation::NotRunning(nr)) => {
                wanted(condition::READY, "False", &nr.reason, &nr.message)
            }
            _ => keep_or(
                i,
                condition::READY,
                "False",
                "Offline",
                "the backend is not running",
            ),
        },
        Failed => keep_or(i, condition::READY, "False", "Failed", detail),
        Pending | Provisioning | Restarting | Stopping | Stopped | Hibernated | AwaitingAgent
        | Deleting => wanted(condition::READY, "False", i.phase.as_str(), detail),
    }
}

/// Keeps the old condition of this type if it has the given status; otherwise the fallback.
fn keep_or(
    i: &Inputs,
    type_: &'static str,
    status: &'static str,
    reason: &str,
    message: &str,
) -> Wanted {
    match old(i.old, type_) {
        Some(c) if c.status == status => wanted(type_, status, &c.reason, &c.message),
        _ => wanted(type_, status, reason, message),
    }
}

fn backend_running(i: &Inputs) -> Wanted {
    let t = condition::BACKEND_RUNNING;
    match i.observation {
        None => wanted(t, "False", "NotLaunched", "no backend has been launched"),
        Some(Observation::Running) => wanted(t, "True", "Running", "the backend says it runs"),
        Some(Observation::Pending { detail }) => wanted(t, "False", "Pending", detail),
        Some(Observation::NotRunning(nr)) => {
            let reason = match nr.halt {
                Halt::Stopping => "Stopping",
                Halt::Stopped => "Stopped",
                Halt::Terminating => "Terminating",
                Halt::Gone => "Gone",
            };
            wanted(t, "False", reason, &nr.message)
        }
        // Error texts vary from call to call; once Unknown, stay quiet until the
        // answer changes, so a long outage costs one write, not one per look.
        Some(Observation::Unknown { error }) => {
            keep_or(i, t, "Unknown", "ObservationFailed", error)
        }
    }
}

fn healing(i: &Inputs) -> Wanted {
    let t = condition::HEALING;
    match i.phase {
        Phase::Restarting => wanted(
            t,
            "True",
            "Restarting",
            "restarting the backend on the same data volume",
        ),
        Phase::Offline if i.heals => wanted(
            t,
            "True",
            "WaitingToRestart",
            "the backend will be restarted",
        ),
        _ => wanted(t, "False", "NotHealing", "nothing to heal"),
    }
}

/// Turns wanted conditions into Conditions, keeping `lastTransitionTime` when
/// the status did not change.
pub fn settle(
    wanted: Vec<Wanted>,
    old: &[Condition],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    wanted
        .into_iter()
        .map(|w| {
            let since = match self::old(old, w.type_) {
                Some(c) if c.status == w.status => c.last_transition_time.clone(),
                _ => Time(now),
            };
            Condition {
                type_: w.type_.to_owned(),
                status: w.status.to_owned(),
                reason: w.reason,
                message: w.message,
                last_transition_time: since,
                observed_generation: generation,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs<'a>(phase: Phase, obs: Option<&'a Observation>, old: &'a [Condition]) -> Inputs<'a> {
        Inputs {
            phase,
            observation: obs,
            problem: None,
            heals: true,
            detail: None,
            old,
        }
    }

    #[test]
    fn transition_time_moves_only_with_status() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        let first = settle(
            wanted_conditions(&inputs(Phase::Online, Some(&Observation::Running), &[])),
            &[],
            Some(1),
            t0,
        );
        let again = settle(
            wanted_conditions(&inputs(Phase::Online, Some(&Observation::Running), &first)),
            &first,
            Some(1),
            t1,
        );
        assert_eq!(first, again);
        let obs = Observation::Unknown {
            error: "throttled".into(),
        };
        let unknown = settle(
            wanted_conditions(&inputs(Phase::Online, Some(&obs), &again)),
            &again,
            Some(1),
            t1,
        );
        let ready = unknown.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.last_transition_time.0),
            ("True", t0)
        );
        let backend = unknown
            .iter()
            .find(|c| c.type_ == "BackendRunning")
            .unwrap();
        assert_eq!(
            (backend.status.as_str(), backend.last_transition_time.0),
            ("Unknown", t1)
        );
    }

    #[test]
    fn a_second_unknown_with_another_error_text_changes_nothing() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let a = Observation::Unknown {
            error: "timeout after 10s".into(),
        };
        let b = Observation::Unknown {
            error: "connection reset".into(),
        };
        let first = settle(
            wanted_conditions(&inputs(Phase::Online, Some(&a), &[])),
            &[],
            Some(1),
            t0,
        );
        let second = settle(
            wanted_conditions(&inputs(Phase::Online, Some(&b), &first)),
            &first,
            Some(1),
            t0,
        );
        assert_eq!(first, second);
    }
}
