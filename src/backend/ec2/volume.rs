//! The data volume: creating it once, telling it apart from root volumes,
//! proving it gone, and making sure no stranger holds it.

use std::time::Instant;

use aws_sdk_ec2::types::VolumeAttachmentState;
use tracing::warn;

use super::describe::describe_volume;
use super::ownership::is_data_volume;
use super::*;

/// Whether the recorded data volume can serve this Workspace's instance.
pub(super) enum DataVolume {
    /// It exists, is owned, and nobody else holds it.
    Usable(Box<Volume>),
    /// Not visible by id yet; it may be eventual consistency.
    Confirming(String),
}

impl Ec2Backend {
    /// Finds the data volume an earlier attempt created, or creates it in the
    /// spec's subnet's zone. The ClientToken carries the current launch
    /// number (0 before the first launch).
    pub(super) async fn ensure_volume(
        &self,
        client: &Ec2Region,
        region: &str,
        spec: &Ec2Spec,
        status: &WorkspaceStatus,
        owner: &Owner<'_>,
    ) -> Result<Step, BackendError> {
        // A volume created by an earlier attempt that never reached status.
        let existing = tagged_data_volumes(client, owner).await?;
        if let Some(volume) = existing.iter().find(|v| {
            !matches!(
                v.state(),
                Some(VolumeState::Deleting | VolumeState::Deleted)
            )
        }) {
            return volume_record(volume, region);
        }
        let zone = subnet_zone(client, &spec.subnet_id).await?;
        let number = status.launch_number.unwrap_or(0);
        let v = &spec.volume;
        let created = client
            .call(
                Family::Mutate,
                "CreateVolume",
                client
                    .create_volume()
                    .client_token(owner.volume_token(number))
                    .availability_zone(&zone)
                    .size(v.size_gib)
                    .volume_type(VolumeType::from(v.volume_type.as_str()))
                    .set_iops(v.iops)
                    .set_throughput(v.throughput)
                    .tag_specifications(owner.tag_spec(
                        ResourceType::Volume,
                        spec,
                        None,
                        Some(VOLUME_DATA),
                    ))
                    .customize()
                    .config_override(single_attempt())
                    .send(),
            )
            .await;
        let created = match created {
            Err(e) if is_token_mismatch(&e) => return Ok(next_number(owner, number, &e)),
            other => other?,
        };
        let id = created
            .volume_id()
            .ok_or_else(|| CallError::malformed("CreateVolume", "no volume id"))?;
        Ok(Step::Record(Record::Volume {
            id: id.to_owned(),
            region: Some(region.to_owned()),
            zone: Some(zone),
        }))
    }

    /// Checks the recorded data volume before a launch or an attach: it must
    /// exist, be owned, and be attached to nothing but this Workspace's
    /// instances (`recorded` or any tagged with its uid).
    pub(super) async fn check_data_volume(
        &self,
        client: &Ec2Region,
        region: &str,
        volume_id: &str,
        recorded: Option<&str>,
        owner: &Owner<'_>,
    ) -> Result<DataVolume, BackendError> {
        let Some(volume) = volume_by_id(client, volume_id).await? else {
            return self.missing(volume_id);
        };
        self.missing_volumes().remove(volume_id);
        owner.check(volume_id, volume.tags())?;
        if let Some(state @ (VolumeState::Deleting | VolumeState::Deleted)) = volume.state() {
            return Err(BackendError::VolumeLost {
                volume: volume_id.to_owned(),
                detail: format!("EC2 says it is {}", state.as_str()),
            });
        }
        for attachment in volume.attachments() {
            if matches!(attachment.state(), Some(VolumeAttachmentState::Detached)) {
                continue;
            }
            let Some(instance) = attachment.instance_id() else {
                continue;
            };
            if Some(instance) == recorded {
                continue;
            }
            // An earlier instance of this Workspace (still shutting down) is
            // fine; anyone else's is not, and is never touched.
            let owned = self
                .instance(region, instance)
                .await?
                .is_some_and(|i| i.owned_by(owner).is_ok());
            if !owned {
                return Err(BackendError::VolumeInUse {
                    volume: volume_id.to_owned(),
                    instance: instance.to_owned(),
                });
            }
        }
        Ok(DataVolume::Usable(Box::new(volume)))
    }

    /// A data volume proven absent. Right after CreateVolume EC2 may not know
    /// the id yet, so it counts as lost only once it has stayed absent for the
    /// not-found grace period. The clock lives in memory: a controller restart
    /// only delays the verdict.
    fn missing(&self, volume_id: &str) -> Result<DataVolume, BackendError> {
        let grace = self.settings.not_found_grace;
        let now = Instant::now();
        let mut missing = self.missing_volumes();
        let since = *missing.entry(volume_id.to_owned()).or_insert(now);
        if now.duration_since(since) < grace {
            return Ok(DataVolume::Confirming(format!(
                "data volume {volume_id} is not found; confirming it is gone"
            )));
        }
        // A later look (after a `tend.dev/retry`) confirms afresh.
        missing.remove(volume_id);
        Err(BackendError::VolumeLost {
            volume: volume_id.to_owned(),
            detail: format!(
                "DescribeVolumes naming it answers InvalidVolume.NotFound, for longer than {}s",
                grace.as_secs()
            ),
        })
    }

