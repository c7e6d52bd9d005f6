//! Runs the real tend controller in-process against the fake API server and
//! moto (behind the fault proxy), with short intervals so tests move quickly.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tend::api::{Phase, Workspace};
use tend::config::RunArgs;
use tend::health::Readiness;
use tend::metrics::Metrics;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::fake_kube::{FakeApiServer, FakeConfig};
use super::faults::FaultProxy;
use super::kubelet::{Agent, Kubelet};
use super::moto::Moto;

pub const NS: &str = "default";
pub const CLUSTER: &str = "test-cluster";
pub const WAIT: Duration = Duration::from_secs(30);
/// Who the controller's requests come from: the ServiceAccount `deploy/` runs it as.
pub const CONTROLLER_USER: &str = "system:serviceaccount:tend-system:tend";

/// One running controller process, in-process.
pub struct Replica {
    pub user: String,
    pub metrics: Arc<Metrics>,
    pub ready: Arc<Readiness>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
}

impl Replica {
    /// Stops it mid-flight, as a crash would: nothing is given up.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Stops it as SIGTERM does, and waits until it has.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// A series of its metrics; see [`Rig::metric`].
    pub fn metric(&self, series: &str) -> u64 {
        series_value(&self.metrics, series)
    }

    /// Whether it holds the Lease (with leader election) and acts.
    pub fn leads(&self) -> bool {
        self.ready.role() == tend::health::Role::Leader
    }
}

