//! The external runtime: a machine tend does not run, whose agent renews a
//! `coordination.k8s.io/v1` Lease named after the Workspace, in its
//! namespace.
//!
//! tend only reads the Lease. A fresh renewal is Running; one older than
//! `spec.external.heartbeatTimeoutSeconds`, or a Lease read and not there,
//! is a clean NotRunning (`HeartbeatLost`); a read that fails is Unknown.
//! tend cannot start, stop or restart the machine: it awaits the first
//! heartbeat (`AwaitingAgent`), reports a lost one (`Offline`), and sees it
//! come back. Leases labelled `tend.dev/workspace` are watched, so a
//! renewal after a lapse is seen at once.

mod heartbeat;
mod watch;

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{StreamExt, stream};
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;
use kube::api::Api;
use tokio::time::Instant;

pub use heartbeat::{HEARTBEAT_LOST, judge, last_beat, vanished};

use crate::api::{Runtime, Workspace};
use crate::backend::kubernetes::bounded;
use crate::backend::{
    Backend, BackendError, CallStats, Change, Observed, Probe, Record, Sighting, Step,
};
use crate::core::Observation;

/// How the external backend is set up.
#[derive(Debug, Clone)]
pub struct ExternalSettings {
    /// The timeout of each read of a Lease.
    pub probe_timeout: Duration,
    /// Reads in flight at once during a look.
    pub max_in_flight: usize,
    /// The namespace tend watches, or every namespace.
    pub namespace: Option<String>,
}

pub struct ExternalBackend {
    client: kube::Client,
    settings: ExternalSettings,
}

impl ExternalBackend {
    pub fn new(client: kube::Client, settings: ExternalSettings) -> Self {
        ExternalBackend { client, settings }
    }

    fn leases(&self, namespace: &str) -> Api<Lease> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// One read of a Lease by name: `None` when it is not there.
    async fn read(&self, namespace: &str, name: &str) -> Result<Option<Lease>, BackendError> {
        Ok(bounded(
            "GetLease",
            self.settings.probe_timeout,
            self.leases(namespace).get_opt(name),
        )
        .await?)
    }

    async fn sighting(&self, probe: &Probe) -> (Sighting, bool) {
        let asked_at = Timestamp::now();
        let timeout = probe.silence.unwrap_or(DEFAULT_TIMEOUT);
        let (observation, holds_for) = match self.read(&probe.location, &probe.id).await {
            Ok(Some(lease)) => judge(&lease, timeout, Timestamp::now()),
            Ok(None) => (vanished(&probe.id), None),
            Err(e) => return (Sighting::unknown(e.to_string(), asked_at), false),
        };
        let sighting = Sighting {
            observation,
            asked_at,
            zone: None,
            absent: false,
            holds_for,
        };
        (sighting, true)
    }
}

/// The heartbeat timeout when a probe names none (the CRD's default).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(90);

fn timeout_of(ws: &Workspace) -> Duration {
    ws.spec
        .external
        .as_ref()
        .and_then(|e| u64::try_from(e.heartbeat_timeout_seconds).ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs)
}

fn refused(what: &str) -> BackendError {
    BackendError::Invalid(format!(
        "tend cannot {what} an external machine; its agent reports whether it runs"
    ))
}

#[async_trait]
impl Backend for ExternalBackend {
    fn runtime(&self) -> Runtime {
        Runtime::External
    }

    fn source(&self) -> &'static str {
        "kubernetes:Lease"
    }

    fn object_kind(&self) -> &'static str {
        "Lease"
    }

    fn swept(&self) -> bool {
        false
    }

    fn launches(&self) -> bool {
        false
    }

    fn launched(&self, id: &str) -> String {
        format!("the agent renewing Lease {id} sent its first heartbeat")
    }

    fn probe(&self, ws: &Workspace) -> Option<Probe> {
        let status = ws.status.as_ref()?;
        Some(Probe {
            id: status.backend_id()?.to_owned(),
            location: ws.namespace()?,
            volume_id: None,
            launched_at: None,
            silence: Some(timeout_of(ws)),
        })
    }

    fn changes(&self) -> Option<BoxStream<'static, Change>> {
        Some(self.lease_changes())
    }

    async fn observe(&self, probes: &[Probe], deadline: Instant) -> Observed {
        let started = Timestamp::now();
        let reads: Vec<_> = probes.iter().map(|p| self.sighting(p)).collect();
        let reads = stream::iter(reads)
            .buffered(self.settings.max_in_flight.max(1))
            .collect::<Vec<_>>();
        match tokio::time::timeout_at(deadline, reads).await {
            Ok(read) => {
                let mut calls = CallStats::default();
                for (_, ok) in &read {
                    if *ok {
                        calls.ok += 1;
                    } else {
                        calls.failed += 1;
                    }
                }
                Observed {
                    sightings: read.into_iter().map(|(s, _)| s).collect(),
                    calls,
                }
            }
            Err(_) => Observed::out_of_time(probes, started),
        }
    }

    /// Waits for the first heartbeat: a fresh Lease is recorded as the
    /// backend, and from then on it is looked at like any other.
    async fn provision(&self, ws: &Workspace) -> Result<Step, BackendError> {
        let namespace = ws.namespace().unwrap_or_default();
        let name = ws.name_any();
        let Some(lease) = self.read(&namespace, &name).await? else {
            return Ok(Step::Wait(format!(
                "waiting for the agent's first heartbeat: no Lease {name} in {namespace} yet"
            )));
        };
        let now = Timestamp::now();
        Ok(match judge(&lease, timeout_of(ws), now).0 {
            Observation::Running => Step::Record(Record::Launched {
                id: name,
                at: last_beat(&lease).unwrap_or(now),
            }),
            Observation::NotRunning(_) => Step::Wait(format!(
                "waiting for the agent's first heartbeat: Lease {name} was last renewed longer \
                 than the heartbeat timeout ago"
            )),
            Observation::Pending { detail } => Step::Wait(detail),
            Observation::Unknown { error } => Step::Wait(error),
        })
    }

    async fn start(&self, _ws: &Workspace) -> Result<(), BackendError> {
        Err(refused("start"))
    }

    async fn stop(&self, _ws: &Workspace, _hibernate: bool) -> Result<(), BackendError> {
        Err(refused("stop"))
    }

    /// Nothing is tend's to release: the machine and its Lease are the agent's.
    async fn teardown(
        &self,
        _ws: &Workspace,
        _skipped: &mut Vec<String>,
    ) -> Result<Step, BackendError> {
        Ok(Step::Done)
    }

    fn released(&self, ws: &Workspace) -> String {
        format!(
            "nothing to release: the machine and its Lease {} are its agent's",
            ws.name_any()
        )
    }
}