    fn missing_volumes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.volumes_missing.lock().expect("missing volumes lock")
    }
}

/// This Workspace's data volumes, found by its ownership tags, oldest first.
/// RunInstances puts the same tags on root volumes; those are left out.
pub(super) async fn tagged_data_volumes(
    client: &Ec2Region,
    owner: &Owner<'_>,
) -> Result<Vec<Volume>, CallError> {
    let out = client
        .call(
            Family::Read,
            "DescribeVolumes",
            client
                .describe_volumes()
                .set_filters(Some(owned_by(owner)))
                .send(),
        )
        .await?;
    let mut volumes: Vec<Volume> = out
        .volumes()
        .iter()
        .filter(|v| is_data_volume(v.tags()))
        .cloned()
        .collect();
    volumes.sort_by(|a, b| (a.create_time(), a.volume_id()).cmp(&(b.create_time(), b.volume_id())));
    Ok(volumes)
}

/// The volume, or `None` when it is proven absent. The usual look is the
/// filtered one, which never fails on an unknown id; an omission there proves
/// nothing, so the id is then named, and only `InvalidVolume.NotFound` naming
/// it counts as absence.
pub(super) async fn volume_by_id(
    client: &Ec2Region,
    id: &str,
) -> Result<Option<Volume>, CallError> {
    if let Some(volume) = describe_volume(client, id).await? {
        return Ok(Some(volume));
    }
    let answer = client
        .call(
            Family::Read,
            "DescribeVolumes",
            client.describe_volumes().volume_ids(id).send(),
        )
        .await;
    match answer {
        Ok(out) => out
            .volumes()
            .iter()
            .find(|v| v.volume_id() == Some(id))
            .cloned()
            .map(Some)
            .ok_or_else(|| CallError::malformed("DescribeVolumes", "the named volume is missing")),
        Err(e) if proves_absent(&e, id) => Ok(None),
        Err(e) => Err(e),
    }
}

fn proves_absent(e: &CallError, id: &str) -> bool {
    e.code.as_deref() == Some("InvalidVolume.NotFound") && e.message.contains(id)
}

/// A ClientToken used before with other parameters (the spec changed between
/// a lost answer and the retry). The token can never work again.
pub(super) fn is_token_mismatch(e: &CallError) -> bool {
    e.code.as_deref() == Some("IdempotentParameterMismatch")
}

/// Moves past a spent ClientToken: the next attempt carries a new number.
pub(super) fn next_number(owner: &Owner<'_>, number: u32, e: &CallError) -> Step {
    warn!(
        workspace = %owner.name,
        namespace = %owner.namespace,
        "{e}; moving on to launch number {}",
        number + 1
    );
    Step::Record(Record::LaunchReserved(number + 1))
}

fn volume_record(volume: &Volume, region: &str) -> Result<Step, BackendError> {
    let id = volume
        .volume_id()
        .ok_or_else(|| CallError::malformed("DescribeVolumes", "volume without id"))?;
    let zone = volume
        .availability_zone()
        .ok_or_else(|| CallError::malformed("DescribeVolumes", "volume without zone"))?;
    Ok(Step::Record(Record::Volume {
        id: id.to_owned(),
        region: Some(region.to_owned()),
        zone: Some(zone.to_owned()),
    }))
}

async fn subnet_zone(client: &Ec2Region, subnet_id: &str) -> Result<String, BackendError> {
    let out = client
        .call(
            Family::Read,
            "DescribeSubnets",
            client.describe_subnets().subnet_ids(subnet_id).send(),
        )
        .await?;
    out.subnets()
        .first()
        .and_then(|s| s.availability_zone())
        .map(str::to_owned)
        .ok_or_else(|| CallError::malformed("DescribeSubnets", "subnet without zone").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_found(message: &str) -> CallError {
        CallError {
            operation: "DescribeVolumes",
            kind: ErrorKind::NotFound,
            code: Some("InvalidVolume.NotFound".into()),
            message: message.into(),
        }
    }

    #[test]
    fn only_a_not_found_naming_the_volume_proves_it_absent() {
        assert!(proves_absent(
            &not_found("The volume 'vol-1a' does not exist."),
            "vol-1a"
        ));
        assert!(!proves_absent(
            &not_found("The volume 'vol-2b' does not exist."),
            "vol-1a"
        ));
        let throttled = CallError {
            code: Some("RequestLimitExceeded".into()),
            kind: ErrorKind::Throttled,
            ..not_found("vol-1a")
        };
        assert!(!proves_absent(&throttled, "vol-1a"));
    }
}
