//! The EC2 runtime: an instance plus a persistent EBS data volume.
//!
//! Everything here talks to EC2 and nothing else. Each mutating call is preceded
//! by a fresh look at the resource's ownership tags; tend never touches what it
//! did not create.

mod errors;
mod limits;
mod ownership;
mod state;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    Filter, HibernationOptionsRequest, IamInstanceProfileSpecification, Instance,
    InstanceInterruptionBehavior, InstanceMarketOptionsRequest, InstanceStateName,
    LaunchTemplateSpecification, MarketType, ResourceType, SpotInstanceType, SpotMarketOptions,
    Tag, TagSpecification, Volume, VolumeState, VolumeType,
};
use jiff::Timestamp;

pub use errors::{AwsError, AwsErrorKind, kind_of_code};
pub use limits::{Family, Limits, Rate, TokenBucket};
pub use ownership::{Owner, TAG_CLUSTER, TAG_LAUNCH, TAG_NAME, TAG_NAMESPACE, TAG_UID};
pub use state::{classify_instance, classify_missing};

use crate::api::{Ec2Spec, ReclaimPolicy, SpotInterruptionBehavior, WorkspaceStatus};
use crate::core::{Observation, elapsed};

/// Where a launch or teardown stands after one step.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Persist this in status before anything else happens.
    Record(Record),
    /// Something is under way; look again shortly.
    Wait(String),
    /// Nothing left to do.
    Done,
}

/// Facts that must reach status before the next mutating call.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Volume { id: String, zone: String },
    LaunchReserved(u32),
    Launched { instance_id: String, at: Timestamp },
}

/// Why a backend call did not happen or did not work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// The resource lacks tend's ownership tags for this Workspace.
    #[error("{resource} is not owned by this Workspace: {detail}")]
    NotOwned { resource: String, detail: String },
    /// The request cannot be built from the spec (e.g. no subnet in the volume's zone).
    #[error("{0}")]
    Invalid(String),
}

/// How the EC2 clients are set up.
#[derive(Debug, Clone)]
pub struct Ec2Settings {
    pub cluster: String,
    pub default_region: String,
    pub not_found_grace: Duration,
}

/// The EC2 backend, with one client per region.
pub struct Ec2Backend {
    base: aws_sdk_ec2::Config,
    settings: Ec2Settings,
    limits: Arc<Limits>,
    clients: Mutex<HashMap<String, Ec2Region>>,
}

/// One region's client and rate limits. Every EC2 call goes through `call`.
#[derive(Clone)]
pub struct Ec2Region {
    client: Client,
    read: Arc<TokenBucket>,
    mutate: Arc<TokenBucket>,
}

impl std::ops::Deref for Ec2Region {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Ec2Region {
    fn bucket(&self, family: Family) -> &TokenBucket {
        match family {
            Family::Read => &self.read,
            Family::Mutate => &self.mutate,
        }
    }

    /// Waits for a token of the call's family, then makes the call.
    pub async fn call<T, E, R>(
        &self,
        family: Family,
        operation: &'static str,
        call: impl Future<Output = Result<T, SdkError<E, R>>>,
    ) -> Result<T, AwsError>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        self.bucket(family).acquire().await;
        self.call_with_token(family, operation, call).await
    }

    /// Makes a call whose token the caller already took (so that waiting for
    /// the rate limiter does not eat into the call's timeout), classifies a
    /// failure, and empties the bucket when AWS throttled it.
    pub async fn call_with_token<T, E, R>(
        &self,
        family: Family,
        operation: &'static str,
        call: impl Future<Output = Result<T, SdkError<E, R>>>,
    ) -> Result<T, AwsError>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let result = call.await.map_err(|e| AwsError::from_sdk(operation, e));
        if let Err(e) = &result
            && e.kind == AwsErrorKind::Throttled
        {
            self.bucket(family).drain();
        }
        result
    }
}

impl Ec2Backend {
    pub fn new(base: aws_sdk_ec2::Config, settings: Ec2Settings, limits: Arc<Limits>) -> Self {
        Ec2Backend {
            base,
            settings,
            limits,
            clients: Mutex::new(HashMap::new()),
        }
    }

    pub fn region_of<'a>(&'a self, spec: &'a Ec2Spec) -> &'a str {
        spec.region
            .as_deref()
            .unwrap_or(&self.settings.default_region)
    }

    fn client(&self, spec: &Ec2Spec) -> Ec2Region {
        self.region(self.region_of(spec))
    }

