//! The data volume: creating it once, telling it apart from root volumes,
//! proving it gone, and making sure no stranger holds it.

use std::time::Instant;

use tracing::warn;

use super::unspent::Reserved;
use super::*;
use crate::api::Phase;

/// Whether the recorded data volume can serve this Workspace's instance.
pub(super) enum DataVolume {
    /// It exists, is owned, and nobody else holds it.
    Usable(VolumeSeen),
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
        // Nothing was ever sent for a Workspace still Pending: status first
        // says that a create may follow, then it is sent.
        if matches!(status.phase, None | Some(Phase::Pending)) {
            self.unspent.reserve(owner.uid, Reserved::Volume);
            return Ok(Step::Record(Record::Begun));
        }
        // A volume created by an earlier attempt that never reached status.
        if !self.unspent.holds(owner.uid, Reserved::Volume) {
            let existing = self.owned_data_volumes(region, owner).await?;
            if let Some(volume) = existing.iter().find(|v| !v.ending()) {
                return volume_record(volume, region);
            }
        }
        let zone = self
            .subnets
            .get(client, region, &spec.subnet_id)
            .await?
            .zone;
        let number = status.launch_number.unwrap_or(0);
        let v = &spec.volume;
        self.unspent.spend(owner.uid);
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
        region: &str,
        volume_id: &str,
        recorded: Option<&str>,
        owner: &Owner<'_>,
    ) -> Result<DataVolume, BackendError> {
        let Some(volume) = self.volume(region, volume_id).await? else {
            return self.missing(volume_id);
        };
        self.missing_volumes().remove(volume_id);
        volume.owned_by(owner)?;
        if let Some(state) = volume.state.as_ref().filter(|_| volume.ending()) {
            return Err(BackendError::VolumeLost {
                volume: volume_id.to_owned(),
                detail: format!("EC2 says it is {}", state.as_str()),
            });
        }
        for instance in &volume.holders {
            let instance = instance.as_str();
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
        Ok(DataVolume::Usable(volume))
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

fn volume_record(volume: &VolumeSeen, region: &str) -> Result<Step, BackendError> {
    if volume.id.is_empty() {
        return Err(CallError::malformed("DescribeVolumes", "volume without id").into());
    }
    let zone = volume
        .zone
        .as_deref()
        .ok_or_else(|| CallError::malformed("DescribeVolumes", "volume without zone"))?;
    Ok(Step::Record(Record::Volume {
        id: volume.id.clone(),
        region: Some(region.to_owned()),
        zone: Some(zone.to_owned()),
    }))
}
