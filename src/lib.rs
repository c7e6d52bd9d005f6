//! tend: a Kubernetes operator that keeps long-lived workspaces honest and alive.

pub mod api;
pub mod backend;
pub mod config;
pub mod core;
pub mod health;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod reconciler;
pub mod sweep;
pub mod telemetry;

use std::sync::Arc;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use kube::CustomResourceExt;
use kube::api::Api;

use crate::api::Workspace;
use crate::backend::Backends;
use crate::backend::container::{ContainerBackend, ContainerSettings};
use crate::backend::ec2::hints::Hints;
use crate::backend::ec2::{BatchSettings, Ec2Backend, Ec2Settings, Limits, Rate};
use crate::backend::external::{ExternalBackend, ExternalSettings};
use crate::config::RunArgs;
use crate::health::Readiness;
use crate::leader::LeaseSettings;
use crate::metrics::Metrics;
use crate::reconciler::{Context, Settings};
use crate::sweep::{Snapshot, SweepSettings, Sweeper};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::warn;

/// The CRD as YAML, exactly as committed under `crds/`.
pub fn crd_yaml() -> String {
    serde_yaml::to_string(&Workspace::crd()).expect("the CRD serialises")
}

/// The AWS clients tend uses: EC2 always, SQS for EC2 event hints.
#[derive(Debug, Clone)]
pub struct Aws {
    pub ec2: aws_sdk_ec2::Config,
    /// Only with `--sqs-queue-url`.
    pub sqs: Option<aws_sdk_sqs::Config>,
}

impl From<aws_sdk_ec2::Config> for Aws {
    fn from(ec2: aws_sdk_ec2::Config) -> Self {
        Aws { ec2, sqs: None }
    }
}

/// The AWS client configurations from the default chain (env, profile, IRSA,
/// EKS Pod Identity), with tend's timeouts and an explicit retry policy.
pub async fn aws_config(args: &RunArgs) -> anyhow::Result<Aws> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = &args.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    let sdk = loader.load().await;
    let Some(region) = sdk.region().map(|r| r.to_string()) else {
        anyhow::bail!("no AWS region: pass --region (TEND_REGION) or set AWS_REGION");
    };
    let region = aws_config::Region::new(region);
    let mut ec2 = aws_sdk_ec2::config::Builder::from(&sdk).region(region.clone());
    if let Some(url) = &args.ec2_endpoint {
        ec2 = ec2.endpoint_url(url);
    }
    let sqs = args.sqs_queue_url.as_ref().map(|_| {
        let mut sqs = aws_sdk_sqs::config::Builder::from(&sdk)
            .region(region)
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(args.probe_timeout.min(std::time::Duration::from_secs(3)))
                    .build(),
            );
        if let Some(url) = &args.sqs_endpoint {
            sqs = sqs.endpoint_url(url);
        }
        sqs.build()
    });
    Ok(Aws {
        ec2: tune(ec2, args).build(),
        sqs,
    })
}

/// Applies tend's per-call timeout and retry policy to an EC2 client config.
pub fn tune(builder: aws_sdk_ec2::config::Builder, args: &RunArgs) -> aws_sdk_ec2::config::Builder {
    builder
        // Standard mode: 3 attempts with a retry-token budget. A spent budget
        // surfaces as an error, which tend treats as Unknown.
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(args.probe_timeout)
                .operation_attempt_timeout(args.probe_timeout)
                .connect_timeout(args.probe_timeout.min(std::time::Duration::from_secs(3)))
                .build(),
        )
}

/// The Lease this replica campaigns for, from the flags: `None` without
/// `--leader-election`. The Lease lives in `--lease-namespace`, else in the
/// client's namespace (in a cluster, the one tend runs in).
pub fn lease_settings(args: &RunArgs, client: &kube::Client) -> Option<LeaseSettings> {
    args.leader_election.then(|| LeaseSettings {
        name: args.lease_name.clone(),
        namespace: args
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string()),
        identity: args
            .lease_identity
            .clone()
            .unwrap_or_else(leader::default_identity),
        duration: args.lease_duration,
    })
}

/// Runs this replica until `shutdown`: alone, or, given a Lease (and a client
/// for it), acting only while it holds the Lease. Each time it leads, it
/// starts afresh (a new cache, no memory of an earlier term) and stops acting
/// the moment it loses the Lease. On `shutdown` it takes no new work, gives
/// in-flight reconciles `--shutdown-timeout` to finish, then gives up the
/// Lease.
pub async fn run_replica(
    args: &RunArgs,
    client: kube::Client,
    election: Option<(kube::Client, LeaseSettings)>,
    aws: Aws,
    metrics: Arc<Metrics>,
    ready: Arc<Readiness>,
    shutdown: CancellationToken,
) {
    let term = || {
        act(
            args,
            client.clone(),
            aws.clone(),
            metrics.clone(),
            ready.clone(),
            &shutdown,
        )
    };
    let Some((lease_client, lease)) = election else {
        term().await;
        return;
    };
    let (leading_tx, mut leading) = watch::channel(false);
    let stop_campaign = CancellationToken::new();
    let campaign = AbortOnDropHandle::new(tokio::spawn(leader::campaign(
        lease_client,
        lease.clone(),
        leading_tx,
        stop_campaign.clone(),
        ready.clone(),
        metrics.clone(),
    )));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            led = leading.wait_for(|l| *l) => if led.is_err() { break },
        }
        let mut watching = leading.clone();
        tokio::select! {
            // Leadership first: a term is never polled again once it is lost.
            biased;
            _ = watching.wait_for(|l| !*l) => {
                warn!(lease = %lease.name, "stopped reconciling and sweeping: no longer the leader");
            }
            () = term() => break,
        }
    }
    stop_campaign.cancel();
    // Giving the Lease up takes a few short requests; a hung API server
    // cannot hold the exit up for longer.
    let _ = tokio::time::timeout(lease.renew_margin(), campaign).await;
}