    /// The client and rate limits of one region.
    pub fn region(&self, region: &str) -> Ec2Region {
        let mut clients = self.clients.lock().expect("client map lock");
        clients
            .entry(region.to_owned())
            .or_insert_with(|| {
                let conf = self
                    .base
                    .to_builder()
                    .region(aws_sdk_ec2::config::Region::new(region.to_owned()))
                    .build();
                Ec2Region {
                    client: Client::from_conf(conf),
                    read: self.limits.bucket(region, Family::Read),
                    mutate: self.limits.bucket(region, Family::Mutate),
                }
            })
            .clone()
    }

    /// One authoritative look at the recorded instance.
    pub async fn observe(
        &self,
        spec: &Ec2Spec,
        status: &WorkspaceStatus,
        now: Timestamp,
    ) -> Observation {
        let Some(id) = status.instance_id.as_deref() else {
            return Observation::Pending {
                detail: "no instance launched yet".into(),
            };
        };
        match describe_instance(&self.client(spec), id).await {
            Ok(Some(instance)) => classify_instance(&instance, status.volume_id.as_deref()),
            Ok(None) => {
                let launched_ago = status
                    .launched_at
                    .as_ref()
                    .map(|t| elapsed(t.0, now).unwrap_or_default());
                classify_missing(id, launched_ago, self.settings.not_found_grace)
            }
            Err(e) => Observation::Unknown {
                error: e.to_string(),
            },
        }
    }

