//! The data volume: creating it once, and telling it apart from root volumes.

use tracing::warn;

use super::ownership::is_data_volume;
use super::*;

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
            .ok_or_else(|| AwsError::malformed("CreateVolume", "no volume id"))?;
        Ok(Step::Record(Record::Volume {
            id: id.to_owned(),
            region: region.to_owned(),
            zone,
        }))
    }
}

/// This Workspace's data volumes, found by its ownership tags, oldest first.
/// RunInstances puts the same tags on root volumes; those are left out.
pub(super) async fn tagged_data_volumes(
    client: &Ec2Region,
    owner: &Owner<'_>,
) -> Result<Vec<Volume>, AwsError> {
    let out = client
        .call(
            Family::Read,
            "DescribeVolumes",
            client
                .describe_volumes()
                .filters(tag_filter(TAG_UID, owner.uid))
                .filters(tag_filter(TAG_CLUSTER, owner.cluster))
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

/// A ClientToken used before with other parameters (the spec changed between
/// a lost answer and the retry). The token can never work again.
pub(super) fn is_token_mismatch(e: &AwsError) -> bool {
    e.code.as_deref() == Some("IdempotentParameterMismatch")
}

/// Moves past a spent ClientToken: the next attempt carries a new number.
pub(super) fn next_number(owner: &Owner<'_>, number: u32, e: &AwsError) -> Step {
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
        .ok_or_else(|| AwsError::malformed("DescribeVolumes", "volume without id"))?;
    let zone = volume
        .availability_zone()
        .ok_or_else(|| AwsError::malformed("DescribeVolumes", "volume without zone"))?;
    Ok(Step::Record(Record::Volume {
        id: id.to_owned(),
        region: region.to_owned(),
        zone: zone.to_owned(),
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
        .ok_or_else(|| AwsError::malformed("DescribeSubnets", "subnet without zone").into())
}
