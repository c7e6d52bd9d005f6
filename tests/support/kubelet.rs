//! The fake API server runs no scheduler and no kubelet, so tests play both:
//! they register Nodes, bind Pods to them and write what a kubelet would
//! report about each Pod and its workspace container. They also play the
//! agent of an external machine, renewing its heartbeat Lease.

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// Scheduler and kubelet for the Pods of one namespace.
pub struct Kubelet {
    client: kube::Client,
    namespace: String,
}

impl Kubelet {
    pub fn new(client: kube::Client, namespace: &str) -> Kubelet {
        Kubelet {
            client,
            namespace: namespace.to_owned(),
        }
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    /// Registers a Node whose `Ready` condition has this status (`True`,
    /// `False` or `Unknown`).
    pub async fn node(&self, name: &str, ready: &str) {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        self.nodes()
            .create(&PostParams::default(), &node)
            .await
            .expect("create node");
        self.set_ready(name, ready).await;
    }

    /// What the node controller writes when a node stops (or resumes)
    /// reporting.
    pub async fn set_ready(&self, name: &str, ready: &str) {
        let status = json!({"status": {"conditions": [{"type": "Ready", "status": ready}]}});
        self.nodes()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("patch node status");
    }

    /// Binds the Pod to `node` (a real scheduler posts a Binding; the fake
    /// takes the field directly) and reports its container running.
    pub async fn run(&self, pod: &str, node: &str) {
        self.pods()
            .patch(
                pod,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"nodeName": node}})),
            )
            .await
            .expect("bind pod");
        self.report(pod, "Running", json!({"running": {}})).await;
    }

    /// Reports the Pod failed: its container exited with `code` and `reason`.
    pub async fn fail(&self, pod: &str, code: i32, reason: &str) {
        self.report(
            pod,
            "Failed",
            json!({"terminated": {"exitCode": code, "reason": reason}}),
        )
        .await;
    }

    /// Writes the Pod's phase and its workspace container's state.
    pub async fn report(&self, pod: &str, phase: &str, state: Value) {
        let status = json!({"status": {
            "phase": phase,
            "containerStatuses": [{"name": "workspace", "state": state, "ready": phase == "Running",
                "restartCount": 0, "image": "busybox", "imageID": ""}],
        }});
        self.pods()
            .patch_status(pod, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("patch pod status");
    }
}

/// The agent of an external machine: it renews the Lease named after its
/// Workspace, labelled so that tend's watch sees it.
pub struct Agent {
    client: kube::Client,
    namespace: String,
    name: String,
}

impl Agent {
    pub fn new(client: kube::Client, namespace: &str, workspace: &str) -> Agent {
        Agent {
            client,
            namespace: namespace.to_owned(),
            name: workspace.to_owned(),
        }
    }

    fn leases(&self) -> Api<Lease> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// A heartbeat now.
    pub async fn beat(&self) {
        self.beat_at(Timestamp::now()).await;
    }

    /// A heartbeat written as if at `at` (what a machine whose last renewal
    /// was then, or whose clock is off, leaves behind).
    pub async fn beat_at(&self, at: Timestamp) {
        let renewed = at.to_string();
        let renewal = self
            .leases()
            .patch(
                &self.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"renewTime": renewed}})),
            )
            .await;
        match renewal {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {
                let lease: Lease = serde_json::from_value(json!({
                    "metadata": {"name": self.name, "labels": {"tend.dev/workspace": self.name}},
                    "spec": {"holderIdentity": format!("{}-machine", self.name),
                        "leaseDurationSeconds": 30, "renewTime": renewed},
                }))
                .unwrap();
                self.leases()
                    .create(&PostParams::default(), &lease)
                    .await
                    .expect("create lease");
            }
            Err(e) => panic!("renew lease: {e}"),
        }
    }
}
