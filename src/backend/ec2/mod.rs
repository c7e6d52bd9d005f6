//! The EC2 runtime: an instance plus a persistent EBS data volume.
//!
//! Everything here talks to EC2 and nothing else. Each mutating call is preceded
//! by a fresh look at the resource's ownership tags; tend never touches what it
//! did not create.

mod batch;
mod client;
mod describe;
mod errors;
pub mod hints;
mod limits;
mod observe;
mod ownership;
mod provision;
mod reads;
mod seen;
mod state;
mod subnets;
mod teardown;
mod unspent;
mod user_data;
mod volume;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ec2::types::{
    Filter, HibernationOptionsRequest, IamInstanceProfileSpecification, Instance,
    InstanceInterruptionBehavior, InstanceMarketOptionsRequest, InstanceStateName,
    LaunchTemplateSpecification, MarketType, ResourceType, SpotInstanceType, SpotMarketOptions,
    VolumeState, VolumeType,
};
use jiff::Timestamp;
use tokio::time::Instant;

pub use batch::{Answer, BatchSettings, Describer, Listed, Paced, Reply, describe_all};
use client::single_attempt;
pub use client::{Ec2Region, Regions};
pub use errors::{kind_of_code, not_found_ids};
pub use limits::{Family, Limits, Rate, TokenBucket};
pub use observe::{observe_instances, sighting};
pub use ownership::{
    TAG_CLUSTER, TAG_LAUNCH, TAG_NAME, TAG_NAMESPACE, TAG_UID, TAG_VOLUME, VOLUME_DATA, VOLUME_ROOT,
};
pub use reads::Read;
pub use seen::{Seen, VolumeSeen};
pub use state::{classify, classify_instance, classify_missing};

use crate::api::{
    Ec2Spec, ReclaimPolicy, Runtime, SpotInterruptionBehavior, Workspace, WorkspaceStatus,
};
use crate::backend::{
    Backend, BackendError, CallError, Change, ErrorKind, Observed, Owner, Probe, Record, Step,
};
use crate::core::Observation;

/// How the EC2 backend is set up.
#[derive(Debug, Clone)]
pub struct Ec2Settings {
    /// The value of the `tend.dev/cluster` tag.
    pub cluster: String,
    /// The region of Workspaces that name none.
    pub default_region: String,
    /// How long after launch a missing instance is not yet proof of death.
    pub not_found_grace: Duration,
    /// How describes are batched and bounded.
    pub batch: BatchSettings,
}

/// The EC2 backend, with one client per region and one batcher of reads.
pub struct Ec2Backend {
    settings: Ec2Settings,
    regions: Arc<Regions>,
    reads: reads::Reads,
    /// Instances just described, for the launch step that follows a look.
    recent: reads::Recent,
    /// Each subnet's zone and VPC, described once.
    subnets: subnets::Subnets,
    /// When each data volume was first proven absent; see `volume.rs`.
    volumes_missing: Mutex<HashMap<String, std::time::Instant>>,
    /// Reservations this process wrote and no create has spent.
    unspent: unspent::Unspent,
    /// Reads the user data Secret a launch names.
    kube: kube::Client,
    /// Regions to look at early, from EC2 event hints (see `hints.rs`).
    hints: futures::channel::mpsc::UnboundedSender<Change>,
    hinted: Mutex<Option<futures::channel::mpsc::UnboundedReceiver<Change>>>,
}

impl Ec2Backend {
    pub fn new(
        base: aws_sdk_ec2::Config,
        settings: Ec2Settings,
        limits: Arc<Limits>,
        kube: kube::Client,
    ) -> Self {
        let regions = Arc::new(Regions::new(base, limits, settings.batch.max_in_flight));
        let reads = reads::reads(regions.clone(), settings.batch, settings.cluster.clone());
        let (hints, hinted) = futures::channel::mpsc::unbounded();
        Ec2Backend {
            settings,
            regions,
            reads,
            recent: reads::Recent::default(),
            subnets: subnets::Subnets::default(),
            volumes_missing: Mutex::new(HashMap::new()),
            unspent: unspent::Unspent::default(),
            kube,
            hints,
            hinted: Mutex::new(Some(hinted)),
        }
    }

    /// Where EC2 event hints send the regions the sweeper should look at now.
    pub fn hints(&self) -> futures::channel::mpsc::UnboundedSender<Change> {
        self.hints.clone()
    }

