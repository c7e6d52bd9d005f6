//! The fake API server runs no scheduler and no kubelet, so tests play both:
//! they register Nodes, bind Pods to them and write what a kubelet would
//! report about each Pod and its workspace container.

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
