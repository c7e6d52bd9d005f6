//! Launching: the instance on its data volume, attaching, starting and stopping.

use super::unspent::Reserved;
use super::volume::{DataVolume, is_token_mismatch, next_number};
use super::*;

impl Ec2Backend {
    /// One idempotent step towards a running instance with its volume attached.
    pub(super) async fn provision_step(
        &self,
        ws: &Workspace,
        spec: &Ec2Spec,
        status: &WorkspaceStatus,
        owner: &Owner<'_>,
    ) -> Result<Step, BackendError> {
        let client = self.client(spec, status);
        let region = self.region_of(spec, status);
        let (Some(volume_id), Some(zone)) = (&status.volume_id, &status.availability_zone) else {
            return self
                .ensure_volume(&client, region, spec, status, owner)
                .await;
        };
        let Some(instance_id) = &status.instance_id else {
            let Some(number) = status.launch_number else {
                self.unspent.reserve(owner.uid, Reserved::Launch(1));
                return Ok(Step::Record(Record::LaunchReserved(1)));
            };
            // ClientToken makes RunInstances idempotent on EC2, but not every
            // endpoint honours it, so first look for an instance an earlier
            // attempt started (none can exist for a reservation of this
            // process's that nothing has spent); and launch no instance for a
            // volume that is gone or someone else's. Both questions go into
            // one window.
            let earlier = async {
                if self.unspent.holds(owner.uid, Reserved::Launch(number)) {
                    return Ok(None);
                }
                self.find_launch(region, owner, number).await
            };
            let (found, volume) = tokio::join!(
                earlier,
                self.check_data_volume(region, volume_id, None, owner),
            );
            if let Some(found) = found? {
                return Ok(found);
            }
            if let DataVolume::Confirming(why) = volume? {
                return Ok(Step::Wait(why));
            }
            // Only the launch itself needs the user data.
            let user_data = self.user_data(ws, spec).await?;
            self.unspent.spend(owner.uid);
            return self
                .launch(region, spec, owner, zone, number, user_data)
                .await;
        };
        let Some(instance) = self.instance(region, instance_id).await? else {
            return Ok(Step::Wait(format!("{instance_id} is not visible yet")));
        };
        match &instance.state {
            Some(InstanceStateName::Running) => {}
            Some(state) => return Ok(Step::Wait(format!("{instance_id} is {}", state.as_str()))),
            None => {
                return Err(
                    CallError::malformed("DescribeInstances", "instance without state").into(),
                );
            }
        }
        if matches!(classify(&instance, Some(volume_id)), Observation::Running) {
            return Ok(Step::Done);
        }
        instance.owned_by(owner)?;
        let volume = match self
            .check_data_volume(region, volume_id, Some(instance_id), owner)
            .await?
        {
            DataVolume::Usable(volume) => volume,
            DataVolume::Confirming(why) => return Ok(Step::Wait(why)),
        };
        match volume.state.as_ref() {
            // Never two instances on one volume: attach only once it is free.
            Some(VolumeState::Available) => {
                client
                    .call(
                        Family::Mutate,
                        "AttachVolume",
                        client
                            .attach_volume()
                            .volume_id(volume_id)
                            .instance_id(instance_id)
                            .device(&spec.volume.device_name)
                            .send(),
                    )
                    .await?;
                Ok(Step::Wait(format!(
                    "attaching {volume_id} to {instance_id}"
                )))
            }
            other => Ok(Step::Wait(format!(
                "{volume_id} is {}; waiting for it to be available",
                other.map(|s| s.as_str()).unwrap_or("in an unknown state")
            ))),
        }
    }

