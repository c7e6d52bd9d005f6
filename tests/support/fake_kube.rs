//! A fake Kubernetes API server over real HTTP.
//!
//! Tests point real kube-rs clients, watchers and controllers at it, so it follows the API
//! server's wire protocol and semantics closely: resource versions, watch history and 410
//! expiry, status subresources, generations, finalizers, garbage collection of dependents
//! (by `ownerReferences` uid, with `Orphan` propagation), merge and JSON patches,
//! server-side apply with field ownership, and `Status` errors. It refuses what a real
//! server refuses where tend could get it wrong:
//!
//! - custom resources exist only through a CustomResourceDefinition (tend's is installed
//!   by default, others via [`FakeConfig::crds`] or by creating one through the API);
//!   every write of one (create, update, each patch type, `/status`) is pruned of unknown
//!   fields, defaulted, and checked against the CRD's `openAPIV3Schema` (`nullable`,
//!   `x-kubernetes-int-or-string`, list types, formats, bounds) and, from Kubernetes 1.25
//!   on ([`FakeConfig::minor`]), against its CEL rules, transition rules included. Reads
//!   are defaulted too. A refusal is a 422 `Invalid` naming each field;
//! - Events are checked as the server checks them (required fields, length limits, a 1 KiB
//!   note, series counts, immutability on update);
//! - strategic merge patches of custom resources answer 415;
//! - creates in a namespace that does not exist answer 404.
//!
//! Every request is recorded with its RBAC attributes (verb, group, resource,
//! subresource, namespace) and its user, so a test can check a client's permissions.
//!
//! # Deviations from a real API server, and why none matters to tend
//!
//! - **No authorization or admission plugins.** A bearer token names the user; nothing
//!   is forbidden. tend's permissions are checked instead against `deploy/` from the
//!   recorded requests (`tests/rbac.rs`).
//! - **Server-side apply and `managedFields` are simplified** (`fake_kube/apply.rs`):
//!   ownership and conflicts are tracked per field, but lists are atomic (no per-item
//!   ownership of `map` or `set` lists), entries carry no `time`, an applied `null` is
//!   ignored, and YAML or JSON bodies only (no CBOR). tend's leader election applies
//!   scalar fields of a Lease; tend writes status with merge patches, and kube's
//!   finalizer helper uses JSON patches.
//! - **Strategic merge patches of built-in kinds merge like JSON merge patches** (lists
//!   are replaced, no `$patch` directives). tend sends none.
//! - **Built-in kinds are not schema-checked or defaulted**, apart from metadata (names,
//!   labels, finalizers, owner references; no annotation size limit) and Events, and any
//!   version of a built-in group is served. tend builds what it writes (Events, and for
//!   the container runtime Pods and PersistentVolumeClaims) from k8s-openapi types, so
//!   their shape is typed; a real server's defaults (a Pod's scheduling, a claim's
//!   binding) never appear unless a test writes them, as tests play kubelet and
//!   scheduler themselves.
//! - **CRDs are taken as given**: not validated on create, versions share one storage
//!   without conversion, deleting a CRD leaves its objects, no discovery endpoints.
//!   tend's CRD has one version and is checked against real servers' rules in
//!   `tests/crd.rs`; tend uses no discovery.
//! - **Schema checks**: only the `date-time`, `date`, `byte` and `uuid` formats are
//!   checked; no validation ratcheting (1.28+ lets unchanged invalid fields pass);
//!   `x-kubernetes-embedded-resource` keeps `apiVersion`, `kind` and `metadata` but does
//!   not check them; messages follow the server's wording loosely but name the same
//!   fields. tend's schema uses none of the unchecked formats or embedded resources.
//! - **CEL runs in kube's client-side evaluator**: no cost budget at write time, and
//!   transition rules inside lists compare items by index (the server only correlates
//!   map and set lists). A rule it cannot evaluate is skipped and reported by
//!   [`FakeApiServer::unevaluated_rules`]; tend's rules are all evaluated (a test
//!   asserts it), and none sits inside a list.
//! - **core/v1 and events.k8s.io/v1 Events are stored apart** (one store on a real
//!   server). tend uses only events.k8s.io/v1.
//! - **Garbage collection is synchronous**: dependents go (or, with `Orphan`, lose their
//!   reference) inside the write that removed the owner, each change its own watch event.
//!   `Foreground` is taken as `Background` (the owner goes first; `blockOwnerDeletion` is
//!   not checked), no `orphan` or `foregroundDeletion` finalizers appear, and an object
//!   whose owners were never there (an unknown uid, another namespace) is left alone, where
//!   the real collector deletes it. tend's claims and Pods name their live Workspace in their namespace, and
//!   tend asks for neither policy; a synchronous collector only acts sooner.
//! - **Deletion has no grace periods**: a Pod goes at once instead of terminating, and a
//!   namespace goes at once, leaving its objects. A test that needs a terminating Pod
//!   gives it a finalizer; tend deletes no namespaces.
//! - **No rate limiting or priority and fairness**, and continue tokens never expire;
//!   failures come only from [`FakeApiServer::inject_failure`]. tend's tests inject the
//!   failures they need.
//! - **Unknown fields are pruned without a `Warning` header**, and `fieldValidation` is
//!   ignored. kube does not read warnings.
//! - **HTTP/1.1 and JSON only**: no TLS, protobuf or compression. kube speaks JSON.
//!
//! Includers use only part of the API, so they declare the module with `#[allow(dead_code)]`
//! (or sit under a parent module that allows it).

