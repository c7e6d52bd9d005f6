//! `make bench`, part two: the real controller, run as its own process (the
//! `tend run` binary), over large fleets. See BENCHMARKS.md.
//!
//! - **Restart over a settled fleet.** The fake API server is loaded with N
//!   Workspaces whose status is copied from one the controller wrote itself
//!   (against moto), and a fast EC2 simulator (`support/ec2_http.rs`), which
//!   speaks EC2's query protocol, runs their N instances. Counted from the
//!   controller's start: DescribeInstances calls and status writes until its
//!   first full sweep, then per steady sweep; its peak RSS and CPU seconds.
//! - **A burst of creations** against moto: N Workspaces created at once,
//!   DescribeInstances calls until all are Online.
//!
//! Flags: `--sizes 10000,100000` (the restart fleets; empty skips them),
//! `--burst N` (0 skips the burst).

#[path = "../tests/support/fake_kube.rs"]
#[allow(dead_code)]
mod fake_kube;
#[path = "../tests/support/faults.rs"]
mod faults;
#[path = "../tests/support/moto.rs"]
mod moto;
#[path = "../tests/support/paths.rs"]
#[allow(dead_code)]
mod paths;

#[path = "support/common.rs"]
mod common;
#[path = "support/ec2_http.rs"]
mod ec2_http;

use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::InstanceStateName;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use tend::api::Workspace;
use tend::backend::ec2::TAG_UID;
use tend::config::RunArgs;
use tend::metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{Verdict, ec2_workspace};
use ec2_http::{Common, Ec2Sim, SimInstance};
use fake_kube::FakeApiServer;
use faults::FaultProxy;
use moto::Moto;

const NS: &str = "default";
const CLUSTER: &str = "bench";
const REGION: &str = "us-east-1";
/// tend's defaults that the targets are stated in.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
const BATCH_SIZE: usize = 200;
const MAX_PER_SWEEP: usize = 20_000;
/// Each simulated DescribeInstances takes this long.
const SIM_LATENCY: Duration = Duration::from_millis(100);
/// Steady sweeps measured after the first full one.
const STEADY_SWEEPS: u64 = 2;
/// A safety resync inside the steady window, so that its cost is measured:
/// every settled Workspace is reconciled once there, with nothing changed.
const RESYNC: &str = "90s";
const WAIT: Duration = Duration::from_secs(900);
const TEMPLATE_WAIT: Duration = Duration::from_secs(120);
/// The burst runs at tend's defaults but for the mutating rate: at 4 calls/s,
/// three mutating calls per Workspace would take 1,000 Workspaces 12 minutes.
const BURST_FLAGS: &[&str] = &["--ec2-mutate-rate", "50", "--ec2-mutate-burst", "50"];

fn collection() -> String {
    format!("/apis/tend.dev/v1alpha1/namespaces/{NS}/workspaces")
}

fn path(name: &str) -> String {
    format!("{}/{name}", collection())
}

/// A Workspace the controller provisioned and swept, as status recorded it,
/// and its instance as EC2 described it: what every loaded Workspace copies.
struct Template {
    name: String,
    uid: String,
    object: Value,
    instance_id: String,
    volume_id: String,
    instance: SimInstance,
    common: Common,
}

