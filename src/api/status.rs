use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What is true about a Workspace. Written only by the controller.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = super::spec::no_null_in_enum)]
    pub phase: Option<Phase>,
    /// The runtime something was provisioned for: `spec.runtime` may not
    /// change once this is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = super::spec::no_null_in_enum)]
    pub runtime: Option<super::Runtime>,
    /// The backend recorded now, whatever the runtime (an EC2 instance id or
    /// a Pod's name): what `kubectl get ws` shows as Instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_id: Option<String>,
    /// Region the backend was provisioned in; every later call goes there,
    /// whatever the spec or the controller's default region say now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Availability zone of the data volume; every instance must launch there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// When the current instance was launched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launched_at: Option<Time>,
    /// Number of the latest launch. Written before RunInstances is called and
    /// part of its ClientToken, so a retried launch never starts a second instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_number: Option<u32>,
    /// How many times tend restarted a backend that died underneath.
    #[serde(default)]
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restart: Option<RestartRecord>,
    /// Restarts within the crash-loop window (30m), for backoff and CrashLoop.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_restarts: Vec<Time>,
    /// The last `tend.dev/retry` annotation value acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_retry: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The last clean answer from the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observation: Option<ObservationRecord>,
    /// Set while looks give only Unknown answers: the time of the last clean
    /// answer before them. The staleness clock; cleared by a clean answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncertain_since: Option<Time>,
    /// The last `tend.dev/refresh` annotation value acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_refresh: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

impl WorkspaceStatus {
    /// The id of the backend recorded now, whatever the runtime: an EC2
    /// instance id, a Pod's name, or an agent's heartbeat Lease. The
    /// runtime's own field has the last word; `backend` mirrors it.
    pub fn backend_id(&self) -> Option<&str> {
        self.instance_id
            .as_deref()
            .or(self.pod_name.as_deref())
            .or(self.backend.as_deref())
    }

    /// Records (or, with `None`, forgets) the backend of a runtime in the
    /// field `kubectl get ws` shows for it.
    pub fn set_backend_id(&mut self, runtime: super::Runtime, id: Option<String>) {
        match runtime {
            super::Runtime::Ec2 => self.instance_id = id.clone(),
            super::Runtime::Container => self.pod_name = id.clone(),
            super::Runtime::External => {}
        }
        self.backend = id;
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Phase {
    Pending,
    Provisioning,
    Online,
    Offline,
    Restarting,
    Stopping,
    Stopped,
    Hibernated,
    AwaitingAgent,
    Failed,
    Deleting,
}

impl Phase {
    pub const ALL: [Phase; 11] = [
        Phase::Pending,
        Phase::Provisioning,
        Phase::Online,
        Phase::Offline,
        Phase::Restarting,
        Phase::Stopping,
        Phase::Stopped,
        Phase::Hibernated,
        Phase::AwaitingAgent,
        Phase::Failed,
        Phase::Deleting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Provisioning => "Provisioning",
            Phase::Online => "Online",
            Phase::Offline => "Offline",
            Phase::Restarting => "Restarting",
            Phase::Stopping => "Stopping",
            Phase::Stopped => "Stopped",
            Phase::Hibernated => "Hibernated",
            Phase::AwaitingAgent => "AwaitingAgent",
            Phase::Failed => "Failed",
            Phase::Deleting => "Deleting",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestartRecord {
    pub at: Time,
    pub reason: String,
}

/// The last clean answer a backend gave. `observedAt` moves only when the answer
/// changes, so a steady fleet causes no status writes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObservationRecord {
    /// Running, Pending or NotRunning.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub observed_at: Time,
    /// Where the answer came from, e.g. ec2:DescribeInstances.
    pub source: String,
}

/// Condition types tend maintains.
pub mod condition {
    pub const READY: &str = "Ready";
    pub const BACKEND_RUNNING: &str = "BackendRunning";
    pub const HEALING: &str = "Healing";
}
