//! Releasing: terminate every instance of a Workspace, then keep or delete its
//! data volumes.

use super::*;

impl Ec2Backend {
    /// One step of releasing the backend: terminate every instance of this
    /// Workspace, then keep or delete its data volumes as `reclaimPolicy` says.
    ///
    /// What to release comes from status and the ownership tags, not from the
    /// spec as it reads now: the region recorded in status (the spec's only if
    /// none was recorded), every instance and data volume tagged with the
    /// Workspace's uid and cluster (so a resource whose record never reached
    /// status is not leaked), and whatever status names. Foreign resources are
    /// left alone and reported in `skipped`; a data volume held by a foreign
    /// instance stops the release with [`BackendError::VolumeInUse`], naming
    /// the holder, until it is detached.
    pub(super) async fn teardown_step(
        &self,
        spec: &Ec2Spec,
        status: &WorkspaceStatus,
        owner: &Owner<'_>,
        skipped: &mut Vec<String>,
    ) -> Result<Step, BackendError> {
        let client = self.client(spec, status);
        let region = self.region_of(spec, status);
        let mut instances = self.owned_instances(region, owner).await?;
        if let Some(id) = &status.instance_id
            && !instances.iter().any(|i| &i.id == id)
            && let Some(recorded) = self.instance(region, id).await?
        {
            instances.push(recorded);
        }
        let mut waiting = Vec::new();
        let mut own = Vec::new();
        for instance in &instances {
            let id = instance.id.as_str();
            let state = instance.state.as_ref();
            let owned = instance.owned_by(owner);
            if owned.is_ok() {
                own.push(id);
            }
            if matches!(state, Some(InstanceStateName::Terminated)) {
                continue;
            }
            if let Err(e) = owned {
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
        let mut volumes = self.owned_data_volumes(region, owner).await?;
        if let Some(id) = &status.volume_id
            && !volumes.iter().any(|v| &v.id == id)
            && let Some(recorded) = self.volume(region, id).await?
        {
            volumes.push(recorded);
        }
        for volume in &volumes {
            let id = volume.id.as_str();
            if let Err(e) = volume.owned_by(owner) {
                skipped.push(e.to_string());
                continue;
            }
            match volume.state.as_ref() {
                Some(VolumeState::Available) => {
                    client
                        .call(
                            Family::Mutate,
                            "DeleteVolume",
                            client.delete_volume().volume_id(id).send(),
                        )
                        .await?;
                }
                Some(VolumeState::Deleting | VolumeState::Deleted) => {}
                other => {
                    if let Some(holder) = foreign_holder(volume, &own) {
                        return Err(BackendError::VolumeInUse {
                            volume: id.to_owned(),
                            instance: holder.to_owned(),
                        });
                    }
                    waiting.push(format!(
                        "{id} is {}",
                        other.map(|s| s.as_str()).unwrap_or("in an unknown state")
                    ));
                }
            }
        }
        if waiting.is_empty() {
            Ok(Step::Done)
        } else {
            Ok(Step::Wait(format!(
                "{}; waiting for release",
                waiting.join(", ")
            )))
        }
    }
}

/// An instance other than this Workspace's own that holds the volume.
fn foreign_holder<'a>(volume: &'a VolumeSeen, own: &[&str]) -> Option<&'a str> {
    volume
        .holders
        .iter()
        .map(String::as_str)
        .find(|i| !own.contains(i))
}