    async fn launch(
        &self,
        region: &str,
        spec: &Ec2Spec,
        owner: &Owner<'_>,
        zone: &str,
        number: u32,
        user_data: Option<String>,
    ) -> Result<Step, BackendError> {
        let client = self.region(region);
        let subnet = self
            .subnet_in_zone(&client, region, &spec.subnet_id, zone)
            .await?;
        let mut run = client
            .run_instances()
            .min_count(1)
            .max_count(1)
            .client_token(owner.client_token(number))
            .subnet_id(subnet)
            .set_image_id(spec.image_id.clone())
            .set_key_name(spec.key_name.clone())
            .set_user_data(user_data)
            // Everything RunInstances creates carries the ownership tags: the
            // IAM policy allows creating each only with them.
            .tag_specifications(owner.tag_spec(ResourceType::Instance, spec, Some(number), None))
            .tag_specifications(owner.tag_spec(
                ResourceType::Volume,
                spec,
                Some(number),
                Some(VOLUME_ROOT),
            ))
            .tag_specifications(owner.tag_spec(
                ResourceType::NetworkInterface,
                spec,
                Some(number),
                None,
            ));
        if let Some(t) = &spec.instance_type {
            run = run.instance_type(t.as_str().into());
        }
        for sg in &spec.security_group_ids {
            run = run.security_group_ids(sg);
        }
        if let Some(lt) = &spec.launch_template {
            run = run.launch_template(
                LaunchTemplateSpecification::builder()
                    .set_launch_template_id(lt.id.clone())
                    .set_launch_template_name(lt.name.clone())
                    .set_version(lt.version.clone())
                    .build(),
            );
        }
        if let Some(profile) = &spec.iam_instance_profile {
            let p = IamInstanceProfileSpecification::builder();
            let p = if profile.starts_with("arn:") {
                p.arn(profile)
            } else {
                p.name(profile)
            };
            run = run.iam_instance_profile(p.build());
        }
        if spec.hibernation == Some(true) {
            run = run.hibernation_options(
                HibernationOptionsRequest::builder()
                    .configured(true)
                    .build(),
            );
        }
        if let Some(spot) = &spec.spot {
            run = run.instance_market_options(spot_options(spot));
        }
        let out = client
            .call(
                Family::Mutate,
                "RunInstances",
                run.customize().config_override(single_attempt()).send(),
            )
            .await;
        let out = match out {
            Err(e) if is_token_mismatch(&e) => return Ok(next_number(owner, number, &e)),
            other => other?,
        };
        let instance = out
            .instances()
            .first()
            .ok_or_else(|| CallError::malformed("RunInstances", "no instance"))?;
        launched_record(&Seen::of(instance), "RunInstances")
    }

    /// Starts a stopped instance in place.
    pub(super) async fn start_instance(
        &self,
        spec: &Ec2Spec,
        status: &WorkspaceStatus,
        owner: &Owner<'_>,
    ) -> Result<(), BackendError> {
        let client = self.client(spec, status);
        let id = self
            .owned_instance(self.region_of(spec, status), status, owner)
            .await?;
        client
            .call(
                Family::Mutate,
                "StartInstances",
                client.start_instances().instance_ids(id).send(),
            )
            .await?;
        Ok(())
    }

    /// Stops the instance; with `hibernate`, RAM is saved to the root volume.
    pub(super) async fn stop_instance(
        &self,
        spec: &Ec2Spec,
        status: &WorkspaceStatus,
        owner: &Owner<'_>,
        hibernate: bool,
    ) -> Result<(), BackendError> {
        let client = self.client(spec, status);
        let id = self
            .owned_instance(self.region_of(spec, status), status, owner)
            .await?;
        client
            .call(
                Family::Mutate,
                "StopInstances",
                client
                    .stop_instances()
                    .instance_ids(id)
                    .hibernate(hibernate)
                    .send(),
            )
            .await?;
        Ok(())
    }

    async fn owned_instance(
        &self,
        region: &str,
        status: &WorkspaceStatus,
        owner: &Owner<'_>,
    ) -> Result<String, BackendError> {
        let id = status
            .instance_id
            .clone()
            .ok_or_else(|| BackendError::Invalid("no instance recorded".into()))?;
        let instance = self.instance(region, &id).await?.ok_or_else(|| CallError {
            operation: "DescribeInstances",
            kind: ErrorKind::NotFound,
            code: None,
            message: format!("{id} not found"),
        })?;
        instance.owned_by(owner)?;
        Ok(id)
    }

