//! The container runtime: a Pod with a PersistentVolumeClaim, both owned by
//! the Workspace.
//!
//! Everything here talks to the Kubernetes API about Pods, claims and Nodes,
//! and nothing else. tend touches only objects that carry the Workspace's uid
//! label and an owner reference to it. A Pod never restarts by itself; a
//! dead one is replaced by a new Pod on the same claim, with the backoff and
//! crash-loop rules every runtime shares.

mod objects;
mod observe;
mod state;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use futures::stream::BoxStream;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::time::Instant;

pub use objects::{LABEL_LAUNCH, LABEL_NAME, LABEL_UID, claim_name, pod_name};
pub use state::{classify_pod, node_doubt};

use crate::api::{ContainerSpec, ReclaimPolicy, Runtime, Workspace, WorkspaceStatus};
use crate::backend::batcher::{Batcher, Window};
use crate::backend::kubernetes::bounded;
use crate::backend::{
    Backend, BackendError, CallStats, Change, ErrorKind, Observed, Owner, Probe, Record, Sighting,
    Step,
};
use crate::core::Observation;

/// How the container backend is set up.
#[derive(Debug, Clone)]
pub struct ContainerSettings {
    /// The cluster name tend runs with (the EC2 tags' `tend.dev/cluster`).
    pub cluster: String,
    /// How long after its creation a missing Pod is not yet proof of death.
    pub not_found_grace: Duration,
    /// The timeout of each API call.
    pub probe_timeout: Duration,
    /// API calls in flight at once during a look.
    pub max_in_flight: usize,
    /// The namespace tend watches, or every namespace.
    pub namespace: Option<String>,
}

pub struct ContainerBackend {
    client: kube::Client,
    settings: ContainerSettings,
    /// Every look at Pods, the sweep's and each reconcile's, goes through
    /// here: looks that come together cost one list per namespace.
    reads: Batcher<Probe, Sighting, CallStats>,
}

/// How long a window of Pod looks stays open; see [`Batcher`].
const WINDOW: Window = Window {
    idle: Duration::from_millis(100),
    max_wait: Duration::from_secs(1),
    // A namespace is listed whole however many are asked about; this only
    // sends a sweep's question out by itself.
    max_items: 500,
};

impl ContainerBackend {
    pub fn new(client: kube::Client, settings: ContainerSettings) -> Self {
        let reader = observe::PodReader {
            client: client.clone(),
            settings: settings.clone(),
        };
        let reads = Batcher::new(
            WINDOW,
            Arc::new(move |probes: Vec<Probe>, deadline| {
                let reader = reader.clone();
                async move {
                    let observed = reader.observe_pods(&probes, deadline).await;
                    let answers = probes.into_iter().zip(observed.sightings).collect();
                    (answers, observed.calls)
                }
                .boxed()
            }),
        );
        ContainerBackend {
            client,
            settings,
            reads,
        }
    }