    /// One idempotent step towards a running instance with its volume attached.
    pub async fn provision(
        &self,
        spec: &Ec2Spec,
        status: &WorkspaceStatus,
        owner: &Owner<'_>,
        user_data: Option<String>,
    ) -> Result<Step, BackendError> {
        let client = self.client(spec);
        let (Some(volume_id), Some(zone)) = (&status.volume_id, &status.availability_zone) else {
            return self.ensure_volume(&client, spec, owner).await;
        };
        let Some(instance_id) = &status.instance_id else {
            let Some(number) = status.launch_number else {
                return Ok(Step::Record(Record::LaunchReserved(1)));
            };
            return self
                .launch(&client, spec, owner, zone, number, user_data)
                .await;
        };
        let Some(instance) = describe_instance(&client, instance_id).await? else {
            return Ok(Step::Wait(format!("{instance_id} is not visible yet")));
        };
        match instance.state().and_then(|s| s.name()) {
            Some(InstanceStateName::Running) => {}
            Some(state) => return Ok(Step::Wait(format!("{instance_id} is {}", state.as_str()))),
            None => {
                return Err(
                    AwsError::malformed("DescribeInstances", "instance without state").into(),
                );
            }
        }
        if matches!(
            classify_instance(&instance, Some(volume_id)),
            Observation::Running
        ) {
            return Ok(Step::Done);
        }
        owner.check(instance_id, instance.tags())?;
        // Right after CreateVolume EC2 may not list it yet: not a failure.
        let Some(volume) = describe_volume(&client, volume_id).await? else {
            return Ok(Step::Wait(format!("{volume_id} is not visible yet")));
        };
        owner.check(volume_id, volume.tags())?;
        match volume.state() {
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

    async fn ensure_volume(
        &self,
        client: &Ec2Region,
        spec: &Ec2Spec,
        owner: &Owner<'_>,
    ) -> Result<Step, BackendError> {
        // A volume created by an earlier attempt that never reached status.
        let existing = client
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
        if let Some(volume) = existing.volumes().iter().find(|v| {
            !matches!(
                v.state(),
                Some(VolumeState::Deleting | VolumeState::Deleted)
            )
        }) {
            return volume_record(volume);
        }
        let zone = subnet_zone(client, &spec.subnet_id).await?;
        let v = &spec.volume;
        let created = client
            .call(
                Family::Mutate,
                "CreateVolume",
                client
                    .create_volume()
                    .availability_zone(&zone)
                    .size(v.size_gib)
                    .volume_type(VolumeType::from(v.volume_type.as_str()))
                    .set_iops(v.iops)
                    .set_throughput(v.throughput)
                    .tag_specifications(owner.tag_spec(ResourceType::Volume, spec, None))
                    .customize()
                    .config_override(single_attempt())
                    .send(),
            )
            .await?;
        let id = created
            .volume_id()
            .ok_or_else(|| AwsError::malformed("CreateVolume", "no volume id"))?;
        Ok(Step::Record(Record::Volume {
            id: id.to_owned(),
            zone,
        }))
    }

    async fn launch(
        &self,
        client: &Ec2Region,
        spec: &Ec2Spec,
        owner: &Owner<'_>,
        zone: &str,
        number: u32,
        user_data: Option<String>,
    ) -> Result<Step, BackendError> {
        // ClientToken makes RunInstances idempotent on EC2, but not every endpoint
        // honours it, so first look for an instance an earlier attempt started.
        if let Some(found) = find_launch(client, owner, number).await? {
            return Ok(found);
        }
        let subnet = subnet_in_zone(client, &spec.subnet_id, zone).await?;
        let mut run = client
            .run_instances()
            .min_count(1)
            .max_count(1)
            .client_token(owner.client_token(number))
            .subnet_id(subnet)
            .set_image_id(spec.image_id.clone())
            .set_key_name(spec.key_name.clone())
            .set_user_data(user_data)
            .tag_specifications(owner.tag_spec(ResourceType::Instance, spec, Some(number)));
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
            .await?;
        let instance = out
            .instances()
            .first()
            .ok_or_else(|| AwsError::malformed("RunInstances", "no instance"))?;
        launched_record(instance, "RunInstances")
    }

    /// Starts a stopped instance in place.
    pub async fn start(
        &self,
        spec: &Ec2Spec,
        status: &WorkspaceStatus,
        owner: &Owner<'_>,
    ) -> Result<(), BackendError> {
        let client = self.client(spec);
        let id = self.owned_instance(&client, status, owner).await?;
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
    pub async fn stop(
        &self,
        spec: &Ec2Spec,
        status: &WorkspaceStatus,
        owner: &Owner<'_>,
        hibernate: bool,
    ) -> Result<(), BackendError> {
        let client = self.client(spec);
        let id = self.owned_instance(&client, status, owner).await?;
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
        client: &Ec2Region,
        status: &WorkspaceStatus,
        owner: &Owner<'_>,
    ) -> Result<String, BackendError> {
        let id = status
            .instance_id
            .clone()
            .ok_or_else(|| BackendError::Invalid("no instance recorded".into()))?;
        let instance = describe_instance(client, &id)
            .await?
            .ok_or_else(|| AwsError {
                operation: "DescribeInstances",
                kind: AwsErrorKind::NotFound,
                code: None,
                message: format!("{id} not found"),
            })?;
        owner.check(&id, instance.tags())?;
        Ok(id)
    }

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
        let client = self.client(spec);
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

/// Creating calls are never retried inside the SDK: a retry whose first attempt
/// did reach EC2 would create a second resource wherever ClientToken is not
/// honoured. tend's own retry looks the resource up by tag first.
fn single_attempt() -> aws_sdk_ec2::config::Builder {
    aws_sdk_ec2::config::Builder::default()
        .retry_config(aws_sdk_ec2::config::retry::RetryConfig::standard().with_max_attempts(1))
}

fn tag_filter(key: &str, value: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{key}"))
        .values(value)
        .build()
}

/// Describes one instance by the `instance-id` filter: an unknown id yields
/// an empty answer instead of failing the call.
async fn describe_instance(
    client: &Ec2Region,
    id: &str,
) -> Result<Option<aws_sdk_ec2::types::Instance>, AwsError> {
    let out = client
        .call(
            Family::Read,
            "DescribeInstances",
            client
                .describe_instances()
                .filters(Filter::builder().name("instance-id").values(id).build())
                .send(),
        )
        .await?;
    Ok(out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find(|i| i.instance_id() == Some(id))
        .cloned())
}

async fn tagged_instances(
    client: &Ec2Region,
    owner: &Owner<'_>,
) -> Result<Vec<aws_sdk_ec2::types::Instance>, AwsError> {
    let out = client
        .call(
            Family::Read,
            "DescribeInstances",
            client
                .describe_instances()
                .filters(tag_filter(TAG_UID, owner.uid))
                .filters(tag_filter(TAG_CLUSTER, owner.cluster))
                .send(),
        )
        .await?;
    Ok(out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .cloned()
        .collect())
}

/// An instance that an earlier attempt of launch `number` started.
async fn find_launch(
    client: &Ec2Region,
    owner: &Owner<'_>,
    number: u32,
) -> Result<Option<Step>, BackendError> {
    let out = client
        .call(
            Family::Read,
            "DescribeInstances",
            client
                .describe_instances()
                .filters(tag_filter(TAG_UID, owner.uid))
                .filters(tag_filter(TAG_CLUSTER, owner.cluster))
                .filters(tag_filter(TAG_LAUNCH, &number.to_string()))
                .send(),
        )
        .await?;
    let alive = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find(|i| {
            !matches!(
                i.state().and_then(|s| s.name()),
                Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
            )
        });
    alive
        .map(|i| launched_record(i, "DescribeInstances"))
        .transpose()
}

fn launched_record(
    instance: &aws_sdk_ec2::types::Instance,
    operation: &'static str,
) -> Result<Step, BackendError> {
    let id = instance
        .instance_id()
        .ok_or_else(|| AwsError::malformed(operation, "instance without id"))?;
    let at = instance
        .launch_time()
        .and_then(|t| Timestamp::new(t.secs(), t.subsec_nanos() as i32).ok())
        .unwrap_or_else(Timestamp::now);
    Ok(Step::Record(Record::Launched {
        instance_id: id.to_owned(),
        at,
    }))
}

fn volume_record(volume: &Volume) -> Result<Step, BackendError> {
    let id = volume
        .volume_id()
        .ok_or_else(|| AwsError::malformed("DescribeVolumes", "volume without id"))?;
    let zone = volume
        .availability_zone()
        .ok_or_else(|| AwsError::malformed("DescribeVolumes", "volume without zone"))?;
    Ok(Step::Record(Record::Volume {
        id: id.to_owned(),
        zone: zone.to_owned(),
    }))
}

async fn describe_volume(client: &Ec2Region, id: &str) -> Result<Option<Volume>, AwsError> {
    let out = client
        .call(
            Family::Read,
            "DescribeVolumes",
            client
                .describe_volumes()
                .filters(Filter::builder().name("volume-id").values(id).build())
                .send(),
        )
        .await?;
    Ok(out
        .volumes()
        .iter()
        .find(|v| v.volume_id() == Some(id))
        .cloned())
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

/// The spec's subnet if it lies in `zone`, else another subnet of the same VPC
/// there: an EBS volume attaches only to an instance in its own zone.
async fn subnet_in_zone(
    client: &Ec2Region,
    subnet_id: &str,
    zone: &str,
) -> Result<String, BackendError> {
    let out = client
        .call(
            Family::Read,
            "DescribeSubnets",
            client.describe_subnets().subnet_ids(subnet_id).send(),
        )
        .await?;
    let subnet = out
        .subnets()
        .first()
        .ok_or_else(|| AwsError::malformed("DescribeSubnets", "no subnet"))?;
    if subnet.availability_zone() == Some(zone) {
        return Ok(subnet_id.to_owned());
    }
    let vpc = subnet.vpc_id().unwrap_or_default();
    let others = client
        .call(
            Family::Read,
            "DescribeSubnets",
            client
                .describe_subnets()
                .filters(Filter::builder().name("vpc-id").values(vpc).build())
                .filters(
                    Filter::builder()
                        .name("availability-zone")
                        .values(zone)
                        .build(),
                )
                .send(),
        )
        .await?;
    others
        .subnets()
        .first()
        .and_then(|s| s.subnet_id())
        .map(str::to_owned)
        .ok_or_else(|| {
            BackendError::Invalid(format!(
                "the data volume is in {zone}, but VPC {vpc} has no subnet there"
            ))
        })
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

/// Tags as EC2 types.
fn tags(pairs: impl IntoIterator<Item = (String, String)>) -> Vec<Tag> {
    pairs
        .into_iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

impl Owner<'_> {
    fn tag_spec(
        &self,
        resource: ResourceType,
        spec: &Ec2Spec,
        launch: Option<u32>,
    ) -> TagSpecification {
        TagSpecification::builder()
            .resource_type(resource)
            .set_tags(Some(tags(self.tags(&spec.tags, launch))))
            .build()
    }
}

impl Ec2Backend {
    /// The describe-family bucket of a region.
    pub fn read_bucket(&self, region: &str) -> Arc<TokenBucket> {
        self.region(region).read.clone()
    }

    /// Describes a batch of instances with the `instance-id` filter, following
    /// NextToken pages. Naming ids in `InstanceIds` would fail the whole call
    /// on one unknown id; the filter just leaves unknown ids out. Terminated
    /// instances are kept: their StateReason tells spot reclaim from a user's
    /// shutdown. The caller holds the token for the first page.
    pub async fn describe_batch(
        &self,
        region: &str,
        ids: &[String],
    ) -> Result<Vec<Instance>, AwsError> {
        let client = self.region(region);
        let mut found = Vec::with_capacity(ids.len());
        let mut token: Option<String> = None;
        // Bounded: a batch of N ids can never need more than N pages.
        for page_number in 0..=ids.len() {
            if page_number > 0 {
                client.read.acquire().await;
            }
            let filter = Filter::builder()
                .name("instance-id")
                .set_values(Some(ids.to_vec()))
                .build();
            let page = client
                .call_with_token(
                    Family::Read,
                    "DescribeInstances",
                    // One attempt: bisection and the next sweep are the
                    // retries, and SDK back-off would hold an in-flight slot
                    // and eat into the sweep's deadline.
                    client
                        .describe_instances()
                        .filters(filter)
                        .set_next_token(token.take())
                        .customize()
                        .config_override(single_attempt())
                        .send(),
                )
                .await?;
            found.extend(
                page.reservations()
                    .iter()
                    .flat_map(|r| r.instances())
                    .cloned(),
            );
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => return Ok(found),
            }
        }
        Err(AwsError::malformed(
            "DescribeInstances",
            "more pages than ids",
        ))
    }
}