/// One term of acting: the controller and the sweeper until `shutdown`, and
/// then at most `--shutdown-timeout` for the reconciles in flight.
async fn act(
    args: &RunArgs,
    client: kube::Client,
    aws: Aws,
    metrics: Arc<Metrics>,
    ready: Arc<Readiness>,
    shutdown: &CancellationToken,
) {
    let running = run_controller(
        args,
        client,
        aws,
        metrics,
        ready,
        shutdown.clone().cancelled_owned(),
    );
    let bound = async {
        shutdown.cancelled().await;
        tokio::time::sleep(args.shutdown_timeout).await;
    };
    tokio::select! {
        () = running => {}
        () = bound => warn!(
            timeout = ?args.shutdown_timeout,
            "reconciles still running after --shutdown-timeout were stopped"
        ),
    }
}

/// Runs the controller and the sweeper with the given clients until
/// `shutdown` resolves. `ready` holds while the sweeps keep completing.
pub async fn run_controller(
    args: &RunArgs,
    client: kube::Client,
    aws: impl Into<Aws>,
    metrics: Arc<Metrics>,
    ready: Arc<Readiness>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let Aws { ec2, sqs } = aws.into();
    let default_region = ec2.region().map(|r| r.to_string()).unwrap_or_default();
    let limits = Arc::new(Limits::new(
        Rate {
            per_second: args.ec2_read_rate,
            burst: args.ec2_read_burst,
        },
        Rate {
            per_second: args.ec2_mutate_rate,
            burst: args.ec2_mutate_burst,
        },
    ));
    let mut backends = Backends::default();
    let ec2_backend = Arc::new(Ec2Backend::new(
        ec2,
        Ec2Settings {
            cluster: args.cluster_name.clone(),
            default_region: default_region.clone(),
            not_found_grace: args.not_found_grace,
            batch: BatchSettings {
                batch_size: args.batch_size as usize,
                probe_timeout: args.probe_timeout,
                max_in_flight: args.max_in_flight,
            },
        },
        limits,
        client.clone(),
    ));
    let hinted = ec2_backend.hints();
    backends.register(ec2_backend);
    backends.register(Arc::new(ContainerBackend::new(
        client.clone(),
        ContainerSettings {
            cluster: args.cluster_name.clone(),
            not_found_grace: args.not_found_grace,
            probe_timeout: args.probe_timeout,
            max_in_flight: args.max_in_flight,
            namespace: args.namespace.clone(),
        },
    )));
    backends.register(Arc::new(ExternalBackend::new(
        client.clone(),
        ExternalSettings {
            probe_timeout: args.probe_timeout,
            max_in_flight: args.max_in_flight,
            namespace: args.namespace.clone(),
        },
    )));
    let settings = Settings {
        progress_interval: args.progress_interval,
        resync_interval: args.resync_interval,
        error_backoff: args.error_backoff,
        restart_backoff: args.restart_backoff,
        sweep_interval: args.sweep_interval,
        concurrency: args.concurrency,
        probe_timeout: args.probe_timeout,
        stale_after: args.stale_after,
    };
    let api: Api<Workspace> = match &args.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let controller =
        reconciler::new_controller(api, args.label_selector.as_deref(), args.concurrency);
    let hints = match (&args.sqs_queue_url, sqs) {
        (Some(queue_url), Some(sqs)) => Some(Hints {
            sqs: aws_sdk_sqs::Client::from_conf(sqs),
            queue_url: queue_url.clone(),
            store: controller.store(),
            changes: hinted,
            recorder: kube::runtime::events::Recorder::new(client.clone(), "tend".into()),
            metrics: metrics.clone(),
            call_timeout: args.probe_timeout,
            default_region,
        }),
        _ => None,
    };
    let (published, snapshot) = watch::channel(Arc::new(Snapshot::default()));
    // Each completed sweep publishes a snapshot: readiness watches them.
    let sweeps = published.subscribe();
    let (wake, woken) = futures::channel::mpsc::unbounded();
    let sweep_settings = SweepSettings::from_args(args);
    let overdue_after = health::overdue_after(&sweep_settings);
    let sweeper = Sweeper::new(
        backends.clone(),
        sweep_settings,
        controller.store(),
        published,
        wake,
        metrics.clone(),
    );
    let ctx = Arc::new(Context::new(
        client,
        backends,
        settings,
        metrics.clone(),
        snapshot,
    ));
    ready.started();
    // Both run inside this one future, so dropping it stops both.
    let cancel = CancellationToken::new();
    let stop_sweeping = cancel.clone();
    let hinting = async {
        if let Some(hints) = hints {
            hints.run(cancel.clone()).await;
        }
    };
    tokio::join!(
        hinting,
        health::supervise_sweeper(
            sweeper.run(cancel.clone()),
            sweeps,
            overdue_after,
            &cancel,
            &ready,
            &metrics,
        ),
        reconciler::run(controller, ctx, woken, async move {
            shutdown.await;
            stop_sweeping.cancel();
        }),
    );
}
