//! End to end: the real controller, in-process, against the fake Kubernetes API
//! server and moto (through the fault proxy, which only counts EC2 calls
//! here). Real time, not simulated.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use serde_json::Value;
use tend::api::Workspace;
use tend::config::RunArgs;
use tend::metrics::Metrics;

use crate::fake_kube::FakeApiServer;
use crate::faults::FaultProxy;
use crate::moto::Moto;

const NS: &str = "default";
pub const SWEEP_INTERVAL: &str = "5s";
pub const SWEEP_INTERVAL_SECS: f64 = 5.0;
/// With EC2 event hints the sweep is left at tend's default, so that a
/// detection well inside it is the hint's doing.
pub const HINTED_SWEEP_INTERVAL: &str = "60s";
const WAIT: Duration = Duration::from_secs(180);

/// The controller's flags. Everything not named here is tend's default
/// (resync 10m, batch 200, 8 in flight, read bucket 15/s burst 75, ...).
pub const FLAGS: &[&str] = &[
    "--cluster-name",
    "bench",
    "--namespace",
    NS,
    "--region",
    "us-east-1",
    // Only speeds up provisioning and replacement steps against moto, whose
    // state changes are instant.
    "--progress-interval",
    "500ms",
];

#[derive(Debug, Clone)]
pub struct E2eResult {
    /// From creation until every Workspace is Online.
    pub all_online_secs: f64,
    /// Sweeps in the steady window.
    pub steady_sweeps: u64,
    pub steady_status_writes: usize,
    pub steady_reconciles: u64,
    pub steady_describe_calls: usize,
    pub steady_other_ec2_calls: usize,
    /// From TerminateInstances (straight to moto) until status leaves Online.
    pub detect_secs: f64,
    /// The phase first seen after Online.
    pub detected_phase: String,
    /// Whether an Offline status write was recorded.
    pub offline_written: bool,
    /// From TerminateInstances until Online again on a new instance.
    pub recover_secs: f64,
}

fn path(name: &str) -> String {
    format!("/apis/tend.dev/v1alpha1/namespaces/{NS}/workspaces/{name}")
}

fn collection() -> String {
    format!("/apis/tend.dev/v1alpha1/namespaces/{NS}/workspaces")
}

fn phase(v: &Value) -> Option<&str> {
    v["status"]["phase"].as_str()
}

fn instance_of(v: &Value) -> Option<&str> {
    v["status"]["instanceId"].as_str()
}

