//! `make demo`: runs the real `tend run` binary against a sandbox Kubernetes API
//! server and moto, and prints one Workspace of each runtime through its life:
//! `examples/workspace-ec2.yaml` comes online, dies behind tend's back and is
//! healed on the same volume, stops, starts and is deleted;
//! `examples/workspace-container.yaml` comes online, its Pod is killed and
//! replaced on the same claim; `examples/workspace-external.yaml` awaits its
//! agent, loses its heartbeat and gets it back.
//! No cluster and no AWS account needed.

#[path = "../tests/support/fake_kube.rs"]
#[allow(dead_code)]
mod fake_kube;
#[path = "../tests/support/kubelet.rs"]
mod kubelet;
#[path = "../tests/support/moto.rs"]
mod moto;
#[path = "../tests/support/paths.rs"]
mod paths;

use std::process::Stdio;
use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tend::api::{Phase, Workspace};

const NAME: &str = "alice-dev";
const BOX: &str = "bob-box";
const LAPTOP: &str = "carol-laptop";
const NS: &str = "default";
const NODE: &str = "demo-node";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let say = |what: &str| println!("{:>6.1}s  {what}", started.elapsed().as_secs_f64());

    say("starting moto (EC2 emulator) and a sandbox Kubernetes API server");
    let moto = moto::Moto::start().await;
    let kube = fake_kube::FakeApiServer::start().await;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, kube.kubeconfig_yaml())?;

    let tend_bin = std::env::current_exe()?
        .parent()
        .and_then(|examples| examples.parent())
        .map(|debug| debug.join("tend"))
        .ok_or_else(|| anyhow::anyhow!("cannot locate the tend binary"))?;
    let log_path = dir.path().join("tend.log");
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    say(&format!(
        "starting {} run (logs: {})",
        tend_bin.display(),
        log_path.display()
    ));
    let mut tend = tokio::process::Command::new(&tend_bin)
        .args(["run", "--region", "us-east-1", "--cluster-name", "demo"])
        .args(["--ec2-endpoint", moto.url()])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .args(["--progress-interval", "500ms", "--resync-interval", "2s"])
        .args(["--sweep-interval", "2s"])
        .env("KUBECONFIG", &kubeconfig)
        .env("AWS_ACCESS_KEY_ID", "demo")
        .env("AWS_SECRET_ACCESS_KEY", "demo")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::from(std::fs::File::create(&log_path)?))
        .stderr(Stdio::from(std::fs::File::create(
            dir.path().join("tend.err"),
        )?))
        .kill_on_drop(true)
        .spawn()?;

    // The example names a real subnet and AMI; point it at moto's.
    let mut ws: Workspace = serde_yaml::from_str(&std::fs::read_to_string(paths::project_path(
        "examples/workspace-ec2.yaml",
    ))?)?;
    let (subnet, zone) = moto.default_subnet(None).await;
    let ami = moto.some_ami().await;
    if let Some(ec2) = ws.spec.ec2.as_mut() {
        ec2.subnet_id = subnet.clone();
        ec2.image_id = Some(ami.clone());
        ec2.security_group_ids.clear();
    }
    let api: Api<Workspace> = Api::namespaced(kube.client(), NS);
    say(&format!(
        "kubectl apply -f examples/workspace-ec2.yaml  (subnet {subnet} in {zone}, {ami})"
    ));
    api.create(&PostParams::default(), &ws).await?;

    let mut timeline = Timeline::new(NAME);
    timeline
        .until(&kube, &say, |p| p == Some(Phase::Online))
        .await?;

    // Kill the instance behind tend's back, as a spot reclaim or a console
    // click would; the sweeper notices and tend heals it on the same volume.
    let dead = status_of(&api).await?.instance_id.unwrap_or_default();
    say(&format!(
        "aws ec2 terminate-instances --instance-ids {dead}   (behind tend's back)"
    ));
    moto.ec2()
        .terminate_instances()
        .instance_ids(&dead)
        .send()
        .await?;
    timeline
        .until(&kube, &say, |p| p != Some(Phase::Online))
        .await?;
    timeline
        .until(&kube, &say, |p| p == Some(Phase::Online))
        .await?;
    let healed = status_of(&api).await?;
    say(&format!(
        "healed: instance {} replaced by {} on the same volume {} (restarts: {})",
        dead,
        healed.instance_id.as_deref().unwrap_or("-"),
        healed.volume_id.as_deref().unwrap_or("-"),
        healed.restarts
    ));

    say("kubectl patch ws alice-dev --type merge -p '{\"spec\":{\"desiredState\":\"Stopped\"}}'");
    patch(&api, json!({ "desiredState": "Stopped" })).await?;
    timeline
        .until(&kube, &say, |p| p == Some(Phase::Stopped))
        .await?;

    say("kubectl patch ws alice-dev --type merge -p '{\"spec\":{\"desiredState\":\"Running\"}}'");
    patch(&api, json!({ "desiredState": "Running" })).await?;
    timeline
        .until(&kube, &say, |p| p == Some(Phase::Online))
        .await?;

    say("kubectl delete ws alice-dev");
    api.delete(NAME, &DeleteParams::default()).await?;
    timeline.until(&kube, &say, |_| false).await?;

    let ec2 = moto.ec2();
    report_ec2(&ec2, &say).await?;

    container(&kube, &say).await?;
    external(&kube, &say).await?;

    tend.start_kill()?;
    let _ = tend.wait().await;
    say("done");
    Ok(())
}

