// The printcolumn(...) entries repeat keys by design; clippy reads them as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::WorkspaceStatus;

/// A long-lived workspace: an EC2 instance with a persistent data volume, a Pod
/// with a PersistentVolumeClaim, or an external machine that sends heartbeats.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tend.dev",
    version = "v1alpha1",
    kind = "Workspace",
    namespaced,
    status = "WorkspaceStatus",
    shortname = "ws",
    category = "tend",
    cel,
    printcolumn(name = "Runtime", type_ = "string", json_path = ".spec.runtime"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Instance", type_ = "string", json_path = ".status.backend"),
    printcolumn(name = "Restarts", type_ = "integer", json_path = ".status.restarts"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        priority = 1,
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Last Observed",
        type_ = "date",
        priority = 1,
        json_path = ".status.observation.observedAt"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.ec2) == (self.runtime == 'ec2')").message("spec.ec2 must be set when spec.runtime is ec2, and only then"),
    validation = Rule::new("has(self.container) == (self.runtime == 'container')").message("spec.container must be set when spec.runtime is container, and only then"),
    validation = Rule::new("has(self.external) == (self.runtime == 'external')").message("spec.external must be set when spec.runtime is external, and only then"),
    validation = Rule::new("self.desiredState != 'Hibernated' || self.runtime == 'ec2'").message("spec.desiredState Hibernated is only supported for runtime ec2"),
    validation = Rule::new("self.desiredState != 'Hibernated' || (has(self.ec2) && has(self.ec2.hibernation) && self.ec2.hibernation)").message("spec.desiredState Hibernated needs spec.ec2.hibernation: true"),
    validation = Rule::new("self.runtime != 'external' || self.desiredState == 'Running'").message("spec.desiredState must be Running for runtime external: tend cannot stop an external machine"),
)]
pub struct WorkspaceSpec {
    /// Which backend runs the workspace. Immutable.
    #[schemars(extend("maxLength" = 16))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.runtime is immutable"))]
    pub runtime: Runtime,

    /// What the user wants: Running (default), Stopped, or Hibernated (ec2 only).
    #[serde(default)]
    #[schemars(extend("maxLength" = 16))]
    pub desired_state: DesiredState,

    /// Whether tend restarts a backend that died underneath (default Always).
    #[serde(default)]
    pub restart_policy: RestartPolicy,

    /// The EC2 instance and its data volume; required when runtime is ec2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ec2: Option<Ec2Spec>,

    /// The Pod and its PersistentVolumeClaim; required when runtime is container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerSpec>,

    /// A machine outside tend's control that reports heartbeats; required when
    /// runtime is external.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalSpec>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Ec2,
    Container,
    External,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Ec2 => "ec2",
            Runtime::Container => "container",
            Runtime::External => "external",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DesiredState {
    #[default]
    Running,
    Stopped,
    Hibernated,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RestartPolicy {
    #[default]
    Always,
    Never,
}

/// What becomes of a data volume when its Workspace is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ReclaimPolicy {
    /// Keep the volume (the default: data outlives its workspace unless asked).
    #[default]
    Retain,
    Delete,
}

impl ReclaimPolicy {
    /// What a teardown did with the volume, for its announcement.
    pub fn done(self) -> &'static str {
        match self {
            ReclaimPolicy::Retain => "retained",
            ReclaimPolicy::Delete => "deleted",
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.imageId) || has(self.launchTemplate)").message("spec.ec2 needs imageId or launchTemplate"),
    validation = Rule::new("has(self.instanceType) || has(self.launchTemplate)").message("spec.ec2 needs instanceType or launchTemplate"),
    validation = Rule::new("has(self.region) == has(oldSelf.region)").message("spec.ec2.region cannot be added or removed after creation"),
)]
pub struct Ec2Spec {
    /// AWS region; defaults to the controller's region. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxLength" = 32))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.ec2.region is immutable"))]
    pub region: Option<String>,

    /// Instance type, e.g. m7i.large. May come from the launch template instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxLength" = 64))]
    pub instance_type: Option<String>,

    /// AMI id. May come from the launch template instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // Room for a `resolve:ssm:` parameter reference, not only an `ami-` id.
    #[schemars(extend("maxLength" = 2048))]
    pub image_id: Option<String>,

    /// Launch template to start from; explicit fields here override it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_template: Option<LaunchTemplateRef>,

