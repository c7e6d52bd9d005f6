//! Releasing: terminate every instance of a Workspace, then keep or delete its volume.

use super::describe::{describe_instance, describe_volume, tagged_instances};
use super::*;

impl Ec2Backend {
    /// One step of releasing the backend: terminate every instance of this
    /// Workspace, then keep or delete the volume. Foreign resources are left
    /// alone and reported in `skipped`.
    pub async fn teardown(
        &self,
        spec: &Ec2Spec,
        status: &WorkspaceStatus,
        owner: &Owner<'_>,
        skipped: &mut Vec<String>,
    ) -> Result<Step, BackendError> {
        let client = self.client(spec, status);
        let mut instances = tagged_instances(&client, owner).await?;
        if let Some(id) = &status.instance_id
            && !instances.iter().any(|i| i.instance_id() == Some(id))
            && let Some(recorded) = describe_instance(&client, id).await?
        {
            instances.push(recorded);
        }
        let mut waiting = Vec::new();
        for instance in &instances {
            let id = instance.instance_id().unwrap_or_default();
            let state = instance.state().and_then(|s| s.name());
            if matches!(state, Some(InstanceStateName::Terminated)) {
                continue;
            }
            if let Err(e) = owner.check(id, instance.tags()) {
                skipped.push(e.to_string());
                continue;
            }
            if !matches!(state, Some(InstanceStateName::ShuttingDown)) {
                client
                    .call(
                        Family::Mutate,
                        "TerminateInstances",
                        client.terminate_instances().instance_ids(id).send(),
                    )
                    .await?;
            }
            waiting.push(id.to_owned());
        }
        if !waiting.is_empty() {
            return Ok(Step::Wait(format!("terminating {}", waiting.join(", "))));
        }
        if spec.volume.reclaim_policy == ReclaimPolicy::Retain {
            return Ok(Step::Done);
        }
        let Some(volume_id) = status.volume_id.as_deref() else {
            return Ok(Step::Done);
        };
        let Some(volume) = describe_volume(&client, volume_id).await? else {
            return Ok(Step::Done);
        };
        if let Err(e) = owner.check(volume_id, volume.tags()) {
            skipped.push(e.to_string());
            return Ok(Step::Done);
        }
        match volume.state() {
            Some(VolumeState::Available) => {
                client
                    .call(
                        Family::Mutate,
                        "DeleteVolume",
                        client.delete_volume().volume_id(volume_id).send(),
                    )
                    .await?;
                Ok(Step::Done)
            }
            Some(VolumeState::Deleting | VolumeState::Deleted) => Ok(Step::Done),
            other => Ok(Step::Wait(format!(
                "{volume_id} is {}; waiting for it to be released",
                other.map(|s| s.as_str()).unwrap_or("in an unknown state")
            ))),
        }
    }
}