    fn pods(&self, ws: &Workspace) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &ws.namespace().unwrap_or_default())
    }

    fn claims(&self, ws: &Workspace) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), &ws.namespace().unwrap_or_default())
    }

    async fn call<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, BackendError> {
        Ok(bounded(operation, self.settings.probe_timeout, call).await?)
    }

    /// Creates an object, or finds the one an earlier attempt created and
    /// makes sure it is this Workspace's.
    async fn create_owned<K>(
        &self,
        what: &str,
        api: &Api<K>,
        object: &K,
        owner: &Owner<'_>,
    ) -> Result<K, BackendError>
    where
        K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let name = object.meta().name.clone().unwrap_or_default();
        match bounded(
            "Create",
            self.settings.probe_timeout,
            api.create(&PostParams::default(), object),
        )
        .await
        {
            Ok(created) => Ok(created),
            Err(e) if e.code.as_deref() == Some("AlreadyExists") => {
                let found = self.call("Get", api.get(&name)).await?;
                objects::check(&format!("{what} {name}"), found.meta(), owner)?;
                Ok(found)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes the owned Pods other than `keep`, and names those that still
    /// exist. Pods carrying the label but not owned are left alone and
    /// reported in `skipped`.
    async fn retire_pods(
        &self,
        ws: &Workspace,
        owner: &Owner<'_>,
        keep: Option<&str>,
        skipped: &mut Vec<String>,
    ) -> Result<Vec<String>, BackendError> {
        let api = self.pods(ws);
        let listed = self
            .call(
                "ListPods",
                api.list(&ListParams::default().labels(&objects::selector(owner))),
            )
            .await?;
        let mut remaining = Vec::new();
        for pod in listed.items {
            let name = pod.name_any();
            if Some(name.as_str()) == keep {
                continue;
            }
            if let Err(e) = objects::check(&format!("Pod {name}"), &pod.metadata, owner) {
                skipped.push(e.to_string());
                continue;
            }
            if pod.metadata.deletion_timestamp.is_none() {
                self.delete(&api, &name).await?;
            }
            remaining.push(name);
        }
        Ok(remaining)
    }

    /// Deletes by name; already gone counts as done.
    async fn delete<K>(&self, api: &Api<K>, name: &str) -> Result<(), BackendError>
    where
        K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        match bounded(
            "Delete",
            self.settings.probe_timeout,
            api.delete(name, &DeleteParams::default()),
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn provision_step(
        &self,
        ws: &Workspace,
        spec: &ContainerSpec,
        status: &WorkspaceStatus,
        owner: &Owner<'_>,
    ) -> Result<Step, BackendError> {
        if status.volume_id.is_none()
            && let Some(claim) = objects::claim(ws, owner, spec)
        {
            let created = self
                .create_owned("PersistentVolumeClaim", &self.claims(ws), &claim, owner)
                .await?;
            return Ok(Step::Record(Record::Volume {
                id: created.name_any(),
                region: None,
                zone: None,
            }));
        }
        let Some(recorded) = &status.pod_name else {
            let Some(number) = status.launch_number else {
                return Ok(Step::Record(Record::LaunchReserved(1)));
            };
            let name = pod_name(owner.name, number);
            // Never two Pods on one claim: the earlier launches' go first.
            let old = self.retire_pods_or_refuse(ws, owner, Some(&name)).await?;
            if !old.is_empty() {
                return Ok(Step::Wait(format!("waiting for {} to go", old.join(", "))));
            }
            let pod = objects::pod(ws, owner, spec, number);
            let created = self
                .create_owned("Pod", &self.pods(ws), &pod, owner)
                .await?;
            return Ok(Step::Record(Record::Launched {
                id: created.name_any(),
                at: Timestamp::now(),
            }));
        };
        match self.call("GetPod", self.pods(ws).get_opt(recorded)).await? {
            None => Ok(Step::Wait(format!("{recorded} is not visible yet"))),
            Some(pod) => Ok(match classify_pod(&pod) {
                Observation::Running => Step::Done,
                Observation::Pending { detail } => Step::Wait(detail),
                Observation::NotRunning(nr) => Step::Wait(nr.message),
                Observation::Unknown { error } => Step::Wait(error),
            }),
        }
    }

    /// Like [`Self::retire_pods`], but a foreign Pod under this Workspace's
    /// label refuses the whole step: a launch or a stop must not go on
    /// beside it.
    async fn retire_pods_or_refuse(
        &self,
        ws: &Workspace,
        owner: &Owner<'_>,
        keep: Option<&str>,
    ) -> Result<Vec<String>, BackendError> {
        let mut skipped = Vec::new();
        let remaining = self.retire_pods(ws, owner, keep, &mut skipped).await?;
        match skipped.into_iter().next() {
            Some(foreign) => Err(BackendError::NotOwned {
                resource: "a Pod labelled for this Workspace".into(),
                detail: foreign,
            }),
            None => Ok(remaining),
        }
    }

    /// Keeps or deletes the claim as `reclaimPolicy` says. A kept claim loses
    /// its owner reference first, so the garbage collector leaves it alone
    /// once the Workspace is gone. `true` once nothing is left to do.
    async fn reclaim(
        &self,
        ws: &Workspace,
        owner: &Owner<'_>,
        policy: ReclaimPolicy,
        skipped: &mut Vec<String>,
    ) -> Result<bool, BackendError> {
        let api = self.claims(ws);
        let Some(claim) = self
            .call("GetClaim", api.get_opt(&claim_name(owner.name)))
            .await?
        else {
            return Ok(true);
        };
        let name = claim.name_any();
        if policy == ReclaimPolicy::Retain && objects::released(&claim.metadata, owner) {
            return Ok(true);
        }
        if let Err(e) = objects::check(
            &format!("PersistentVolumeClaim {name}"),
            &claim.metadata,
            owner,
        ) {
            skipped.push(e.to_string());
            return Ok(true);
        }
        match policy {
            ReclaimPolicy::Retain => {
                let kept: Vec<_> = claim
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .filter(|r| r.uid != owner.uid)
                    .cloned()
                    .collect();
                let patch = json!({
                    "metadata": {
                        "resourceVersion": claim.metadata.resource_version,
                        "ownerReferences": if kept.is_empty() { serde_json::Value::Null } else { json!(kept) },
                    }
                });
                self.call(
                    "PatchClaim",
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)),
                )
                .await?;
                Ok(true)
            }
            ReclaimPolicy::Delete => {
                if claim.metadata.deletion_timestamp.is_none() {
                    self.delete(&api, &name).await?;
                }
                Ok(false)
            }
        }
    }
}