    /// Subnet to launch into. The data volume is created in its availability zone.
    pub subnet_id: String,

    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_group_ids: Vec<String>,

    /// Instance profile name or ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam_instance_profile: Option<String>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,

    /// User data read from a Secret in the Workspace's namespace; never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<SecretKeyRef>,

    /// Run on spot capacity. Present means spot; its fields tune the market options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot: Option<SpotOptions>,

    /// Launch with hibernation configured, which `desiredState: Hibernated` needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hibernation: Option<bool>,

    /// Extra tags for the instance and the volume (at most 45: EC2 allows 50 and
    /// tend adds its own). The tend.dev/ prefix is reserved.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 45,
        "additionalProperties" = {"type": "string", "maxLength": 256}
    ))]
    #[x_kube(validation = Rule::new("self.all(k, !k.startsWith('tend.dev/'))").message("spec.ec2.tags must not use the reserved tend.dev/ prefix"))]
    pub tags: BTreeMap<String, String>,

    /// The persistent data volume that survives instance replacement.
    #[serde(default)]
    pub volume: Ec2VolumeSpec,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.id) != has(self.name)").message("spec.ec2.launchTemplate needs exactly one of id or name"))]
pub struct LaunchTemplateRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxLength" = 64))]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxLength" = 128))]
    pub name: Option<String>,
    /// Version number, `$Latest` or `$Default` (default `$Default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name, in the Workspace's namespace.
    pub name: String,
    /// Key inside the Secret (default `userData`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpotOptions {
    /// Highest hourly price, in USD; defaults to the on-demand price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_price: Option<String>,
    /// What EC2 does on interruption: terminate (default), stop or hibernate.
    /// stop and hibernate need a persistent request, which tend then uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = no_null_in_enum)]
    pub interruption_behavior: Option<SpotInterruptionBehavior>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SpotInterruptionBehavior {
    Terminate,
    Stop,
    Hibernate,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Ec2VolumeSpec {
    /// Size in GiB (default 20).
    #[serde(default = "default_volume_size", rename = "sizeGiB")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65536").message("spec.ec2.volume.sizeGiB must be between 1 and 65536"))]
    pub size_gib: i32,
    /// EBS volume type (default gp3).
    #[serde(default = "default_volume_type", rename = "type")]
    pub volume_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops: Option<i32>,
    /// Throughput in MiB/s (gp3 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput: Option<i32>,
    /// Device name the volume attaches as (default /dev/sdf).
    #[serde(default = "default_device_name")]
    pub device_name: String,
    /// Retain (default) keeps the volume after the Workspace is deleted.
    #[serde(default)]
    pub reclaim_policy: ReclaimPolicy,
}

impl Default for Ec2VolumeSpec {
    fn default() -> Self {
        Self {
            size_gib: default_volume_size(),
            volume_type: default_volume_type(),
            iops: None,
            throughput: None,
            device_name: default_device_name(),
            reclaim_policy: ReclaimPolicy::default(),
        }
    }
}

fn default_volume_size() -> i32 {
    20
}
fn default_volume_type() -> String {
    "gp3".into()
}
fn default_device_name() -> String {
    "/dev/sdf".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSpec {
    pub image: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<ContainerVolumeSpec>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerVolumeSpec {
    pub size: Quantity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxLength" = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.container.volume.storageClassName is immutable"))]
    pub storage_class_name: Option<String>,
    /// Where the volume is mounted in the container (default /workspace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_path: Option<String>,
    #[serde(default)]
    pub reclaim_policy: ReclaimPolicy,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalSpec {
    /// A heartbeat older than this means the machine is not running (default
    /// 90, at least 10, at most a day). The agent's clock writes the
    /// heartbeat and tend's reads it: keep both in sync.
    #[serde(default = "default_heartbeat_timeout")]
    #[schemars(range(min = 10, max = 86400))]
    pub heartbeat_timeout_seconds: i64,
}

fn default_heartbeat_timeout() -> i64 {
    90
}

/// Keeps an optional enum's schema `nullable` but takes `null` out of its values:
/// API servers refuse a CRD whose `enum` lists `null`.
pub(crate) fn no_null_in_enum(schema: &mut schemars::Schema) {
    if let Some(Value::Array(values)) = schema.get_mut("enum") {
        values.retain(|v| !v.is_null());
    }
}