    pub fn region_of<'a>(&'a self, spec: &'a Ec2Spec, status: &'a WorkspaceStatus) -> &'a str {
        region_of(Some(spec), status, &self.settings.default_region)
    }

    fn client(&self, spec: &Ec2Spec, status: &WorkspaceStatus) -> Ec2Region {
        self.region(self.region_of(spec, status))
    }

    /// The client and rate limits of one region.
    pub fn region(&self, region: &str) -> Ec2Region {
        self.regions.region(region)
    }

    /// One read of a launch or teardown, through the batcher, waiting at
    /// most for a listing and then a confirmation by id. A failed read, or
    /// none within the deadline, is the error; `about` names what was asked.
    async fn ask_one(&self, read: Read, about: &str) -> Result<Reply, CallError> {
        let deadline = Instant::now() + self.settings.batch.probe_timeout * 3;
        let operation = read.operation();
        let (mut answers, _) = self.reads.ask(vec![read.clone()], deadline).await;
        match answers.remove(&read).map(|a| a.reply) {
            Some(Reply::Failed(e)) => Err(e),
            Some(reply) => Ok(reply),
            None => Err(batch::unanswered_in(
                operation,
                format!("no answer about {about} within the deadline"),
            )),
        }
    }

    /// One instance, through the batcher: `None` if EC2, asked about it by
    /// id, says it does not exist (right after a launch: not yet).
    async fn instance(&self, region: &str, id: &str) -> Result<Option<Seen>, CallError> {
        if let Some(seen) = self.recent.get(id) {
            return Ok(Some(seen));
        }
        let read = Read::Instance {
            region: region.to_owned(),
            id: id.to_owned(),
        };
        match self.ask_one(read, id).await? {
            Reply::Found(seen) => Ok(Some(seen)),
            Reply::NotFound => Ok(None),
            _ => Err(misread(Seen::OPERATION, id)),
        }
    }

    /// One volume, through the batcher: `None` if EC2, asked about it by
    /// id, says it does not exist.
    async fn volume(&self, region: &str, id: &str) -> Result<Option<VolumeSeen>, CallError> {
        let read = Read::Volume {
            region: region.to_owned(),
            id: id.to_owned(),
        };
        match self.ask_one(read, id).await? {
            Reply::Volume(seen) => Ok(Some(seen)),
            Reply::NotFound => Ok(None),
            _ => Err(misread(VolumeSeen::OPERATION, id)),
        }
    }

    /// This Workspace's data volumes, found by its ownership tags through
    /// the batcher, oldest first. RunInstances puts the same tags on root
    /// volumes; those are left out.
    async fn owned_data_volumes(
        &self,
        region: &str,
        owner: &Owner<'_>,
    ) -> Result<Vec<VolumeSeen>, CallError> {
        let read = Read::OwnedVolumes {
            region: region.to_owned(),
            uid: owner.uid.to_owned(),
        };
        let about = "the Workspace's volumes";
        let found = match self.ask_one(read, about).await? {
            Reply::OwnedVolumes(seen) => seen,
            _ => return Err(misread(VolumeSeen::OPERATION, about)),
        };
        let mut volumes: Vec<VolumeSeen> = found
            .into_iter()
            .filter(|v| v.cluster.as_deref() == Some(owner.cluster) && v.is_data())
            .collect();
        volumes.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(volumes)
    }

    /// Every instance tagged as this Workspace's, through the batcher.
    async fn owned_instances(
        &self,
        region: &str,
        owner: &Owner<'_>,
    ) -> Result<Vec<Seen>, CallError> {
        let read = Read::Owned {
            region: region.to_owned(),
            uid: owner.uid.to_owned(),
        };
        let about = "the Workspace's instances";
        let found = match self.ask_one(read, about).await? {
            Reply::Owned(seen) => seen,
            _ => return Err(misread(Seen::OPERATION, about)),
        };
        // The batch asked for tend's cluster; another's owner is not ours.
        Ok(found
            .into_iter()
            .filter(|s| s.cluster.as_deref() == Some(owner.cluster))
            .collect())
    }
}

/// A reply of another kind than the question asked for: a bug, never
/// taken for an answer.
fn misread(operation: &'static str, about: &str) -> CallError {
    batch::unanswered_in(
        operation,
        format!("an answer of the wrong kind about {about}"),
    )
}

