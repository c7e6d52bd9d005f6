//! What tend keeps of a described instance or volume. Each page of an
//! answer is read into these as it arrives, so no SDK object outlives its
//! page, however many thousand instances a sweep describes.

use aws_sdk_ec2::types::{
    Instance, InstanceStateName, Tag, Volume, VolumeAttachmentState, VolumeState,
};
use jiff::Timestamp;

use super::batch::{Listed, Reply};
use super::{CallError, TAG_CLUSTER, TAG_LAUNCH, TAG_UID, TAG_VOLUME, VOLUME_DATA};
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
        let tag = |key| tag(instance.tags(), key);
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
            launched_at: instance.launch_time().and_then(timestamp),
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

impl Listed for Seen {
    const OPERATION: &'static str = "DescribeInstances";

    fn id(&self) -> &str {
        &self.id
    }

    fn found(self) -> Reply {
        Reply::Found(self)
    }

    fn absent_named(error: &CallError) -> Option<Vec<String>> {
        super::not_found_ids(error)
    }
}

/// One listed EBS volume, as far as tend's decisions go.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeSeen {
    /// Empty if the answer named none.
    pub id: String,
    pub state: Option<VolumeState>,
    pub zone: Option<String>,
    /// The `tend.dev/workspace-uid` tag.
    pub uid: Option<String>,
    /// The `tend.dev/cluster` tag.
    pub cluster: Option<String>,
    /// The `tend.dev/volume` tag: `data`, `root`, or none (older data volumes).
    pub role: Option<String>,
    pub created_at: Option<Timestamp>,
    /// The instances it is attached to, or being attached to or detached from.
    pub holders: Vec<String>,
}

impl VolumeSeen {
    pub fn of(volume: &Volume) -> Self {
        let tag = |key| tag(volume.tags(), key);
        VolumeSeen {
            id: volume.volume_id().unwrap_or_default().to_owned(),
            state: volume.state().cloned(),
            zone: volume.availability_zone().map(str::to_owned),
            uid: tag(TAG_UID),
            cluster: tag(TAG_CLUSTER),
            role: tag(TAG_VOLUME),
            created_at: volume.create_time().and_then(timestamp),
            holders: volume
                .attachments()
                .iter()
                .filter(|a| !matches!(a.state(), Some(VolumeAttachmentState::Detached)))
                .filter_map(|a| a.instance_id())
                .map(str::to_owned)
                .collect(),
        }
    }

    /// Refuses unless the volume carries this Workspace's ownership tags.
    pub fn owned_by(&self, owner: &Owner<'_>) -> Result<(), BackendError> {
        owner.check_marks(&self.id, self.uid.as_deref(), self.cluster.as_deref())
    }

    /// Whether a volume carrying this Workspace's ownership tags is its data
    /// volume. RunInstances tags root volumes too, marked [`super::VOLUME_ROOT`];
    /// volumes without the marker predate it, when only data volumes were
    /// tagged, so they count as data.
    pub fn is_data(&self) -> bool {
        self.role.as_deref().is_none_or(|r| r == VOLUME_DATA)
    }

    /// Deleted or on its way.
    pub fn ending(&self) -> bool {
        matches!(
            self.state,
            Some(VolumeState::Deleting | VolumeState::Deleted)
        )
    }
}

impl Listed for VolumeSeen {
    const OPERATION: &'static str = "DescribeVolumes";

    fn id(&self) -> &str {
        &self.id
    }

    fn found(self) -> Reply {
        Reply::Volume(self)
    }

    fn absent_named(error: &CallError) -> Option<Vec<String>> {
        super::errors::named_in(error, "InvalidVolume.NotFound", "vol-")
    }
}

fn tag(tags: &[Tag], key: &str) -> Option<String> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
        .map(str::to_owned)
}

fn timestamp(t: &aws_sdk_ec2::primitives::DateTime) -> Option<Timestamp> {
    Timestamp::new(t.secs(), t.subsec_nanos() as i32).ok()
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::types::VolumeAttachment;

    use super::*;
    use crate::backend::ec2::VOLUME_ROOT;

    fn volume(tags: &[(&str, &str)]) -> VolumeSeen {
        let mut v = Volume::builder().volume_id("vol-1").attachments(
            VolumeAttachment::builder()
                .instance_id("i-gone")
                .state(VolumeAttachmentState::Detached)
                .build(),
        );
        for (k, val) in tags {
            v = v.tags(Tag::builder().key(*k).value(*val).build());
        }
        VolumeSeen::of(&v.build())
    }

    #[test]
    fn root_volumes_are_not_data_volumes_and_unmarked_ones_are() {
        assert!(volume(&[(TAG_UID, "u-1"), (TAG_VOLUME, VOLUME_DATA)]).is_data());
        assert!(!volume(&[(TAG_UID, "u-1"), (TAG_VOLUME, VOLUME_ROOT)]).is_data());
        assert!(volume(&[(TAG_UID, "u-1")]).is_data());
    }

    #[test]
    fn a_detached_instance_does_not_hold_a_volume() {
        assert!(volume(&[]).holders.is_empty());
    }
}