/// Sum of every sample of a metric family in the text exposition.
fn metric(metrics: &Metrics, name: &str) -> u64 {
    metrics
        .encode()
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn sweeps(metrics: &Metrics) -> u64 {
    metric(metrics, "tend_sweep_duration_seconds_count")
}

async fn wait_sweeps(metrics: &Metrics, n: u64) {
    let target = sweeps(metrics) + n;
    let deadline = Instant::now() + WAIT;
    while sweeps(metrics) < target {
        assert!(Instant::now() < deadline, "sweeps stopped happening");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One end-to-end run. With `hinted`, tend reads EC2 event hints from a moto
/// queue, the sweep runs at [`HINTED_SWEEP_INTERVAL`], and the termination is
/// followed at once by the state-change message EventBridge would send.
pub async fn run(workspaces: usize, hinted: bool) -> E2eResult {
    let kube = FakeApiServer::start().await;
    let moto = Moto::start().await;
    let proxy = FaultProxy::start(moto.url()).await;
    let (subnet, _zone) = moto.default_subnet(None).await;
    let ami = moto.some_ami().await;
    let queue = if hinted {
        Some(moto.queue("tend-ec2-events").await)
    } else {
        None
    };
    let mut flags: Vec<&str> = FLAGS.to_vec();
    flags.extend(["--ec2-endpoint", proxy.url()]);
    match &queue {
        Some(url) => flags.extend([
            "--sweep-interval",
            HINTED_SWEEP_INTERVAL,
            "--sqs-queue-url",
            url,
        ]),
        None => flags.extend(["--sweep-interval", SWEEP_INTERVAL]),
    }
    let args = RunArgs::from_flags(flags).expect("bench flags parse");
    let ec2 = tend::tune(Moto::ec2_config_for(proxy.url()), &args).build();
    let aws = tend::Aws {
        ec2,
        sqs: queue.as_ref().map(|_| moto.sqs_config()),
    };
    let metrics = Arc::new(Metrics::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = {
        let client = kube.client();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            tend::run_controller(
                &args,
                client,
                aws,
                metrics,
                Default::default(),
                async move {
                    let _ = stopped.await;
                },
            )
            .await;
        })
    };

    let api: Api<Workspace> = Api::namespaced(kube.client(), NS);
    let created = Instant::now();
    for i in 0..workspaces {
        let ws = crate::common::ec2_workspace(&format!("ws-{i:02}"), NS, &ami, &subnet);
        api.create(&PostParams::default(), &ws)
            .await
            .expect("create workspace");
    }
    kube.wait_for(WAIT, "every Workspace Online", |k| {
        let all = k.list_objects(&collection());
        all.len() == workspaces && all.iter().all(|w| phase(w) == Some("Online"))
    })
    .await;
    let all_online_secs = created.elapsed().as_secs_f64();

    // Let the sweeper see every one of them at least twice, then count. A
    // hinted run has minute-long sweeps and measures only the detection.
    let (
        steady_sweeps,
        steady_reconciles,
        steady_status_writes,
        steady_describe_calls,
        steady_other_ec2_calls,
    ) = if hinted {
        (0, 0, 0, 0, 0)
    } else {
        wait_sweeps(&metrics, 2).await;
        kube.clear_requests();
        proxy.clear_log();
        let sweeps_before = sweeps(&metrics);
        let reconciles_before = metric(&metrics, "tend_reconciles_total");
        wait_sweeps(&metrics, 4).await;
        let log = proxy.call_log();
        let describes = log
            .iter()
            .filter(|c| c.action == "DescribeInstances")
            .count();
        (
            sweeps(&metrics) - sweeps_before,
            metric(&metrics, "tend_reconciles_total") - reconciles_before,
            kube.requests()
                .iter()
                .filter(|r| r.method == "PATCH" && r.path.ends_with("/status"))
                .count(),
            describes,
            log.len() - describes,
        )
    };

    // Kill one instance behind tend's back.
    let victim = format!("ws-{:02}", workspaces / 2);
    let before = kube.get_object(&path(&victim)).expect("victim exists");
    let old_instance = instance_of(&before)
        .expect("victim has an instance")
        .to_owned();
    kube.clear_requests();
    moto.terminate(&old_instance).await;
    let killed = Instant::now();
    if let Some(url) = &queue {
        let hint = serde_json::json!({
            "version": "0",
            "id": format!("bench-{old_instance}"),
            "detail-type": "EC2 Instance State-change Notification",
            "source": "aws.ec2",
            "region": "us-east-1",
            "resources": [],
            "detail": {"instance-id": old_instance, "state": "terminated"},
        });
        moto.sqs()
            .send_message()
            .queue_url(url)
            .message_body(hint.to_string())
            .send()
            .await
            .expect("moto queues the hint");
    }
    let victim_path = path(&victim);
    kube.wait_for(WAIT, "the victim to leave Online", |k| {
        k.get_object(&victim_path).is_some_and(|w| {
            phase(&w) != Some("Online") || instance_of(&w) != Some(old_instance.as_str())
        })
    })
    .await;
    let detect_secs = killed.elapsed().as_secs_f64();
    let detected_phase = kube
        .get_object(&victim_path)
        .and_then(|w| phase(&w).map(str::to_owned))
        .unwrap_or_default();
    kube.wait_for(WAIT, "the victim Online on a new instance", |k| {
        k.get_object(&victim_path).is_some_and(|w| {
            phase(&w) == Some("Online")
                && instance_of(&w).is_some_and(|i| i != old_instance.as_str())
        })
    })
    .await;
    let recover_secs = killed.elapsed().as_secs_f64();
    let offline_written = kube.requests().iter().any(|r| {
        r.method == "PATCH"
            && r.path.ends_with(&format!("/{victim}/status"))
            && r.json_body()
                .is_some_and(|b| b["status"]["phase"] == "Offline")
    });

    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), controller).await;
    E2eResult {
        all_online_secs,
        steady_sweeps,
        steady_status_writes,
        steady_reconciles,
        steady_describe_calls,
        steady_other_ec2_calls,
        detect_secs,
        detected_phase,
        offline_written,
        recover_secs,
    }
}
