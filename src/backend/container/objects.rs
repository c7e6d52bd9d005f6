//! The Kubernetes objects of a container Workspace: its PersistentVolumeClaim
//! and its Pod, both owned by the Workspace and labelled with it, and how
//! tend recognises them as its own.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource,
    Pod, PodSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

use crate::api::{ContainerSpec, Workspace};
use crate::backend::{BackendError, Owner};

/// The label every object tend creates for a Workspace carries: its uid.
pub const LABEL_UID: &str = "tend.dev/workspace-uid";
/// The Workspace's name, for people (omitted when too long for a label).
pub const LABEL_NAME: &str = crate::backend::LABEL_WORKSPACE;
/// The launch number a Pod was created for.
pub const LABEL_LAUNCH: &str = "tend.dev/launch";
/// The container that runs the workspace.
pub const CONTAINER: &str = "workspace";
/// Where the data volume is mounted unless the spec says otherwise.
pub const DEFAULT_MOUNT: &str = "/workspace";

/// The selector for everything tend created for this Workspace.
pub fn selector(owner: &Owner<'_>) -> String {
    format!("{LABEL_UID}={}", owner.uid)
}

/// The claim's name: one per Workspace, kept across Pods.
pub fn claim_name(ws_name: &str) -> String {
    format!("{ws_name}-data")
}

/// The Pod of launch `n`: a new name per launch, so a replacement never
/// collides with the Pod it replaces.
pub fn pod_name(ws_name: &str, n: u32) -> String {
    format!("{ws_name}-{n}")
}

fn labels(owner: &Owner<'_>, launch: Option<u32>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([(LABEL_UID.to_owned(), owner.uid.to_owned())]);
    // A label value holds at most 63 characters; the uid label selects.
    if owner.name.len() <= 63 {
        labels.insert(LABEL_NAME.to_owned(), owner.name.to_owned());
    }
    if let Some(n) = launch {
        labels.insert(LABEL_LAUNCH.to_owned(), n.to_string());
    }
    labels
}

/// The owner reference that ties an object to its Workspace, so the
/// garbage collector removes it with the Workspace.
pub fn owner_reference(ws: &Workspace) -> OwnerReference {
    OwnerReference {
        api_version: Workspace::api_version(&()).into_owned(),
        kind: Workspace::kind(&()).into_owned(),
        name: ws.metadata.name.clone().unwrap_or_default(),
        uid: ws.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        // Blocking the owner's deletion would need update on workspaces/finalizers;
        // tend's own finalizer already keeps the Workspace until its Pods go.
        block_owner_deletion: None,
    }
}

fn meta(ws: &Workspace, owner: &Owner<'_>, name: String, launch: Option<u32>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: ws.metadata.namespace.clone(),
        labels: Some(labels(owner, launch)),
        owner_references: Some(vec![owner_reference(ws)]),
        ..Default::default()
    }
}

/// The claim for `spec.container.volume`.
pub fn claim(
    ws: &Workspace,
    owner: &Owner<'_>,
    spec: &ContainerSpec,
) -> Option<PersistentVolumeClaim> {
    let volume = spec.volume.as_ref()?;
    Some(PersistentVolumeClaim {
        metadata: meta(ws, owner, claim_name(owner.name), None),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: volume.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    volume.size.clone(),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The Pod of launch `n`, with the claim mounted. It never restarts by
/// itself: a container that ends is a death tend heals, with backoff and
/// crash-loop detection.
pub fn pod(ws: &Workspace, owner: &Owner<'_>, spec: &ContainerSpec, n: u32) -> Pod {
    let claim = spec.volume.as_ref().map(|v| {
        (
            Volume {
                name: "data".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim_name(owner.name),
                    read_only: None,
                }),
                ..Default::default()
            },
            VolumeMount {
                name: "data".into(),
                mount_path: v.mount_path.clone().unwrap_or_else(|| DEFAULT_MOUNT.into()),
                ..Default::default()
            },
        )
    });
    let (volumes, mounts) = claim.map(|(v, m)| (vec![v], vec![m])).unzip();
    Pod {
        metadata: meta(ws, owner, pod_name(owner.name, n), Some(n)),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: CONTAINER.into(),
                image: Some(spec.image.clone()),
                command: Some(spec.command.clone()).filter(|c| !c.is_empty()),
                args: Some(spec.args.clone()).filter(|a| !a.is_empty()),
                env: Some(spec.env.clone()).filter(|e| !e.is_empty()),
                resources: spec.resources.clone(),
                volume_mounts: mounts,
                ..Default::default()
            }],
            volumes,
            restart_policy: Some("Never".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Whether the object carries this Workspace's uid label but no longer an
/// owner reference to it: a claim tend already let go of.
pub fn released(meta: &ObjectMeta, owner: &Owner<'_>) -> bool {
    let labelled = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_UID))
        .is_some_and(|uid| uid == owner.uid);
    labelled
        && !meta
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.uid == owner.uid)
}

