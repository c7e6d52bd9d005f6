//! Watching tend's Pods, so that a Pod that fails or vanishes is looked at
//! at once rather than at the next sweep.

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::watcher;

use super::ContainerBackend;
use super::objects::LABEL_UID;
use crate::backend::Change;
use crate::backend::kubernetes::changed;

impl ContainerBackend {
    /// The namespace of every Pod of tend's that changes.
    pub(super) fn pod_changes(&self) -> BoxStream<'static, Change> {
        changed::<Pod>(
            self.client.clone(),
            self.settings.namespace.as_deref(),
            watcher::Config::default().labels(LABEL_UID),
            "Pods",
        )
        .filter_map(|pod| futures::future::ready(pod.namespace().map(Change::At)))
        .boxed()
    }
}