/// Runs the controller in-process against moto for one Workspace until it
/// is Online and swept, and keeps what it wrote.
async fn template() -> Template {
    let kube = FakeApiServer::start().await;
    let moto = Moto::start().await;
    let (subnet, _zone) = moto.default_subnet(None).await;
    let ami = moto.some_ami().await;
    let args = RunArgs::from_flags([
        "--cluster-name",
        CLUSTER,
        "--namespace",
        NS,
        "--region",
        REGION,
        "--ec2-endpoint",
        moto.url(),
        "--sweep-interval",
        "500ms",
        "--progress-interval",
        "200ms",
    ])
    .expect("template flags parse");
    let ec2 = tend::tune(Moto::ec2_config_for(moto.url()), &args).build();
    let metrics = Arc::new(Metrics::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = {
        let client = kube.client();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            tend::run_controller(
                &args,
                client,
                ec2,
                metrics,
                Default::default(),
                async move {
                    let _ = stopped.await;
                },
            )
            .await;
        })
    };
    let name = "template".to_owned();
    let ws = ec2_workspace(&name, NS, &ami, &subnet);
    Api::<Workspace>::namespaced(kube.client(), NS)
        .create(&PostParams::default(), &ws)
        .await
        .expect("create the template Workspace");
    let swept = |w: &Value| {
        w["status"]["phase"] == "Online" && w["status"]["observation"]["state"] == "Running"
    };
    kube.wait_for(TEMPLATE_WAIT, "the template Online and swept", |k| {
        k.get_object(&path(&name)).is_some_and(|w| swept(&w))
    })
    .await;
    let sweeps = |m: &Metrics| series(&m.encode(), "tend_sweep_duration_seconds_count");
    let after = sweeps(&metrics) + 2.0;
    kube.wait_for(TEMPLATE_WAIT, "two more sweeps", |_| {
        sweeps(&metrics) >= after
    })
    .await;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), controller).await;

    let object = kube.get_object(&path(&name)).expect("template exists");
    let status = &object["status"];
    let instance_id = status["instanceId"].as_str().expect("instance").to_owned();
    let volume_id = status["volumeId"].as_str().expect("volume").to_owned();
    let uid = object["metadata"]["uid"].as_str().expect("uid").to_owned();
    let described = moto
        .instance(&instance_id)
        .await
        .expect("template instance");
    let launch_time = described
        .launch_time()
        .map(|t| {
            jiff::Timestamp::from_second(t.secs())
                .expect("launch time")
                .to_string()
        })
        .expect("launch time");
    let instance = SimInstance {
        id: instance_id.clone(),
        zone: described
            .placement()
            .and_then(|p| p.availability_zone())
            .expect("zone")
            .to_owned(),
        volumes: described
            .block_device_mappings()
            .iter()
            .filter_map(|m| {
                Some((
                    m.device_name()?.to_owned(),
                    m.ebs()?.volume_id()?.to_owned(),
                ))
            })
            .collect(),
        tags: described
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
            .collect(),
        launch_time,
    };
    assert!(
        instance.volumes.iter().any(|(_, v)| *v == volume_id),
        "the template's data volume is attached: {instance:?}"
    );
    let common = Common {
        image_id: ami,
        instance_type: "t3.micro".into(),
        subnet_id: subnet,
        vpc_id: described.vpc_id().unwrap_or("vpc-0").to_owned(),
    };
    Template {
        name,
        uid,
        object,
        instance_id,
        volume_id,
        instance,
        common,
    }
}

/// Replaces every mention of the template's identity (`from`) in `text`.
fn rename(text: &str, names: &[(&str, &str)]) -> String {
    let mut out = text.to_owned();
    for (from, to) in names {
        out = out.replace(from, to);
    }
    out
}

/// Loads `n` copies of the template into `kube` (create, then the status
/// write, through the server's own validation) and returns their instances.
fn load(kube: &FakeApiServer, t: &Template, n: usize) -> Vec<SimInstance> {
    let meta = &t.object["metadata"];
    let mut instances = Vec::with_capacity(n);
    let status_text = serde_json::to_string(&t.object["status"]).expect("status serialises");
    for i in 0..n {
        let name = format!("ws-{i:06}");
        let id = format!("i-{:017x}", 0x0b00_0000_0000u64 + i as u64);
        let root = format!("vol-{:017x}", 0x0a00_0000_0000u64 + i as u64);
        let data = format!("vol-{:017x}", 0x0c00_0000_0000u64 + i as u64);
        let body = json!({
            "apiVersion": "tend.dev/v1alpha1",
            "kind": "Workspace",
            "metadata": {
                "name": name,
                "namespace": NS,
                "finalizers": meta["finalizers"],
                "labels": meta.get("labels").cloned().unwrap_or(json!({})),
                "annotations": meta.get("annotations").cloned().unwrap_or(json!({})),
            },
            "spec": t.object["spec"],
        });
        let created = kube
            .call("POST", &collection(), "application/json", &body)
            .unwrap_or_else(|e| panic!("loading {name}: {e:?}"));
        let uid = created["metadata"]["uid"].as_str().expect("uid").to_owned();
        let template_root = t
            .instance
            .volumes
            .iter()
            .map(|(_, v)| v.as_str())
            .find(|v| *v != t.volume_id)
            .unwrap_or("vol-none");
        let names = [
            (t.instance_id.as_str(), id.as_str()),
            (t.volume_id.as_str(), data.as_str()),
            (template_root, root.as_str()),
            (t.uid.as_str(), uid.as_str()),
            (t.name.as_str(), name.as_str()),
        ];
        let status: Value =
            serde_json::from_str(&rename(&status_text, &names)).expect("status parses");
        kube.call(
            "PATCH",
            &format!("{}/status", path(&name)),
            "application/merge-patch+json",
            &json!({ "status": status }),
        )
        .unwrap_or_else(|e| panic!("writing the status of {name}: {e:?}"));
        instances.push(SimInstance {
            id: id.clone(),
            zone: t.instance.zone.clone(),
            volumes: t
                .instance
                .volumes
                .iter()
                .map(|(d, v)| (d.clone(), rename(v, &names)))
                .collect(),
            tags: t
                .instance
                .tags
                .iter()
                .map(|(k, v)| (k.clone(), rename(v, &names)))
                .collect(),
            launch_time: t.instance.launch_time.clone(),
        });
    }
    instances
}