/// Refuses unless the object carries this Workspace's uid label and an
/// owner reference to it.
pub fn check(what: &str, meta: &ObjectMeta, owner: &Owner<'_>) -> Result<(), BackendError> {
    let labelled = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_UID))
        .is_some_and(|uid| uid == owner.uid);
    let referenced = meta
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.uid == owner.uid);
    if labelled && referenced {
        Ok(())
    } else {
        Err(BackendError::NotOwned {
            resource: what.to_owned(),
            detail: format!(
                "it lacks the {LABEL_UID} label or an owner reference to this Workspace"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn workspace() -> Workspace {
        serde_json::from_value(json!({
            "apiVersion": "tend.dev/v1alpha1",
            "kind": "Workspace",
            "metadata": { "name": "dev", "namespace": "team", "uid": "uid-1" },
            "spec": { "runtime": "container", "container": {
                "image": "busybox", "command": ["sleep", "infinity"],
                "volume": { "size": "1Gi", "mountPath": "/data" }
            } }
        }))
        .unwrap()
    }

    #[test]
    fn the_pod_mounts_the_claim_is_owned_labelled_and_never_restarts_by_itself() {
        let ws = workspace();
        let owner = Owner::of(&ws, "test");
        let spec = ws.spec.container.as_ref().unwrap();
        let pod = pod(&ws, &owner, spec, 3);
        assert_eq!(pod.metadata.name.as_deref(), Some("dev-3"));
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_UID], "uid-1");
        assert_eq!(labels[LABEL_NAME], "dev");
        assert_eq!(labels[LABEL_LAUNCH], "3");
        let refs = pod.metadata.owner_references.as_ref().unwrap();
        assert_eq!(refs[0].uid, "uid-1");
        assert_eq!(refs[0].kind, "Workspace");
        assert_eq!(refs[0].controller, Some(true));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let claim = spec.volumes.as_ref().unwrap()[0]
            .persistent_volume_claim
            .as_ref()
            .unwrap();
        assert_eq!(claim.claim_name, "dev-data");
        let mount = &spec.containers[0].volume_mounts.as_ref().unwrap()[0];
        assert_eq!(mount.mount_path, "/data");
        check("Pod dev-3", &pod.metadata, &owner).unwrap();
    }

    #[test]
    fn objects_of_another_workspace_are_refused_and_a_let_go_claim_is_recognised() {
        let ws = workspace();
        let owner = Owner::of(&ws, "test");
        let spec = ws.spec.container.as_ref().unwrap();
        let mut claim = claim(&ws, &owner, spec).unwrap();
        check("claim", &claim.metadata, &owner).unwrap();
        assert!(!released(&claim.metadata, &owner));
        let other = Owner {
            uid: "uid-2",
            ..owner
        };
        assert!(matches!(
            check("claim", &claim.metadata, &other),
            Err(BackendError::NotOwned { .. })
        ));
        claim.metadata.owner_references = None;
        assert!(released(&claim.metadata, &owner));
        assert!(check("claim", &claim.metadata, &owner).is_err());
    }
}