/// The container block and the status an action works from.
fn parts(ws: &Workspace) -> Result<(&ContainerSpec, WorkspaceStatus), BackendError> {
    let spec = ws
        .spec
        .container
        .as_ref()
        .ok_or_else(|| BackendError::Invalid("spec.container is missing".into()))?;
    Ok((spec, ws.status.clone().unwrap_or_default()))
}

fn reclaim_policy(ws: &Workspace) -> ReclaimPolicy {
    ws.spec
        .container
        .as_ref()
        .and_then(|c| c.volume.as_ref())
        .map(|v| v.reclaim_policy)
        .unwrap_or_default()
}

#[async_trait]
impl Backend for ContainerBackend {
    fn runtime(&self) -> Runtime {
        Runtime::Container
    }

    fn source(&self) -> &'static str {
        "kubernetes:Pod"
    }

    fn object_kind(&self) -> &'static str {
        "Pod"
    }

    fn probe(&self, ws: &Workspace) -> Option<Probe> {
        let status = ws.status.as_ref()?;
        Some(Probe {
            id: status.pod_name.clone()?,
            location: ws.namespace()?,
            volume_id: status.volume_id.clone(),
            launched_at: status.launched_at.as_ref().map(|t| t.0),
            silence: None,
        })
    }

    fn changes(&self) -> Option<BoxStream<'static, Change>> {
        Some(self.pod_changes())
    }

    async fn observe(&self, probes: &[Probe], deadline: Instant) -> Observed {
        let started = Timestamp::now();
        let (answers, calls) = self.reads.ask(probes.to_vec(), deadline).await;
        let sightings = probes
            .iter()
            .map(|p| {
                answers
                    .get(p)
                    .cloned()
                    .unwrap_or_else(|| Sighting::unknown("no answer within the deadline", started))
            })
            .collect();
        Observed { sightings, calls }
    }

    async fn provision(&self, ws: &Workspace) -> Result<Step, BackendError> {
        let (spec, status) = parts(ws)?;
        let owner = Owner::of(ws, &self.settings.cluster);
        self.provision_step(ws, spec, &status, &owner).await
    }

    async fn start(&self, _ws: &Workspace) -> Result<(), BackendError> {
        Err(BackendError::Invalid(
            "a Pod cannot be started in place; tend creates a new one".into(),
        ))
    }

    async fn stop(&self, ws: &Workspace, _hibernate: bool) -> Result<(), BackendError> {
        let owner = Owner::of(ws, &self.settings.cluster);
        self.retire_pods_or_refuse(ws, &owner, None).await?;
        Ok(())
    }

    async fn teardown(
        &self,
        ws: &Workspace,
        skipped: &mut Vec<String>,
    ) -> Result<Step, BackendError> {
        let owner = Owner::of(ws, &self.settings.cluster);
        let pods = self.retire_pods(ws, &owner, None, skipped).await?;
        if !pods.is_empty() {
            return Ok(Step::Wait(format!("deleting {}", pods.join(", "))));
        }
        if self
            .reclaim(ws, &owner, reclaim_policy(ws), skipped)
            .await?
        {
            Ok(Step::Done)
        } else {
            Ok(Step::Wait(format!(
                "deleting claim {}",
                claim_name(owner.name)
            )))
        }
    }

    fn released(&self, ws: &Workspace) -> String {
        let kept = reclaim_policy(ws).done();
        match ws.status.as_ref().and_then(|s| s.volume_id.as_ref()) {
            Some(claim) => format!("Pod deleted; claim {claim} {kept}"),
            None => "Pod deleted".to_owned(),
        }
    }
}
