use proptest::prelude::*;

use super::*;
use crate::core::{Halt, RestartGate, can_transition};

fn unknown() -> Observation {
    Observation::Unknown {
        error: "RequestLimitExceeded".into(),
    }
}

fn pending() -> Observation {
    Observation::Pending {
        detail: "pending".into(),
    }
}

fn dead(halt: Halt) -> Observation {
    Observation::not_running(halt, "InstanceTerminated", "terminated")
}

fn facts(phase: Phase, desired: DesiredState, obs: &Observation) -> Facts<'_> {
    Facts {
        desired,
        restart_policy: RestartPolicy::Always,
        phase,
        deleting: false,
        has_backend: true,
        observation: obs,
        held: false,
        suspected_outage: false,
        restart_gate: RestartGate::Open,
        restart_settled: true,
    }
}

#[test]
fn first_reconcile_provisions() {
    let obs = unknown();
    let f = Facts {
        has_backend: false,
        ..facts(Phase::Pending, DesiredState::Running, &obs)
    };
    assert_eq!(
        decide(&f),
        Plan::new(Phase::Provisioning, Action::Provision)
    );
}

#[test]
fn running_answer_brings_provisioning_online() {
    let obs = Observation::Running;
    let plan = decide(&facts(Phase::Provisioning, DesiredState::Running, &obs));
    assert_eq!(plan, Plan::stay(Phase::Online));
}

#[test]
fn throttled_look_leaves_online_workspace_online() {
    let obs = unknown();
    let plan = decide(&facts(Phase::Online, DesiredState::Running, &obs));
    assert_eq!(plan, Plan::stay(Phase::Online));
}

#[test]
fn clean_not_running_takes_online_workspace_offline_without_acting() {
    let obs = dead(Halt::Gone);
    let plan = decide(&facts(Phase::Online, DesiredState::Running, &obs));
    assert_eq!(plan, Plan::stay(Phase::Offline));
}

#[test]
fn offline_terminated_instance_is_replaced() {
    let obs = dead(Halt::Gone);
    let plan = decide(&facts(Phase::Offline, DesiredState::Running, &obs));
    assert_eq!(plan, Plan::new(Phase::Restarting, Action::Replace));
}

#[test]
fn offline_stopped_instance_is_started_in_place() {
    let obs = dead(Halt::Stopped);
    let plan = decide(&facts(Phase::Offline, DesiredState::Running, &obs));
    assert_eq!(plan, Plan::new(Phase::Restarting, Action::Start));
}

#[test]
fn offline_instance_still_stopping_is_waited_for() {
    let obs = dead(Halt::Stopping);
    let plan = decide(&facts(Phase::Offline, DesiredState::Running, &obs));
    assert_eq!(plan, Plan::stay(Phase::Offline));
}

#[test]
fn restart_policy_never_stays_offline() {
    let obs = dead(Halt::Gone);
    let f = Facts {
        restart_policy: RestartPolicy::Never,
        ..facts(Phase::Offline, DesiredState::Running, &obs)
    };
    assert_eq!(decide(&f), Plan::stay(Phase::Offline));
}

#[test]
fn user_stop_stops_then_rests() {
    let running = Observation::Running;
    assert_eq!(
        decide(&facts(Phase::Online, DesiredState::Stopped, &running)),
        Plan::new(Phase::Stopping, Action::Stop { hibernate: false })
    );
    let stopped = dead(Halt::Stopped);
    assert_eq!(
        decide(&facts(Phase::Stopping, DesiredState::Stopped, &stopped)),
        Plan::stay(Phase::Stopped)
    );
    assert_eq!(
        decide(&facts(Phase::Stopping, DesiredState::Hibernated, &stopped)),
        Plan::stay(Phase::Hibernated)
    );
}

#[test]
fn back_to_running_starts_in_place() {
    let stopped = dead(Halt::Stopped);
    for phase in [Phase::Stopped, Phase::Hibernated] {
        assert_eq!(
            decide(&facts(phase, DesiredState::Running, &stopped)),
            Plan::new(Phase::Provisioning, Action::Start)
        );
    }
}