async fn report_ec2(ec2: &aws_sdk_ec2::Client, say: &impl Fn(&str)) -> anyhow::Result<()> {
    let instances = ec2.describe_instances().send().await?;
    for i in instances.reservations().iter().flat_map(|r| r.instances()) {
        say(&format!(
            "EC2: instance {} is {}",
            i.instance_id().unwrap_or("?"),
            i.state()
                .and_then(|s| s.name())
                .map(|s| s.as_str())
                .unwrap_or("?")
        ));
    }
    for v in ec2.describe_volumes().send().await?.volumes() {
        say(&format!(
            "EC2: volume {} is {} (reclaimPolicy Retain keeps the data)",
            v.volume_id().unwrap_or("?"),
            v.state().map(|s| s.as_str()).unwrap_or("?")
        ));
    }
    Ok(())
}

/// A container Workspace: its Pod is killed and replaced on the same claim.
/// The sandbox has no scheduler and no kubelet, so the demo plays both.
async fn container(kube: &fake_kube::FakeApiServer, say: &impl Fn(&str)) -> anyhow::Result<()> {
    let kubelet = kubelet::Kubelet::new(kube.client(), NS);
    kubelet.node(NODE, "True").await;
    let ws: Workspace = serde_yaml::from_str(&std::fs::read_to_string(paths::project_path(
        "examples/workspace-container.yaml",
    ))?)?;
    let api: Api<Workspace> = Api::namespaced(kube.client(), NS);
    say("kubectl apply -f examples/workspace-container.yaml");
    api.create(&PostParams::default(), &ws).await?;
    let mut timeline = Timeline::new(BOX);
    for (pod, last) in [(format!("{BOX}-1"), false), (format!("{BOX}-2"), true)] {
        timeline
            .until(kube, say, |p| {
                p == Some(Phase::Provisioning) || p == Some(Phase::Restarting)
            })
            .await?;
        wait_for_pod(kube, &pod).await?;
        say(&format!(
            "kubelet: {pod} is scheduled on {NODE} and its container runs"
        ));
        kubelet.run(&pod, NODE).await;
        timeline
            .until(kube, say, |p| p == Some(Phase::Online))
            .await?;
        if last {
            break;
        }
        say(&format!(
            "kubelet: {pod}'s container is OOMKilled (exit code 137)"
        ));
        kubelet.fail(&pod, 137, "OOMKilled").await;
        timeline
            .until(kube, say, |p| p != Some(Phase::Online))
            .await?;
    }
    say(&format!("kubectl delete ws {BOX}"));
    api.delete(BOX, &DeleteParams::default()).await?;
    timeline.until(kube, say, |_| false).await?;
    let claim = format!("{BOX}-data");
    match kube.get_object(&format!(
        "/api/v1/namespaces/{NS}/persistentvolumeclaims/{claim}"
    )) {
        Some(_) => say(&format!(
            "claim {claim} is kept (reclaimPolicy Retain), no longer owned by the Workspace"
        )),
        None => say(&format!("claim {claim} is gone")),
    }
    Ok(())
}