/// The value of the series named exactly so (name and labels), 0 before it
/// first counts.
fn series_value(metrics: &Metrics, series: &str) -> u64 {
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

pub struct Rig {
    pub kube: FakeApiServer,
    pub moto: Moto,
    pub proxy: FaultProxy,
    pub subnet: String,
    pub zone: String,
    pub ami: String,
    pub args: RunArgs,
    pub metrics: Arc<Metrics>,
    controller: Option<Replica>,
}

impl Rig {
    /// Starts the fake API server (a current Kubernetes with tend's CRD), moto and the
    /// proxy, but not the controller.
    pub async fn new() -> Rig {
        Rig::new_on(FakeConfig::default()).await
    }

    /// Like [`Rig::new`], on an API server configured as given.
    pub async fn new_on(cluster: FakeConfig) -> Rig {
        show_logs();
        let kube = FakeApiServer::start_with(cluster).await;
        let moto = Moto::start().await;
        let proxy = FaultProxy::start(moto.url()).await;
        let (subnet, zone) = moto.default_subnet(None).await;
        let ami = moto.some_ami().await;
        let args = RunArgs::from_flags([
            "--cluster-name",
            CLUSTER,
            "--namespace",
            NS,
            "--ec2-endpoint",
            proxy.url(),
            "--region",
            "us-east-1",
            "--probe-timeout",
            "2s",
            "--progress-interval",
            "200ms",
            "--resync-interval",
            "1s",
            "--error-backoff",
            "200ms",
            "--sweep-interval",
            "500ms",
            "--restart-backoff",
            "200ms",
            "--stale-after",
            "2s",
            "--not-found-grace",
            "3s",
        ])
        .expect("test flags parse");
        Rig {
            kube,
            moto,
            proxy,
            subnet,
            zone,
            ami,
            args,
            metrics: Arc::new(Metrics::default()),
            controller: None,
        }
    }

    /// A rig with the controller already running.
    pub async fn start() -> Rig {
        Rig::start_on(FakeConfig::default()).await
    }

    /// A rig with the controller already running, on an API server configured as given.
    pub async fn start_on(cluster: FakeConfig) -> Rig {
        let mut rig = Rig::new_on(cluster).await;
        rig.start_controller().await;
        rig
    }

    /// An API server older than 1.25: it has no CEL, so specs that break the CRD's
    /// rules reach the controller, which must catch them itself.
    pub fn before_cel() -> FakeConfig {
        FakeConfig {
            minor: 24,
            ..FakeConfig::default()
        }
    }

    /// The EC2 client configuration the controller uses: through the proxy,
    /// with tend's own timeouts and retries.
    pub fn ec2_config(&self) -> aws_sdk_ec2::Config {
        tend::tune(Moto::ec2_config_for(self.proxy.url()), &self.args).build()
    }

    pub async fn start_controller(&mut self) {
        let conf = self.ec2_config();
        self.start_controller_with(conf).await;
    }

    pub async fn start_controller_with(&mut self, ec2: aws_sdk_ec2::Config) {
        assert!(self.controller.is_none(), "controller already running");
        self.metrics = Arc::new(Metrics::default());
        let replica = self.replica_with(CONTROLLER_USER, ec2, self.metrics.clone());
        self.controller = Some(replica);
    }

    /// A replica of the controller running as `user`, with its own metrics and
    /// readiness; under leader election when `args.leader_election` is set
    /// (its identity is then `user`).
    pub fn replica(&self, user: &str) -> Replica {
        self.replica_with(user, self.ec2_config(), Arc::new(Metrics::default()))
    }

    fn replica_with(&self, user: &str, ec2: aws_sdk_ec2::Config, metrics: Arc<Metrics>) -> Replica {
        let mut args = self.args.clone();
        if args.leader_election && args.lease_identity.is_none() {
            args.lease_identity = Some(user.to_string());
        }
        let client = self.kube.client_as(user);
        let election = tend::lease_settings(&args, &client).map(|lease| {
            let lease_client = lease
                .client(self.kube.config_as(user))
                .expect("a Lease client for the fake API server");
            (lease_client, lease)
        });
        let ready = Arc::new(Readiness::default());
        let shutdown = CancellationToken::new();
        // EC2 event hints come from moto's SQS, not through the fault proxy.
        let aws = tend::Aws {
            ec2,
            sqs: args.sqs_queue_url.as_ref().map(|_| self.moto.sqs_config()),
        };
        let task = tokio::spawn({
            let (metrics, ready, shutdown) = (metrics.clone(), ready.clone(), shutdown.clone());
            async move {
                tend::run_replica(&args, client, election, aws, metrics, ready, shutdown).await;
            }
        });
        Replica {
            user: user.to_string(),
            metrics,
            ready,
            shutdown,
            task,
        }
    }

    /// Kills the controller mid-flight, as a crash would.
    pub async fn crash_controller(&mut self) {
        if let Some(replica) = self.controller.take() {
            replica.kill().await;
        }
    }

    /// A counter of the running controller: the value of the series named
    /// exactly so (name and labels), 0 before it first counts.
    pub fn metric(&self, series: &str) -> u64 {
        series_value(&self.metrics, series)
    }

    /// Sweeps the running controller has finished, read from its metrics.
    pub fn sweeps(&self) -> u64 {
        self.metric("tend_sweep_duration_seconds_count")
    }

    /// Waits until the running controller has finished `n` sweeps.
    pub async fn wait_sweeps(&self, n: u64) {
        self.kube
            .wait_for(WAIT, &format!("{n} sweeps"), |_| self.sweeps() >= n)
            .await;
    }

    /// Waits until a finished sweep has looked at `n` Workspaces: the
    /// sweeper's cache holds them all, so every later sweep judges them as
    /// one group.
    pub async fn wait_swept(&self, n: u64) {
        self.kube
            .wait_for(WAIT, &format!("a sweep of {n}"), |_| {
                self.metric("tend_sweep_objects_observed") >= n
            })
            .await;
    }

    pub fn workspaces(&self) -> Api<Workspace> {
        Api::namespaced(self.kube.client(), NS)
    }

    /// A Workspace of the rig's namespace with this spec.
    pub fn workspace(name: &str, spec: Value) -> Workspace {
        serde_json::from_value(json!({
            "apiVersion": "tend.dev/v1alpha1",
            "kind": "Workspace",
            "metadata": { "name": name, "namespace": NS },
            "spec": spec,
        }))
        .expect("workspace json")
    }

    /// A valid ec2 Workspace in the rig's subnet.
    pub fn ec2_workspace(&self, name: &str) -> Workspace {
        Rig::workspace(
            name,
            json!({
                "runtime": "ec2",
                "ec2": {
                    "instanceType": "t3.micro",
                    "imageId": self.ami,
                    "subnetId": self.subnet,
                    "tags": { "team": "platform" },
                    "volume": { "sizeGiB": 10 }
                }
            }),
        )
    }

    /// A valid container Workspace with a 1Gi claim mounted at /data.
    pub fn container_workspace(&self, name: &str) -> Workspace {
        Rig::workspace(
            name,
            json!({
                "runtime": "container",
                "container": {
                    "image": "busybox",
                    "command": ["sleep", "infinity"],
                    "volume": { "size": "1Gi", "mountPath": "/data" }
                }
            }),
        )
    }

    /// A valid external Workspace whose heartbeat times out after `timeout` seconds.
    pub fn external_workspace(&self, name: &str, timeout: i64) -> Workspace {
        Rig::workspace(
            name,
            json!({
                "runtime": "external",
                "external": { "heartbeatTimeoutSeconds": timeout }
            }),
        )
    }

    /// An external machine's agent: renews the Lease named after the Workspace.
    pub fn agent(&self, workspace: &str) -> Agent {
        Agent::new(self.kube.client(), NS, workspace)
    }

    /// Scheduler and kubelet for the rig's namespace.
    pub fn kubelet(&self) -> Kubelet {
        Kubelet::new(self.kube.client(), NS)
    }

    /// A Pod or claim (`pods`, `persistentvolumeclaims`) of the rig's
    /// namespace, read straight from the fake server.
    pub fn core_object(&self, resource: &str, name: &str) -> Option<Value> {
        self.kube
            .get_object(&format!("/api/v1/namespaces/{NS}/{resource}/{name}"))
    }

    /// Waits until the Pod exists.
    pub async fn wait_pod(&self, name: &str) -> Value {
        let path = format!("/api/v1/namespaces/{NS}/pods/{name}");
        self.kube
            .wait_for(WAIT, &format!("Pod {name}"), |k| {
                k.get_object(&path).is_some()
            })
            .await;
        self.core_object("pods", name).expect("pod exists")
    }

    /// Waits until the Pod or claim is gone.
    pub async fn wait_core_gone(&self, resource: &str, name: &str) {
        let path = format!("/api/v1/namespaces/{NS}/{resource}/{name}");
        self.kube
            .wait_for(WAIT, &format!("{resource}/{name} to go"), |k| {
                k.get_object(&path).is_none()
            })
            .await;
    }

    pub async fn create(&self, ws: &Workspace) -> Workspace {
        self.workspaces()
            .create(&PostParams::default(), ws)
            .await
            .expect("create workspace")
    }

    pub async fn patch_spec(&self, name: &str, spec: Value) {
        self.workspaces()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": spec })),
            )
            .await
            .expect("patch spec");
    }

    pub async fn delete(&self, name: &str) {
        self.workspaces()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete workspace");
    }

    fn path(name: &str) -> String {
        format!("/apis/tend.dev/v1alpha1/namespaces/{NS}/workspaces/{name}")
    }

    /// The stored Workspace, read straight from the fake server.
    pub fn get(&self, name: &str) -> Option<Workspace> {
        self.kube
            .get_object(&Self::path(name))
            .map(|v| serde_json::from_value(v).expect("stored workspace parses"))
    }

    pub fn phase(&self, name: &str) -> Option<Phase> {
        self.get(name).and_then(|w| w.status).and_then(|s| s.phase)
    }

    /// Waits until the stored Workspace satisfies `cond`.
    pub async fn wait_ws(
        &self,
        name: &str,
        what: &str,
        cond: impl Fn(&Workspace) -> bool,
    ) -> Workspace {
        let path = Self::path(name);
        self.kube
            .wait_for(WAIT, what, |k| {
                k.get_object(&path)
                    .and_then(|v| serde_json::from_value::<Workspace>(v).ok())
                    .is_some_and(|w| cond(&w))
            })
            .await;
        self.get(name).expect("workspace exists")
    }

    pub async fn wait_phase(&self, name: &str, phase: Phase) -> Workspace {
        let what = format!("{name} to reach phase {phase}");
        self.wait_ws(name, &what, |w| {
            w.status.as_ref().and_then(|s| s.phase) == Some(phase)
        })
        .await
    }

    pub async fn wait_gone(&self, name: &str) {
        let path = Self::path(name);
        self.kube
            .wait_for(WAIT, &format!("{name} to be deleted"), |k| {
                k.get_object(&path).is_none()
            })
            .await;
    }

    /// Events recorded about a Workspace, oldest first, as (type, reason, note).
    pub fn events(&self, name: &str) -> Vec<(String, String, String)> {
        let mut events: Vec<Value> = self
            .kube
            .list_objects(&format!("/apis/events.k8s.io/v1/namespaces/{NS}/events"))
            .into_iter()
            .filter(|e| e["regarding"]["name"] == name)
            .collect();
        events.sort_by_key(|e| {
            e["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|v| v.parse::<u64>().ok())
        });
        events
            .iter()
            .map(|e| {
                (
                    e["type"].as_str().unwrap_or_default().to_owned(),
                    e["reason"].as_str().unwrap_or_default().to_owned(),
                    e["note"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    pub fn event_reasons(&self, name: &str) -> Vec<String> {
        self.events(name).into_iter().map(|(_, r, _)| r).collect()
    }

    /// Waits until an event with this reason has been recorded about `name`.
    pub async fn wait_event(&self, name: &str, reason: &str) {
        let path = format!("/apis/events.k8s.io/v1/namespaces/{NS}/events");
        self.kube
            .wait_for(WAIT, &format!("event {reason} for {name}"), |k| {
                k.list_objects(&path)
                    .iter()
                    .any(|e| e["regarding"]["name"] == name && e["reason"] == reason)
            })
            .await;
    }

    /// Instances in moto that carry this Workspace's uid tag, in any state.
    pub async fn instances_of(&self, ws: &Workspace) -> Vec<aws_sdk_ec2::types::Instance> {
        let uid = ws.metadata.uid.as_deref().expect("uid");
        self.moto
            .instances_tagged("tend.dev/workspace-uid", uid)
            .await
    }

    pub fn ready(&self, name: &str) -> Option<(String, String, String)> {
        let ws = self.get(name)?;
        let c = ws
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")?;
        Some((c.status, c.reason, c.message))
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(replica) = self.controller.take() {
            replica.task.abort();
        }
    }
}

/// With `TEND_TEST_LOG` set (a filter such as `tend=debug`), the
/// controller's logs go to the test's output.
fn show_logs() {
    if let Ok(filter) = std::env::var("TEND_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}
