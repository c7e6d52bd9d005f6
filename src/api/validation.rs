//! The controller's own check of the CRD's CEL rules.
//!
//! API servers older than 1.25 have no CEL, and objects can predate a CRD upgrade,
//! so the controller never assumes the server validated. It evaluates the very
//! rules embedded in the CRD (one source of truth), client-side.

use kube::core::cel::ErrorKind;

use super::Workspace;

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

/// Checks a Workspace against the creation rules of its CRD.
pub fn validate(ws: &Workspace) -> Result<(), SpecViolation> {
    let Err(errors) = ws.validate_cel() else {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Ec2Spec, Runtime, WorkspaceSpec};

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

    #[test]
    fn hibernation_is_ec2_only() {
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
        ws.spec.desired_state = crate::api::DesiredState::Hibernated;
        let err = validate(&ws).unwrap_err();
        assert!(err.message.contains("Hibernated"), "{err}");
    }
}
