//! A fake Kubernetes API server over real HTTP.
//!
//! Tests point real kube-rs clients, watchers and controllers at it, so it follows the API
//! server's wire protocol and semantics closely: resource versions, watch history and 410
//! expiry, status subresources, generations, finalizers, the four patch types and `Status`
//! errors. It stores arbitrary resources by path, so custom resources need no registration.
//!
//! Includers use only part of the API, so they declare the module with `#[allow(dead_code)]`
//! (or sit under a parent module that allows it).

#[path = "fake_kube/patch.rs"]
mod patch;
#[path = "fake_kube/resource.rs"]
mod resource;
#[path = "fake_kube/select.rs"]
mod select;
#[path = "fake_kube/server.rs"]
mod server;
#[path = "fake_kube/store.rs"]
mod store;
#[path = "fake_kube/watch.rs"]
mod watch;
#[path = "fake_kube/write.rs"]
mod write;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use resource::Target;
pub use store::FakeConfig;
use store::{Msg, Shared, State};

/// One request the server answered, for assertions about what a client sent.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The raw (still percent-encoded) query string, without the `?`.
    pub query: String,
    pub content_type: Option<String>,
    /// The HTTP status answered (200 for a watch that was opened).
    pub status: u16,
    pub body: String,
}

impl RecordedRequest {
    /// A decoded query parameter, e.g. `fieldManager` or `watch`.
    pub fn query_param(&self, key: &str) -> Option<String> {
        server::parse_query(&self.query).remove(key)
    }

    /// The request body parsed as JSON, if it was JSON.
    pub fn json_body(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }

    /// Whether this was a watch (a GET with `watch=true`).
    pub fn is_watch(&self) -> bool {
        self.method == "GET"
            && self
                .query_param("watch")
                .is_some_and(|w| w == "true" || w == "1")
    }
}

/// Makes the next `times` matching requests fail with a `Status` of `status`/`reason`.
#[derive(Debug, Clone)]
pub struct Failure {
    /// HTTP method to match (any when `None`), case-insensitive.
    pub method: Option<String>,
    /// Substring the request path must contain, e.g. `/status`.
    pub path_contains: String,
    pub status: u16,
    /// `Status.reason`, e.g. `InternalError` or `Conflict`.
    pub reason: String,
    pub times: usize,
}

impl Failure {
    /// Shorthand for the common case of failing one method on paths containing `path_contains`.
    pub fn new(
        method: &str,
        path_contains: &str,
        status: u16,
        reason: &str,
        times: usize,
    ) -> Failure {
        Failure {
            method: Some(method.to_string()),
            path_contains: path_contains.to_string(),
            status,
            reason: reason.to_string(),
            times,
        }
    }
}

/// A running fake API server on 127.0.0.1; dropping it stops the server and its connections.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = self.shared.lock().tx.send(Msg::CloseWatches);
    }
}

impl FakeApiServer {
    /// Starts a server with the default configuration on an ephemeral port.
    pub async fn start() -> FakeApiServer {
        Self::start_with(FakeConfig::default()).await
    }

    /// Starts a server with a custom configuration on an ephemeral port.
    pub async fn start_with(config: FakeConfig) -> FakeApiServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake API server: binding 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("fake API server: local address");
        let shared = Arc::new(Shared::new(config));
        let task = tokio::spawn(server::serve(listener, shared.clone()));
        FakeApiServer { shared, addr, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client for this server, with default namespace `default`.
    pub fn client(&self) -> kube::Client {
        let uri: hyper::Uri = self
            .url()
            .parse()
            .expect("fake API server: url is a valid URI");
        kube::Client::try_from(kube::Config::new(uri))
            .expect("fake API server: building a kube client")
    }

    /// A kubeconfig for this server, for a subprocess started with `KUBECONFIG`.
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: {url}
contexts:
- name: fake
  context:
    cluster: fake
    user: fake
    namespace: default
current-context: fake
preferences: {{}}
users:
- name: fake
  user: {{}}
",
            url = self.url()
        )
    }

    /// The stored object at an API path, as a GET would answer it.
    pub fn get_object(&self, api_path_of_object: &str) -> Option<Value> {
        let target = Target::parse(api_path_of_object)?;
        target.name.as_ref()?;
        self.shared.lock().get(&target).ok().map(|(_, obj)| obj)
    }

    /// Every object in a collection path (all namespaces for a cluster-wide path).
    pub fn list_objects(&self, collection_path: &str) -> Vec<Value> {
        let Some(target) = Target::parse(collection_path) else {
            return Vec::new();
        };
        let st = self.shared.lock();
        let info = st.info(&target.key());
        st.collection(&target)
            .into_iter()
            .map(|obj| State::present(&target, &info, obj))
            .collect()
    }

    /// Every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// How many requests had this method and a path ending in `path_suffix`.
    pub fn count_requests(&self, method: &str, path_suffix: &str) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method) && r.path.ends_with(path_suffix))
            .count()
    }

    /// Forgets the recorded requests, to assert on what happens next.
    pub fn clear_requests(&self) {
        self.shared.lock().requests.clear();
    }

    /// Makes upcoming matching requests fail; failures are consumed in the order injected.
    pub fn inject_failure(&self, f: Failure) {
        self.shared.lock().failures.push(f);
    }

    /// The latest resourceVersion handed out.
    pub fn current_resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// How many watch streams are open.
    pub fn open_watches(&self) -> usize {
        self.shared.lock().tx.receiver_count()
    }

    /// Drops all retained watch history, as etcd compaction does: resuming a watch from
    /// any resourceVersion handed out so far then answers 410 Expired.
    pub fn compact_history(&self) {
        let mut st = self.shared.lock();
        // Other writes in a real cluster move the revision past what clients have seen.
        st.rv += 1;
        st.compact();
    }

    /// Ends every open watch stream, as an API server restart or load balancer would.
    pub fn close_watches(&self) {
        let _ = self.shared.lock().tx.send(Msg::CloseWatches);
    }

    /// Waits until `cond` holds, re-checking after every request; panics naming `what` on timeout.
    pub async fn wait_for<F: Fn(&FakeApiServer) -> bool>(
        &self,
        timeout: Duration,
        what: &str,
        cond: F,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.shared.changed.notified();
            if cond(self) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    }
}
