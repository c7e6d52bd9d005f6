//! What a Pod's state means: the one place Pod phases and container states
//! become observations.

use k8s_openapi::api::core::v1::{ContainerStateTerminated, Node, Pod};

use super::objects::CONTAINER;
use crate::core::{Halt, Observation};

/// Classifies one Pod read from the API server. A Pod that ended (or whose
/// workspace container ended: tend's Pods never restart by themselves) is
/// gone for good; only a replacement helps.
pub fn classify_pod(pod: &Pod) -> Observation {
    let name = pod.metadata.name.as_deref().unwrap_or("pod");
    if pod.metadata.deletion_timestamp.is_some() {
        return Observation::not_running(
            Halt::Terminating,
            "PodTerminating",
            format!("{name} is being deleted"),
        );
    }
    let status = pod.status.as_ref();
    let container = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|all| all.iter().find(|c| c.name == CONTAINER));
    let terminated = container
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref());
    match status.and_then(|s| s.phase.as_deref()) {
        Some("Failed") => Observation::not_running(
            Halt::Gone,
            "PodFailed",
            format!(
                "{name} failed{}",
                ended(terminated, status.and_then(|s| s.message.as_deref()))
            ),
        ),
        Some("Succeeded") => Observation::not_running(
            Halt::Gone,
            "PodCompleted",
            format!("{name} completed{}", ended(terminated, None)),
        ),
        Some("Running") => match (terminated, container.and_then(|c| c.state.as_ref())) {
            (Some(t), _) => Observation::not_running(
                Halt::Gone,
                "ContainerTerminated",
                format!(
                    "{name}: container {CONTAINER} ended{}",
                    ended(Some(t), None)
                ),
            ),
            (None, Some(state)) if state.running.is_some() => Observation::Running,
            (None, state) => Observation::Pending {
                detail: format!(
                    "{name}: container {CONTAINER} is {}",
                    state
                        .and_then(|s| s.waiting.as_ref())
                        .and_then(|w| w.reason.as_deref())
                        .unwrap_or("starting")
                ),
            },
        },
        Some("Pending") | None => Observation::Pending {
            detail: format!(
                "{name} is pending{}",
                container
                    .and_then(|c| c.state.as_ref())
                    .and_then(|s| s.waiting.as_ref())
                    .and_then(|w| w.reason.as_deref())
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
        },
        // The kubelet lost touch: nothing certain about the workspace.
        Some(other) => Observation::Unknown {
            error: format!("{name} is in phase {other}"),
        },
    }
}

/// How a container ended, for the message: exit code and reason.
fn ended(terminated: Option<&ContainerStateTerminated>, pod_message: Option<&str>) -> String {
    match (terminated, pod_message) {
        (Some(t), _) => format!(
            " (exit code {}{})",
            t.exit_code,
            t.reason
                .as_deref()
                .map(|r| format!(", {r}"))
                .unwrap_or_default()
        ),
        (None, Some(m)) if !m.is_empty() => format!(": {m}"),
        _ => String::new(),
    }
}

/// Why a Node cannot vouch for its Pods, or `None` when it is Ready. A lost
/// node is not proof that the workspace is dead, nor that it runs.
pub fn node_doubt(node: &Node) -> Option<String> {
    let name = node.metadata.name.as_deref().unwrap_or("node");
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    match ready.map(|c| c.status.as_str()) {
        Some("True") => None,
        Some(other) => Some(format!("node {name} is not Ready (Ready={other})")),
        None => Some(format!("node {name} reports no Ready condition")),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateWaiting, ContainerStatus, PodStatus,
    };

    use super::*;

    fn pod(phase: &str, state: Option<ContainerState>) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some("dev-1".into());
        pod.status = Some(PodStatus {
            phase: Some(phase.into()),
            container_statuses: state.map(|s| {
                vec![ContainerStatus {
                    name: CONTAINER.into(),
                    state: Some(s),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        });
        pod
    }

    fn running() -> ContainerState {
        ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..Default::default()
        }
    }

    fn terminated(code: i32, reason: &str) -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                reason: Some(reason.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn reason(obs: &Observation) -> Option<&str> {
        match obs {
            Observation::NotRunning(nr) => Some(&nr.reason),
            _ => None,
        }
    }

    #[test]
    fn a_running_container_is_running_and_a_waiting_one_pending() {
        assert_eq!(
            classify_pod(&pod("Running", Some(running()))),
            Observation::Running
        );
        let waiting = ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("ContainerCreating".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(matches!(
            classify_pod(&pod("Pending", Some(waiting))),
            Observation::Pending { detail } if detail.contains("ContainerCreating")
        ));
        assert!(matches!(
            classify_pod(&pod("Pending", None)),
            Observation::Pending { .. }
        ));
    }

    #[test]
    fn an_ended_pod_or_container_is_gone_with_its_exit_reason() {
        let failed = classify_pod(&pod("Failed", Some(terminated(137, "OOMKilled"))));
        assert_eq!(reason(&failed), Some("PodFailed"));
        assert!(format!("{failed:?}").contains("OOMKilled"), "{failed:?}");
        let done = classify_pod(&pod("Succeeded", Some(terminated(0, "Completed"))));
        assert_eq!(reason(&done), Some("PodCompleted"));
        let ended = classify_pod(&pod("Running", Some(terminated(1, "Error"))));
        assert_eq!(reason(&ended), Some("ContainerTerminated"));
    }

    #[test]
    fn a_pod_in_phase_unknown_is_unknown_and_a_deleted_one_terminating() {
        assert!(matches!(
            classify_pod(&pod("Unknown", Some(running()))),
            Observation::Unknown { .. }
        ));
        let mut deleting = pod("Running", Some(running()));
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        assert!(matches!(
            classify_pod(&deleting),
            Observation::NotRunning(nr) if nr.halt == Halt::Terminating
        ));
    }
}
