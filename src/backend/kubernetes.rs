//! Calls to the Kubernetes API on a backend's behalf (Pods, claims,
//! Leases): each bounded by a timeout, its errors classified once into the
//! kinds every backend uses.

use futures::stream::BoxStream;
use futures::{StreamExt, future};
use kube::Resource;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde::de::DeserializeOwned;
use tracing::warn;

use super::{CallError, ErrorKind};

/// Classifies a failed Kubernetes API call.
pub fn call_error(operation: &'static str, err: kube::Error) -> CallError {
    match err {
        kube::Error::Api(status) => {
            let kind = match status.code {
                404 => ErrorKind::NotFound,
                429 => ErrorKind::Throttled,
                401 | 403 => ErrorKind::Auth,
                400 | 422 => ErrorKind::InvalidParameter,
                _ => ErrorKind::Transient,
            };
            CallError {
                operation,
                kind,
                code: Some(status.reason.clone()).filter(|r| !r.is_empty()),
                message: status.message.clone(),
            }
        }
        other => CallError {
            operation,
            kind: ErrorKind::Transient,
            code: None,
            message: other.to_string(),
        },
    }
}

/// Bounds one call by `timeout`; running out of time is a transient failure.
pub async fn bounded<T>(
    operation: &'static str,
    timeout: std::time::Duration,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map_err(|e| call_error(operation, e)),
        Err(_) => Err(CallError {
            operation,
            kind: ErrorKind::Transient,
            code: None,
            message: format!("timed out after {timeout:?}"),
        }),
    }
}

/// The objects of one kind (in `namespace`, or in every namespace) that a
/// watch sees change: created, changed or deleted. The
/// watch's first listing is no change; a watch that fails is retried with
/// backoff, and its listing again yields every object, so nothing that
/// changed while it was down is missed.
pub fn changed<K>(
    client: kube::Client,
    namespace: Option<&str>,
    config: watcher::Config,
    what: &'static str,
) -> BoxStream<'static, K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
    K::DynamicType: Default,
{
    let api: Api<K> = match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let mut listing_again = false;
    watcher::watcher(api, config)
        .default_backoff()
        .filter_map(move |event| {
            let changed = match event {
                Ok(Event::Apply(object) | Event::Delete(object)) => Some(object),
                Ok(Event::InitApply(object)) if listing_again => Some(object),
                Ok(Event::Init | Event::InitApply(_)) => None,
                Ok(Event::InitDone) => {
                    listing_again = true;
                    None
                }
                Err(e) => {
                    warn!(error = %e, "watching {what} failed; retrying with backoff");
                    None
                }
            };
            future::ready(changed)
        })
        .boxed()
}
