//! The controller's own check of the CRD's CEL rules.
//!
//! API servers older than 1.25 have no CEL, and objects can predate a CRD upgrade,
//! so the controller never assumes the server validated. It evaluates the very
//! rules embedded in the CRD (one source of truth), client-side.

use std::sync::LazyLock;

use kube::CustomResourceExt;
use kube::core::cel::{CompiledSchema, ErrorKind, compile_schema, validate_compiled};

use super::{Runtime, Workspace};

/// The CRD's schema with its rules compiled, once: building the CRD and
/// compiling its rules is most of what a validation costs.
static SCHEMA: LazyLock<CompiledSchema> = LazyLock::new(|| {
    let crd = Workspace::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("the derived CRD has an openAPIV3Schema");
    compile_schema(&serde_json::to_value(schema).expect("a CRD schema serialises"))
});

/// Why a spec cannot be acted on; the message names the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecViolation {
    pub message: String,
}

impl std::fmt::Display for SpecViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Checks a Workspace against the creation rules of its CRD, and its
/// immutable fields against what status recorded when it was provisioned.
pub fn validate(ws: &Workspace) -> Result<(), SpecViolation> {
    check_recorded(ws)?;
    check_names(ws)?;
    let object = serde_json::to_value(ws).expect("a Workspace serialises");
    let Err(errors) = validate_compiled(&SCHEMA, &object, None) else {
        return Ok(());
    };
    let messages: Vec<String> = errors
        .as_slice()
        .iter()
        // A rule this evaluator cannot run is our gap, not the user's mistake; the
        // API server (where it has CEL) has the final word on those.
        .filter(|e| !matches!(e.kind, ErrorKind::UnsupportedReference))
        .map(|e| e.message.clone())
        .collect();
    if messages.is_empty() {
        return Ok(());
    }
    Err(SpecViolation {
        message: messages.join("; "),
    })
}

/// The longest name of a container Workspace: its Pods are named
/// `<name>-<launch number>` (up to 10 digits), and an object name holds at
/// most 253 characters.
pub const MAX_CONTAINER_NAME: usize = 253 - 11;

/// Names the objects tend creates must be able to carry.
fn check_names(ws: &Workspace) -> Result<(), SpecViolation> {
    let name = ws.metadata.name.as_deref().unwrap_or_default();
    if ws.spec.runtime == Runtime::Container && name.len() > MAX_CONTAINER_NAME {
        return Err(SpecViolation {
            message: format!(
                "metadata.name is {} characters; a container Workspace's name may have at most \
                 {MAX_CONTAINER_NAME}, since its Pods are named <name>-<launch number>",
                name.len()
            ),
        });
    }
    Ok(())
}

