//! From facts to a plan: the next phase and the one action that gets there.

use super::{Halt, Observation, RestartGate};
use crate::api::{DesiredState, Phase, RestartPolicy};

/// Everything the decision depends on. No clocks, no clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts<'a> {
    pub desired: DesiredState,
    pub restart_policy: RestartPolicy,
    pub phase: Phase,
    /// The object carries a deletionTimestamp.
    pub deleting: bool,
    /// A backend (an instance, a Pod) is recorded in status.
    pub has_backend: bool,
    /// The latest look at the recorded backend; ignored without one.
    pub observation: &'a Observation,
    /// Failed for a reason that waits for a human (CrashLoop), not for a retry.
    pub held: bool,
    /// The circuit breaker holds this NotRunning answer as a suspected outage.
    pub suspected_outage: bool,
    /// Whether a restart may start now (backoff, crash loop).
    pub restart_gate: RestartGate,
    /// The last restart is old enough that a stopped answer is news, not
    /// the backend catching up with a start.
    pub restart_settled: bool,
}

/// What the reconciler should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing; wait for the next look.
    None,
    /// Create whatever is missing (volume, backend, attachment), one step at a time.
    Provision,
    /// Start the stopped backend in place.
    Start,
    /// Stop the backend, optionally hibernating it.
    Stop { hibernate: bool },
    /// Forget the dead backend and launch a replacement on the same volume.
    Replace,
    /// Release the backend and reclaim its volume as the spec says.
    Teardown,
}

/// The phase to record and the action to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub phase: Phase,
    pub action: Action,
}

impl Plan {
    fn new(phase: Phase, action: Action) -> Self {
        Plan { phase, action }
    }
    fn stay(phase: Phase) -> Self {
        Plan::new(phase, Action::None)
    }
}

/// Decides the next phase and action. Pure and total.
///
/// The safety rule: only `Observation::NotRunning` can move a Workspace to
/// `Offline`; `Unknown` keeps the current phase.
pub fn decide(f: &Facts) -> Plan {
    use Phase::*;
    // Deletion cannot be undone, so a Deleting phase stays Deleting.
    if f.deleting || f.phase == Deleting {
        return Plan::new(Deleting, Action::Teardown);
    }
    // A crash loop waits for a human, but never blocks a user's stop.
    if f.held && f.desired == DesiredState::Running {
        return Plan::stay(f.phase);
    }
    match f.desired {
        DesiredState::Running => want_running(f),
        DesiredState::Stopped => want_stopped(f, false),
        DesiredState::Hibernated => want_stopped(f, true),
    }
}

fn want_running(f: &Facts) -> Plan {
    use Phase::*;
    if !f.has_backend {
        // Nothing launched (yet, or any more): provision one. A replacement that
        // is under way keeps its phase; a failed launch stays Failed until it works.
        return match f.phase {
            // A running Workspace that lost its record is reported, then healed.
            Online => Plan::stay(Offline),
            Offline | Restarting => Plan::new(Restarting, Action::Provision),
            Failed => Plan::new(Failed, Action::Provision),
            _ => Plan::new(Provisioning, Action::Provision),
        };
    }
    match f.observation {
        Observation::Unknown { .. } => Plan::stay(f.phase),
        Observation::Running => match f.phase {
            // Coming back from a user's stop (or a lost record) goes through
            // Provisioning, which also makes sure the volume is attached.
            Pending | Stopping | Stopped | Hibernated => Plan::new(Provisioning, Action::Provision),
            _ => Plan::stay(Online),
        },
        Observation::Pending { .. } => {
            let phase = match f.phase {
                Online | Provisioning | Restarting => f.phase,
                Offline => Restarting,
                Pending | Stopping | Stopped | Hibernated | Failed | AwaitingAgent | Deleting => {
                    Provisioning
                }
            };
            Plan::new(phase, Action::Provision)
        }
        // Too many died at once: believe it only if it persists.
        Observation::NotRunning(_) if f.suspected_outage => Plan::stay(f.phase),
        Observation::NotRunning(nr) => match f.phase {
            // It died under a running Workspace: report it first, heal next time.
            Online => Plan::stay(Offline),
            Offline | Restarting if f.restart_policy == RestartPolicy::Never => Plan::stay(Offline),
            Failed if f.restart_policy == RestartPolicy::Never => Plan::stay(Failed),
            // A new restart (not one under way) waits for the gate.
            Offline | Failed if matches!(nr.halt, Halt::Stopped | Halt::Gone) => {
                match f.restart_gate {
                    RestartGate::CrashLoop => Plan::stay(Failed),
                    RestartGate::Wait(_) => Plan::stay(f.phase),
                    RestartGate::Open => heal(nr.halt, f.phase),
                }
            }
            // The replacement (or restarted instance) died too: report it, and
            // let the next restart pass the gate, so it is counted and backs off.
            Restarting if nr.halt == Halt::Gone => Plan::stay(Offline),
            Restarting if nr.halt == Halt::Stopped && f.restart_settled => Plan::stay(Offline),
            Offline | Restarting => heal(nr.halt, f.phase),
            // The user asked for it back (or a launch is still settling).
            Pending | Provisioning | Stopping | Stopped | Hibernated | Failed => match nr.halt {
                Halt::Stopped => Plan::new(Provisioning, Action::Start),
                Halt::Stopping => Plan::stay(f.phase),
                // It vanished while starting up: that is a failure to heal, not a
                // step of the user's request.
                Halt::Gone | Halt::Terminating if f.phase == Provisioning => Plan::stay(Offline),
                Halt::Gone => Plan::new(Provisioning, Action::Replace),
                Halt::Terminating => Plan::stay(f.phase),
            },
            AwaitingAgent | Deleting => Plan::stay(f.phase),
        },
    }
}

/// The step that brings a dead backend back: start in place, or replace.
fn heal(halt: Halt, phase: Phase) -> Plan {
    match halt {
        Halt::Stopped => Plan::new(Phase::Restarting, Action::Start),
        Halt::Gone => Plan::new(Phase::Restarting, Action::Replace),
        Halt::Stopping | Halt::Terminating => Plan::stay(phase),
    }
}

fn want_stopped(f: &Facts, hibernate: bool) -> Plan {
    use Phase::*;
    let at_rest = if hibernate { Hibernated } else { Stopped };
    if !f.has_backend {
        return Plan::stay(Stopped);
    }
    match f.observation {
        Observation::Unknown { .. } => Plan::stay(f.phase),
        Observation::Running | Observation::Pending { .. } => {
            Plan::new(Stopping, Action::Stop { hibernate })
        }
        Observation::NotRunning(nr) => match nr.halt {
            Halt::Stopping => Plan::stay(Stopping),
            // Only a stop tend made hibernates; an instance found already
            // stopped is simply stopped.
            Halt::Stopped if f.phase == Stopping => Plan::stay(at_rest),
            Halt::Stopped if f.phase == Hibernated => Plan::stay(Hibernated),
            Halt::Stopped | Halt::Terminating | Halt::Gone => Plan::stay(Stopped),
        },
    }
}

#[cfg(test)]
mod tests;