#[test]
fn deletion_always_tears_down() {
    for phase in Phase::ALL {
        let obs = unknown();
        let f = Facts {
            deleting: true,
            ..facts(phase, DesiredState::Running, &obs)
        };
        assert_eq!(decide(&f), Plan::new(Phase::Deleting, Action::Teardown));
    }
}

#[test]
fn restarts_wait_for_the_backoff() {
    let obs = dead(Halt::Gone);
    let f = Facts {
        restart_gate: RestartGate::Wait(std::time::Duration::from_secs(5)),
        ..facts(Phase::Offline, DesiredState::Running, &obs)
    };
    assert_eq!(decide(&f), Plan::stay(Phase::Offline));
}

#[test]
fn a_crash_loop_fails_instead_of_restarting() {
    let obs = dead(Halt::Gone);
    let f = Facts {
        restart_gate: RestartGate::CrashLoop,
        ..facts(Phase::Offline, DesiredState::Running, &obs)
    };
    assert_eq!(decide(&f), Plan::stay(Phase::Failed));
}

#[test]
fn a_replacement_that_dies_goes_offline_so_the_next_restart_is_gated_and_counted() {
    let obs = dead(Halt::Gone);
    let f = facts(Phase::Restarting, DesiredState::Running, &obs);
    assert_eq!(decide(&f), Plan::stay(Phase::Offline));
}

#[test]
fn a_stopped_answer_right_after_a_start_is_not_a_new_death() {
    let obs = dead(Halt::Stopped);
    let settling = Facts {
        restart_settled: false,
        ..facts(Phase::Restarting, DesiredState::Running, &obs)
    };
    assert_eq!(
        decide(&settling),
        Plan::new(Phase::Restarting, Action::Start)
    );
    let settled = facts(Phase::Restarting, DesiredState::Running, &obs);
    assert_eq!(decide(&settled), Plan::stay(Phase::Offline));
}

#[test]
fn a_crash_loop_does_not_block_a_user_stop() {
    let obs = Observation::Running;
    let f = Facts {
        held: true,
        ..facts(Phase::Failed, DesiredState::Stopped, &obs)
    };
    assert_eq!(
        decide(&f),
        Plan::new(Phase::Stopping, Action::Stop { hibernate: false })
    );
}

#[test]
fn a_suspected_outage_is_not_acted_on() {
    let obs = dead(Halt::Gone);
    for phase in [Phase::Online, Phase::Offline] {
        let f = Facts {
            suspected_outage: true,
            ..facts(phase, DesiredState::Running, &obs)
        };
        assert_eq!(decide(&f), Plan::stay(phase));
    }
}

#[test]
fn retry_after_a_crash_loop_restarts() {
    let obs = dead(Halt::Gone);
    let f = facts(Phase::Failed, DesiredState::Running, &obs);
    assert_eq!(decide(&f), Plan::new(Phase::Restarting, Action::Replace));
}

#[test]
fn held_failure_waits_for_a_human() {
    let obs = dead(Halt::Gone);
    let f = Facts {
        held: true,
        ..facts(Phase::Failed, DesiredState::Running, &obs)
    };
    assert_eq!(decide(&f), Plan::stay(Phase::Failed));
}

fn any_phase() -> impl Strategy<Value = Phase> {
    // AwaitingAgent belongs to the heartbeat runtime, which decides elsewhere.
    proptest::sample::select(
        Phase::ALL
            .into_iter()
            .filter(|p| *p != Phase::AwaitingAgent)
            .collect::<Vec<_>>(),
    )
}

fn any_desired() -> impl Strategy<Value = DesiredState> {
    prop_oneof![
        Just(DesiredState::Running),
        Just(DesiredState::Stopped),
        Just(DesiredState::Hibernated)
    ]
}