/// An external Workspace: it awaits its agent, loses the heartbeat when the
/// agent stops and gets it back when the agent resumes.
async fn external(kube: &fake_kube::FakeApiServer, say: &impl Fn(&str)) -> anyhow::Result<()> {
    let mut ws: Workspace = serde_yaml::from_str(&std::fs::read_to_string(paths::project_path(
        "examples/workspace-external.yaml",
    ))?)?;
    if let Some(external) = ws.spec.external.as_mut() {
        external.heartbeat_timeout_seconds = 10;
    }
    let api: Api<Workspace> = Api::namespaced(kube.client(), NS);
    say(
        "kubectl apply -f examples/workspace-external.yaml  (heartbeatTimeoutSeconds 10, for the demo)",
    );
    api.create(&PostParams::default(), &ws).await?;
    let mut timeline = Timeline::new(LAPTOP);
    timeline
        .until(kube, say, |p| p == Some(Phase::AwaitingAgent))
        .await?;

    let beating = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let agent = kubelet::Agent::new(kube.client(), NS, LAPTOP);
    let on = beating.clone();
    let heart = tokio::spawn(async move {
        loop {
            if on.load(std::sync::atomic::Ordering::Relaxed) {
                agent.beat().await;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    say(&format!("the agent on {LAPTOP} renews its Lease every 2s"));
    timeline
        .until(kube, say, |p| p == Some(Phase::Online))
        .await?;
    say("the laptop goes to sleep: no more heartbeats");
    beating.store(false, std::sync::atomic::Ordering::Relaxed);
    timeline
        .until(kube, say, |p| p == Some(Phase::Offline))
        .await?;
    say("the laptop wakes up: the agent renews again");
    beating.store(true, std::sync::atomic::Ordering::Relaxed);
    timeline
        .until(kube, say, |p| p == Some(Phase::Online))
        .await?;
    heart.abort();
    say(&format!("kubectl delete ws {LAPTOP}"));
    api.delete(LAPTOP, &DeleteParams::default()).await?;
    timeline.until(kube, say, |_| false).await?;
    Ok(())
}

/// Waits until tend has created the Pod.
async fn wait_for_pod(kube: &fake_kube::FakeApiServer, pod: &str) -> anyhow::Result<()> {
    let path = format!("/api/v1/namespaces/{NS}/pods/{pod}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while kube.get_object(&path).is_none() {
        anyhow::ensure!(Instant::now() < deadline, "no Pod {pod}; see the tend log");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn status_of(api: &Api<Workspace>) -> anyhow::Result<tend::api::WorkspaceStatus> {
    Ok(api.get(NAME).await?.status.unwrap_or_default())
}

async fn patch(api: &Api<Workspace>, spec: Value) -> anyhow::Result<()> {
    api.patch(
        NAME,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": spec })),
    )
    .await?;
    Ok(())
}

/// Prints each change of one Workspace's phase and Ready condition, and each
/// new event about it.
struct Timeline {
    name: &'static str,
    last: Option<String>,
    events_seen: std::collections::HashMap<String, u64>,
}

impl Timeline {
    fn new(name: &'static str) -> Self {
        Timeline {
            name,
            last: None,
            events_seen: Default::default(),
        }
    }

    /// Follows the Workspace until `done(phase)` holds, or it is gone.
    async fn until(
        &mut self,
        kube: &fake_kube::FakeApiServer,
        say: &impl Fn(&str),
        done: impl Fn(Option<Phase>) -> bool,
    ) -> anyhow::Result<()> {
        let path = format!(
            "/apis/tend.dev/v1alpha1/namespaces/{NS}/workspaces/{}",
            self.name
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let object = kube.get_object(&path);
            self.print_events(kube, say);
            let Some(object) = object else {
                say(&format!(
                    "workspace {} is gone (finalizer released)",
                    self.name
                ));
                return Ok(());
            };
            let ws: Workspace = serde_json::from_value(object)?;
            let status = ws.status.clone().unwrap_or_default();
            let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
            let line = format!(
                "{:<13} {:<13} Ready={:<7} {:<22} instance={:<20} volume={}",
                self.name,
                status
                    .phase
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".into()),
                ready.map(|c| c.status.as_str()).unwrap_or("-"),
                ready.map(|c| c.reason.as_str()).unwrap_or("-"),
                status.backend_id().unwrap_or("-"),
                status.volume_id.as_deref().unwrap_or("-"),
            );
            if self.last.as_deref() != Some(&line) {
                say(&format!("kubectl get ws: {line}"));
                self.last = Some(line);
            }
            if done(status.phase) {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "timed out; see the tend log");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Prints events not printed before; a repeat of an event (the recorder
    /// counts repeats in a series) prints again.
    fn print_events(&mut self, kube: &fake_kube::FakeApiServer, say: &impl Fn(&str)) {
        let mut events =
            kube.list_objects(&format!("/apis/events.k8s.io/v1/namespaces/{NS}/events"));
        events.sort_by_key(|e| {
            e["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|v| v.parse::<u64>().ok())
        });
        for e in events
            .into_iter()
            .filter(|e| e["regarding"]["name"] == self.name)
        {
            let name = e["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let count = e["series"]["count"].as_u64().unwrap_or(1);
            if self.events_seen.get(&name) == Some(&count) {
                continue;
            }
            self.events_seen.insert(name, count);
            say(&format!(
                "  event {:<7} {:<14} {}",
                e["type"].as_str().unwrap_or_default(),
                e["reason"].as_str().unwrap_or_default(),
                e["note"].as_str().unwrap_or_default()
            ));
        }
    }
}
