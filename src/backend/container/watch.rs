//! Watching tend's Pods, so that a Pod that fails or vanishes is looked at
//! at once rather than at the next sweep.

use futures::stream::BoxStream;
use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tracing::debug;

use super::ContainerBackend;
use super::objects::LABEL_UID;
use crate::backend::Change;

impl ContainerBackend {
    /// The namespace of every Pod of tend's that changes. The watch's
    /// initial listing is no change; a watch that fails is retried with
    /// backoff, and its re-listing names each namespace again, so nothing
    /// that changed while it was down is missed.
    pub(super) fn pod_changes(&self) -> BoxStream<'static, Change> {
        let api: Api<Pod> = match &self.settings.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let mut listing_again = false;
        watcher::watcher(api, watcher::Config::default().labels(LABEL_UID))
            .default_backoff()
            .filter_map(move |event| {
                let changed = match event {
                    Ok(Event::Apply(pod) | Event::Delete(pod)) => pod.namespace(),
                    Ok(Event::Init) => None,
                    Ok(Event::InitApply(pod)) if listing_again => pod.namespace(),
                    Ok(Event::InitApply(_)) => None,
                    Ok(Event::InitDone) => {
                        listing_again = true;
                        None
                    }
                    Err(e) => {
                        debug!(error = %e, "watching Pods failed; retrying");
                        None
                    }
                };
                future::ready(changed.map(Change::At))
            })
            .boxed()
    }
}
