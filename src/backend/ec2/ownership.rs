//! Ownership tags: how tend recognises what it created, and refuses the rest.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};

use crate::api::Ec2Spec;
use crate::backend::{BackendError, Owner};

pub const TAG_UID: &str = "tend.dev/workspace-uid";
pub const TAG_CLUSTER: &str = "tend.dev/cluster";
pub const TAG_NAMESPACE: &str = "tend.dev/namespace";
pub const TAG_NAME: &str = "tend.dev/name";
/// The launch number an instance was started for.
pub const TAG_LAUNCH: &str = "tend.dev/launch";
/// What a volume is to its Workspace: [`VOLUME_DATA`] or [`VOLUME_ROOT`].
/// RunInstances tags the root volume with the ownership tags too, so the
/// ownership tags alone no longer single out the data volume.
pub const TAG_VOLUME: &str = "tend.dev/volume";
pub const VOLUME_DATA: &str = "data";
pub const VOLUME_ROOT: &str = "root";

impl Owner<'_> {
    /// Every tag tend puts on what it creates: the user's, then its own.
    pub fn tags(
        &self,
        user: &BTreeMap<String, String>,
        launch: Option<u32>,
    ) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> =
            user.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        all.push((TAG_UID.into(), self.uid.into()));
        all.push((TAG_CLUSTER.into(), self.cluster.into()));
        all.push((TAG_NAMESPACE.into(), self.namespace.into()));
        all.push((TAG_NAME.into(), self.name.into()));
        if let Some(n) = launch {
            all.push((TAG_LAUNCH.into(), n.to_string()));
        }
        all
    }

    /// Idempotency token for launch `number` of this Workspace (at most 64 ASCII
    /// characters: a uid is 36).
    pub fn client_token(&self, number: u32) -> String {
        format!("{}-{number}", self.uid)
    }

    /// Idempotency token for the data volume created while `number` is the
    /// Workspace's launch number (0 before the first launch). Never equal to a
    /// RunInstances token; at most 36 + 8 + 10 characters.
    pub fn volume_token(&self, number: u32) -> String {
        format!("{}-volume-{number}", self.uid)
    }

    /// The tags of one resource type a create call makes; `volume_role` marks
    /// a volume as data or root.
    pub fn tag_spec(
        &self,
        resource: ResourceType,
        spec: &Ec2Spec,
        launch: Option<u32>,
        volume_role: Option<&str>,
    ) -> TagSpecification {
        let mut pairs = self.tags(&spec.tags, launch);
        if let Some(role) = volume_role {
            pairs.push((TAG_VOLUME.into(), role.into()));
        }
        let tags = pairs
            .into_iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        TagSpecification::builder()
            .resource_type(resource)
            .set_tags(Some(tags))
            .build()
    }

    /// Refuses unless `uid` and `cluster`, the resource's ownership tags,
    /// are this Workspace's.
    pub fn check_marks(
        &self,
        resource: &str,
        uid: Option<&str>,
        cluster: Option<&str>,
    ) -> Result<(), BackendError> {
        let problem = match (uid, cluster) {
            (Some(uid), Some(cluster)) if uid == self.uid && cluster == self.cluster => {
                return Ok(());
            }
            (None, _) | (_, None) => {
                "it lacks the tend.dev/workspace-uid and tend.dev/cluster tags".to_owned()
            }
            (Some(uid), Some(cluster)) => {
                format!("it belongs to workspace uid {uid} in cluster {cluster}")
            }
        };
        Err(BackendError::NotOwned {
            resource: resource.to_owned(),
            detail: problem,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> Owner<'static> {
        Owner {
            uid: "u-1",
            cluster: "c",
            namespace: "ns",
            name: "w",
        }
    }

    #[test]
    fn own_tags_pass() {
        assert!(owner().check_marks("i-1", Some("u-1"), Some("c")).is_ok());
    }

    #[test]
    fn untagged_and_other_owners_are_refused() {
        assert!(owner().check_marks("i-1", None, None).is_err());
        assert!(owner().check_marks("i-1", Some("u-1"), None).is_err());
        assert!(owner().check_marks("i-1", Some("u-2"), Some("c")).is_err());
        assert!(
            owner()
                .check_marks("i-1", Some("u-1"), Some("other"))
                .is_err()
        );
    }

    #[test]
    fn client_token_fits_ec2_limit() {
        let uid = "0123456789abcdef0123456789abcdef0123";
        let o = Owner { uid, ..owner() };
        assert!(o.client_token(u32::MAX).len() <= 64);
        assert_ne!(o.client_token(1), o.client_token(2));
        assert!(o.volume_token(u32::MAX).len() <= 64);
        assert!(o.volume_token(u32::MAX).is_ascii());
        assert_ne!(o.volume_token(0), o.volume_token(1));
        for n in [0, 1, 2, u32::MAX] {
            for m in [0, 1, 2, u32::MAX] {
                assert_ne!(o.volume_token(n), o.client_token(m));
            }
        }
    }
}
