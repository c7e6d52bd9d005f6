//! What tend keeps of a described instance. Each page of an answer is read
//! into these as it arrives, so no SDK object outlives its page, however
//! many thousand instances a sweep describes.

use aws_sdk_ec2::types::{Instance, InstanceStateName};
use jiff::Timestamp;

use super::{TAG_CLUSTER, TAG_LAUNCH, TAG_UID};
use crate::backend::{BackendError, Owner};

/// One listed instance, as far as tend's decisions go.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    /// Empty if the answer named none.
    pub id: String,
    pub state: Option<InstanceStateName>,
    /// The StateReason code, e.g. `Server.SpotInstanceTermination`.
    pub reason: Option<String>,
    pub zone: Option<String>,
    /// The EBS volumes its block device mappings name.
    pub volumes: Vec<String>,
    /// The `tend.dev/workspace-uid` tag.
    pub uid: Option<String>,
    /// The `tend.dev/cluster` tag.
    pub cluster: Option<String>,
    /// The `tend.dev/launch` tag: which launch of its Workspace it is.
    pub launch: Option<String>,
    pub launched_at: Option<Timestamp>,
}

impl Seen {
    pub fn of(instance: &Instance) -> Self {
        let tag = |key: &str| {
            instance
                .tags()
                .iter()
                .find(|t| t.key() == Some(key))
                .and_then(|t| t.value())
                .map(str::to_owned)
        };
        Seen {
            id: instance.instance_id().unwrap_or_default().to_owned(),
            state: instance.state().and_then(|s| s.name()).cloned(),
            reason: instance
                .state_reason()
                .and_then(|r| r.code())
                .map(str::to_owned),
            zone: instance
                .placement()
                .and_then(|p| p.availability_zone())
                .map(str::to_owned),
            volumes: instance
                .block_device_mappings()
                .iter()
                .filter_map(|m| m.ebs().and_then(|e| e.volume_id()))
                .map(str::to_owned)
                .collect(),
            uid: tag(TAG_UID),
            cluster: tag(TAG_CLUSTER),
            launch: tag(TAG_LAUNCH),
            launched_at: instance
                .launch_time()
                .and_then(|t| Timestamp::new(t.secs(), t.subsec_nanos() as i32).ok()),
        }
    }

    /// Refuses unless the instance carries this Workspace's ownership tags.
    pub fn owned_by(&self, owner: &Owner<'_>) -> Result<(), BackendError> {
        owner.check_marks(&self.id, self.uid.as_deref(), self.cluster.as_deref())
    }

    /// Gone or on its way: terminated or shutting down.
    pub fn ending(&self) -> bool {
        matches!(
            self.state,
            Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
        )
    }
}
