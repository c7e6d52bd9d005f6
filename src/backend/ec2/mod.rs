//! The EC2 runtime: an instance plus a persistent EBS data volume.
//!
//! Everything here talks to EC2 and nothing else. Each mutating call is preceded
//! by a fresh look at the resource's ownership tags; tend never touches what it
//! did not create.

mod describe;
mod errors;
mod limits;
mod ownership;
mod provision;
mod state;
mod teardown;
mod volume;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    Filter, HibernationOptionsRequest, IamInstanceProfileSpecification, Instance,
    InstanceInterruptionBehavior, InstanceMarketOptionsRequest, InstanceStateName,
    LaunchTemplateSpecification, MarketType, ResourceType, SpotInstanceType, SpotMarketOptions,
    Volume, VolumeState, VolumeType,
};
use jiff::Timestamp;

pub use errors::{AwsError, AwsErrorKind, kind_of_code, not_found_ids};
pub use limits::{Family, Limits, Rate, TokenBucket};
pub use ownership::{
    Owner, TAG_CLUSTER, TAG_LAUNCH, TAG_NAME, TAG_NAMESPACE, TAG_UID, TAG_VOLUME, VOLUME_DATA,
    VOLUME_ROOT,
};
pub use state::{classify_instance, classify_missing};

use crate::api::{Ec2Spec, ReclaimPolicy, SpotInterruptionBehavior, WorkspaceStatus};
use crate::core::Observation;

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
    Volume {
        id: String,
        region: String,
        zone: String,
    },
    LaunchReserved(u32),
    Launched {
        instance_id: String,
        at: Timestamp,
    },
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
    /// The data volume named in status is proven gone: deleted outside tend.
    #[error("data volume {volume} no longer exists: {detail}")]
    VolumeLost { volume: String, detail: String },
    /// The data volume is attached to an instance that is neither the recorded
    /// one nor tagged as this Workspace's.
    #[error(
        "data volume {volume} is attached to instance {instance}, which this Workspace does not own"
    )]
    VolumeInUse { volume: String, instance: String },
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
    /// When each data volume was first proven absent; see `volume.rs`.
    volumes_missing: Mutex<HashMap<String, std::time::Instant>>,
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
            volumes_missing: Mutex::new(HashMap::new()),
        }
    }

    pub fn region_of<'a>(&'a self, spec: &'a Ec2Spec, status: &'a WorkspaceStatus) -> &'a str {
        region_of(Some(spec), status, &self.settings.default_region)
    }

    fn client(&self, spec: &Ec2Spec, status: &WorkspaceStatus) -> Ec2Region {
        self.region(self.region_of(spec, status))
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
}

/// The region a Workspace lives in: the one recorded in status when it was
/// provisioned, else the spec's, else the controller's default.
pub fn region_of<'a>(
    spec: Option<&'a Ec2Spec>,
    status: &'a WorkspaceStatus,
    default: &'a str,
) -> &'a str {
    status
        .region
        .as_deref()
        .or(spec.and_then(|s| s.region.as_deref()))
        .unwrap_or(default)
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

/// Filters for what a Workspace owns: its uid and cluster tags.
fn owned_by(owner: &Owner<'_>) -> Vec<Filter> {
    vec![
        tag_filter(TAG_UID, owner.uid),
        tag_filter(TAG_CLUSTER, owner.cluster),
    ]
}

impl Ec2Backend {
    /// The describe-family bucket of a region.
    pub fn read_bucket(&self, region: &str) -> Arc<TokenBucket> {
        self.region(region).read.clone()
    }
}
