//! Ownership tags: how tend recognises what it created, and refuses the rest.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::Tag;

use super::BackendError;

pub const TAG_UID: &str = "tend.dev/workspace-uid";
pub const TAG_CLUSTER: &str = "tend.dev/cluster";
pub const TAG_NAMESPACE: &str = "tend.dev/namespace";
pub const TAG_NAME: &str = "tend.dev/name";
/// The launch number an instance was started for.
pub const TAG_LAUNCH: &str = "tend.dev/launch";

/// The Workspace (and cluster) that owns a resource.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    pub uid: &'a str,
    pub cluster: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

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

    /// Refuses unless the resource carries this Workspace's uid and cluster tags.
    pub fn check(&self, resource: &str, tags: &[Tag]) -> Result<(), BackendError> {
        let tag = |key: &str| {
            tags.iter()
                .find(|t| t.key() == Some(key))
                .and_then(|t| t.value())
        };
        let problem = match (tag(TAG_UID), tag(TAG_CLUSTER)) {
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

    fn tag(k: &str, v: &str) -> Tag {
        Tag::builder().key(k).value(v).build()
    }

    #[test]
    fn own_tags_pass() {
        assert!(
            owner()
                .check("i-1", &[tag(TAG_UID, "u-1"), tag(TAG_CLUSTER, "c")])
                .is_ok()
        );
    }

    #[test]
    fn untagged_and_other_owners_are_refused() {
        assert!(owner().check("i-1", &[]).is_err());
        assert!(
            owner()
                .check("i-1", &[tag(TAG_UID, "u-2"), tag(TAG_CLUSTER, "c")])
                .is_err()
        );
        assert!(
            owner()
                .check("i-1", &[tag(TAG_UID, "u-1"), tag(TAG_CLUSTER, "other")])
                .is_err()
        );
    }

    #[test]
    fn client_token_fits_ec2_limit() {
        let uid = "0123456789abcdef0123456789abcdef0123";
        let o = Owner { uid, ..owner() };
        assert!(o.client_token(u32::MAX).len() <= 64);
        assert_ne!(o.client_token(1), o.client_token(2));
    }
}