    /// An instance that an earlier attempt of launch `number` started.
    async fn find_launch(
        &self,
        region: &str,
        owner: &Owner<'_>,
        number: u32,
    ) -> Result<Option<Step>, BackendError> {
        let number = number.to_string();
        self.owned_instances(region, owner)
            .await?
            .iter()
            .find(|i| i.launch.as_deref() == Some(number.as_str()) && !i.ending())
            .map(|i| launched_record(i, "DescribeInstances"))
            .transpose()
    }

    /// The spec's subnet if it lies in `zone`, else another subnet of the
    /// same VPC there: an EBS volume attaches only to an instance in its own
    /// zone. Of several, always the same one (the lowest id), whatever order
    /// EC2 lists them in.
    async fn subnet_in_zone(
        &self,
        client: &Ec2Region,
        region: &str,
        subnet_id: &str,
        zone: &str,
    ) -> Result<String, BackendError> {
        let subnet = self.subnets.get(client, region, subnet_id).await?;
        if subnet.zone == zone {
            return Ok(subnet_id.to_owned());
        }
        let vpc = subnet.vpc;
        let others = client
            .call(
                Family::Read,
                "DescribeSubnets",
                client
                    .describe_subnets()
                    .filters(Filter::builder().name("vpc-id").values(&vpc).build())
                    .filters(
                        Filter::builder()
                            .name("availability-zone")
                            .values(zone)
                            .build(),
                    )
                    .send(),
            )
            .await?;
        lowest_subnet_id(others.subnets())
            .map(str::to_owned)
            .ok_or_else(|| {
                BackendError::Invalid(format!(
                    "the data volume is in {zone}, but VPC {vpc} has no subnet there"
                ))
            })
    }
}

fn launched_record(seen: &Seen, operation: &'static str) -> Result<Step, BackendError> {
    if seen.id.is_empty() {
        return Err(CallError::malformed(operation, "instance without id").into());
    }
    Ok(Step::Record(Record::Launched {
        id: seen.id.clone(),
        at: seen.launched_at.unwrap_or_else(Timestamp::now),
    }))
}

fn lowest_subnet_id(subnets: &[aws_sdk_ec2::types::Subnet]) -> Option<&str> {
    subnets.iter().filter_map(|s| s.subnet_id()).min()
}

fn spot_options(spot: &crate::api::SpotOptions) -> InstanceMarketOptionsRequest {
    let behavior = spot.interruption_behavior;
    let mut opts = SpotMarketOptions::builder().set_max_price(spot.max_price.clone());
    if let Some(b) = behavior {
        opts = opts.instance_interruption_behavior(match b {
            SpotInterruptionBehavior::Terminate => InstanceInterruptionBehavior::Terminate,
            SpotInterruptionBehavior::Stop => InstanceInterruptionBehavior::Stop,
            SpotInterruptionBehavior::Hibernate => InstanceInterruptionBehavior::Hibernate,
        });
        // EC2 only stops or hibernates spot instances of a persistent request.
        if b != SpotInterruptionBehavior::Terminate {
            opts = opts.spot_instance_type(SpotInstanceType::Persistent);
        }
    }
    InstanceMarketOptionsRequest::builder()
        .market_type(MarketType::Spot)
        .spot_options(opts.build())
        .build()
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::types::Subnet;

    use super::*;

    #[test]
    fn the_replacement_subnet_does_not_depend_on_listing_order() {
        let subnet = |id: &str| Subnet::builder().subnet_id(id).build();
        let listed = [
            subnet("subnet-0c"),
            subnet("subnet-0a"),
            subnet("subnet-0b"),
        ];
        assert_eq!(lowest_subnet_id(&listed), Some("subnet-0a"));
        let mut reversed = listed.to_vec();
        reversed.reverse();
        assert_eq!(lowest_subnet_id(&reversed), Some("subnet-0a"));
        assert_eq!(lowest_subnet_id(&[]), None);
    }
}