/// The value of the series named exactly so (name and labels) in a text
/// exposition, 0 if absent.
fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The controller, as its own process.
struct Controller {
    child: tokio::process::Child,
    metrics_port: u16,
    _dir: tempfile::TempDir,
}

impl Controller {
    async fn start(kube: &FakeApiServer, ec2_url: &str, extra: &[String]) -> Controller {
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, kube.kubeconfig_yaml()).expect("write kubeconfig");
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = std::fs::File::create(dir.path().join("tend.log")).expect("log file");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tend"))
            .args(["run", "--region", REGION, "--cluster-name", CLUSTER])
            .args(["--namespace", NS, "--ec2-endpoint", ec2_url])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(extra)
            .env("KUBECONFIG", &kubeconfig)
            .env("AWS_ACCESS_KEY_ID", "bench")
            .env("AWS_SECRET_ACCESS_KEY", "bench")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUST_LOG", "tend=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("start tend");
        Controller {
            child,
            metrics_port,
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("tend is running")
    }

    /// The controller's /metrics, or an empty text while it cannot answer.
    async fn metrics(&self) -> String {
        let get = async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).await?;
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .await?;
            let mut out = String::new();
            s.read_to_string(&mut out).await?;
            Ok::<_, std::io::Error>(out)
        };
        get.await.unwrap_or_default()
    }

    async fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.metrics().await;
            if ok(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// User plus system CPU seconds so far.
    fn cpu_secs(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name, which is in parentheses.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
            .sum();
        ticks / clock_ticks()
    }

    /// Peak resident set size, in KiB.
    fn peak_rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Reconciles of every result.
fn reconciles(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("tend_reconciles_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn sweeps(text: &str) -> f64 {
    series(text, "tend_sweep_duration_seconds_count")
}

fn status_writes(kube: &FakeApiServer) -> usize {
    kube.requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/status"))
        .count()
}

fn other_writes(kube: &FakeApiServer) -> usize {
    kube.requests()
        .iter()
        .filter(|r| r.method != "GET" && !(r.method == "PATCH" && r.path.ends_with("/status")))
        .count()
}

struct Restart {
    n: usize,
    load_secs: f64,
    first_sweep_secs: f64,
    first_describes: usize,
    first_other_ec2: usize,
    first_status_writes: usize,
    first_other_writes: usize,
    all_answered_secs: Option<f64>,
    steady_sweeps: u64,
    steady_describes: usize,
    steady_status_writes: usize,
    steady_other_writes: usize,
    steady_reconciles: f64,
    cpu_per_sweep: f64,
    startup_cpu: f64,
    /// From the first full sweep to the next: the reconciles it released.
    settle_cpu: f64,
    peak_rss_kib: u64,
}

async fn restart(t: &Template, n: usize) -> Restart {
    let loading = Instant::now();
    let kube = FakeApiServer::start().await;
    let instances = load(&kube, t, n);
    let sim = Ec2Sim::start(t.common.clone(), instances, SIM_LATENCY).await;
    let proxy = FaultProxy::start(&sim.url()).await;
    let load_secs = loading.elapsed().as_secs_f64();
    kube.clear_requests();
    sim.watch_answers();

    let mut extra: Vec<String> = vec!["--resync-interval".into(), RESYNC.into()];
    if n > MAX_PER_SWEEP {
        extra.extend(["--max-per-sweep".into(), n.to_string()]);
    }
    let started = Instant::now();
    let tend = Controller::start(&kube, proxy.url(), &extra).await;
    let full = |text: &str| {
        sweeps(text) >= 1.0 && series(text, "tend_sweep_objects_observed") as usize == n
    };
    let text = tend.wait_for("the first full sweep", full).await;
    let first_sweep_secs = started.elapsed().as_secs_f64();
    let first_sweep = sweeps(&text);
    let log = proxy.call_log();
    let first_describes = log
        .iter()
        .filter(|c| c.action == "DescribeInstances")
        .count();
    let first_other_ec2 = log.len() - first_describes;
    let first_status_writes = status_writes(&kube);
    let first_other_writes = other_writes(&kube);
    let all_answered_secs = sim
        .answered()
        .1
        .map(|at| at.saturating_duration_since(started).as_secs_f64());
    let startup_cpu = tend.cpu_secs();

    // The reconciles the first sweep's answers release run in full once;
    // the steady window starts a sweep later.
    let settle_at = first_sweep + 1.0;
    let text = tend
        .wait_for("the sweep after the first", |text| {
            sweeps(text) >= settle_at
        })
        .await;
    let first_sweep = sweeps(&text);
    let settle_cpu = tend.cpu_secs() - startup_cpu;
    proxy.clear_log();
    kube.clear_requests();
    let cpu_before = tend.cpu_secs();
    let reconciles_before = reconciles(&tend.metrics().await);
    let target = first_sweep + STEADY_SWEEPS as f64;
    let text = tend
        .wait_for("the steady sweeps", |text| sweeps(text) >= target)
        .await;
    let steady_sweeps = (sweeps(&text) - first_sweep) as u64;
    let cpu_per_sweep = (tend.cpu_secs() - cpu_before) / steady_sweeps.max(1) as f64;
    let steady_reconciles = reconciles(&text) - reconciles_before;
    let steady_describes = proxy.calls("DescribeInstances");
    let steady_status_writes = status_writes(&kube);
    let steady_other_writes = other_writes(&kube);
    let peak_rss_kib = tend.peak_rss_kib();
    tend.stop().await;
    Restart {
        n,
        load_secs,
        first_sweep_secs,
        first_describes,
        first_other_ec2,
        first_status_writes,
        first_other_writes,
        all_answered_secs,
        steady_sweeps,
        steady_describes,
        steady_status_writes,
        steady_other_writes,
        steady_reconciles,
        cpu_per_sweep,
        startup_cpu,
        settle_cpu,
        peak_rss_kib,
    }
}

struct Burst {
    n: usize,
    /// Online when the measurement ended: `n`, unless the wait ran out.
    online: usize,
    all_online_secs: f64,
    describes: usize,
    by_id: usize,
    /// Every EC2 action: its count, how many were not answered with 200,
    /// and the proxy's median and 95th percentile latency, in ms.
    calls: Vec<(String, usize, usize, u128, u128)>,
    reconciles: u64,
    /// Workspaces with more than one instance that is not terminated.
    doubled: Vec<(String, usize)>,
}

/// `n` Workspaces created at once against moto, with [`BURST_FLAGS`].
async fn burst(n: usize) -> Burst {
    let kube = FakeApiServer::start().await;
    let moto = Moto::start().await;
    let proxy = FaultProxy::start(moto.url()).await;
    let (subnet, _zone) = moto.default_subnet(None).await;
    let ami = moto.some_ami().await;
    let flags: Vec<String> = BURST_FLAGS.iter().map(|f| f.to_string()).collect();
    let tend = Controller::start(&kube, proxy.url(), &flags).await;
    tend.wait_for("the controller to serve metrics", |t| !t.is_empty())
        .await;
    proxy.clear_log();
    let api: Api<Workspace> = Api::namespaced(kube.client(), NS);
    let started = Instant::now();
    for i in 0..n {
        let ws = ec2_workspace(&format!("burst-{i:04}"), NS, &ami, &subnet);
        api.create(&PostParams::default(), &ws)
            .await
            .expect("create workspace");
    }
    // Past the wait, what was reached is reported rather than lost.
    let online = || {
        kube.list_objects(&collection())
            .iter()
            .filter(|w| w["status"]["phase"] == "Online")
            .count()
    };
    while online() < n && started.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let online = online();
    let all_online_secs = started.elapsed().as_secs_f64();
    let log = proxy.call_log();
    let reconciles = reconciles(&tend.metrics().await) as u64;
    tend.stop().await;
    let describes: Vec<_> = log
        .iter()
        .filter(|c| c.action == "DescribeInstances")
        .collect();
    let by_id = describes
        .iter()
        .filter(|c| c.params.keys().any(|k| k.starts_with("InstanceId.")))
        .count();
    let mut took: std::collections::BTreeMap<String, (Vec<u128>, usize)> = Default::default();
    for c in &log {
        let ms = c.took.map_or(u128::MAX, |t| t.as_millis());
        let entry = took.entry(c.action.clone()).or_default();
        entry.0.push(ms);
        entry.1 += usize::from(c.outcome != faults::Outcome::Upstream { status: 200 });
    }
    let calls = took
        .into_iter()
        .map(|(action, (mut ms, failed))| {
            ms.sort_unstable();
            let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
            (action, ms.len(), failed, at(0.5), at(0.95))
        })
        .collect();
    let doubled = instances_per_workspace(&moto)
        .await
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    Burst {
        n,
        online,
        all_online_secs,
        describes: describes.len(),
        by_id,
        calls,
        reconciles,
        doubled,
    }
}

/// How many instances that are not terminated each Workspace uid has in moto.
async fn instances_per_workspace(moto: &Moto) -> Vec<(String, usize)> {
    let mut per_uid: std::collections::BTreeMap<String, usize> = Default::default();
    let mut pages = moto.ec2().describe_instances().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.expect("DescribeInstances from moto");
        for i in page.reservations().iter().flat_map(|r| r.instances()) {
            let ended = matches!(
                i.state().and_then(|s| s.name()),
                Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
            );
            let uid = i
                .tags()
                .iter()
                .find(|t| t.key() == Some(TAG_UID))
                .and_then(|t| t.value());
            if let (false, Some(uid)) = (ended, uid) {
                *per_uid.entry(uid.to_owned()).or_default() += 1;
            }
        }
    }
    per_uid.into_iter().collect()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Megabytes of 10^6 bytes.
fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let sizes: Vec<usize> = flag("--sizes")
        .map(|s| {
            s.split(',')
                .filter(|n| !n.is_empty())
                .map(|n| n.parse().expect("--sizes N,N,..."))
                .collect()
        })
        .unwrap_or_else(|| vec![10_000, 100_000]);
    let burst_n: usize = flag("--burst")
        .map(|n| n.parse().expect("--burst N"))
        .unwrap_or(1_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    println!("tend controller benchmark: `tend run` as its own process");
    println!(
        "EC2 simulator: {} ms per DescribeInstances; tend's defaults (sweep every {:?}, batch {BATCH_SIZE}, read bucket 15/s burst 75), --resync-interval {RESYNC}; --max-per-sweep N above {MAX_PER_SWEEP}",
        SIM_LATENCY.as_millis(),
        SWEEP_INTERVAL
    );
    eprintln!("running the template Workspace against moto ...");
    let t = runtime.block_on(template());
    let mut restarts = Vec::new();
    for &n in &sizes {
        eprintln!("restart over {n} settled Workspaces ...");
        let r = runtime.block_on(restart(&t, n));
        eprintln!(
            "  first full sweep after {:.1} s: {} describes, {} status writes; steady: {} describes over {} sweeps, {} status writes, {:.2} CPU s per sweep; peak RSS {:.0} MiB",
            r.first_sweep_secs,
            r.first_describes,
            r.first_status_writes,
            r.steady_describes,
            r.steady_sweeps,
            r.steady_status_writes,
            r.cpu_per_sweep,
            mib(r.peak_rss_kib)
        );
        restarts.push(r);
    }
    let bursts: Vec<Burst> = if burst_n > 0 {
        eprintln!("a burst of {burst_n} creations against moto ...");
        let b = runtime.block_on(burst(burst_n));
        eprintln!(
            "  {} of {} Online after {:.0} s: {} describes, {} reconciles; EC2 calls (count, p50 ms, p95 ms): {:?}",
            b.online, b.n, b.all_online_secs, b.describes, b.reconciles, b.calls
        );
        vec![b]
    } else {
        Vec::new()
    };

    println!("\n### Restart over N settled Workspaces\n");
    println!(
        "| N | load (s) | first full sweep after (s) | every instance listed after (s) | describes before it | other EC2 calls | status writes | other writes | CPU until then (s) | CPU until the next sweep (s) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &restarts {
        println!(
            "| {} | {:.0} | {:.1} | {} | {} | {} | {} | {} | {:.1} | {:.1} |",
            r.n,
            r.load_secs,
            r.first_sweep_secs,
            r.all_answered_secs
                .map_or("never".to_owned(), |s| format!("{s:.1}")),
            r.first_describes,
            r.first_other_ec2,
            r.first_status_writes,
            r.first_other_writes,
            r.startup_cpu,
            r.settle_cpu,
        );
    }
    println!(
        "\n### Steady sweeps, from the second sweep after the restart on (one safety resync inside the window)\n"
    );
    println!(
        "| N | sweeps | describes per sweep | status writes | other writes | reconciles | CPU per sweep (s) | peak RSS (MiB) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &restarts {
        println!(
            "| {} | {} | {:.1} | {} | {} | {} | {:.2} | {:.0} |",
            r.n,
            r.steady_sweeps,
            r.steady_describes as f64 / r.steady_sweeps.max(1) as f64,
            r.steady_status_writes,
            r.steady_other_writes,
            r.steady_reconciles,
            r.cpu_per_sweep,
            mib(r.peak_rss_kib),
        );
    }
    for b in &bursts {
        println!(
            "\n### A burst of {} creations (moto, {})\n",
            b.n,
            BURST_FLAGS.join(" ")
        );
        println!(
            "{} of {} Online after {:.0} s, in {} reconciles; {} DescribeInstances ({} by id), {:.2} per Workspace\n",
            b.online,
            b.n,
            b.all_online_secs,
            b.reconciles,
            b.describes,
            b.by_id,
            b.describes as f64 / b.n as f64,
        );
        println!("| EC2 call | calls | not answered 200 | p50 latency (ms) | p95 latency (ms) |");
        println!("|---|---:|---:|---:|---:|");
        for (action, n, failed, p50, p95) in &b.calls {
            println!("| {action} | {n} | {failed} | {p50} | {p95} |");
        }
    }

    println!("\n### Acceptance targets\n");
    let mut v = Verdict { failed: false };
    for r in &restarts {
        let n = r.n;
        let bound = n.div_ceil(BATCH_SIZE) + 2;
        v.check(
            r.first_describes <= bound && r.first_status_writes == 0,
            &format!(
                "N = {n}: a restart makes at most ceil(N/{BATCH_SIZE}) + 2 = {bound} describes before its first full sweep, with 0 status writes"
            ),
            format!(
                "{} describes, {} status writes",
                r.first_describes, r.first_status_writes
            ),
        );
        let per_sweep = r.steady_describes.div_ceil(r.steady_sweeps.max(1) as usize);
        let bound = n.div_ceil(BATCH_SIZE) + 1;
        v.check(
            per_sweep <= bound && r.steady_status_writes == 0,
            &format!(
                "N = {n}: a steady sweep makes at most ceil(N/{BATCH_SIZE}) + 1 = {bound} describes and 0 writes"
            ),
            format!(
                "{} describes over {} sweeps, {} status writes",
                r.steady_describes, r.steady_sweeps, r.steady_status_writes
            ),
        );
        // The targets are stated in decimal units: 150 MB and 1 GB.
        let rss_bound_mb = if n <= 10_000 { 150.0 } else { 1000.0 };
        if n == 10_000 || n == 100_000 {
            v.check(
                mb(r.peak_rss_kib) <= rss_bound_mb,
                &format!("N = {n}: peak controller RSS <= {rss_bound_mb:.0} MB"),
                format!(
                    "{:.0} MB ({:.0} MiB)",
                    mb(r.peak_rss_kib),
                    mib(r.peak_rss_kib)
                ),
            );
        }
        if n == 10_000 {
            let bound = 2.0 * SWEEP_INTERVAL.as_secs_f64();
            v.check(
                r.all_answered_secs.is_some() && r.first_sweep_secs <= bound,
                &format!(
                    "N = {n}: every Workspace has a fresh answer within 2 sweep intervals ({bound:.0} s) of a restart"
                ),
                format!("{:.1} s", r.first_sweep_secs),
            );
        }
    }
    for b in &bursts {
        v.check(
            b.doubled.is_empty(),
            &format!(
                "a burst of {} creations never leaves a Workspace with two instances",
                b.n
            ),
            format!("{} with more than one: {:?}", b.doubled.len(), b.doubled),
        );
        v.check(
            b.online == b.n && b.describes <= b.n,
            &format!(
                "a burst of {} creations makes at most 1 describe per Workspace",
                b.n
            ),
            format!(
                "{} describes, {:.2} per Workspace; {} of {} Online",
                b.describes,
                b.describes as f64 / b.n as f64,
                b.online,
                b.n
            ),
        );
    }
    v.exit_code()
}
