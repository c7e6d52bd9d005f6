//! Watching heartbeat Leases, so that a renewal after a lapse (or a first
//! heartbeat) is seen at once rather than at the next resync.

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use super::ExternalBackend;
use crate::backend::kubernetes::changed;
use crate::backend::{Change, LABEL_WORKSPACE};

impl ExternalBackend {
    /// The Workspace of every labelled Lease that changes: the one of the
    /// Lease's name, in its namespace. Only labelled Leases are watched, so
    /// that the cluster's own (node heartbeats, leader elections) cost
    /// nothing; an unlabelled one is still read at every resync.
    pub(super) fn lease_changes(&self) -> BoxStream<'static, Change> {
        changed::<Lease>(
            self.client.clone(),
            self.settings.namespace.as_deref(),
            watcher::Config::default().labels(LABEL_WORKSPACE),
            "heartbeat Leases",
        )
        .filter_map(|lease| {
            futures::future::ready(
                lease.namespace().map(|namespace| {
                    Change::Of(ObjectRef::new(&lease.name_any()).within(&namespace))
                }),
            )
        })
        .boxed()
    }
}