/// The immutability rules, checked without the old object: a server without
/// CEL lets any change through, but status remembers what was provisioned.
fn check_recorded(ws: &Workspace) -> Result<(), SpecViolation> {
    let Some(status) = &ws.status else {
        return Ok(());
    };
    // Status names the runtime it provisioned for; before it did, only EC2
    // provisioned anything, and it always recorded a region, volume or instance.
    let provisioned = status.runtime.or_else(|| {
        (status.region.is_some() || status.volume_id.is_some() || status.instance_id.is_some())
            .then_some(Runtime::Ec2)
    });
    if let Some(recorded) = provisioned
        && recorded != ws.spec.runtime
    {
        return Err(SpecViolation {
            message: format!(
                "spec.runtime is immutable: this Workspace was provisioned as {}",
                recorded.as_str()
            ),
        });
    }
    if let (Some(recorded), Some(wanted)) = (
        status.region.as_deref(),
        ws.spec.ec2.as_ref().and_then(|e| e.region.as_deref()),
    ) && recorded != wanted
    {
        return Err(SpecViolation {
            message: format!(
                "spec.ec2.region is immutable: this Workspace was provisioned in {recorded}, not {wanted}"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Ec2Spec, WorkspaceSpec, WorkspaceStatus};

    fn ec2_workspace() -> Workspace {
        Workspace::new(
            "w",
            WorkspaceSpec {
                runtime: Runtime::Ec2,
                desired_state: Default::default(),
                restart_policy: Default::default(),
                ec2: Some(Ec2Spec {
                    instance_type: Some("t3.micro".into()),
                    image_id: Some("ami-12345678".into()),
                    subnet_id: "subnet-1".into(),
                    ..Default::default()
                }),
                container: None,
                external: None,
            },
        )
    }

    #[test]
    fn a_complete_ec2_spec_is_valid() {
        assert_eq!(validate(&ec2_workspace()), Ok(()));
    }

    #[test]
    fn ec2_runtime_without_ec2_block_names_the_field() {
        let mut ws = ec2_workspace();
        ws.spec.ec2 = None;
        let err = validate(&ws).unwrap_err();
        assert!(err.message.contains("spec.ec2"), "{err}");
    }

    #[test]
    fn ec2_without_image_or_template_is_invalid() {
        let mut ws = ec2_workspace();
        ws.spec.ec2.as_mut().unwrap().image_id = None;
        let err = validate(&ws).unwrap_err();
        assert!(err.message.contains("imageId"), "{err}");
    }

    #[test]
    fn reserved_tag_prefix_is_invalid() {
        let mut ws = ec2_workspace();
        ws.spec
            .ec2
            .as_mut()
            .unwrap()
            .tags
            .insert("tend.dev/cluster".into(), "x".into());
        let err = validate(&ws).unwrap_err();
        assert!(err.message.contains("spec.ec2.tags"), "{err}");
    }

    #[test]
    fn runtime_and_region_are_immutable() {
        let old = ec2_workspace();
        let mut new = old.clone();
        new.spec.ec2.as_mut().unwrap().region = Some("eu-west-1".into());
        let mut old_with_region = old.clone();
        old_with_region.spec.ec2.as_mut().unwrap().region = Some("us-east-1".into());
        let err = new.validate_cel_update(&old_with_region).unwrap_err();
        assert!(
            err.to_string().contains("spec.ec2.region is immutable"),
            "{err}"
        );
        assert!(old.validate_cel_update(&old).is_ok());
    }

    fn container_workspace() -> Workspace {
        let mut ws = ec2_workspace();
        ws.spec.runtime = Runtime::Container;
        ws.spec.ec2 = None;
        ws.spec.container = Some(crate::api::ContainerSpec {
            image: "busybox".into(),
            command: vec![],
            args: vec![],
            env: vec![],
            resources: None,
            volume: None,
        });
        ws
    }

    #[test]
    fn a_container_name_leaves_room_for_its_pods_names() {
        let mut ws = container_workspace();
        ws.metadata.name = Some("a".repeat(MAX_CONTAINER_NAME));
        assert_eq!(validate(&ws), Ok(()));
        ws.metadata.name = Some("a".repeat(MAX_CONTAINER_NAME + 1));
        let err = validate(&ws).unwrap_err();
        assert!(err.message.contains("metadata.name"), "{err}");
    }

    #[test]
    fn hibernation_is_ec2_only() {
        let mut ws = container_workspace();
        ws.spec.desired_state = crate::api::DesiredState::Hibernated;
        let err = validate(&ws).unwrap_err();
        assert!(err.message.contains("Hibernated"), "{err}");
    }

    #[test]
    fn a_region_other_than_the_recorded_one_is_refused() {
        let mut ws = ec2_workspace();
        ws.status = Some(WorkspaceStatus {
            region: Some("us-east-1".into()),
            ..Default::default()
        });
        assert_eq!(validate(&ws), Ok(()));
        ws.spec.ec2.as_mut().unwrap().region = Some("us-east-1".into());
        assert_eq!(validate(&ws), Ok(()));
        ws.spec.ec2.as_mut().unwrap().region = Some("eu-west-1".into());
        let err = validate(&ws).unwrap_err();
        assert!(
            err.message.contains("spec.ec2.region is immutable"),
            "{err}"
        );
    }

    #[test]
    fn a_runtime_other_than_the_provisioned_one_is_refused() {
        let mut ws = ec2_workspace();
        ws.status = Some(WorkspaceStatus {
            volume_id: Some("vol-1".into()),
            ..Default::default()
        });
        ws.spec.runtime = Runtime::External;
        ws.spec.ec2 = None;
        ws.spec.external = Some(crate::api::ExternalSpec {
            heartbeat_timeout_seconds: 90,
        });
        let err = validate(&ws).unwrap_err();
        assert!(err.message.contains("spec.runtime is immutable"), "{err}");
    }

    #[test]
    fn a_container_with_only_its_claim_recorded_is_still_a_container() {
        let mut ws = container_workspace();
        ws.status = Some(WorkspaceStatus {
            runtime: Some(Runtime::Container),
            volume_id: Some("dev-data".into()),
            ..Default::default()
        });
        assert_eq!(validate(&ws), Ok(()));
        ws.spec.runtime = Runtime::Ec2;
        let err = validate(&ws).unwrap_err();
        assert!(err.message.contains("provisioned as container"), "{err}");
    }

    #[test]
    fn hibernation_needs_it_configured() {
        let mut ws = ec2_workspace();
        ws.spec.desired_state = crate::api::DesiredState::Hibernated;
        let err = validate(&ws).unwrap_err();
        assert!(err.message.contains("spec.ec2.hibernation"), "{err}");
        ws.spec.ec2.as_mut().unwrap().hibernation = Some(true);
        assert_eq!(validate(&ws), Ok(()));
    }

    #[test]
    fn region_cannot_be_added_or_removed() {
        let old = ec2_workspace();
        let mut new = old.clone();
        new.spec.ec2.as_mut().unwrap().region = Some("us-east-1".into());
        let err = new.validate_cel_update(&old).unwrap_err();
        assert!(err.to_string().contains("added or removed"), "{err}");
        let err = old.validate_cel_update(&new).unwrap_err();
        assert!(err.to_string().contains("added or removed"), "{err}");
    }
}