#[path = "fake_kube/apply.rs"]
mod apply;
#[path = "fake_kube/crd.rs"]
mod crd;
#[path = "fake_kube/events.rs"]
mod events;
#[path = "fake_kube/field.rs"]
mod field;
#[path = "fake_kube/gc.rs"]
mod gc;
#[path = "fake_kube/metadata.rs"]
mod metadata;
#[path = "fake_kube/patch.rs"]
mod patch;
#[path = "fake_kube/resource.rs"]
mod resource;
#[path = "fake_kube/schema.rs"]
mod schema;
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

use std::collections::BTreeSet;
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
    /// Who sent it: the bearer token of a client from [`FakeApiServer::client_as`].
    pub user: Option<String>,
    /// The verb RBAC checks: `get`, `list`, `watch`, `create`, `update`, `patch`,
    /// `delete` or `deletecollection`; the lowercase method for non-resource paths.
    pub verb: String,
    /// What a resource request addresses; `None` for paths such as `/version`.
    pub resource: Option<ResourceAttributes>,
    /// The HTTP status answered (200 for a watch that was opened).
    pub status: u16,
    pub body: String,
}

/// The resource a request addresses, as RBAC sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResourceAttributes {
    /// The API group, `""` for the core group.
    pub group: String,
    /// The plural resource name, e.g. `workspaces`.
    pub resource: String,
    /// `status`, `finalizers`, ... when the path names one.
    pub subresource: Option<String>,
    /// `None` for cluster-scoped resources and requests across all namespaces.
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl RecordedRequest {
    pub(crate) fn new(
        method: &str,
        path: &str,
        query: &str,
        content_type: Option<String>,
        user: Option<String>,
        status: u16,
        body: String,
    ) -> RecordedRequest {
        let target = Target::parse(path);
        let watch = server::parse_query(query)
            .get("watch")
            .is_some_and(|w| w == "true" || w == "1");
        let named = target.as_ref().is_some_and(|t| t.name.is_some());
        let verb = match (method, target.is_some()) {
            (_, false) => method.to_ascii_lowercase(),
            ("GET", _) if watch => "watch".into(),
            ("GET", _) if named => "get".into(),
            ("GET", _) => "list".into(),
            ("POST", _) => "create".into(),
            ("PUT", _) => "update".into(),
            ("PATCH", _) => "patch".into(),
            ("DELETE", _) if named => "delete".into(),
            ("DELETE", _) => "deletecollection".into(),
            (other, _) => other.to_ascii_lowercase(),
        };
        RecordedRequest {
            method: method.to_string(),
            path: path.to_string(),
            query: query.to_string(),
            content_type,
            user,
            verb,
            resource: target.map(|t| ResourceAttributes {
                group: t.group,
                resource: t.plural,
                subresource: t.subresource,
                namespace: t.namespace,
                name: t.name,
            }),
            status,
            body,
        }
    }

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
    /// Substring the request body must contain, if any.
    pub body_contains: Option<String>,
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
            body_contains: None,
        }
    }

    /// Only requests whose body contains `text`.
    pub fn when_body_contains(mut self, text: &str) -> Failure {
        self.body_contains = Some(text.to_owned());
        self
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
        kube::Client::try_from(self.config()).expect("fake API server: building a kube client")
    }

    /// A client whose requests are recorded as `user`'s (it sends `user` as its bearer
    /// token), so a test can tell one client's requests from another's.
    pub fn client_as(&self, user: &str) -> kube::Client {
        kube::Client::try_from(self.config_as(user))
            .expect("fake API server: building a kube client")
    }

    /// The configuration [`FakeApiServer::client_as`] builds its client from.
    pub fn config_as(&self, user: &str) -> kube::Config {
        let mut config = self.config();
        let token = hyper::header::HeaderValue::from_str(&format!("Bearer {user}"))
            .expect("fake API server: user names fit in a header");
        config.headers.push((hyper::header::AUTHORIZATION, token));
        config
    }

    fn config(&self) -> kube::Config {
        let uri: hyper::Uri = self
            .url()
            .parse()
            .expect("fake API server: url is a valid URI");
        kube::Config::new(uri)
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
        let Ok(info) = st.info(&target) else {
            return Vec::new();
        };
        st.collection(&target)
            .into_iter()
            .map(|obj| State::present(&target, &info, obj))
            .collect()
    }

    /// One request served in-process, with the same validation, defaulting
    /// and storage as over HTTP but without the transport, and not recorded:
    /// for loading many objects quickly. The stored object, or the status
    /// code and body of the refusal.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &Value,
    ) -> Result<Value, (u16, Value)> {
        let bytes = serde_json::to_vec(body).expect("fake API server: a JSON value serialises");
        server::serve_in_process(&self.shared, method, path, content_type, &bytes)
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

    /// CEL rules that writes needed but the evaluator could not run (so they were skipped).
    pub fn unevaluated_rules(&self) -> BTreeSet<String> {
        self.shared.lock().unevaluated_rules.clone()
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