fn any_halt() -> impl Strategy<Value = Halt> {
    prop_oneof![
        Just(Halt::Stopping),
        Just(Halt::Stopped),
        Just(Halt::Terminating),
        Just(Halt::Gone)
    ]
}

fn any_gate() -> impl Strategy<Value = RestartGate> {
    prop_oneof![
        Just(RestartGate::Open),
        Just(RestartGate::CrashLoop),
        Just(RestartGate::Wait(std::time::Duration::from_secs(1)))
    ]
}

fn any_observation() -> impl Strategy<Value = Observation> {
    prop_oneof![
        Just(Observation::Running),
        Just(pending()),
        Just(unknown()),
        any_halt().prop_map(dead),
    ]
}

fn uncertain_or_alive() -> impl Strategy<Value = Observation> {
    prop_oneof![Just(Observation::Running), Just(pending()), Just(unknown())]
}

/// Plays a sequence of answers through `decide`, as consecutive reconciles would.
fn play(start: Phase, desired: DesiredState, answers: &[Observation]) -> Vec<Phase> {
    let mut phase = start;
    let mut path = vec![phase];
    for obs in answers {
        let plan = decide(&facts(phase, desired, obs));
        phase = plan.phase;
        path.push(phase);
    }
    path
}

proptest! {
    #[test]
    fn every_planned_phase_change_is_legal(
        phase in any_phase(),
        desired in any_desired(),
        obs in any_observation(),
        has_backend in any::<bool>(),
        deleting in any::<bool>(),
        never in any::<bool>(),
        suspected_outage in any::<bool>(),
        restart_gate in any_gate(),
    ) {
        let f = Facts {
            desired,
            restart_policy: if never { RestartPolicy::Never } else { RestartPolicy::Always },
            phase,
            deleting,
            has_backend,
            observation: &obs,
            held: false,
            suspected_outage,
            restart_gate,
            restart_settled: true,
        };
        let plan = decide(&f);
        prop_assert!(can_transition(phase, plan.phase), "{phase} -> {}", plan.phase);
    }

    #[test]
    fn unknown_never_changes_the_phase_of_a_recorded_backend(
        phase in any_phase(),
        desired in any_desired(),
    ) {
        let obs = unknown();
        let plan = decide(&facts(phase, desired, &obs));
        if phase != Phase::Deleting {
            prop_assert_eq!(plan.phase, phase);
            prop_assert_eq!(plan.action, Action::None);
        }
    }

    #[test]
    fn no_sequence_of_unknown_pending_running_yields_offline(
        start in prop_oneof![Just(Phase::Online), Just(Phase::Provisioning), Just(Phase::Restarting), Just(Phase::Pending)],
        answers in proptest::collection::vec(uncertain_or_alive(), 0..30),
    ) {
        let path = play(start, DesiredState::Running, &answers);
        prop_assert!(!path.contains(&Phase::Offline), "{path:?}");
    }

    #[test]
    fn a_suspected_outage_never_changes_the_phase(
        phase in any_phase(),
        halt in any_halt(),
    ) {
        let obs = dead(halt);
        let f = Facts { suspected_outage: true, ..facts(phase, DesiredState::Running, &obs) };
        let plan = decide(&f);
        if phase != Phase::Deleting {
            prop_assert_eq!(plan, Plan::stay(phase));
        }
    }

    #[test]
    fn a_user_stop_never_passes_through_offline_or_failed(
        start in prop_oneof![Just(Phase::Online), Just(Phase::Stopping), Just(Phase::Stopped), Just(Phase::Hibernated)],
        desired in prop_oneof![Just(DesiredState::Stopped), Just(DesiredState::Hibernated)],
        answers in proptest::collection::vec(any_observation(), 0..30),
    ) {
        let path = play(start, desired, &answers);
        prop_assert!(
            !path.contains(&Phase::Offline) && !path.contains(&Phase::Failed),
            "{path:?}"
        );
    }
}