/// The ec2 block and the status an action works from.
fn parts(ws: &Workspace) -> Result<(&Ec2Spec, WorkspaceStatus), BackendError> {
    let spec = ws
        .spec
        .ec2
        .as_ref()
        .ok_or_else(|| BackendError::Invalid("spec.ec2 is missing".into()))?;
    Ok((spec, ws.status.clone().unwrap_or_default()))
}

#[async_trait]
impl Backend for Ec2Backend {
    fn runtime(&self) -> Runtime {
        Runtime::Ec2
    }

    /// The regions EC2 event hints name (none without `--sqs-queue-url`).
    fn changes(&self) -> Option<futures::stream::BoxStream<'static, Change>> {
        use futures::StreamExt;
        let hinted = self.hinted.lock().expect("hint stream lock").take()?;
        Some(hinted.boxed())
    }

    fn source(&self) -> &'static str {
        "ec2:DescribeInstances"
    }

    fn object_kind(&self) -> &'static str {
        "EC2Instance"
    }

    fn auth_reason(&self) -> &'static str {
        "AwsAuthFailed"
    }

    fn probe(&self, ws: &Workspace) -> Option<Probe> {
        let status = ws.status.as_ref()?;
        Some(Probe {
            id: status.instance_id.clone()?,
            location: region_of(ws.spec.ec2.as_ref(), status, &self.settings.default_region)
                .to_owned(),
            volume_id: status.volume_id.clone(),
            launched_at: status.launched_at.as_ref().map(|t| t.0),
            silence: None,
        })
    }

    async fn observe(&self, probes: &[Probe], deadline: Instant) -> Observed {
        let reads: Vec<Read> = probes
            .iter()
            .map(|p| Read::Instance {
                region: p.location.clone(),
                id: p.id.clone(),
            })
            .collect();
        let (answers, calls) = self.reads.ask(reads, deadline).await;
        if probes.len() < self.settings.batch.batch_size {
            self.recent.keep(answers.values());
        }
        let now = Timestamp::now();
        let grace = self.settings.not_found_grace;
        // Each key is made again for its lookup, rather than the whole list
        // of questions kept beside the batcher's own.
        let sightings = probes
            .iter()
            .map(|p| {
                let read = Read::Instance {
                    region: p.location.clone(),
                    id: p.id.clone(),
                };
                sighting(p, answers.get(&read), grace, now)
            })
            .collect();
        Observed { sightings, calls }
    }

    async fn provision(&self, ws: &Workspace) -> Result<Step, BackendError> {
        let (spec, status) = parts(ws)?;
        let owner = Owner::of(ws, &self.settings.cluster);
        self.provision_step(ws, spec, &status, &owner).await
    }

    async fn start(&self, ws: &Workspace) -> Result<(), BackendError> {
        let (spec, status) = parts(ws)?;
        let owner = Owner::of(ws, &self.settings.cluster);
        self.start_instance(spec, &status, &owner).await
    }

    async fn stop(&self, ws: &Workspace, hibernate: bool) -> Result<(), BackendError> {
        let (spec, status) = parts(ws)?;
        let owner = Owner::of(ws, &self.settings.cluster);
        self.stop_instance(spec, &status, &owner, hibernate).await
    }

    async fn teardown(
        &self,
        ws: &Workspace,
        skipped: &mut Vec<String>,
    ) -> Result<Step, BackendError> {
        // Teardown works from status and tags; a spec that lost its ec2
        // block still releases what was created.
        let spec = ws.spec.ec2.clone().unwrap_or_default();
        let status = ws.status.clone().unwrap_or_default();
        let owner = Owner::of(ws, &self.settings.cluster);
        self.teardown_step(&spec, &status, &owner, skipped).await
    }

    fn released(&self, ws: &Workspace) -> String {
        let kept = ws
            .spec
            .ec2
            .as_ref()
            .map(|s| s.volume.reclaim_policy)
            .unwrap_or_default()
            .done();
        match ws.status.as_ref().and_then(|s| s.volume_id.as_ref()) {
            Some(v) => format!("instance terminated; data volume {v} {kept}"),
            None => "nothing left to release".to_owned(),
        }
    }

    fn forget(&self, ws: &Workspace) {
        self.unspent
            .spend(ws.metadata.uid.as_deref().unwrap_or_default());
        if let Some(volume) = ws.status.as_ref().and_then(|s| s.volume_id.as_ref()) {
            self.volumes_missing
                .lock()
                .expect("missing volumes lock")
                .remove(volume);
        }
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

fn tag_filter(key: &str, value: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{key}"))
        .values(value)
        .build()
}
