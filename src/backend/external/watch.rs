//! Watching heartbeat Leases, so that a renewal after a lapse (or a first
//! heartbeat) is seen at once rather than at the next resync.

use futures::stream::BoxStream;
use futures::{StreamExt, future};
use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::{self, Event};
use tracing::debug;

use super::ExternalBackend;
use crate::backend::{Change, LABEL_WORKSPACE};

impl ExternalBackend {
    /// The Workspace of every labelled Lease that changes: the one of the
    /// Lease's name, in its namespace. Only labelled Leases are watched, so
    /// that the cluster's own (node heartbeats, leader elections) cost
    /// nothing; an unlabelled one is still read at every resync. A watch
    /// that fails is retried with backoff, and its listing again names
    /// every Lease, so nothing renewed meanwhile is missed.
    pub(super) fn lease_changes(&self) -> BoxStream<'static, Change> {
        let api: Api<Lease> = match &self.settings.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let mut listing_again = false;
        watcher::watcher(api, watcher::Config::default().labels(LABEL_WORKSPACE))
            .default_backoff()
            .filter_map(move |event| {
                let changed = match event {
                    Ok(Event::Apply(lease) | Event::Delete(lease)) => Some(lease),
                    Ok(Event::InitApply(lease)) if listing_again => Some(lease),
                    Ok(Event::Init | Event::InitApply(_)) => None,
                    Ok(Event::InitDone) => {
                        listing_again = true;
                        None
                    }
                    Err(e) => {
                        debug!(error = %e, "watching heartbeat Leases failed; retrying");
                        None
                    }
                };
                future::ready(changed.and_then(|lease| {
                    let namespace = lease.namespace()?;
                    Some(Change::Of(
                        ObjectRef::new(&lease.name_any()).within(&namespace),
                    ))
                }))
            })
            .boxed()
    }
}
