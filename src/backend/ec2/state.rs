//! What an EC2 answer means: the one place instance states and StateReason
//! codes become observations.

use std::time::Duration;

use aws_sdk_ec2::types::{Instance, InstanceStateName};

use super::Seen;
use crate::core::{Halt, Observation};

/// Classifies one described instance. `Running` needs the data volume attached
/// too: a workspace without its data is not ready.
pub fn classify_instance(instance: &Instance, data_volume: Option<&str>) -> Observation {
    classify(&Seen::of(instance), data_volume)
}

/// Classifies what tend kept of a described instance; see [`classify_instance`].
pub fn classify(seen: &Seen, data_volume: Option<&str>) -> Observation {
    let id = if seen.id.is_empty() {
        "instance"
    } else {
        &seen.id
    };
    let Some(state) = &seen.state else {
        return Observation::Unknown {
            error: format!("{id}: DescribeInstances answer has no state"),
        };
    };
    let code = seen.reason.as_deref();
    let said = || match code {
        Some(code) => format!("{id} is {} ({code})", state.as_str()),
        None => format!("{id} is {}", state.as_str()),
    };
    match state {
        InstanceStateName::Pending => Observation::Pending {
            detail: format!("{id} is pending"),
        },
        InstanceStateName::Running => match data_volume {
            Some(vol) if !seen.volumes.iter().any(|v| v == vol) => Observation::Pending {
                detail: format!("{id} is running; volume {vol} is not attached yet"),
            },
            _ => Observation::Running,
        },
        InstanceStateName::Stopping => {
            Observation::not_running(Halt::Stopping, stop_reason(code), said())
        }
        InstanceStateName::Stopped => {
            Observation::not_running(Halt::Stopped, stop_reason(code), said())
        }
        InstanceStateName::ShuttingDown => {
            Observation::not_running(Halt::Terminating, terminate_reason(code), said())
        }
        InstanceStateName::Terminated => {
            Observation::not_running(Halt::Gone, terminate_reason(code), said())
        }
        other => Observation::Unknown {
            error: format!("{id}: unrecognised state {}", other.as_str()),
        },
    }
}

/// An instance missing from a *successful* describe. EC2 is eventually
/// consistent right after RunInstances, so absence proves nothing until the
/// launch is older than the grace period.
pub fn classify_missing(id: &str, launched_ago: Option<Duration>, grace: Duration) -> Observation {
    match launched_ago {
        Some(age) if age < grace => Observation::Unknown {
            error: format!(
                "{id} not found {}s after launch (within the {}s grace period)",
                age.as_secs(),
                grace.as_secs()
            ),
        },
        _ => Observation::not_running(
            Halt::Gone,
            "InstanceNotFound",
            format!("{id} no longer exists"),
        ),
    }
}

/// Condition reason for an instance that stopped.
fn stop_reason(code: Option<&str>) -> &'static str {
    match code {
        Some("Server.SpotInstanceShutdown" | "Server.SpotInstanceTermination") => "SpotInterrupted",
        Some("Client.UserInitiatedShutdown" | "Client.UserInitiatedHibernate") => {
            "InstanceStoppedExternally"
        }
        Some("Client.InstanceInitiatedShutdown") => "InstanceShutDownFromInside",
        Some("Server.ScheduledStop") => "ScheduledMaintenance",
        Some("Server.InternalError") => "ProviderInternalError",
        _ => "InstanceStopped",
    }
}

/// Condition reason for an instance that is terminating or terminated.
fn terminate_reason(code: Option<&str>) -> &'static str {
    match code {
        Some("Server.SpotInstanceTermination" | "Server.SpotInstanceShutdown") => "SpotInterrupted",
        Some("Client.InstanceInitiatedShutdown") => "InstanceShutDownFromInside",
        Some("Server.InternalError") => "ProviderInternalError",
        Some("Server.InsufficientInstanceCapacity") => "InsufficientCapacity",
        Some("Client.VolumeLimitExceeded" | "Client.InvalidSnapshot.NotFound") => "LaunchFailed",
        _ => "InstanceTerminated",
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::types::{
        EbsInstanceBlockDevice, InstanceBlockDeviceMapping, InstanceState, StateReason,
    };

    use super::*;

    fn instance(state: InstanceStateName, code: Option<&str>) -> Instance {
        let mut b = Instance::builder()
            .instance_id("i-1")
            .state(InstanceState::builder().name(state).build());
        if let Some(code) = code {
            b = b.state_reason(StateReason::builder().code(code).build());
        }
        b.build()
    }

    #[test]
    fn spot_termination_is_spot_interrupted_and_gone() {
        let obs = classify_instance(
            &instance(
                InstanceStateName::Terminated,
                Some("Server.SpotInstanceTermination"),
            ),
            None,
        );
        let Observation::NotRunning(nr) = obs else {
            panic!("{obs:?}")
        };
        assert_eq!(
            (nr.halt, nr.reason.as_str()),
            (Halt::Gone, "SpotInterrupted")
        );
    }

    #[test]
    fn user_stop_is_stopped_externally() {
        let obs = classify_instance(
            &instance(
                InstanceStateName::Stopped,
                Some("Client.UserInitiatedShutdown"),
            ),
            None,
        );
        let Observation::NotRunning(nr) = obs else {
            panic!("{obs:?}")
        };
        assert_eq!(
            (nr.halt, nr.reason.as_str()),
            (Halt::Stopped, "InstanceStoppedExternally")
        );
    }

    #[test]
    fn running_without_the_data_volume_is_pending() {
        let inst = instance(InstanceStateName::Running, None);
        assert!(matches!(
            classify_instance(&inst, Some("vol-1")),
            Observation::Pending { .. }
        ));
        let attached = Instance::builder()
            .instance_id("i-1")
            .state(
                InstanceState::builder()
                    .name(InstanceStateName::Running)
                    .build(),
            )
            .block_device_mappings(
                InstanceBlockDeviceMapping::builder()
                    .ebs(EbsInstanceBlockDevice::builder().volume_id("vol-1").build())
                    .build(),
            )
            .build();
        assert_eq!(
            classify_instance(&attached, Some("vol-1")),
            Observation::Running
        );
    }

    #[test]
    fn missing_state_is_unknown_not_dead() {
        let inst = Instance::builder().instance_id("i-1").build();
        assert!(matches!(
            classify_instance(&inst, None),
            Observation::Unknown { .. }
        ));
    }

    #[test]
    fn not_found_inside_grace_is_unknown_and_after_is_gone() {
        let grace = Duration::from_secs(300);
        assert!(matches!(
            classify_missing("i-1", Some(Duration::from_secs(10)), grace),
            Observation::Unknown { .. }
        ));
        assert!(matches!(
            classify_missing("i-1", Some(Duration::from_secs(301)), grace),
            Observation::NotRunning(_)
        ));
    }
}
